// Child processes on the event loop: platform::spawn, an exit watch (a pidfd on Linux), pipes.
//
// Guarantees: the child inherits only fds 0-2 (everything else is closed in the child, so
// concurrent children never hold each other's pipes); stdout and stderr are read
// concurrently; the exit is observed through platform::open_exit_watch and every child is reaped; a timeout or
// a cancel_signal stops the child's process group with SIGINT, then SIGTERM, then SIGKILL.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include "machine/error.hpp"

namespace machine {
class cancel_signal;
}

namespace machine::proc {

enum class stdio { pipe, inherit, null };

struct command {
    std::vector<std::string> argv;             // argv[0] is looked up in PATH
    std::optional<std::filesystem::path> cwd;
    std::vector<std::pair<std::string, std::string>> env_set;  // added or replaced
    std::vector<std::string> env_unset;
    stdio in = stdio::null;
    stdio out = stdio::pipe;
    stdio err = stdio::pipe;
    std::string stdin_data;                    // written when in == pipe, then closed
    // A new process group keeps the terminal's Ctrl-C away from the child, so the parent
    // decides how to stop it. Interactive children (inheriting the terminal) must stay in
    // the foreground group: set this to false for them.
    bool new_process_group = true;
};

struct limits {
    std::optional<std::chrono::milliseconds> timeout;  // then stop the child
    std::chrono::milliseconds grace{3000};             // between SIGINT, SIGTERM and SIGKILL
    std::size_t max_output = 16 << 20;                 // per stream; the rest is discarded
};

// Called with each complete line (without '\n') as it arrives; the captured text is kept too.
using line_callback = std::function<void(std::string_view line)>;

struct result {
    int exit_code = -1;   // when the child exited normally
    int signal = 0;       // when it was killed by a signal
    std::string out;
    std::string err;
    bool timed_out = false;
    bool cancelled = false;

    bool ok() const { return signal == 0 && exit_code == 0; }
    // Shell convention: the exit code, or 128 + signal.
    int status() const { return signal ? 128 + signal : exit_code; }
};

// The child could not be started (no such program, not executable...).
class spawn_error : public error {
public:
    using error::error;
};

struct run_options {
    limits limit;
    cancel_signal* cancel = nullptr;  // optional: graceful -> SIGINT..., forceful -> SIGKILL
    line_callback on_stdout_line;
    line_callback on_stderr_line;
    // Lines also end at '\r' (progress meters such as git's redraw one line with it).
    bool lines_end_at_cr = false;
    // The child's stdout is a secret: result.out gets all of max_output up front (no
    // reallocation leaves a copy in freed memory) and the read buffer is zeroed when done.
    // The caller wipes result.out. No line callback may be set for stdout.
    bool secret_stdout = false;
};

// Runs a command to completion. Never throws for a non-zero exit: inspect the result.
// Throws spawn_error when the program cannot be started.
asio::awaitable<result> run(command cmd, run_options options);
// run() with default options. (An overload, not a `= {}` default argument: g++ 12 corrupts a
// brace-initialized aggregate default argument of a coroutine called inside co_await.)
asio::awaitable<result> run(command cmd);

// A child whose stdin and stdout stay open for a conversation (the guest agent's protocol over
// an `ssh` client that rides the VM's master): `cmd.in` and `cmd.out` are pipes; its stderr is
// /dev/null or inherited (a pipe nobody drains would block it, so one is refused). It runs in a
// process group of its own. Used on its creator's loop only. Destroying it stops it (SIGKILL
// to its group) and reaps it when it has not been reaped yet.
class child {
public:
    /// Throws spawn_error when the program cannot be started.
    static std::unique_ptr<child> start(asio::any_io_executor ex, command cmd);
    ~child();
    child(const child&) = delete;
    child& operator=(const child&) = delete;

    /// The next chunk of its stdout; nullopt at the end (it closed it, or close() was called).
    asio::awaitable<std::optional<std::string>> read();
    /// Writes all of `data` to its stdin; throws machine::error when it no longer reads it (its
    /// end is closed: EPIPE) or after close(). `data` must stay alive until this completes.
    asio::awaitable<void> write(std::string_view data);
    /// Its status once it has exited (shell convention: the exit code, or 128 + signal), reaped.
    asio::awaitable<int> wait();
    /// Closes our ends of its pipes (pending reads end with nullopt, writes fail) and sends
    /// SIGTERM to its group; wait() then reaps it.
    void close();
    pid_t pid() const;

private:
    struct state;
    explicit child(std::unique_ptr<state> s);
    std::unique_ptr<state> s_;
};

// How many children this process has spawned and not yet reaped (tests: no zombies).
std::size_t live_children();

// Finds `program` in $PATH (or returns it when it contains '/'); nullopt when absent.
std::optional<std::filesystem::path> find_program(std::string_view program);

} // namespace machine::proc
