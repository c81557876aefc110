#include "machine/cancel.hpp"

#include <system_error>

#include <asio/error.hpp>

#include "machine/async.hpp"

namespace machine {

struct cancel_signal::state {
    explicit state(asio::any_io_executor ex) : raised(std::move(ex)) {}
    notifier raised;  // every trigger() wakes every waiter
    level current = none;
};

cancel_signal::cancel_signal(asio::any_io_executor executor)
    : state_(std::make_shared<state>(executor)) {}

cancel_signal::~cancel_signal() = default;

void cancel_signal::trigger(level to) {
    if (to <= state_->current) return;
    state_->current = to;
    state_->raised.notify_all();
}

cancel_signal::level cancel_signal::current() const noexcept { return state_->current; }

asio::awaitable<std::optional<cancel_signal::level>> cancel_signal::until_above(level seen) {
    const auto st = state_;  // keeps the notifier alive even if *this goes first
    while (st->current <= seen) {
        const bool woken = co_await st->raised.wait();  // named: see async.hpp on g++ 12
        if (!woken) co_return std::nullopt;
    }
    co_return st->current;
}

} // namespace machine
