// core's loop pieces (machine/async.hpp, machine/cancel.hpp): sleeping, the notifier and its
// lost-wakeup rules, first_of() races, task groups; cancellation of each.
#include <boost/test/unit_test.hpp>

#include <array>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "machine/async.hpp"
#include "machine/cancel.hpp"
#include "test_support.hpp"

using namespace machine;
using machine::test::co_run;
using machine::test::seconds_since;
using namespace std::chrono_literals;
using asio::awaitable;

namespace {

// How a spawned coroutine ended, for tests that cancel it from outside.
template <class T>
struct outcome {
    bool done = false;
    std::optional<T> value;
    std::exception_ptr failure;
};

// Spawns `task` with its cancellation slot on `signal`; `out` records how it ends.
template <class T>
void spawn_cancellable(asio::io_context& ctx, awaitable<T> task, asio::cancellation_signal& signal,
                       outcome<T>& out) {
    asio::co_spawn(ctx, std::move(task), asio::bind_cancellation_slot(signal.slot(), [&out](std::exception_ptr e, T v) {
                       out.done = true;
                       out.failure = e;
                       if (!e) out.value = std::move(v);
                   }));
}

// Runs `ctx` until `pred` holds (at most 5 s of handlers), for tests that act in between.
template <class Pred>
void run_until(asio::io_context& ctx, Pred pred) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!pred() && seconds_since(t0) < 5.0) {
        if (ctx.run_one_for(50ms) == 0 && ctx.stopped()) ctx.restart();
    }
    BOOST_REQUIRE(pred());
}

awaitable<int> value_after(std::chrono::milliseconds d, int v) {
    co_await sleep_for(d);
    co_return v;
}

awaitable<int> failure_after(std::chrono::milliseconds d) {
    co_await sleep_for(d);
    throw std::runtime_error("side failed");
}

// Sleeps `d`, then says whether its sleep completed and that it has ended.
awaitable<bool> sleeper(std::chrono::milliseconds d, bool& ended) {
    const bool completed = co_await sleep_for(d);
    ended = true;
    co_return completed;
}

awaitable<bool> waiter_on(notifier& n, int& woken) {
    const bool notified = co_await n.wait();
    if (notified) ++woken;
    co_return notified;
}

} // namespace

BOOST_AUTO_TEST_SUITE(core_async)

// ---- sleep ---------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(sleep_for_returns_true_once_the_time_has_passed) {
    asio::io_context ctx;
    const auto t0 = std::chrono::steady_clock::now();
    BOOST_TEST(co_run(ctx, sleep_for(60ms)));
    BOOST_TEST(seconds_since(t0) >= 0.06);
    BOOST_TEST(since(t0) >= 60ms);
    BOOST_TEST(co_run(ctx, sleep_until(std::chrono::steady_clock::now() - 1s)));  // already past
}

BOOST_AUTO_TEST_CASE(a_cancelled_sleep_returns_false_instead_of_throwing) {
    asio::io_context ctx;
    asio::cancellation_signal signal;
    outcome<bool> slept;
    const auto t0 = std::chrono::steady_clock::now();
    spawn_cancellable(ctx, sleep_for(10s), signal, slept);
    ctx.poll();
    signal.emit(asio::cancellation_type::terminal);
    ctx.run();
    BOOST_TEST(slept.done);
    BOOST_TEST(!slept.failure);
    BOOST_TEST((slept.value && !*slept.value));
    BOOST_TEST(seconds_since(t0) < 2.0);
}

// ---- notifier ------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(notify_all_wakes_every_waiter) {
    asio::io_context ctx;
    notifier n(ctx.get_executor());
    int woken = 0;
    std::vector<outcome<bool>> waits(3);
    std::vector<asio::cancellation_signal> signals(3);
    for (std::size_t i = 0; i < waits.size(); ++i) spawn_cancellable(ctx, waiter_on(n, woken), signals[i], waits[i]);
    ctx.poll();
    BOOST_TEST(n.waiting() == 3u);
    n.notify_all();
    n.notify_all();  // a second one before they resume wakes nobody twice
    ctx.run();
    BOOST_TEST(woken == 3);
    for (const auto& w : waits) BOOST_TEST((w.value && *w.value));
    BOOST_TEST(n.waiting() == 0u);
}

BOOST_AUTO_TEST_CASE(notify_all_before_the_wait_is_not_kept) {
    asio::io_context ctx;
    notifier n(ctx.get_executor());
    n.notify_all();  // nobody waits: broadcast waiters check their condition first
    const auto r = co_run(ctx, first_of(n.wait(), sleep_for(100ms)));
    BOOST_TEST(r.index() == 1u);
    BOOST_TEST(n.waiting() == 0u);  // the losing wait left the list
}

BOOST_AUTO_TEST_CASE(notify_one_before_the_wait_is_kept_for_it) {
    // The lost-wakeup case: a single consumer (the ssh pump) is kicked while it is busy, not
    // waiting; its next wait must return at once.
    asio::io_context ctx;
    notifier n(ctx.get_executor());
    n.notify_one();
    n.notify_one();  // at most one is kept
    const auto t0 = std::chrono::steady_clock::now();
    const auto first = co_run(ctx, first_of(n.wait(), sleep_for(5s)));
    BOOST_TEST(first.index() == 0u);
    BOOST_TEST(std::get<0>(first));
    BOOST_TEST(seconds_since(t0) < 1.0);
    const auto second = co_run(ctx, first_of(n.wait(), sleep_for(100ms)));
    BOOST_TEST(second.index() == 1u);
}

BOOST_AUTO_TEST_CASE(notify_one_wakes_the_longest_waiter_only) {
    asio::io_context ctx;
    notifier n(ctx.get_executor());
    int woken = 0;
    outcome<bool> first, second;
    asio::cancellation_signal s1, s2;
    spawn_cancellable(ctx, waiter_on(n, woken), s1, first);
    spawn_cancellable(ctx, waiter_on(n, woken), s2, second);
    ctx.poll();
    n.notify_one();
    run_until(ctx, [&] { return first.done; });
    ctx.poll();
    BOOST_TEST((first.value && *first.value));
    BOOST_TEST(!second.done);
    BOOST_TEST(n.waiting() == 1u);
    n.notify_one();
    ctx.run();
    BOOST_TEST((second.value && *second.value));
    BOOST_TEST(woken == 2);
}

BOOST_AUTO_TEST_CASE(a_cancelled_wait_returns_false_and_leaves) {
    asio::io_context ctx;
    notifier n(ctx.get_executor());
    int woken = 0;
    outcome<bool> w;
    asio::cancellation_signal signal;
    spawn_cancellable(ctx, waiter_on(n, woken), signal, w);
    ctx.poll();
    BOOST_TEST(n.waiting() == 1u);
    signal.emit(asio::cancellation_type::terminal);
    ctx.run();
    BOOST_TEST(!w.failure);
    BOOST_TEST((w.value && !*w.value));
    BOOST_TEST(woken == 0);
    BOOST_TEST(n.waiting() == 0u);
    ctx.restart();
    n.notify_one();  // nobody waits any more: kept, not given to the cancelled wait
    BOOST_TEST(co_run(ctx, n.wait()));
}

BOOST_AUTO_TEST_CASE(wait_until_tells_notified_timed_out_and_cancelled_apart) {
    asio::io_context ctx;
    notifier n(ctx.get_executor());
    const auto t0 = std::chrono::steady_clock::now();
    BOOST_TEST((co_run(ctx, n.wait_until(std::chrono::steady_clock::now() + 50ms)) == notifier::wake::timed_out));
    BOOST_TEST(seconds_since(t0) >= 0.05);

    outcome<notifier::wake> w;
    asio::cancellation_signal signal;
    spawn_cancellable(ctx, n.wait_until(std::chrono::steady_clock::now() + 10s), signal, w);
    ctx.poll();
    n.notify_all();
    ctx.run();
    ctx.restart();
    BOOST_TEST((w.value && *w.value == notifier::wake::notified));

    outcome<notifier::wake> c;
    spawn_cancellable(ctx, n.wait_until(std::chrono::steady_clock::now() + 10s), signal, c);
    ctx.poll();
    signal.emit(asio::cancellation_type::terminal);
    ctx.run();
    BOOST_TEST((c.value && *c.value == notifier::wake::cancelled));
}

BOOST_AUTO_TEST_CASE(a_notifier_destroyed_under_its_waiters_wakes_them) {
    asio::io_context ctx;
    auto n = std::make_unique<notifier>(ctx.get_executor());
    int woken = 0;
    outcome<bool> w;
    asio::cancellation_signal signal;
    spawn_cancellable(ctx, waiter_on(*n, woken), signal, w);
    ctx.poll();
    n.reset();  // the waiter must not touch it when it resumes (ASan would say so)
    ctx.run();
    BOOST_TEST(w.done);
    BOOST_TEST((w.value && !*w.value));
}

// ---- first_of ------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(first_of_returns_the_first_value_and_awaits_the_loser) {
    asio::io_context ctx;
    bool loser_ended = false;
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = co_run(ctx, first_of(value_after(20ms, 7), sleeper(10s, loser_ended)));
    BOOST_TEST(r.index() == 0u);
    BOOST_TEST(std::get<0>(r) == 7);
    BOOST_TEST(loser_ended);  // cancelled, and finished before first_of() returned
    BOOST_TEST(seconds_since(t0) < 2.0);

    bool winner_ended = false;
    const auto s = co_run(ctx, first_of(value_after(10s, 7), sleeper(20ms, winner_ended)));
    BOOST_TEST(s.index() == 1u);
    BOOST_TEST(std::get<1>(s));  // the sleep completed: it won
}

BOOST_AUTO_TEST_CASE(first_of_ends_with_a_failure_that_comes_first) {
    // Unlike Asio's `||` (first *success*), a side that fails first decides the race: the slower
    // side is cancelled, not waited for.
    asio::io_context ctx;
    bool loser_ended = false;
    const auto t0 = std::chrono::steady_clock::now();
    BOOST_CHECK_THROW(co_run(ctx, first_of(failure_after(20ms), sleeper(10s, loser_ended))), std::runtime_error);
    BOOST_TEST(loser_ended);
    BOOST_TEST(seconds_since(t0) < 2.0);

    // A failure that comes second is dropped.
    const auto r = co_run(ctx, first_of(failure_after(10s), value_after(20ms, 3)));
    BOOST_TEST(r.index() == 1u);
    BOOST_TEST(std::get<1>(r) == 3);
}

BOOST_AUTO_TEST_CASE(first_of_races_three_and_void_sides) {
    asio::io_context ctx;
    notifier n(ctx.get_executor());
    asio::steady_timer poke(ctx, 20ms);
    poke.async_wait([&](std::error_code) { n.notify_all(); });
    bool ended = false;
    const auto r = co_run(ctx, first_of(value_after(10s, 1), sleeper(10s, ended), n.wait()));
    BOOST_TEST(r.index() == 2u);
    BOOST_TEST(std::get<2>(r));
    BOOST_TEST(ended);

    auto nothing = []() -> awaitable<void> { co_await sleep_for(20ms); };
    const auto v = co_run(ctx, first_of(nothing(), value_after(10s, 1)));
    BOOST_TEST(v.index() == 0u);
    BOOST_TEST((std::holds_alternative<std::monostate>(v)));
}

BOOST_AUTO_TEST_CASE(a_cancelled_first_of_cancels_every_side) {
    asio::io_context ctx;
    asio::cancellation_signal signal;
    outcome<std::variant<bool, bool>> race;
    bool a = false, b = false;
    const auto t0 = std::chrono::steady_clock::now();
    spawn_cancellable(ctx, first_of(sleeper(10s, a), sleeper(10s, b)), signal, race);
    ctx.poll();
    signal.emit(asio::cancellation_type::terminal);
    ctx.run();
    BOOST_TEST(race.done);
    BOOST_TEST((a && b));
    // The first side to end is the result: a sleep that says it was cancelled.
    BOOST_TEST_REQUIRE(race.value.has_value());
    BOOST_TEST(!std::visit([](bool completed) { return completed; }, *race.value));
    BOOST_TEST(seconds_since(t0) < 2.0);
}

// ---- cancel_signal -------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(until_above_returns_the_level_it_was_raised_to) {
    asio::io_context ctx;
    cancel_signal cancel(ctx.get_executor());
    asio::steady_timer t(ctx, 20ms);
    t.async_wait([&](std::error_code) { cancel.trigger(cancel_signal::forceful); });
    const auto got = co_run(ctx, cancel.until_above(cancel_signal::none));
    BOOST_TEST((got && *got == cancel_signal::forceful));
    // Triggered before the wait: returns at once (the level is checked first).
    BOOST_TEST((co_run(ctx, cancel.until_above(cancel_signal::graceful)) == cancel_signal::forceful));
}

BOOST_AUTO_TEST_CASE(until_above_loses_a_race_with_nullopt) {
    asio::io_context ctx;
    cancel_signal cancel(ctx.get_executor());
    const auto r = co_run(ctx, first_of(cancel.until_above(cancel_signal::none), sleep_for(20ms)));
    BOOST_TEST(r.index() == 1u);

    asio::cancellation_signal signal;
    outcome<std::optional<cancel_signal::level>> quiet;
    spawn_cancellable(ctx, cancel.until_above(cancel_signal::none), signal, quiet);
    ctx.poll();
    signal.emit(asio::cancellation_type::terminal);
    ctx.run();
    ctx.restart();
    BOOST_TEST(!quiet.failure);
    BOOST_TEST((quiet.value && !quiet.value->has_value()));
}

// ---- task_group ----------------------------------------------------------------------------

awaitable<void> count_after(std::chrono::milliseconds d, int& finished) {
    co_await sleep_for(d);
    ++finished;
}

awaitable<void> fail_after(std::chrono::milliseconds d) {
    co_await sleep_for(d);
    throw std::runtime_error("task failed");
}

awaitable<void> spawn_and_join(int& finished, int& failures, int& running_at_join) {
    // Named first: g++ 12 miscompiles a capturing lambda in a full-expression with a co_await
    // (house style §4.2).
    const auto ex = co_await asio::this_coro::executor;
    auto count_failure = [&failures](std::exception_ptr) { ++failures; };
    task_group tasks(ex, count_failure);
    co_await tasks.join();  // nothing to wait for
    const std::array<std::chrono::milliseconds, 3> delays{30ms, 10ms, 50ms};
    for (const auto d : delays) tasks.spawn([d, &finished] { return count_after(d, finished); });
    tasks.spawn([] { return fail_after(20ms); });
    running_at_join = tasks.running();
    co_await tasks.join();
}

BOOST_AUTO_TEST_CASE(a_task_group_joins_every_task) {
    asio::io_context ctx;
    int finished = 0, failures = 0, running_at_join = 0;
    co_run(ctx, spawn_and_join(finished, failures, running_at_join));
    BOOST_TEST(running_at_join == 4);
    BOOST_TEST(finished == 3);  // all of them, not just the first
    BOOST_TEST(failures == 1);
}

awaitable<void> join_cancelled(int& finished, bool& join_aborted) {
    const auto ex = co_await asio::this_coro::executor;
    task_group tasks(ex);
    tasks.spawn([&finished] { return count_after(100ms, finished); });
    const auto raced = co_await first_of(tasks.join(), sleep_for(10ms));  // join() loses
    join_aborted = raced.index() == 1 && tasks.running() == 1;
    co_await sleep_for(200ms);  // the task was not abandoned with the wait
}

BOOST_AUTO_TEST_CASE(cancelling_join_abandons_the_wait_not_the_tasks) {
    asio::io_context ctx;
    int finished = 0;
    bool join_aborted = false;
    co_run(ctx, join_cancelled(finished, join_aborted));
    BOOST_TEST(join_aborted);
    BOOST_TEST(finished == 1);
}

BOOST_AUTO_TEST_SUITE_END()
