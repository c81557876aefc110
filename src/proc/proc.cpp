#include "machine/proc.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "machine/async.hpp"
#include "machine/cancel.hpp"
#include "machine/paths.hpp"
#include "machine/platform.hpp"
#include "machine/supervise.hpp"

extern char** environ;

namespace machine::proc {

namespace {

using asio::awaitable;
using asio::use_awaitable;
using asio::experimental::as_tuple;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;

std::atomic<std::size_t> g_live_children{0};

// After the child exits, its pipes normally reach EOF at once. A grandchild that inherited
// them can keep them open forever; give it this long, then stop reading.
constexpr auto pipe_linger = 500ms;

// A child that exits before reading its stdin must not kill us with SIGPIPE.
void ignore_sigpipe() {
    static const bool ignored = [] { return std::signal(SIGPIPE, SIG_IGN) != SIG_ERR; }();
    (void)ignored;
}

// Reaps `pid` (blocking: it has exited, or was sent SIGKILL) into `status`.
void reap(pid_t pid, int& status) {
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    --g_live_children;
}

int shell_status(int wait_status) {
    if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
    if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
    return -1;
}

struct fd_guard {
    int fd = -1;
    fd_guard() = default;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(fd_guard&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
    fd_guard& operator=(fd_guard&& o) noexcept {
        reset();
        fd = std::exchange(o.fd, -1);
        return *this;
    }
    ~fd_guard() { reset(); }
    void reset() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    int release() { return std::exchange(fd, -1); }
};

struct pipe_pair {
    fd_guard read, write;
};

pipe_pair make_pipe() {
    int fds[2];
    // Close-on-exec: a sibling spawned concurrently must never inherit these (see house style §3.9).
    if (!platform::open_pipe(fds)) throw error(std::string("pipe: ") + std::strerror(errno));
    return {fd_guard(fds[0]), fd_guard(fds[1])};
}

std::vector<std::string> build_environment(const command& cmd) {
    std::map<std::string, std::string> vars;
    for (char** e = environ; e && *e; ++e) {
        std::string_view kv(*e);
        const auto eq = kv.find('=');
        if (eq == std::string_view::npos) continue;
        vars[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    }
    for (const auto& name : cmd.env_unset) vars.erase(name);
    for (const auto& [name, value] : cmd.env_set) vars[name] = value;
    std::vector<std::string> out;
    out.reserve(vars.size());
    for (const auto& [name, value] : vars) out.push_back(name + "=" + value);
    return out;
}

struct spawned {
    pid_t pid = -1;
    fd_guard in, out, err;  // parent ends
    fd_guard pidfd;         // platform::open_exit_watch
};

spawned spawn_child(const command& cmd) {
    if (cmd.argv.empty()) throw spawn_error("cannot run an empty command");
    platform::spawn_request req;
    spawned child;
    pipe_pair in_pipe, out_pipe, err_pipe;

    auto wire = [&](stdio mode, int target, pipe_pair& p, bool child_reads) {
        switch (mode) {
        case stdio::inherit:
            req.stdio[static_cast<std::size_t>(target)] = platform::stdio_inherit;
            break;
        case stdio::null:
            req.stdio[static_cast<std::size_t>(target)] = platform::stdio_null;
            break;
        case stdio::pipe:
            p = make_pipe();
            req.stdio[static_cast<std::size_t>(target)] = child_reads ? p.read.fd : p.write.fd;
            break;
        }
    };
    wire(cmd.in, 0, in_pipe, true);
    wire(cmd.out, 1, out_pipe, false);
    wire(cmd.err, 2, err_pipe, false);
    req.argv = cmd.argv;
    req.env = build_environment(cmd);
    req.cwd = cmd.cwd;
    req.new_process_group = cmd.new_process_group;
    int rc = 0;
    child.pid = platform::spawn(req, rc);
    if (child.pid < 0) {
        throw spawn_error("cannot run " + cmd.argv[0] + ": " + std::strerror(rc));
    }
    ++g_live_children;
    // The parent keeps only its own ends; dropping the write ends is what makes EOF possible.
    child.in = std::move(in_pipe.write);
    child.out = std::move(out_pipe.read);
    child.err = std::move(err_pipe.read);
    child.pidfd = fd_guard(platform::open_exit_watch(child.pid));
    return child;
}

// Shared by the coroutines that make up one run().
struct run_state {
    run_state(asio::any_io_executor ex, pid_t p, bool own_group)
        : out(ex), err(ex), in(ex), pidfd(ex), streams_closed(ex), pid(p),
          own_group(own_group) {}
    asio::posix::stream_descriptor out, err, in, pidfd;
    notifier streams_closed;  // every pipe reached EOF (or was closed)
    pid_t pid;
    bool own_group;
    int open_streams = 0;
    int wait_status = 0;
    bool reaped = false;

    void signal_child(int sig) const {
        if (reaped) return;
        if (own_group) ::kill(-pid, sig);
        else ::kill(pid, sig);
    }
};

void append_capped(std::string& sink, std::string_view data, std::size_t cap) {
    if (sink.size() < cap) sink.append(data.substr(0, cap - sink.size()));
}

awaitable<void> drain(run_state& st, asio::posix::stream_descriptor& stream, std::string& sink,
                      std::size_t cap, const line_callback& on_line, bool secret, bool cr_ends_lines = false) {
    const char* const line_ends = cr_ends_lines ? "\n\r" : "\n";
    std::array<char, 16384> buffer;
    std::string partial;
    if (secret) sink.reserve(cap);
    for (;;) {
        auto [ec, n] = co_await stream.async_read_some(asio::buffer(buffer), as_tuple(use_awaitable));
        if (ec) break;  // EOF, or closed after the linger period
        const std::string_view chunk(buffer.data(), n);
        append_capped(sink, chunk, cap);
        if (on_line) {
            partial.append(chunk);
            std::size_t start = 0;
            for (auto nl = partial.find_first_of(line_ends); nl != std::string::npos;
                 nl = partial.find_first_of(line_ends, start)) {
                on_line(std::string_view(partial).substr(start, nl - start));
                start = nl + 1;
            }
            partial.erase(0, start);
            if (partial.size() > cap) partial.clear();  // a "line" with no end in sight
        }
    }
    if (on_line && !partial.empty()) on_line(partial);
    if (secret) {
        platform::wipe_memory(buffer.data(), buffer.size());
    }
    stream.close();
    if (--st.open_streams == 0) st.streams_closed.notify_all();
}

awaitable<void> feed_stdin(asio::posix::stream_descriptor& stream, const std::string& data) {
    if (!data.empty()) {
        // EPIPE when the child does not read its stdin is fine: it is the child's choice.
        co_await asio::async_write(stream, asio::buffer(data), as_tuple(use_awaitable));
    }
    stream.close();
}

awaitable<void> wait_and_reap(run_state& st) {
    if (st.pidfd.is_open()) {
        co_await st.pidfd.async_wait(asio::posix::stream_descriptor::wait_read,
                                     as_tuple(use_awaitable));
    } else {
        // No exit watch (Linux < 5.3, or the POSIX table is full): poll.
        asio::steady_timer poll(co_await asio::this_coro::executor);
        while (::waitpid(st.pid, &st.wait_status, WNOHANG) == 0) {
            poll.expires_after(20ms);
            co_await poll.async_wait(as_tuple(use_awaitable));
        }
        st.reaped = true;
    }
    if (!st.reaped) {
        reap(st.pid, st.wait_status);
        st.reaped = true;
    } else {
        --g_live_children;
    }
    if (st.open_streams > 0) {
        co_await st.streams_closed.wait_until(steady_clock::now() + pipe_linger);
        // Whatever still holds the pipes open is not our child any more.
        if (st.out.is_open()) st.out.cancel();
        if (st.err.is_open()) st.err.cancel();
    }
}

// Climbs the stop ladder once there is a reason to (supervise.hpp's stopper). Never completes
// on its own: the race in run() ends it when the child has been reaped.
awaitable<void> watchdog(stopper& stop) {
    co_await stop.run();
    if (!stop.interrupted()) co_await sleep_until(steady_clock::time_point::max());  // until it loses
}

awaitable<void> supervise(run_state& st, result& res, const run_options& opt, const command& cmd) {
    const std::size_t cap = opt.limit.max_output;
    if (st.out.is_open() && st.err.is_open()) {
        co_await (drain(st, st.out, res.out, cap, opt.on_stdout_line, opt.secret_stdout, opt.lines_end_at_cr) &&
                  drain(st, st.err, res.err, cap, opt.on_stderr_line, false, opt.lines_end_at_cr) && wait_and_reap(st));
    } else if (st.out.is_open()) {
        co_await (drain(st, st.out, res.out, cap, opt.on_stdout_line, opt.secret_stdout, opt.lines_end_at_cr) && wait_and_reap(st));
    } else if (st.err.is_open()) {
        co_await (drain(st, st.err, res.err, cap, opt.on_stderr_line, false, opt.lines_end_at_cr) && wait_and_reap(st));
    } else {
        co_await wait_and_reap(st);
    }
    (void)cmd;
}

awaitable<void> supervise_with_stdin(run_state& st, result& res, const run_options& opt,
                                     const command& cmd) {
    co_await (feed_stdin(st.in, cmd.stdin_data) && supervise(st, res, opt, cmd));
}

} // namespace

// --- child ----------------------------------------------------------------------------------

struct child::state {
    state(asio::any_io_executor ex, pid_t p) : in(ex), out(ex), exit_watch(ex), pid(p) {}
    asio::posix::stream_descriptor in, out, exit_watch;
    pid_t pid;
    bool reaped = false;
    int wait_status = 0;
    std::array<char, 16384> buffer{};
};

child::child(std::unique_ptr<state> s) : s_(std::move(s)) {}

std::unique_ptr<child> child::start(asio::any_io_executor ex, command cmd) {
    ignore_sigpipe();
    if (cmd.err == stdio::pipe) throw spawn_error("cannot run " + (cmd.argv.empty() ? std::string("a command") : cmd.argv[0]) +
                                                  " with a stderr pipe nobody drains");
    cmd.in = stdio::pipe;
    cmd.out = stdio::pipe;
    cmd.new_process_group = true;
    spawned sp = spawn_child(cmd);
    auto st = std::make_unique<state>(ex, sp.pid);
    st->in.assign(sp.in.release());
    st->out.assign(sp.out.release());
    if (sp.pidfd.fd >= 0) st->exit_watch.assign(sp.pidfd.release());
    return std::unique_ptr<child>(new child(std::move(st)));
}

child::~child() {
    if (s_->reaped) return;
    ::kill(-s_->pid, SIGKILL);  // its group: whatever it started goes too (a zombie keeps the group's id)
    reap(s_->pid, s_->wait_status);
}

pid_t child::pid() const { return s_->pid; }

awaitable<std::optional<std::string>> child::read() {
    if (!s_->out.is_open()) co_return std::nullopt;
    auto [ec, n] = co_await s_->out.async_read_some(asio::buffer(s_->buffer), as_tuple(use_awaitable));
    if (ec) co_return std::nullopt;  // the end, or close(), or a cancelled read
    co_return std::string(s_->buffer.data(), n);
}

awaitable<void> child::write(std::string_view data) {
    if (!s_->in.is_open()) throw error("cannot write to process " + std::to_string(s_->pid) + ": its input is closed");
    auto [ec, n] = co_await asio::async_write(s_->in, asio::buffer(data.data(), data.size()), as_tuple(use_awaitable));
    if (ec == asio::error::operation_aborted) throw std::system_error(ec);
    if (ec) throw error("cannot write to process " + std::to_string(s_->pid) + ": " + ec.message());
}

awaitable<int> child::wait() {
    if (!s_->reaped) {
        if (s_->exit_watch.is_open()) {
            auto [ec] = co_await s_->exit_watch.async_wait(asio::posix::stream_descriptor::wait_read,
                                                           as_tuple(use_awaitable));
            if (ec == asio::error::operation_aborted) throw std::system_error(ec);  // not exited: no blocking reap
        } else {
            asio::steady_timer poll(co_await asio::this_coro::executor);
            while (::waitpid(s_->pid, &s_->wait_status, WNOHANG) == 0) {
                poll.expires_after(20ms);
                auto [ec] = co_await poll.async_wait(as_tuple(use_awaitable));
                if (ec) throw std::system_error(ec);
            }
            s_->reaped = true;
            --g_live_children;
        }
        if (!s_->reaped) {
            reap(s_->pid, s_->wait_status);
            s_->reaped = true;
        }
    }
    co_return shell_status(s_->wait_status);
}

void child::close() {
    std::error_code ec;
    s_->in.close(ec);
    s_->out.close(ec);
    if (!s_->reaped) ::kill(-s_->pid, SIGTERM);
}

std::size_t live_children() { return g_live_children.load(); }

std::optional<std::filesystem::path> find_program(std::string_view program) {
    if (program.empty()) return std::nullopt;
    if (program.find('/') != std::string_view::npos) {
        if (::access(std::string(program).c_str(), X_OK) == 0) return std::filesystem::path(program);
        return std::nullopt;
    }
    std::string path = paths::env("PATH");
    if (path.empty()) path = "/usr/local/bin:/usr/bin:/bin";
    std::size_t start = 0;
    while (start <= path.size()) {
        auto end = path.find(':', start);
        if (end == std::string::npos) end = path.size();
        std::filesystem::path dir = path.substr(start, end - start);
        if (dir.empty()) dir = ".";
        const auto candidate = dir / program;
        std::error_code ec;
        if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate, ec))
            return candidate;
        start = end + 1;
    }
    return std::nullopt;
}

awaitable<result> run(command cmd) {
    run_options defaults;
    co_return co_await run(std::move(cmd), std::move(defaults));
}

awaitable<result> run(command cmd, run_options options) {
    ignore_sigpipe();

    auto ex = co_await asio::this_coro::executor;
    spawned child = spawn_child(cmd);
    run_state st(ex, child.pid, cmd.new_process_group);
    if (child.out.fd >= 0) {
        st.out.assign(child.out.release());
        ++st.open_streams;
    }
    if (child.err.fd >= 0) {
        st.err.assign(child.err.release());
        ++st.open_streams;
    }
    if (child.in.fd >= 0) st.in.assign(child.in.release());
    if (child.pidfd.fd >= 0) st.pidfd.assign(child.pidfd.release());

    result res;
    // On a timeout or a cancel: SIGINT, SIGTERM, SIGKILL a grace apart (SIGKILL at once on a
    // forceful cancel).
    stopper stop(ex, stop_ladder::int_term_kill(options.limit.grace), [&st](int sig) { st.signal_child(sig); });
    if (options.limit.timeout) stop.deadline(std::chrono::steady_clock::now() + *options.limit.timeout);
    stop.follow(options.cancel);
    // An interactive child shares our terminal: it got the Ctrl-C itself.
    stop.cancel_skips_first_rung(!st.own_group);
    try {
        if (st.in.is_open()) {
            co_await first_of(supervise_with_stdin(st, res, options, cmd), watchdog(stop));
        } else {
            co_await first_of(supervise(st, res, options, cmd), watchdog(stop));
        }
    } catch (...) {
        // Only reachable if the loop itself is being torn down: never leave a zombie.
        if (!st.reaped) {
            st.signal_child(SIGKILL);
            reap(st.pid, st.wait_status);
            st.reaped = true;
        }
        throw;
    }
    if (stop.stopping() && st.own_group) {
        ::kill(-st.pid, SIGKILL);  // stragglers left in the child's group
    }
    res.timed_out = stop.why() == stopper::reason::deadline;
    res.cancelled = stop.why() == stopper::reason::cancelled;
    if (WIFEXITED(st.wait_status)) res.exit_code = WEXITSTATUS(st.wait_status);
    else if (WIFSIGNALED(st.wait_status)) res.signal = WTERMSIG(st.wait_status);
    co_return res;
}

} // namespace machine::proc
