// proc against real /bin/sh children: exit codes, signals, timeouts, cancellation, pipes, fds.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string_view>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/this_coro.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include "machine/cancel.hpp"
#include "machine/proc.hpp"
#include "machine/supervise.hpp"
#include "machine/text.hpp"
#include "test_support.hpp"

using namespace machine;
using machine::test::co_run;
using machine::test::seconds_since;
using namespace std::chrono_literals;

namespace {

proc::command sh(const std::string& script) {
    proc::command c;
    c.argv = {"/bin/sh", "-c", script};
    return c;
}

proc::result run_sh(const std::string& script, proc::run_options opt = {}) {
    asio::io_context ctx;
    return co_run(ctx, proc::run(sh(script), std::move(opt)));
}

// A grandchild a test started (through a shell that has exited): not ours to reap, so it is held
// through a pidfd, opened only when `pid` is still the process the shell reported (its command
// line, and its process group: the shell's), and SIGKILLed at scope exit on every way out.
class orphan {
public:
    orphan(pid_t pid, pid_t group, std::string_view cmdline) {
        if (pid <= 0) return;
        const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
        if (fd < 0) return;
        // Checked after the pidfd is open, so the pidfd cannot name a process that took the pid later.
        if (proc_file(pid, "cmdline") != cmdline || ::getpgid(pid) != group) {
            ::close(fd);
            return;
        }
        pidfd_ = fd;
    }
    ~orphan() {
        if (pidfd_ >= 0) machine::test::kill_and_wait(pidfd_);
    }
    orphan(const orphan&) = delete;
    orphan& operator=(const orphan&) = delete;

    bool found() const { return pidfd_ >= 0; }
    bool alive() const {
        pollfd p{pidfd_, POLLIN, 0};
        return found() && ::poll(&p, 1, 0) == 0;
    }

private:
    static std::string proc_file(pid_t pid, const char* name) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/" + name, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    int pidfd_ = -1;
};

// Every test in this file must leave no child behind.
struct no_zombies {
    ~no_zombies() {
        BOOST_TEST(proc::live_children() == 0u);
        int status = 0;
        BOOST_TEST(::waitpid(-1, &status, WNOHANG) == -1);
        BOOST_TEST(errno == ECHILD);
    }
};

} // namespace

BOOST_AUTO_TEST_SUITE(proc_run)

BOOST_FIXTURE_TEST_CASE(exit_codes_pass_through, no_zombies) {
    BOOST_TEST(run_sh("exit 0").exit_code == 0);
    BOOST_TEST(run_sh("exit 3").exit_code == 3);
    const auto r = run_sh("exit 255");
    BOOST_TEST(r.exit_code == 255);
    BOOST_TEST(!r.ok());
}

BOOST_FIXTURE_TEST_CASE(death_by_signal_is_reported, no_zombies) {
    const auto r = run_sh("kill -TERM $$");
    BOOST_TEST(r.signal == SIGTERM);
    BOOST_TEST(r.status() == 128 + SIGTERM);
}

BOOST_FIXTURE_TEST_CASE(stdout_and_stderr_are_read_concurrently, no_zombies) {
    // 1 MiB on stderr before anything on stdout: a sequential reader would deadlock once the
    // stderr pipe (64 KiB) is full.
    const auto r = run_sh("head -c 1048576 /dev/zero | tr '\\0' e >&2; echo out");
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.err.size() == 1048576u);
    BOOST_TEST(r.out == "out\n");
}

BOOST_FIXTURE_TEST_CASE(stdin_data_reaches_the_child, no_zombies) {
    proc::command c;
    c.argv = {"cat"};
    c.in = proc::stdio::pipe;
    c.stdin_data = std::string("line one\nline \"two\" $HOME\n") + std::string(200000, 'x');
    asio::io_context ctx;
    const auto r = co_run(ctx, proc::run(c));
    BOOST_TEST(r.out == c.stdin_data);
}

BOOST_FIXTURE_TEST_CASE(a_child_ignoring_stdin_does_not_kill_us, no_zombies) {
    proc::command c = sh("exit 0");
    c.in = proc::stdio::pipe;
    c.stdin_data = std::string(1 << 20, 'x');  // larger than the pipe buffer
    asio::io_context ctx;
    BOOST_TEST(co_run(ctx, proc::run(c)).exit_code == 0);
}

BOOST_FIXTURE_TEST_CASE(lines_are_delivered_as_they_arrive, no_zombies) {
    std::vector<std::string> lines;
    proc::run_options opt;
    opt.on_stderr_line = [&](std::string_view l) { lines.emplace_back(l); };
    const auto r = run_sh("printf 'a\\nb\\n' >&2; printf 'partial' >&2", opt);
    BOOST_TEST(r.err == "a\nb\npartial");
    BOOST_TEST(lines == (std::vector<std::string>{"a", "b", "partial"}));
}

BOOST_FIXTURE_TEST_CASE(output_is_capped, no_zombies) {
    proc::run_options opt;
    opt.limit.max_output = 1000;
    const auto r = run_sh("head -c 100000 /dev/zero", opt);
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out.size() == 1000u);
}

// A secret's bytes land in one buffer sized up front: growing the string would leave copies
// of them in memory it freed.
BOOST_FIXTURE_TEST_CASE(secret_stdout_is_read_into_one_buffer, no_zombies) {
    proc::run_options opt;
    opt.limit.max_output = 1 << 20;
    opt.secret_stdout = true;
    const auto r = run_sh("head -c 300000 /dev/zero | tr '\\0' x", opt);
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out == std::string(300000, 'x'));
    BOOST_TEST(r.out.capacity() >= opt.limit.max_output);
    proc::run_options plain;
    plain.limit.max_output = 1 << 20;
    BOOST_TEST(run_sh("head -c 300000 /dev/zero", plain).out.capacity() < plain.limit.max_output);
}

BOOST_FIXTURE_TEST_CASE(only_stdio_is_inherited, no_zombies) {
    // A descriptor this process opened without CLOEXEC (as Asio 1.22 does for its pipes and
    // sockets) must not reach the child.
    int leaky[2];
    BOOST_REQUIRE(::pipe(leaky) == 0);
    const auto r = run_sh("ls /proc/$$/fd");
    ::close(leaky[0]);
    ::close(leaky[1]);
    BOOST_TEST(r.out == "0\n1\n2\n");
}

BOOST_FIXTURE_TEST_CASE(env_and_cwd_are_applied, no_zombies) {
    machine::test::temp_dir dir;
    proc::command c = sh("printf '%s|%s|%s' \"$MACHINE_T1\" \"${MACHINE_T2-unset}\" \"$PWD\"");
    c.env_set = {{"MACHINE_T1", "a b'c"}};
    c.env_unset = {"MACHINE_T2"};
    c.cwd = dir.path;
    ::setenv("MACHINE_T2", "present", 1);
    asio::io_context ctx;
    const auto r = co_run(ctx, proc::run(c));
    ::unsetenv("MACHINE_T2");
    BOOST_TEST(r.out == "a b'c|unset|" + dir.path.string());
}

BOOST_FIXTURE_TEST_CASE(missing_program_is_a_spawn_error, no_zombies) {
    proc::command c;
    c.argv = {"/nonexistent/limactl", "list"};
    asio::io_context ctx;
    BOOST_CHECK_THROW(co_run(ctx, proc::run(c)), proc::spawn_error);
}

BOOST_FIXTURE_TEST_CASE(a_grandchild_holding_the_pipes_does_not_hang_us, no_zombies) {
    const auto t0 = std::chrono::steady_clock::now();
    // The shell prints the background sleep's pid and its own (the sleep's process group).
    const auto r = run_sh("sleep 5 & echo $! $$");
    const double took = seconds_since(t0);
    pid_t sleep_pid = 0, shell_pid = 0;
    BOOST_REQUIRE_MESSAGE(std::sscanf(r.out.c_str(), "%d %d", &sleep_pid, &shell_pid) == 2, "out: " << r.out);
    static constexpr char sleep_cmdline[] = "sleep\0" "5";  // with its final NUL: /proc/PID/cmdline
    const orphan orphaned_sleep(sleep_pid, shell_pid, std::string_view(sleep_cmdline, sizeof sleep_cmdline));
    BOOST_TEST(took < 3.0);
    // run() returned while the grandchild still held the pipes (not once it had exited).
    BOOST_TEST(orphaned_sleep.found(), "no 'sleep 5' with pid " << sleep_pid << " in group " << shell_pid);
    BOOST_TEST(orphaned_sleep.alive());
}

BOOST_FIXTURE_TEST_CASE(timeout_interrupts_the_child, no_zombies) {
    proc::run_options opt;
    opt.limit.timeout = 200ms;
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = run_sh("sleep 30", opt);
    BOOST_TEST(r.timed_out);
    BOOST_TEST(r.signal == SIGINT);
    BOOST_TEST(seconds_since(t0) < 3.0);
}

BOOST_FIXTURE_TEST_CASE(timeout_escalates_to_sigterm_then_sigkill, no_zombies) {
    proc::run_options opt;
    opt.limit.timeout = 100ms;
    opt.limit.grace = 200ms;
    // Ignores SIGINT, then SIGTERM once it is installed: only SIGKILL ends it.
    const auto r = run_sh("trap '' INT TERM; while :; do sleep 0.05; done", opt);
    BOOST_TEST(r.timed_out);
    BOOST_TEST(r.signal == SIGKILL);
}

BOOST_FIXTURE_TEST_CASE(sigterm_is_the_second_step, no_zombies) {
    proc::run_options opt;
    opt.limit.timeout = 100ms;
    opt.limit.grace = 300ms;
    const auto r = run_sh("trap '' INT; trap 'exit 143' TERM; while :; do sleep 0.05; done", opt);
    BOOST_TEST(r.timed_out);
    BOOST_TEST(r.exit_code == 143);
}

BOOST_FIXTURE_TEST_CASE(graceful_cancel_sends_sigint_to_the_group, no_zombies) {
    asio::io_context ctx;
    cancel_signal cancel(ctx.get_executor());
    asio::steady_timer t(ctx, 150ms);
    t.async_wait([&](std::error_code) { cancel.trigger(cancel_signal::graceful); });
    proc::run_options opt;
    opt.cancel = &cancel;
    const auto t0 = std::chrono::steady_clock::now();
    // The INT trap proves the child (not just us) received SIGINT.
    const auto r = co_run(ctx, proc::run(sh("trap 'echo got-int; exit 7' INT; sleep 30 & wait"), opt));
    BOOST_TEST(r.cancelled);
    BOOST_TEST(r.exit_code == 7);
    BOOST_TEST(r.out == "got-int\n");
    BOOST_TEST(seconds_since(t0) < 3.0);
}

BOOST_FIXTURE_TEST_CASE(forceful_cancel_kills_at_once, no_zombies) {
    asio::io_context ctx;
    cancel_signal cancel(ctx.get_executor());
    asio::steady_timer t1(ctx, 100ms), t2(ctx, 200ms);
    t1.async_wait([&](std::error_code) { cancel.trigger(cancel_signal::graceful); });
    t2.async_wait([&](std::error_code) { cancel.trigger(cancel_signal::forceful); });
    proc::run_options opt;
    opt.cancel = &cancel;
    opt.limit.grace = 10s;  // without the forceful step this test would take 20 s
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = co_run(ctx, proc::run(sh("trap '' INT TERM; while :; do sleep 0.05; done"), opt));
    BOOST_TEST(r.cancelled);
    BOOST_TEST(r.signal == SIGKILL);
    BOOST_TEST(seconds_since(t0) < 3.0);
}

BOOST_FIXTURE_TEST_CASE(already_cancelled_stops_immediately, no_zombies) {
    asio::io_context ctx;
    cancel_signal cancel(ctx.get_executor());
    cancel.trigger(cancel_signal::graceful);
    proc::run_options opt;
    opt.cancel = &cancel;
    const auto r = co_run(ctx, proc::run(sh("sleep 30"), opt));
    BOOST_TEST(r.cancelled);
}

namespace {
asio::awaitable<std::vector<double>> run_many(int n) {
    using namespace asio::experimental::awaitable_operators;
    std::vector<double> finish_times(n);
    const auto t0 = std::chrono::steady_clock::now();
    auto ex = co_await asio::this_coro::executor;
    int remaining = n;
    asio::steady_timer done(ex, asio::steady_timer::time_point::max());
    for (int i = 0; i < n; ++i) {
        // Even children are slow, odd ones quick; all run at once.
        auto task = [i, t0, &finish_times, &remaining, &done]() -> asio::awaitable<void> {
            const std::string script = (i % 2 == 0) ? "sleep 2; echo slow" : "echo quick";
            co_await proc::run(sh(script));
            finish_times[i] = seconds_since(t0);
            if (--remaining == 0) done.cancel();
        };
        asio::co_spawn(ex, std::move(task), asio::detached);
    }
    co_await done.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    co_return finish_times;
}
} // namespace

BOOST_FIXTURE_TEST_CASE(concurrent_children_do_not_hold_each_others_pipes, no_zombies) {
    asio::io_context ctx;
    const auto times = co_run(ctx, run_many(16));
    for (std::size_t i = 1; i < times.size(); i += 2) {
        BOOST_TEST_CONTEXT("quick child " << i) { BOOST_TEST(times[i] < 1.5); }
    }
    for (std::size_t i = 0; i < times.size(); i += 2) {
        BOOST_TEST_CONTEXT("slow child " << i) { BOOST_TEST(times[i] < 4.0); }
    }
}

BOOST_AUTO_TEST_CASE(find_program_searches_path) {
    BOOST_TEST(proc::find_program("sh").has_value());
    BOOST_TEST(!proc::find_program("machine-no-such-program").has_value());
    BOOST_TEST(proc::find_program("/bin/sh").value() == "/bin/sh");
}

BOOST_AUTO_TEST_SUITE_END()

// --- the stop ladder and child supervision (machine/supervise.hpp) -------------------------------

extern char** environ;

namespace {

using namespace asio::experimental::awaitable_operators;

// A real child of this process running `script` with its stdout on a pipe (not through proc::run,
// which supervises its own children).
struct started_child {
    pid_t pid = -1;
    int pidfd = -1;
    int out = -1;
};

started_child start_sh(const std::string& script) {
    int p[2];
    BOOST_REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    std::vector<std::string> args{"/bin/sh", "-c", script};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    started_child c;
    const int rc = ::posix_spawn(&c.pid, "/bin/sh", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(p[1]);
    BOOST_REQUIRE(rc == 0);
    c.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, c.pid, 0));
    c.out = p[0];
    return c;
}

// Ignores SIGINT and SIGTERM (SIG_IGN survives exec), says so, then sleeps far longer than a test.
const std::string stubborn = "trap '' INT TERM; echo ready; exec sleep 60";

struct ladder_run {
    std::vector<int> sent;  // in order, each sent to the child's pid
    int status = 0;
    double seconds = 0;
    proc::stopper::reason why = proc::stopper::reason::none;
};

// Runs `script`, and once its first output has arrived asks the stopper to stop it, gently or
// forcefully, then sees it to its end.
ladder_run stop_child(const std::string& script, proc::stop_ladder ladder, bool forceful) {
    asio::io_context ctx;
    ladder_run r;
    const auto c = start_sh(script);
    const pid_t pid = c.pid;
    proc::stopper stop(ctx.get_executor(), std::move(ladder), [&r, pid](int sig) {
        r.sent.push_back(sig);
        ::kill(pid, sig);
    });
    const auto t0 = std::chrono::steady_clock::now();
    auto task = [&]() -> asio::awaitable<void> {
        proc::child_watch w;
        w.pid = c.pid;
        w.pidfd = c.pidfd;
        w.out.fd = c.out;
        w.out.on_chunk = [&](std::string_view) -> asio::awaitable<bool> {
            if (forceful) stop.force();
            else stop.request();
            co_return true;
        };
        w.on_reaped = [&] { stop.exited(); };
        auto draining = proc::drain_and_reap(std::move(w));
        r.status = co_await (std::move(draining) && stop.run());
    };
    co_run(ctx, task());
    r.seconds = seconds_since(t0);
    r.why = stop.why();
    return r;
}

} // namespace

BOOST_AUTO_TEST_SUITE(proc_supervise)

BOOST_AUTO_TEST_CASE(the_ladder_climbs_in_order_and_a_forceful_request_jumps_to_the_top) {
    auto l = proc::stop_ladder::int_term_kill(100ms);
    BOOST_TEST(l.next().value() == SIGINT);
    BOOST_TEST(l.next().value() == SIGTERM);
    BOOST_TEST(l.next().value() == SIGKILL);
    BOOST_TEST(!l.next().has_value());
    BOOST_TEST(l.finished());

    auto f = proc::stop_ladder::int_term_kill(100ms);
    BOOST_TEST(f.next(true).value() == SIGKILL);
    BOOST_TEST(!f.next().has_value());

    auto s = proc::stop_ladder::int_term_kill(100ms);
    s.skip_first();  // the child got the terminal's Ctrl-C itself
    BOOST_TEST(s.next().value() == SIGTERM);
}

BOOST_FIXTURE_TEST_CASE(a_child_ignoring_int_and_term_gets_kill_after_the_graces, no_zombies) {
    const auto r = stop_child(stubborn, proc::stop_ladder::int_term_kill(150ms), false);
    BOOST_TEST(r.sent == (std::vector<int>{SIGINT, SIGTERM, SIGKILL}), boost::test_tools::per_element());
    BOOST_TEST(WIFSIGNALED(r.status));
    BOOST_TEST(WTERMSIG(r.status) == SIGKILL);
    BOOST_TEST(r.seconds >= 0.3);  // two graces
    BOOST_TEST(r.seconds < 10.0);  // not the child's 60 s
    BOOST_TEST((r.why == proc::stopper::reason::requested));
}

BOOST_FIXTURE_TEST_CASE(a_forceful_request_skips_to_kill, no_zombies) {
    const auto r = stop_child(stubborn, proc::stop_ladder::int_term_kill(10s), true);
    BOOST_TEST(r.sent == (std::vector<int>{SIGKILL}), boost::test_tools::per_element());
    BOOST_TEST(WIFSIGNALED(r.status));
    BOOST_TEST(WTERMSIG(r.status) == SIGKILL);
    BOOST_TEST(r.seconds < 5.0);  // no grace waited
}

BOOST_FIXTURE_TEST_CASE(a_child_that_obeys_ends_the_climb, no_zombies) {
    // Exits on SIGTERM: no SIGKILL follows, and nothing waits out the grace.
    const auto r = stop_child("echo ready; exec sleep 60", proc::stop_ladder::term_kill(10s), false);
    BOOST_TEST(r.sent == (std::vector<int>{SIGTERM}), boost::test_tools::per_element());
    BOOST_TEST(WIFSIGNALED(r.status));
    BOOST_TEST(WTERMSIG(r.status) == SIGTERM);
    BOOST_TEST(r.seconds < 5.0);
}

BOOST_FIXTURE_TEST_CASE(a_deadline_starts_the_climb, no_zombies) {
    asio::io_context ctx;
    std::vector<int> sent;
    const auto c = start_sh(stubborn);
    const pid_t pid = c.pid;
    proc::stopper stop(ctx.get_executor(), proc::stop_ladder::term_kill(100ms), [&sent, pid](int sig) {
        sent.push_back(sig);
        ::kill(pid, sig);
    });
    // Long enough for the shell to have set its traps.
    stop.deadline(std::chrono::steady_clock::now() + 300ms);
    std::string out;
    int status = 0;
    auto task = [&]() -> asio::awaitable<void> {
        proc::child_watch w;
        w.pid = c.pid;
        w.pidfd = c.pidfd;
        w.out.fd = c.out;
        w.out.into = &out;
        w.out.cap = 3;  // "ready\n" is cut to its first 3 bytes, the rest read and dropped
        w.on_reaped = [&] { stop.exited(); };
        auto draining = proc::drain_and_reap(std::move(w));
        status = co_await (std::move(draining) && stop.run());
    };
    co_run(ctx, task());
    BOOST_TEST((stop.why() == proc::stopper::reason::deadline));
    BOOST_TEST(sent == (std::vector<int>{SIGTERM, SIGKILL}), boost::test_tools::per_element());
    BOOST_TEST(WTERMSIG(status) == SIGKILL);
    BOOST_TEST(out == "rea");
}

BOOST_FIXTURE_TEST_CASE(a_forceful_cancel_cuts_the_grace_short, no_zombies) {
    asio::io_context ctx;
    cancel_signal cancel(ctx.get_executor());
    std::vector<int> sent;
    const auto c = start_sh(stubborn);
    const pid_t pid = c.pid;
    proc::stopper stop(ctx.get_executor(), proc::stop_ladder::int_term_kill(10s), [&sent, pid](int sig) {
        sent.push_back(sig);
        ::kill(pid, sig);
    });
    stop.follow(&cancel);
    asio::steady_timer second_ctrl_c(ctx);
    const auto t0 = std::chrono::steady_clock::now();
    auto task = [&]() -> asio::awaitable<void> {
        proc::child_watch w;
        w.pid = c.pid;
        w.pidfd = c.pidfd;
        w.out.fd = c.out;
        w.out.on_chunk = [&](std::string_view) -> asio::awaitable<bool> {
            cancel.trigger(cancel_signal::graceful);
            second_ctrl_c.expires_after(200ms);
            second_ctrl_c.async_wait([&](const asio::error_code&) { cancel.trigger(cancel_signal::forceful); });
            co_return true;
        };
        w.on_reaped = [&] { stop.exited(); };
        auto draining = proc::drain_and_reap(std::move(w));
        co_await (std::move(draining) && stop.run());
    };
    co_run(ctx, task());
    BOOST_TEST((stop.why() == proc::stopper::reason::cancelled));
    BOOST_TEST(sent == (std::vector<int>{SIGINT, SIGKILL}), boost::test_tools::per_element());
    BOOST_TEST(seconds_since(t0) < 5.0);
}

BOOST_AUTO_TEST_SUITE_END()
