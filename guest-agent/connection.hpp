// One client connection: its read and write loops, the queue of lines to send with its
// back-pressure, and the requests it has in flight (requests.hpp). What a request does is its
// handler's; the connection only hands lines to dispatch() and carries the replies.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>

#include "machine/protocol.hpp"
#include "machine/async.hpp"
#include "requests.hpp"

namespace machine::agent {

class server;

class connection : public std::enable_shared_from_this<connection> {
public:
    using unix_socket = asio::local::stream_protocol::socket;

    connection(server& srv, unix_socket socket);

    asio::awaitable<void> serve();

    // Queues a line without waiting (replies, errors). Dropped once the client is gone.
    void post(std::string line);
    // Queues a request's final message, at most once per request; its id is free from then on.
    void post_final(request_state& st, std::string line);
    // Queues a streaming line, first waiting while too much is queued. False when the client
    // is gone or the request was abandoned: the caller stops producing.
    asio::awaitable<bool> send(std::string line, const request_state& st);

    // Tracks a request until its final message; `T` derives from request_state.
    template <class T, class... Args>
    std::shared_ptr<T> start_request(std::uint64_t id, Args&&... args) {
        auto st = std::make_shared<T>(id, std::forward<Args>(args)...);
        in_flight_.emplace(id, st);
        return st;
    }
    // Runs a started request's task. If it throws, the request ends with an `internal` error
    // saying `failure` (the exception's text when empty).
    void spawn_request(std::shared_ptr<request_state> st, asio::awaitable<void> task, std::string failure = {});
    std::shared_ptr<request_state> find_request(std::uint64_t id) const;
    bool has_request(std::uint64_t id) const { return in_flight_.count(id) != 0; }
    std::size_t in_flight() const { return in_flight_.size(); }

    void cancel(const std::shared_ptr<request_state>& st);
    void shutdown_requests();
    void kill_remaining();

    // The session registered on this connection (empty: none).
    const std::string& registered_session() const { return session_; }
    void set_registered_session(std::string name) { session_ = std::move(name); }
    // The peer's uid, from its credentials (SO_PEERCRED), never from anything it says; nullopt
    // with errno set when the kernel does not say.
    std::optional<uid_t> peer_uid();

private:
    asio::awaitable<void> read_loop();
    asio::awaitable<void> write_loop();
    void handle(protocol::decoded& item);
    void mark_dead();
    void request_done(const std::shared_ptr<request_state>& st);

    server& srv_;
    unix_socket socket_;
    protocol::decoder decoder_;
    std::deque<std::string> out_;
    std::size_t queued_ = 0;
    bool dead_ = false;     // writing failed: the peer is gone
    bool closing_ = false;  // no more lines will be queued
    bool writer_done_ = false;
    notifier writer_wake_, space_, idle_;
    notifier writer_finished_;  // writer_done_ became true
    std::map<std::uint64_t, std::shared_ptr<request_state>> in_flight_;
    std::vector<std::shared_ptr<request_state>> running_at_shutdown_;
    std::string session_;  // the session registered on this connection, if any
};

} // namespace machine::agent
