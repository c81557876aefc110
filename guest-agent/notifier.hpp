// The agent's broadcast wake-up (see the class comment). Header-only: the connection, the
// server and the requests all wait on one.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

namespace machine::agent {

// A broadcast wake-up: notify_all() wakes every current waiter. Waiters re-check their
// condition; nothing is lost because the loop is single-threaded and no waiter suspends
// between checking and waiting.
class notifier {
public:
    explicit notifier(asio::any_io_executor ex) : timer_(ex, asio::steady_timer::time_point::max()) {}
    asio::awaitable<void> wait() { co_await timer_.async_wait(asio::experimental::as_tuple(asio::use_awaitable)); }
    void notify_all() { timer_.cancel(); }

private:
    asio::steady_timer timer_;
};

} // namespace machine::agent
