// A file descriptor closed when it goes out of scope, a poll() until a deadline and a send of
// a whole buffer until one: for the small synchronous exchanges on a Unix socket with one
// deadline for the whole of them (the SSH agent probe, QEMU's monitor).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string_view>

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

/// How send_all ended: everything went out, the deadline passed first, or send() failed (errno
/// says why).
enum class send_outcome { sent, timed_out, failed };

/// Sends all of `data` on the non-blocking socket `fd` (never raising SIGPIPE), waiting for room
/// until `deadline`: a peer that stops reading cannot hold the caller past it.
inline send_outcome send_all(int fd, std::string_view data, std::chrono::steady_clock::time_point deadline) {
    std::size_t sent = 0;
    while (sent < data.size()) {
        const auto n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (!poll_until(fd, POLLOUT, deadline)) return send_outcome::timed_out;
        } else {
            return send_outcome::failed;
        }
    }
    return send_outcome::sent;
}

} // namespace machine
