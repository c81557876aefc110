// Supervising a child that is already running, wherever it runs: the stop ladder (INT, TERM,
// KILL with a grace between rungs) and draining a local child's pipes with its exit and reap.
// Launching stays apart (proc::run's posix_spawn, the guest agent's setuid fork); both, and the
// SSH client's remote commands, stop their children with one `stopper`.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include "machine/async.hpp"

namespace machine {
class cancel_signal;
}

namespace machine::proc {

/// The signals that stop a child, mildest first; the last one is final (SIGKILL). Sans-io: it
/// only says which signal comes next.
class stop_ladder {
public:
    stop_ladder(std::vector<int> rungs, std::chrono::milliseconds grace);
    static stop_ladder int_term_kill(std::chrono::milliseconds grace);
    static stop_ladder term_kill(std::chrono::milliseconds grace);
    static stop_ladder kill_only();

    /// The next signal to send, or nullopt once the last one was sent. `forceful`: the last rung
    /// at once, whatever comes before it.
    std::optional<int> next(bool forceful = false);
    /// Leaves out the first rung (the child got it already, e.g. the terminal's Ctrl-C).
    void skip_first();
    bool finished() const { return next_ >= rungs_.size(); }
    std::chrono::milliseconds grace() const { return grace_; }

private:
    std::vector<int> rungs_;
    std::chrono::milliseconds grace_;
    std::size_t next_ = 0;
};

/// Stops one child by climbing a stop_ladder on the loop: waits for a reason (request(), a
/// deadline, a cancel_signal), then sends the rungs with the ladder's grace between them (cut
/// short by a forceful request), until the last rung or until the child has exited.
///
/// `send` says how a signal reaches the child (a process group, a pid, an SSH channel); the
/// owner says when the child has exited (exited()). Single-threaded, like the loop.
class stopper {
public:
    using send_fn = std::function<void(int signal)>;
    enum class reason { none, requested, deadline, cancelled };

    stopper(asio::any_io_executor ex, stop_ladder ladder, send_fn send);
    stopper(const stopper&) = delete;
    stopper& operator=(const stopper&) = delete;

    /// Stop at this time (a timeout) unless the child exits first. Before run().
    void deadline(std::chrono::steady_clock::time_point at);
    /// Follow this cancel signal: any level starts the climb, forceful goes to the last rung.
    /// Before run(); `cancel` outlives the stopper.
    void follow(cancel_signal* cancel);
    /// When the reason is the cancel signal, leave out the first rung: the child shares our
    /// terminal and got the Ctrl-C itself.
    void cancel_skips_first_rung(bool skip) { cancel_skips_first_ = skip; }

    /// Starts the climb (idempotent); before run() is awaited, run() starts at once.
    void request();
    /// The last rung now, synchronously (also when the loop will not run again).
    void force();
    /// The child has exited: nothing more is sent, and run() returns.
    void exited();

    /// Waits for a reason and climbs. Returns after the last rung was sent, when exited() is
    /// called, or when cancelled (then interrupted() is true: start nothing new); never throws.
    asio::awaitable<void> run();
    bool interrupted() const { return interrupted_; }

    reason why() const { return reason_; }
    bool stopping() const { return reason_ != reason::none; }
    bool has_exited() const { return exited_; }

private:
    bool forceful() const;
    void start(reason r);
    void send_next();

    notifier wake_;  // a reason to look again: request(), force(), exited()
    stop_ladder ladder_;
    send_fn send_;
    cancel_signal* cancel_ = nullptr;
    std::chrono::steady_clock::time_point deadline_ = std::chrono::steady_clock::time_point::max();
    reason reason_ = reason::none;
    bool forced_ = false;
    bool exited_ = false;
    bool cancel_skips_first_ = false;
    bool interrupted_ = false;
};

/// Waits, without blocking the loop, until the child has exited, and does NOT reap it: until it
/// is reaped its pid, which is also its process group's id, cannot be reused, so the group can
/// still be signalled safely. Takes ownership of `pidfd` (-1: poll instead). False when the
/// wait was cancelled (the loop is going away) before the child exited.
asio::awaitable<bool> wait_exited(pid_t pid, int pidfd);

/// Reaps the child and returns its wait status; `block` false: only if it has exited (0 if not).
int reap(pid_t pid, bool block = true);

/// One of a child's output pipes and where its bytes go.
struct output_pipe {
    int fd = -1;  ///< read end, owned from here on; -1: none
    /// Each chunk as it arrives; false stops reading (the pipe is closed: a child still writing
    /// gets SIGPIPE). Empty: the bytes go to `into`, up to `cap`; the rest is read and dropped.
    std::function<asio::awaitable<bool>(std::string_view chunk)> on_chunk;
    std::string* into = nullptr;
    std::size_t cap = 0;
    std::size_t read_size = 16384;

    /// The pipe `fd` read into `text`, keeping its first `cap` bytes.
    static output_pipe collected(int fd, std::string& text, std::size_t cap, std::size_t read_size) {
        output_pipe p;
        p.fd = fd;
        p.into = &text;
        p.cap = cap;
        p.read_size = read_size;
        return p;
    }
};

/// A local child to see through to its end.
struct child_watch {
    pid_t pid = -1;
    int pidfd = -1;  ///< owned from here on; -1: poll
    output_pipe out, err;
    /// After the child exits, the pipes normally reach EOF at once; a grandchild that inherited
    /// them may hold them open for ever: read this long, then close them.
    std::chrono::milliseconds linger{500};
    /// It has exited and is not reaped yet: its pid and group id are still ours to signal.
    std::function<void()> on_exit;
    /// It has been reaped (before the linger): e.g. stopper::exited().
    std::function<void()> on_reaped;
};

/// Reads both pipes to their end (concurrently, so neither can fill up and stall the child),
/// waits for the exit and reaps. Returns the wait status. If cancelled before the exit (the
/// loop is going away), reaps only if the child has already exited (never blocks the loop).
/// Call it outside the co_await expression (`auto a = drain_and_reap(std::move(w)); co_await
/// std::move(a);`): g++ 12 destroys the argument's temporaries twice inside one (house style §4).
asio::awaitable<int> drain_and_reap(child_watch watch);

} // namespace machine::proc
