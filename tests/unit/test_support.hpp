// Helpers shared by the unit tests.
#pragma once

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <random>
#include <string>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

namespace machine::test {

// Kills the process a pidfd names (a test's own, found by pid: never by name) and waits, at
// most 5 s, until it has exited; closes the pidfd.
inline void kill_and_wait(int pidfd) {
    ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
    pollfd p{pidfd, POLLIN, 0};
    // Readable once it has exited. EINTR: the POSIX build's SIGCHLD handler (platform_posix.cpp).
    while (::poll(&p, 1, 5000) < 0 && errno == EINTR) {
    }
    ::close(pidfd);
}

// A TCP port on 127.0.0.1 that nothing listens on: one the kernel picked, bound and closed
// again (free unless something takes it in between).
inline int closed_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    const bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
    if (fd >= 0) ::close(fd);
    return ok ? ntohs(a.sin_port) : 1;  // port 1: nothing listens there either
}

// Runs an awaitable to completion on `ctx` and returns its value (or rethrows).
template <class T>
T co_run(asio::io_context& ctx, asio::awaitable<T> task) {
    std::optional<T> value;
    std::exception_ptr failure;
    asio::co_spawn(ctx, std::move(task), [&](std::exception_ptr e, T v) {
        failure = e;
        if (!e) value = std::move(v);
    });
    ctx.run();
    ctx.restart();
    if (failure) std::rethrow_exception(failure);
    return std::move(*value);
}

inline void co_run(asio::io_context& ctx, asio::awaitable<void> task) {
    std::exception_ptr failure;
    asio::co_spawn(ctx, std::move(task), [&](std::exception_ptr e) { failure = e; });
    ctx.run();
    ctx.restart();
    if (failure) std::rethrow_exception(failure);
}

// A fresh directory under the system temp dir, removed at scope exit.
struct temp_dir {
    std::filesystem::path path;
    temp_dir() {
        std::random_device rd;
        path = std::filesystem::temp_directory_path() / ("machine-test-" + std::to_string(rd()));
        std::filesystem::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
};

// A private state directory ($MACHINE_STATE_DIR) for the test's projects, restored afterwards.
struct state_dir {
    temp_dir dir;
    std::optional<std::string> previous;
    state_dir() {
        if (const char* v = std::getenv("MACHINE_STATE_DIR")) previous = v;
        ::setenv("MACHINE_STATE_DIR", (dir.path / "state").c_str(), 1);
    }
    ~state_dir() {
        if (previous) ::setenv("MACHINE_STATE_DIR", previous->c_str(), 1);
        else ::unsetenv("MACHINE_STATE_DIR");
    }
    std::filesystem::path of(const std::string& name) const { return dir.path / "state" / name; }
};

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace machine::test
