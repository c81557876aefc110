// Small pieces for coroutines on the single-threaded io_context: a notifier, a sleep, a race
// whose losers are cancelled and awaited, a task group that is joined, elapsed time.
//
// Races. Asio 1.22's `a || b` (experimental::awaitable_operators) ends with the first side that
// *succeeds*: a side that fails drops out and the race goes on (house style §4.5), so a side
// that should lose had to throw and a side that may fail had to be wrapped to return its
// exception. Here the waits that can lose a race return a value when cancelled instead of
// throwing (sleep_for: false, notifier::wait: false, cancel_signal::until_above: nullopt), and
// first_of() ends with the first side that *completes*, value or exception.
//
// Cancellation: everything here honours Asio's per-operation cancellation (the losing side of
// a race, a cancelled co_spawn). Remember that it is not sticky for operations started after it
// was seen (asio#1574), but a coroutine whose cancellation state is set throws operation_aborted
// at its next `co_await` of an awaitable (this_coro::throw_if_cancelled, on by default).
//
// g++ 12: name what these return before testing it when the test throws. `if (!co_await
// n.wait()) throw ...;` compiles to a ud2 (SIGILL at run time, reproduced on 12.2 here);
// `const bool woken = co_await n.wait(); if (!woken) throw ...;` works.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>

namespace machine {

using steady_clock = std::chrono::steady_clock;

/// Milliseconds elapsed since `t0`.
std::chrono::milliseconds since(steady_clock::time_point t0);

/// Waits `d`. True when the time has passed; false when the wait was cancelled (it lost a race,
/// or its coroutine was cancelled): a sleep never throws to lose.
asio::awaitable<bool> sleep_for(steady_clock::duration d);
/// Waits until `t`; returns as sleep_for() does.
asio::awaitable<bool> sleep_until(steady_clock::time_point t);

/// A wake-up for coroutines on one io_context (not thread-safe: use it on the loop's thread).
///
/// Waiters re-check what they wait for after every wake-up. notify_all() remembers nothing: a
/// waiter that checks its condition and then waits misses nothing, because nothing runs in
/// between on a single-threaded loop. notify_one() is for a single consumer that must not miss
/// a wake-up given while it was busy (the ssh pump's kick): when nobody waits, it is kept for
/// the next wait (at most one is kept).
class notifier {
public:
    /// How a wait ended.
    enum class wake { notified, timed_out, cancelled };

    explicit notifier(asio::any_io_executor ex);
    /// Wakes the coroutines still waiting (with `cancelled`): none touches the notifier again.
    ~notifier();
    notifier(const notifier&) = delete;
    notifier& operator=(const notifier&) = delete;

    /// Wakes every coroutine waiting now.
    void notify_all();
    /// Wakes the coroutine that has waited longest; when none waits, the next wait returns at once.
    void notify_one();

    /// Until the next notification: true; false when this wait was cancelled instead.
    asio::awaitable<bool> wait();
    /// Until the next notification or `deadline`, whichever comes first, or this wait's
    /// cancellation.
    asio::awaitable<wake> wait_until(steady_clock::time_point deadline);

    /// Coroutines waiting now (not counting those woken but not yet resumed).
    std::size_t waiting() const;

private:
    struct waiter;
    void remove(waiter* w);

    asio::any_io_executor ex_;
    std::vector<waiter*> waiters_;  // in the order they began to wait; owned by their frames
    bool kept_ = false;             // a notify_one() that found nobody waiting
};

namespace detail {

template <class T>
using value_of = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

// How one side of a race ended: its value or its exception. Never throws itself, so Asio's `||`
// (first success) ends with the first side to *complete*.
template <class T>
struct settled {
    std::exception_ptr failure;
    std::optional<value_of<T>> value;
};

template <class T>
asio::awaitable<settled<T>> settle(asio::awaitable<T> op) {
    settled<T> s;
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(op);
            s.value.emplace();
        } else {
            s.value.emplace(co_await std::move(op));
        }
    } catch (...) {
        s.failure = std::current_exception();
    }
    co_return s;
}

// The winner's value as alternative I of Result, or its exception rethrown.
template <class Result, std::size_t I = 0, class Race>
Result take_winner(Race& race) {
    if constexpr (I + 1 < std::variant_size_v<Race>) {
        if (race.index() != I) return take_winner<Result, I + 1>(race);
    }
    auto& side = std::get<I>(race);
    if (side.failure) std::rethrow_exception(side.failure);
    return Result(std::in_place_index<I>, std::move(*side.value));
}

} // namespace detail

/// Runs `ops` concurrently until the first of them completes, with a value or an exception; then
/// cancels the others and waits for them to finish (nothing outlives the call). Returns the first
/// one's value as the alternative of its index (std::monostate for void), or rethrows its
/// exception; what the others end with is dropped.
///
/// A loser must honour cancellation (every wait in this project does), or the race waits for it.
/// When the caller itself is cancelled, so are all sides: the first to end (typically with
/// operation_aborted, or a sleep's `false`) is the result.
template <class... T>
asio::awaitable<std::variant<detail::value_of<T>...>> first_of(asio::awaitable<T>... ops) {
    static_assert(sizeof...(T) >= 2, "first_of() races two or more awaitables");
    using namespace asio::experimental::awaitable_operators;
    // ((a || b) || c): Asio widens the variant at each step, so indexes follow the arguments.
    auto race = co_await (... || detail::settle(std::move(ops)));
    co_return detail::take_winner<std::variant<detail::value_of<T>...>>(race);
}

/// Spawned tasks that must all finish before their owner goes on (no orphans): the owner
/// co_awaits join() before it returns.
class task_group {
public:
    /// `on_failure` sees the exception a task ended with (none are rethrown).
    explicit task_group(asio::any_io_executor ex, std::function<void(std::exception_ptr)> on_failure = {})
        : ex_(ex), on_failure_(std::move(on_failure)), idle_(ex) {}
    task_group(const task_group&) = delete;
    task_group& operator=(const task_group&) = delete;

    /// `make_task` is a callable returning asio::awaitable<void>; co_spawn keeps it alive while
    /// the task runs (house style §4.1: pass the callable, not its awaitable).
    template <class MakeTask>
    void spawn(MakeTask make_task) {
        ++running_;
        asio::co_spawn(ex_, std::move(make_task), [this](std::exception_ptr e) {
            if (e && on_failure_) on_failure_(e);
            if (--running_ == 0) idle_.notify_all();
        });
    }

    /// Waits until no task runs. Cancelling it abandons the wait (operation_aborted), not the tasks.
    asio::awaitable<void> join();
    /// Tasks spawned and not yet finished.
    int running() const { return running_; }

private:
    asio::any_io_executor ex_;
    std::function<void(std::exception_ptr)> on_failure_;
    notifier idle_;
    int running_ = 0;
};

} // namespace machine
