// A local child's exit, reap and pipes (machine/supervise.hpp).
#include <signal.h>
#include <sys/wait.h>

#include <cerrno>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "machine/async.hpp"
#include "machine/supervise.hpp"

namespace machine::proc {

namespace {

using asio::awaitable;
using descriptor = asio::posix::stream_descriptor;
using namespace asio::experimental::awaitable_operators;
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

struct watch_state {
    explicit watch_state(asio::any_io_executor ex) : out(ex), err(ex), streams_closed(ex) {}
    descriptor out, err;
    notifier streams_closed;
    int open_streams = 0;
};

awaitable<void> drain(watch_state& st, descriptor& d, output_pipe& pipe) {
    if (!d.is_open()) co_return;
    std::string buf(pipe.read_size, '\0');
    while (d.is_open()) {
        auto [ec, n] = co_await d.async_read_some(asio::buffer(buf), use_nothrow);
        if (ec) break;  // EOF, or closed after the linger period
        const std::string_view chunk(buf.data(), n);
        if (pipe.on_chunk) {
            if (!co_await pipe.on_chunk(chunk)) break;
        } else if (pipe.into && pipe.into->size() < pipe.cap) {
            pipe.into->append(chunk.substr(0, pipe.cap - pipe.into->size()));  // the rest is drained
        }
    }
    if (d.is_open()) d.close();  // a child still writing gets SIGPIPE: nobody reads any more
    if (--st.open_streams == 0) st.streams_closed.notify_all();
}

awaitable<void> exit_and_reap(watch_state& st, child_watch& w, int& status) {
    // Cancelled (the loop is going away): never block the loop on a live child.
    const bool exited = co_await wait_exited(w.pid, w.pidfd);
    if (exited && w.on_exit) w.on_exit();
    status = reap(w.pid, exited);
    if (w.on_reaped) w.on_reaped();
    if (exited && st.open_streams > 0) {
        // Background processes the child left may keep its pipes open for ever.
        co_await st.streams_closed.wait_until(steady_clock::now() + w.linger);
        // close, not cancel: a reader waiting on a slow consumer must not read again afterwards.
        if (st.out.is_open()) st.out.close();
        if (st.err.is_open()) st.err.close();
    }
}

} // namespace

awaitable<bool> wait_exited(pid_t pid, int pidfd_raw) {
    if (pidfd_raw >= 0) {
        descriptor pidfd(co_await asio::this_coro::executor, pidfd_raw);
        // A pidfd or platform::open_exit_watch's pipe polls readable once the process has exited (a zombie until reaped).
        auto [ec] = co_await pidfd.async_wait(descriptor::wait_read, use_nothrow);
        co_return !ec;
    }
    // No exit watch (Linux < 5.3, a full POSIX table): poll, with WNOWAIT so the child stays a zombie.
    for (;;) {
        siginfo_t info{};
        const int r = ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
        if ((r == 0 && info.si_pid == pid) || (r < 0 && errno != EINTR)) co_return true;
        const bool slept = co_await sleep_for(std::chrono::milliseconds(20));
        if (!slept) co_return false;
    }
}

int reap(pid_t pid, bool block) {
    int status = 0;
    while (::waitpid(pid, &status, block ? 0 : WNOHANG) < 0 && errno == EINTR) {
    }
    return status;
}

awaitable<int> drain_and_reap(child_watch w) {
    watch_state st(co_await asio::this_coro::executor);
    if (w.out.fd >= 0) {
        st.out.assign(w.out.fd);
        ++st.open_streams;
    }
    if (w.err.fd >= 0) {
        st.err.assign(w.err.fd);
        ++st.open_streams;
    }
    int status = 0;
    co_await (drain(st, st.out, w.out) && drain(st, st.err, w.err) && exit_and_reap(st, w, status));
    co_return status;
}

} // namespace machine::proc
