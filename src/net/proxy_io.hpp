// The byte-moving pieces of the egress proxy (src/net/proxy.cpp): reads with a deadline into a
// bounded buffer, and the two-way splice with byte counts, half-close and an idle timeout.
// Internal to src/net.
#pragma once

#include <fcntl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>

#include <asio/experimental/as_tuple.hpp>
#include <asio/socket_base.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "machine/async.hpp"

namespace machine::net::io {

// Errors are values on every I/O path here: EOF, resets and our own timeouts are expected.
inline constexpr auto nothrow = asio::experimental::as_tuple(asio::use_awaitable);

// Asio 1.22 opens and accepts sockets without CLOEXEC (house style §3.9): a process embedding
// the proxy must not leak them into its children.
inline void set_cloexec(int fd) {
    if (fd >= 0) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

enum class got { data, eof, error, timeout, full };

/// Appends what `s` has next to `buf`, without letting `buf` grow past `max_total`, unless
/// `deadline` comes first. `full` when `buf` already holds `max_total` bytes.
template <class Socket>
asio::awaitable<got> read_more(Socket& s, std::string& buf, std::size_t max_total, steady_clock::time_point deadline) {
    if (buf.size() >= max_total) co_return got::full;
    std::array<char, 4096> chunk;
    const std::size_t room = std::min(chunk.size(), max_total - buf.size());
    auto reading = s.async_read_some(asio::buffer(chunk.data(), room), nothrow);
    auto expiry = sleep_until(deadline);
    auto r = co_await first_of(std::move(reading), std::move(expiry));
    if (r.index() == 1) co_return got::timeout;
    auto [ec, n] = std::get<0>(r);
    buf.append(chunk.data(), n);
    if (n > 0) co_return got::data;
    co_return ec == asio::error::eof ? got::eof : got::error;
}

/// Reads until `buf` holds at least `want` bytes; false on EOF, error or `deadline`.
template <class Socket>
asio::awaitable<bool> read_at_least(Socket& s, std::string& buf, std::size_t want, steady_clock::time_point deadline) {
    while (buf.size() < want) {
        const got g = co_await read_more(s, buf, want, deadline);
        if (g != got::data) co_return false;
    }
    co_return true;
}

/// What went each way through a splice.
struct splice_counts {
    std::int64_t up = 0;    ///< guest -> destination
    std::int64_t down = 0;  ///< destination -> guest
    bool idle_timeout = false;
};

namespace detail {

struct splice_state {
    splice_counts counts;
    steady_clock::time_point last_byte = steady_clock::now();
};

// One direction: a 64 KiB buffer, each chunk written in full before the next read (so neither
// side is read faster than the other takes its bytes). The buffer exists only while bytes are
// flowing: an idle connection (most of them, most of the time) holds none. At EOF the write
// side is shut down (half-close: the other direction goes on); on an error both sockets are
// closed, which ends the other direction too.
template <class From, class To>
asio::awaitable<void> pump(From& from, To& to, std::shared_ptr<splice_state> st, bool upward) {
    std::unique_ptr<std::array<char, 64 * 1024>> buffer;
    for (;;) {
        if (!buffer) {
            auto [wec] = co_await from.async_wait(asio::socket_base::wait_read, nothrow);
            if (wec) break;
            buffer = std::make_unique<std::array<char, 64 * 1024>>();
        }
        auto [rec, n] = co_await from.async_read_some(asio::buffer(*buffer), nothrow);
        if (n > 0) {
            auto [wec, written] = co_await asio::async_write(to, asio::buffer(buffer->data(), n), nothrow);
            (upward ? st->counts.up : st->counts.down) += static_cast<std::int64_t>(written);
            st->last_byte = steady_clock::now();
            if (wec) break;
        }
        if (rec == asio::error::eof) {
            std::error_code ignored;
            to.shutdown(asio::socket_base::shutdown_send, ignored);
            co_return;
        }
        if (rec) break;
        std::error_code ec;
        if (from.available(ec) == 0) buffer.reset();
    }
    std::error_code ignored;
    from.close(ignored);
    to.close(ignored);
}

// Ends when nothing moved either way for `idle` (true), or when cancelled (false).
asio::awaitable<bool> idle_watch(std::shared_ptr<splice_state> st, std::chrono::milliseconds idle);

asio::awaitable<void> both(asio::awaitable<void> a, asio::awaitable<void> b);

} // namespace detail

/// Moves bytes both ways between `guest` and `upstream` until both directions have ended or
/// nothing moved for `idle`. Counts only what was written to the other side.
template <class Guest, class Upstream>
asio::awaitable<splice_counts> splice(Guest& guest, Upstream& upstream, std::chrono::milliseconds idle) {
    auto st = std::make_shared<detail::splice_state>();
    auto up = detail::pump(guest, upstream, st, true);
    auto down = detail::pump(upstream, guest, st, false);
    auto pumps = detail::both(std::move(up), std::move(down));
    auto watch = detail::idle_watch(st, idle);
    auto r = co_await first_of(std::move(pumps), std::move(watch));
    st->counts.idle_timeout = r.index() == 1 && std::get<1>(r);
    co_return st->counts;
}

} // namespace machine::net::io
