// The request table and the checks every request shares (requests.hpp).
#include <array>

#include "connection.hpp"
#include "requests.hpp"
#include "server_core.hpp"

namespace machine::agent {

namespace {

namespace proto = machine::protocol;
namespace t = proto::type;
using slot = request_slot;

// Table order is hello's capabilities order (the host and PROTOCOL.md §4 list them so).
constexpr std::array requests_table{
    //         type                 handler                     slot             refused while stopping, advertised
    request_row{t::hello,            requests::hello,            slot::immediate, false, false},
    request_row{t::run,              requests::run,              slot::in_flight, true,  true},
    request_row{t::cancel,           requests::cancel,           slot::immediate, false, true},
    request_row{t::health,           requests::health,           slot::immediate, false, true},
    request_row{t::subscribe,        requests::subscribe,        slot::in_flight, true,  true},
    request_row{t::emit,             requests::emit,             slot::immediate, false, true},
    // In flight on its connection, and the one provisioning job of the agent (busy otherwise).
    request_row{t::provision,        requests::provision,        slot::in_flight, true,  true},
    // Reads the steps' records: done at once.
    request_row{t::provision_pending, requests::provision_pending, slot::immediate, false, true},
    request_row{t::session_register, requests::session_register, slot::immediate, true,  true},
    request_row{t::session_end,      requests::session_end,      slot::immediate, false, true},
    request_row{t::session_list,     requests::session_list,     slot::in_flight, true,  true},
    // secrets.*: done at once, on the loop (a few small writes to a tmpfs, a bounded scan).
    request_row{t::secrets_render,   requests::secrets_render,   slot::immediate, false, true},
    request_row{t::secrets_clear,    requests::secrets_clear,    slot::immediate, false, true},
    request_row{t::secrets_list,     requests::secrets_list,     slot::immediate, false, true},
    request_row{t::secrets_discover, requests::secrets_discover, slot::immediate, false, true},
    // In flight: runs `nft -f` (at most 20 s).
    request_row{t::network_apply,    requests::network_apply,    slot::in_flight, true,  true},
};

} // namespace

void request_call::reply(std::string line) const { conn.post(std::move(line)); }

void request_call::reply_error(proto::errc code, const std::string& text) const {
    conn.post(proto::encode(proto::make_error(id, code, text)));
}

const request_row* find_request(std::string_view type) {
    for (const auto& row : requests_table)
        if (row.type == type) return &row;
    return nullptr;
}

std::vector<std::string> capabilities() {
    std::vector<std::string> out;
    for (const auto& row : requests_table)
        if (row.advertised) out.emplace_back(row.type);
    return out;
}

void dispatch(const request_call& call) {
    if (call.conn.has_request(call.id))
        return call.reply_error(proto::errc::duplicate_id, "request " + std::to_string(call.id) + " is still in flight");
    const request_row* row = find_request(call.message.type);
    if (!row) return call.reply_error(proto::errc::unknown_type, "unknown request type '" + call.message.type + "'");
    if (row->refused_while_stopping && call.srv.stopping())
        return call.reply_error(proto::errc::shutting_down, "the agent is stopping");
    if (row->slot == slot::in_flight && call.conn.in_flight() >= max_in_flight)
        return call.reply_error(proto::errc::too_many_requests,
                                "more than " + std::to_string(max_in_flight) + " requests in flight");
    row->handle(call);
}

} // namespace machine::agent
