#include "proxy_io.hpp"

namespace machine::net::io::detail {

asio::awaitable<bool> idle_watch(std::shared_ptr<splice_state> st, std::chrono::milliseconds idle) {
    for (;;) {
        const auto due = st->last_byte + idle;
        if (steady_clock::now() >= due) co_return true;
        const bool slept = co_await sleep_until(due);
        if (!slept) co_return false;
    }
}

asio::awaitable<void> both(asio::awaitable<void> a, asio::awaitable<void> b) {
    using namespace asio::experimental::awaitable_operators;
    // Neither side throws (errors are values), so `&&` waits for both.
    co_await (std::move(a) && std::move(b));
}

} // namespace machine::net::io::detail
