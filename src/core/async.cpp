// The loop's small pieces (async.hpp): elapsed time, sleeping, the notifier, joining tasks.
#include <algorithm>
#include <system_error>

#include "machine/async.hpp"

#include <asio/error.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

namespace machine {

using asio::awaitable;

namespace {
constexpr auto nothrow = asio::experimental::as_tuple(asio::use_awaitable);
} // namespace

std::chrono::milliseconds since(steady_clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady_clock::now() - t0);
}

awaitable<bool> sleep_until(steady_clock::time_point t) {
    asio::steady_timer timer(co_await asio::this_coro::executor, t);
    // Only cancellation ends the wait early (operation_aborted): the timer is ours alone.
    auto [ec] = co_await timer.async_wait(nothrow);
    co_return !ec;
}

awaitable<bool> sleep_for(steady_clock::duration d) {
    // Not sleep_until(now() + d): a duration near max() must not overflow into the past.
    asio::steady_timer timer(co_await asio::this_coro::executor, d);
    auto [ec] = co_await timer.async_wait(nothrow);
    co_return !ec;
}

// ------------------------------------------------------------------------------------------
// notifier
//
// Each wait has a timer of its own, set to its deadline (or never), in waiters_ while it waits;
// a notification marks waiters as notified and cancels their timers. So a wait can tell the
// three endings apart: notified (marked), timed out (the timer expired) and cancelled (the
// timer's wait was cancelled from outside, unmarked).

struct notifier::waiter {
    asio::steady_timer timer;
    notifier* owner;
    bool notified = false;
};

notifier::notifier(asio::any_io_executor ex) : ex_(std::move(ex)) {}

notifier::~notifier() {
    for (waiter* w : waiters_) {
        w->owner = nullptr;
        w->timer.cancel();
    }
}

void notifier::notify_all() {
    for (waiter* w : waiters_) {
        w->notified = true;
        w->timer.cancel();
    }
    waiters_.clear();  // woken: a second notification before they resume wakes nobody twice
}

void notifier::notify_one() {
    if (waiters_.empty()) {
        kept_ = true;
        return;
    }
    waiter* w = waiters_.front();
    waiters_.erase(waiters_.begin());
    w->notified = true;
    w->timer.cancel();
}

std::size_t notifier::waiting() const { return waiters_.size(); }

void notifier::remove(waiter* w) { waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), w), waiters_.end()); }

awaitable<notifier::wake> notifier::wait_until(steady_clock::time_point deadline) {
    if (kept_) {
        kept_ = false;
        co_return wake::notified;
    }
    waiter w{asio::steady_timer(ex_, deadline), this};
    waiters_.push_back(&w);
    // Leaves the list however the wait ends, also when the frame is destroyed while suspended
    // (a dying io_context); `this` may be gone by then, `w.owner` says.
    struct unlist {
        waiter& w;
        ~unlist() {
            if (w.owner) w.owner->remove(&w);
        }
    } guard{w};
    auto [ec] = co_await w.timer.async_wait(nothrow);
    if (w.notified) co_return wake::notified;
    if (!ec) co_return wake::timed_out;
    co_return wake::cancelled;
}

awaitable<bool> notifier::wait() {
    const wake how = co_await wait_until(steady_clock::time_point::max());
    co_return how == wake::notified;
}

// ------------------------------------------------------------------------------------------
// task_group

awaitable<void> task_group::join() {
    while (running_ > 0) {
        // Named first: g++ 12 miscompiles `if (!co_await x) throw ...;` (SIGILL, see async.hpp).
        const bool woken = co_await idle_.wait();
        if (!woken) throw std::system_error(asio::error::operation_aborted);
    }
}

} // namespace machine
