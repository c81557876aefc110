// A file descriptor closed when it goes out of scope, and a poll() until a deadline: for the
// small synchronous exchanges on a Unix socket with one deadline for the whole of them (the SSH
// agent probe, QEMU's monitor).
#pragma once

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

namespace machine {

struct fd_closer {
    int fd = -1;
    fd_closer() = default;
    explicit fd_closer(int f) : fd(f) {}
    fd_closer(const fd_closer&) = delete;
    fd_closer& operator=(const fd_closer&) = delete;
    ~fd_closer() {
        if (fd >= 0) ::close(fd);
    }
};

/// Waits for `events` on `fd` until `deadline`: true when they (or an error the next call will
/// report) came, false on timeout or a poll failure.
inline bool poll_until(int fd, short events, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) return false;
        pollfd p{fd, events, 0};
        const int rc = ::poll(&p, 1, static_cast<int>(left));
        if (rc > 0) return true;
        if (rc < 0 && errno != EINTR) return false;
    }
}

} // namespace machine
