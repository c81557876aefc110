// A one-shot, escalating broadcast: "stop what you are doing". The CLI triggers it from its
// SIGINT handler (first Ctrl-C: graceful, second: forceful); long operations wait on it.
//
// It is deliberately simpler than Asio's per-operation cancellation slots: every waiter
// checks `level()` before it waits, and the loop is single-threaded, so no trigger is missed.
#pragma once

#include <memory>
#include <optional>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

namespace machine {

class cancel_signal {
public:
    enum level : int { none = 0, graceful = 1, forceful = 2 };

    explicit cancel_signal(asio::any_io_executor executor);
    ~cancel_signal();
    cancel_signal(const cancel_signal&) = delete;
    cancel_signal& operator=(const cancel_signal&) = delete;

    // Raises the level to at least `to` and wakes every waiter.
    void trigger(level to);
    level current() const noexcept;

    // Waits until the level is above `seen` and returns it; nullopt when this wait was
    // cancelled instead (it lost a race): it never throws to lose.
    asio::awaitable<std::optional<level>> until_above(level seen);

private:
    struct state;
    std::shared_ptr<state> state_;
};

} // namespace machine
