#include "connection.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <exception>

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "log.hpp"
#include "server_core.hpp"

namespace machine::agent {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;

constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

constexpr std::size_t read_chunk = 64u << 10;
constexpr std::size_t high_water = 1u << 20;        // queued output bytes per connection
constexpr auto close_linger = 5s;                   // to flush replies to a client that left

} // namespace

connection::connection(server& srv, unix_socket socket)
    : srv_(srv), socket_(std::move(socket)), writer_wake_(socket_.get_executor()),
      space_(socket_.get_executor()), idle_(socket_.get_executor()), writer_finished_(socket_.get_executor()) {}

awaitable<void> connection::serve() {
    co_await (read_loop() && write_loop());
}

void connection::post(std::string line) {
    if (dead_ || closing_) return;
    queued_ += line.size();
    out_.push_back(std::move(line));
    writer_wake_.notify_all();
}

void connection::post_final(request_state& st, std::string line) {
    if (st.final_sent) return;
    st.final_sent = true;
    post(std::move(line));
    // The id may be reused (and cancel says not_found) as soon as the final message is queued.
    const auto it = in_flight_.find(st.id);
    if (it != in_flight_.end() && it->second.get() == &st) {
        in_flight_.erase(it);
        idle_.notify_all();
    }
}

awaitable<bool> connection::send(std::string line, const request_state& st) {
    while (queued_ > high_water && !dead_ && !st.abandoned && !st.final_sent) co_await space_.wait();
    // After the final message (shutting_down) nothing more may be sent for the request.
    if (dead_ || st.abandoned || st.final_sent) co_return false;
    post(std::move(line));
    co_return true;
}

void connection::spawn_request(std::shared_ptr<request_state> st, awaitable<void> task, std::string failure) {
    auto self = shared_from_this();
    asio::co_spawn(socket_.get_executor(), std::move(task),
                   [self, st, failure = std::move(failure)](std::exception_ptr e) {
                       if (e) {
                           std::string what = failure;
                           try {
                               std::rethrow_exception(e);
                           } catch (const std::exception& ex) {
                               if (what.empty()) what = ex.what();
                               log::error("request " + std::to_string(st->id) + ": " + ex.what());
                           } catch (...) {
                               if (what.empty()) what = "unknown";
                           }
                           self->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::internal, what)));
                       }
                       self->request_done(st);
                   });
}

std::shared_ptr<request_state> connection::find_request(std::uint64_t id) const {
    const auto it = in_flight_.find(id);
    return it == in_flight_.end() ? nullptr : it->second;
}

std::optional<uid_t> connection::peer_uid() {
    ucred peer{};
    socklen_t len = sizeof peer;
    if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0)
        return std::nullopt;
    return peer.uid;
}

void connection::mark_dead() {
    if (dead_) return;
    dead_ = true;
    out_.clear();
    queued_ = 0;
    for (auto& [id, st] : in_flight_) {
        st->abandoned = true;
        cancel(st);
    }
    space_.notify_all();
    // Wake the reader too: it may be waiting for a line that will never come.
    asio::error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
}

void connection::cancel(const std::shared_ptr<request_state>& st) {
    if (st->cancelled) return;
    st->cancelled = true;
    st->stop();
    space_.notify_all();  // a request waiting to send re-checks
}

void connection::shutdown_requests() {
    // A copy: post_final() removes entries.
    std::vector<std::shared_ptr<request_state>> all;
    for (const auto& [id, st] : in_flight_) all.push_back(st);
    for (const auto& st : all) {
        running_at_shutdown_.push_back(st);
        post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::shutting_down, "the agent is stopping")));
        cancel(st);
    }
}

void connection::kill_remaining() {
    // The agent exits now: nothing started for a client may outlive it (KillMode=process).
    for (const auto& st : running_at_shutdown_) st->kill_now();
}

void connection::request_done(const std::shared_ptr<request_state>& st) {
    const auto it = in_flight_.find(st->id);
    if (it != in_flight_.end() && it->second == st) {
        in_flight_.erase(it);
        idle_.notify_all();
    }
}

awaitable<void> connection::read_loop() {
    std::string buf(read_chunk, '\0');
    std::vector<proto::decoded> items;
    for (;;) {
        // A client that does not read its replies gets no more requests read either.
        while (queued_ > high_water && !dead_) co_await space_.wait();
        if (dead_) break;
        auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buf), use_nothrow);
        if (ec) break;  // EOF (the client is done) or an error: both end the conversation
        items.clear();
        decoder_.feed(std::string_view(buf.data(), n), items);
        for (auto& item : items) handle(item);
    }
    items.clear();
    decoder_.finish(items);  // an unfinished line: "truncated"
    for (auto& item : items) handle(item);
    // A session's wrapper that closes its connection without session.end has died (SIGKILL...).
    if (!session_.empty()) {
        srv_.sessions().owner_gone(this);
        session_.clear();
    }

    // The client has left: what it started stops, and each request still gets its final
    // message if the socket is writable (a half-closed client can read them).
    for (auto& [id, st] : in_flight_) {
        st->abandoned = true;
        cancel(st);
    }
    space_.notify_all();
    while (!in_flight_.empty()) co_await idle_.wait();
    closing_ = true;
    writer_wake_.notify_all();
    if (!writer_done_) {
        co_await writer_finished_.wait_until(std::chrono::steady_clock::now() + close_linger);
        if (!writer_done_) {
            asio::error_code ignored;
            socket_.close(ignored);  // a client that will not read what is left
        }
    }
}

awaitable<void> connection::write_loop() {
    std::vector<asio::const_buffer> buffers;
    for (;;) {
        if (out_.empty()) {
            if (closing_ || dead_) break;
            co_await writer_wake_.wait();
            continue;
        }
        const std::size_t count = std::min<std::size_t>(out_.size(), 64);
        buffers.clear();
        for (std::size_t i = 0; i < count; ++i) buffers.push_back(asio::buffer(out_[i]));
        auto [ec, n] = co_await asio::async_write(socket_, buffers, use_nothrow);
        if (ec) {
            mark_dead();
            if (closing_) break;
            continue;
        }
        for (std::size_t i = 0; i < count; ++i) {
            queued_ -= out_.front().size();
            out_.pop_front();
        }
        space_.notify_all();
    }
    writer_done_ = true;
    writer_finished_.notify_all();
}

void connection::handle(proto::decoded& item) {
    try {
        if (auto* e = std::get_if<proto::decode_error>(&item)) {
            log::debug(std::string("bad line from a client: ") + std::string(proto::to_string(e->code)) + ": " +
                       e->message);
            post(proto::encode(proto::make_error(*e)));
            return;
        }
        auto& m = std::get<proto::message>(item);
        dispatch(request_call{srv_, *this, *m.id, m});  // require_id: the decoder guarantees the id
    } catch (const std::exception& ex) {
        // A bug or an I/O failure: the client hears about it, the agent goes on.
        std::optional<std::uint64_t> id;
        if (auto* m = std::get_if<proto::message>(&item)) id = m->id;
        log::error(std::string("internal error: ") + ex.what());
        post(proto::encode(proto::make_error(id, proto::errc::internal, ex.what())));
    }
}

} // namespace machine::agent
