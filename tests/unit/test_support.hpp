// Helpers shared by the unit tests.
#pragma once

#include <poll.h>
#include <signal.h>
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
