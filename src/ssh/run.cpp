// session::run(): a remote command to completion, with timeout and cancellation.
#include <signal.h>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>

#include "core.hpp"
#include "machine/async.hpp"
#include "machine/cancel.hpp"
#include "machine/supervise.hpp"

namespace machine::ssh {

namespace {

using asio::awaitable;
using namespace asio::experimental::awaitable_operators;
using clock = std::chrono::steady_clock;

enum class stop_reason { none, timeout, cancelled };

// Completes when the deadline passes or the cancel signal fires (never, without either).
awaitable<stop_reason> wait_stop(clock::time_point deadline, cancel_signal* cancel) {
    if (cancel && cancel->current() != cancel_signal::none) co_return stop_reason::cancelled;
    if (!cancel) {
        co_await sleep_until(deadline);
        co_return stop_reason::timeout;
    }
    auto r = co_await first_of(sleep_until(deadline), cancel->until_above(cancel_signal::none));
    co_return r.index() == 0 ? stop_reason::timeout : stop_reason::cancelled;
}

awaitable<void> feed(std::shared_ptr<channel> ch, std::string data) {
    // A command that does not read its stdin (and exits) is its own business, as with pipes;
    // only a dead connection is an error.
    try {
        if (!data.empty()) co_await ch->write(std::move(data));
        co_await ch->send_eof();
    } catch (const connection_lost&) {
        throw;
    } catch (const error&) {
    }
}

awaitable<void> collect_stream(std::shared_ptr<channel> ch, bool is_stderr, std::string& into,
                               std::size_t cap) {
    for (;;) {
        std::optional<std::string> chunk;
        if (is_stderr) chunk = co_await ch->read_stderr();
        else chunk = co_await ch->read();
        if (!chunk) co_return;
        if (into.size() < cap) into.append(*chunk, 0, std::min(chunk->size(), cap - into.size()));
    }
}

awaitable<void> collect_status(std::shared_ptr<channel> ch, exec_result& res) {
    const int status = co_await ch->exit_status();
    res.exit_signal = ch->exit_signal();
    if (res.exit_signal.empty()) res.exit_code = status;
}

// Never throws: the failure is kept for after the race with the watchdog.
awaitable<void> collect(std::shared_ptr<channel> ch, std::string stdin_data, std::size_t cap,
                        exec_result& res, std::exception_ptr& failure) {
    try {
        co_await (feed(ch, std::move(stdin_data)) && collect_stream(ch, false, res.out, cap) &&
                  collect_stream(ch, true, res.err, cap) && collect_status(ch, res));
    } catch (...) {
        failure = std::current_exception();
    }
}

// The remote command's stop ladder: INT, TERM, KILL a grace apart (KILL at once on a forceful
// cancel), each sent as an SSH signal request.
std::string ssh_signal_name(int sig) {
    return sig == SIGKILL ? "KILL" : sig == SIGTERM ? "TERM" : "INT";
}

// Climbs the stop ladder once there is a reason to, then gives the server one more grace and
// closes the channel (the server ignores signals: stop waiting for it). Ends the race in run()
// only if the command outlives all of that.
awaitable<void> watchdog(std::shared_ptr<channel> ch, proc::stopper& stop, std::chrono::milliseconds grace) {
    co_await stop.run();
    if (stop.interrupted()) co_return;
    const bool waited = co_await sleep_for(grace);  // false: the command ended first
    if (waited) ch->close();
}

} // namespace

awaitable<exec_result> session::run(std::string command) {
    return run(std::move(command), run_options());
}

awaitable<exec_result> session::run(std::string command, run_options options) {
    auto self = shared_from_this();
    exec_result res;
    if (options.cancel && options.cancel->current() != cancel_signal::none) {
        res.cancelled = true;
        co_return res;
    }
    auto ex = co_await asio::this_coro::executor;
    const auto deadline = options.timeout ? clock::now() + *options.timeout : clock::time_point::max();

    // 1. Open the channel and start the command; a stuck server must not outlast the deadline.
    // A failure to open ends the race too (first_of rethrows it).
    auto first = co_await first_of(self->exec(std::move(command)), wait_stop(deadline, options.cancel));
    if (first.index() == 1) {
        const stop_reason why = std::get<1>(first);
        res.timed_out = why == stop_reason::timeout;
        res.cancelled = why == stop_reason::cancelled;
        co_return res;
    }
    std::shared_ptr<channel> ch = std::get<0>(std::move(first));

    // 2. Collect everything until the channel closes, unless the watchdog fires first.
    proc::stopper stop(ex, proc::stop_ladder::int_term_kill(options.grace),
                       [ch](int sig) { ch->send_signal(ssh_signal_name(sig)); });
    stop.deadline(deadline);
    stop.follow(options.cancel);
    std::exception_ptr failure;
    co_await first_of(collect(ch, std::move(options.stdin_data), options.max_output, res, failure),
                      watchdog(ch, stop, options.grace));
    ch->close();
    const bool stopped = stop.stopping();
    res.timed_out = stop.why() == proc::stopper::reason::deadline;
    res.cancelled = stop.why() == proc::stopper::reason::cancelled;
    if (failure) {
        // After a timeout or a cancellation the channel was closed under the collectors: only
        // a dead connection is still worth reporting.
        try {
            std::rethrow_exception(failure);
        } catch (const connection_lost&) {
            throw;
        } catch (...) {
            if (!stopped) throw;
        }
    }
    co_return res;
}

} // namespace machine::ssh
