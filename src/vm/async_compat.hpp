// Generic coroutine helpers, as the workflows have used them so far. They are being replaced by
// core's versions (include/machine/async.hpp): this header is the one place to swap them (the
// CLI's watch and attach use them too, through this file).
#pragma once

#include <chrono>
#include <exception>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

namespace machine::vm {

inline std::chrono::milliseconds since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}

// Sleeps on `timer`; throws when cancelled (so it can lose an `a || b` race).
inline asio::awaitable<void> sleep_for(asio::steady_timer& timer, std::chrono::milliseconds d) {
    timer.expires_after(d);
    co_await timer.async_wait(asio::use_awaitable);
}

// Runs `task` and returns its exception instead of throwing it. `a || b` ends with the first
// *successful* side, so a side that may fail must not throw.
inline asio::awaitable<std::exception_ptr> capture(asio::awaitable<void> task) {
    try {
        co_await std::move(task);
    } catch (...) {
        co_return std::current_exception();
    }
    co_return nullptr;
}

// Spawned tasks that must all finish before their owner returns (no orphans).
class task_group {
public:
    explicit task_group(asio::any_io_executor ex)
        : ex_(ex), idle_(ex, asio::steady_timer::time_point::max()) {}

    // `make_task` is a callable returning asio::awaitable<void>; it is kept alive by co_spawn.
    template <class MakeTask>
    void spawn(MakeTask make_task) {
        ++running_;
        asio::co_spawn(ex_, std::move(make_task), [this](std::exception_ptr e) {
            if (e) log_task_failure(e);
            if (--running_ == 0) idle_.cancel();
        });
    }

    asio::awaitable<void> join() {
        while (running_ > 0) co_await idle_.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    }
    int running() const { return running_; }

private:
    static void log_task_failure(std::exception_ptr e) {
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& x) {
            spdlog::debug("task ended: {}", x.what());
        }
    }
    asio::any_io_executor ex_;
    asio::steady_timer idle_;
    int running_ = 0;
};

} // namespace machine::vm
