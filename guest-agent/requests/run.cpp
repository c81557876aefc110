// run: a command as some user, its output streamed back, stopped on cancel (PROTOCOL.md §4).
#include <signal.h>
#include <sys/wait.h>

#include <optional>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "connection.hpp"
#include "log.hpp"
#include "machine/supervise.hpp"
#include "requests.hpp"
#include "server_core.hpp"
#include "spawn.hpp"

namespace machine::agent::requests {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;
using namespace asio::experimental::awaitable_operators;
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

constexpr std::uint32_t default_grace_ms = 5000;

struct run_state : request_state {
    using request_state::request_state;
    // Set once the child runs: cancel sends SIGTERM to its group, SIGKILL after the grace.
    std::optional<proc::stopper> stopper;

    void stop() override {
        if (stopper) stopper->request();
    }
    void kill_now() override {
        if (stopper) stopper->force();
    }
};

awaitable<void> feed_stdin(asio::posix::stream_descriptor d, std::string data) {
    if (d.is_open() && !data.empty()) {
        // EPIPE when the child does not read its stdin is fine: its choice.
        co_await asio::async_write(d, asio::buffer(data), use_nothrow);
    }
    if (d.is_open()) d.close();
}

// A chunk of the child's output as an `output` message. Waiting here when the client reads
// slowly stops reading the pipe, which in turn stops the child: back-pressure all the way.
proc::output_pipe streamed(int fd, std::shared_ptr<connection> c, std::shared_ptr<run_state> st,
                           std::string_view stream) {
    proc::output_pipe p;
    p.fd = fd;
    p.read_size = proto::output_chunk_bytes;
    p.on_chunk = [c, st, stream](std::string_view chunk) -> awaitable<bool> {
        co_return co_await c->send(proto::encode(proto::make_output(st->id, stream, chunk)), *st);
    };
    return p;
}

// `srv` by reference in a spawned coroutine (house style §4.4): the server lives on main's stack
// for the whole io_context::run(), so it outlives every task.
awaitable<void> run_command(server& srv, std::shared_ptr<connection> c, std::shared_ptr<run_state> st,
                            proto::run_request req) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto user = find_user(req.user);
    if (!user) {
        c->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::no_such_user,
                                                           "no user '" + req.user + "' in /etc/passwd")));
        co_return;
    }
    spawn_spec spec;
    spec.argv = req.argv;
    spec.env = child_environment(*user, srv.options().runtime_dir_root, req.env);
    spec.cwd = req.cwd ? *req.cwd : home_or_root(*user);
    spec.as_user = *user;
    spec.pipe_stdin = req.stdin_data.has_value();
    const std::chrono::milliseconds grace(req.grace_ms.value_or(default_grace_ms));

    child_process child;
    try {
        child = spawn(spec);
    } catch (const spawn_failure& e) {
        c->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::spawn_failed, e.what())));
        co_return;
    }
    ++srv.running;
    log::debug("run " + std::to_string(st->id) + ": pid " + std::to_string(child.pid) + " as " + user->name +
               ": " + req.argv[0]);

    auto ex = co_await asio::this_coro::executor;
    const pid_t pid = child.pid;
    st->stopper.emplace(ex, proc::stop_ladder::term_kill(grace), [pid](int sig) { ::kill(-pid, sig); });
    if (st->cancelled) st->stopper->request();  // cancelled before it started

    proc::child_watch watch;
    watch.pid = child.pid;
    watch.pidfd = child.pidfd;
    watch.out = streamed(child.stdout_fd, c, st, "stdout");
    watch.err = streamed(child.stderr_fd, c, st, "stderr");
    watch.on_reaped = [st] { st->stopper->exited(); };
    asio::posix::stream_descriptor in(ex);
    if (child.stdin_fd >= 0) in.assign(child.stdin_fd);
    std::string stdin_data = req.stdin_data.value_or(std::string());
    // Named before the co_await: g++ 12 destroys a by-value argument's temporaries twice inside
    // a co_await expression (house style §4).
    auto feeding = feed_stdin(std::move(in), std::move(stdin_data));
    auto draining = proc::drain_and_reap(std::move(watch));
    const int status = co_await (std::move(feeding) && std::move(draining) && st->stopper->run());
    --srv.running;

    proto::run_result r;
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    else r.exit_code = WEXITSTATUS(status);
    r.cancelled = st->cancelled;
    r.duration_ms = ms_since(t0);
    c->post_final(*st, proto::encode(proto::make_run_result(st->id, r)));
}

} // namespace

void run(const request_call& call) {
    auto q = proto::parse_run_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    auto st = call.conn.start_request<run_state>(call.id);
    call.conn.spawn_request(st, run_command(call.srv, call.conn.shared_from_this(), st, std::move(*q)));
}

} // namespace machine::agent::requests
