#include "machine/cancel.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

namespace machine {

struct cancel_signal::state {
    explicit state(asio::any_io_executor ex) : wakeup(ex, asio::steady_timer::time_point::max()) {}
    asio::steady_timer wakeup;  // never expires; cancel() is the broadcast
    level current = none;
};

cancel_signal::cancel_signal(asio::any_io_executor executor)
    : state_(std::make_shared<state>(executor)) {}

cancel_signal::~cancel_signal() = default;

void cancel_signal::trigger(level to) {
    if (to <= state_->current) return;
    state_->current = to;
    state_->wakeup.cancel();
}

cancel_signal::level cancel_signal::current() const noexcept { return state_->current; }

asio::awaitable<cancel_signal::level> cancel_signal::wait_above(level seen) {
    const auto st = state_;  // keeps the timer alive even if *this goes first
    while (st->current <= seen) {
        co_await st->wakeup.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
        // A wake-up is either our broadcast or the cancellation of this very wait (for example
        // the losing side of `||`). Cancellation is not sticky, so leave now rather than wait
        // again forever.
        const auto cs = co_await asio::this_coro::cancellation_state;
        if (cs.cancelled() != asio::cancellation_type::none)
            throw std::system_error(asio::error::operation_aborted);
    }
    co_return st->current;
}

} // namespace machine
