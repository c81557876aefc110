// The stop ladder and the stopper that climbs it (machine/supervise.hpp).
#include <signal.h>

#include <asio/this_coro.hpp>

#include "machine/async.hpp"
#include "machine/cancel.hpp"
#include "machine/supervise.hpp"

namespace machine::proc {

using asio::awaitable;

stop_ladder::stop_ladder(std::vector<int> rungs, std::chrono::milliseconds grace)
    : rungs_(std::move(rungs)), grace_(grace) {}

stop_ladder stop_ladder::int_term_kill(std::chrono::milliseconds grace) {
    return stop_ladder({SIGINT, SIGTERM, SIGKILL}, grace);
}

stop_ladder stop_ladder::term_kill(std::chrono::milliseconds grace) { return stop_ladder({SIGTERM, SIGKILL}, grace); }

stop_ladder stop_ladder::kill_only() { return stop_ladder({SIGKILL}, std::chrono::milliseconds(0)); }

std::optional<int> stop_ladder::next(bool forceful) {
    if (finished()) return std::nullopt;
    if (forceful) next_ = rungs_.size() - 1;
    return rungs_[next_++];
}

void stop_ladder::skip_first() {
    if (rungs_.size() > 1 && next_ == 0) next_ = 1;
}

stopper::stopper(asio::any_io_executor ex, stop_ladder ladder, send_fn send)
    : wake_(ex), ladder_(std::move(ladder)), send_(std::move(send)) {}

void stopper::deadline(std::chrono::steady_clock::time_point at) { deadline_ = at; }

void stopper::follow(cancel_signal* cancel) { cancel_ = cancel; }

bool stopper::forceful() const { return forced_ || (cancel_ && cancel_->current() == cancel_signal::forceful); }

void stopper::send_next() {
    if (exited_) return;
    if (const auto sig = ladder_.next(forceful())) send_(*sig);
}

void stopper::start(reason r) {
    if (reason_ != reason::none) return;
    reason_ = r;
    if (r == reason::cancelled && cancel_skips_first_) ladder_.skip_first();
    send_next();
    wake_.notify_all();  // run() starts the grace
}

void stopper::request() { start(reason::requested); }

void stopper::force() {
    forced_ = true;
    if (reason_ == reason::none) start(reason::requested);
    else send_next();  // a rung before the last is pending: the last one now
    wake_.notify_all();
}

void stopper::exited() {
    exited_ = true;
    wake_.notify_all();
}

awaitable<void> stopper::run() {
    // 1. A reason to stop: request(), the deadline or the cancel signal.
    while (reason_ == reason::none && !exited_) {
        if (cancel_ && cancel_->current() != cancel_signal::none) {
            start(reason::cancelled);
            break;
        }
        if (std::chrono::steady_clock::now() >= deadline_) {
            start(reason::deadline);
            break;
        }
        if (cancel_) co_await first_of(wake_.wait_until(deadline_), cancel_->until_above(cancel_signal::none));
        else co_await wake_.wait_until(deadline_);
        // Cancelled from outside (the race this stopper is in has been decided): start nothing
        // new. Read here, in this frame: g++ 12 miscompiles `if (co_await f())` in this loop.
        const auto cs = co_await asio::this_coro::cancellation_state;
        if (cs.cancelled() != asio::cancellation_type::none) {
            interrupted_ = true;
            co_return;
        }
    }
    // 2. The rungs, a grace apart; a forceful cancel cuts the grace short.
    while (!exited_ && !ladder_.finished()) {
        const auto grace_ends = std::chrono::steady_clock::now() + ladder_.grace();
        if (cancel_ && !forceful())
            co_await first_of(wake_.wait_until(grace_ends), cancel_->until_above(cancel_signal::graceful));
        else
            co_await wake_.wait_until(grace_ends);
        // Cancelled from outside (the race this stopper is in has been decided): start nothing
        // new. Read here, in this frame: g++ 12 miscompiles `if (co_await f())` in this loop.
        const auto cs = co_await asio::this_coro::cancellation_state;
        if (cs.cancelled() != asio::cancellation_type::none) {
            interrupted_ = true;
            co_return;
        }
        send_next();
    }
}

} // namespace machine::proc
