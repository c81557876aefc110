// The agent's requests, declared in one table (dispatch.cpp, `requests_table`): each row is a request
// type, its handler (in requests/<name>.cpp) and what the dispatcher checks before calling it.
// `hello`'s capabilities are the table's advertised types, in table order.
//
// Adding a request: its message in protocol (include/machine/protocol.hpp), a row in
// dispatch.cpp, and a handler file in requests/ (CMake picks it up) declared below.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "machine/protocol.hpp"

namespace machine::agent {

class connection;
class server;

/// A request that stays in flight after its handler returns (run, subscribe, ...): what the
/// connection keeps until the one final message is queued. Each such request derives its own
/// state and says how it stops.
struct request_state {
    explicit request_state(std::uint64_t id) : id(id) {}
    virtual ~request_state() = default;
    request_state(const request_state&) = delete;
    request_state& operator=(const request_state&) = delete;

    /// A cancel request, the client leaving or the agent stopping: end soon, gently.
    virtual void stop() {}
    /// The agent exits now: nothing the request started may outlive it (KillMode=process).
    virtual void kill_now() {}

    std::uint64_t id;
    bool cancelled = false;    // cancel request, disconnection or shutdown
    bool abandoned = false;    // the client is gone: stop producing messages
    bool final_sent = false;   // the one final message has been queued
};

/// What may run at once.
enum class request_slot {
    immediate,  ///< answered before the next line is read; never in flight
    in_flight,  ///< tracked until its final message: at most max_in_flight per connection
};

/// One request being handled: the handler's view of the message and where it came from.
struct request_call {
    server& srv;
    connection& conn;
    std::uint64_t id;
    protocol::message& message;

    void reply(std::string line) const;
    void reply_error(protocol::errc code, const std::string& text) const;
};

struct request_row {
    std::string_view type;
    void (*handle)(const request_call&);
    request_slot slot;
    bool refused_while_stopping;  ///< shutting_down once the agent is stopping
    bool advertised;              ///< listed in hello's capabilities
};

/// The row for `type`, or null (unknown_type).
const request_row* find_request(std::string_view type);
/// hello's capabilities: the advertised types, in table order.
std::vector<std::string> capabilities();
/// Checks the row's conditions and calls its handler; replies unknown_type for a type not in
/// the table. Exceptions reach the caller (an internal error for the client).
void dispatch(const request_call& call);

/// Requests in flight per connection (run + subscribe + ...).
inline constexpr std::size_t max_in_flight = 256;

// The handlers, one file each under requests/.
namespace requests {
void hello(const request_call&);
void health(const request_call&);
void emit(const request_call&);
void cancel(const request_call&);
void run(const request_call&);
void subscribe(const request_call&);
void provision(const request_call&);
void provision_pending(const request_call&);
void session_register(const request_call&);
void session_end(const request_call&);
void session_list(const request_call&);
void secrets_render(const request_call&);
void secrets_clear(const request_call&);
void secrets_list(const request_call&);
void secrets_discover(const request_call&);
void network_apply(const request_call&);
} // namespace requests

} // namespace machine::agent
