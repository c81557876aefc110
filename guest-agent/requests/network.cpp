// network.apply (PROTOCOL.md §4): writes machine's nftables table for the VM and applies it
// (network.hpp); the agent applies the same file again at every start (server.cpp).
#include "connection.hpp"
#include "log.hpp"
#include "machine/supervise.hpp"
#include "network.hpp"
#include "requests.hpp"
#include "server_core.hpp"

namespace machine::agent::requests {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;
using namespace std::chrono_literals;

constexpr auto nft_limit = 20s;

struct network_state : request_state {
    using request_state::request_state;
    proc::stopper* nft = nullptr;  // the `nft -f` running now, if any
    void stop() override {
        if (nft) nft->force();
    }
    void kill_now() override { stop(); }
};

// `srv` by reference: the server outlives every connection's requests (see run_command).
awaitable<void> applying(server& srv, std::shared_ptr<connection> c, std::shared_ptr<network_state> st,
                         std::string ruleset) {
    network_rules& rules = srv.network();
    network_outcome outcome;
    try {
        outcome = co_await rules.apply(std::move(ruleset), nft_limit, &st->nft);
    } catch (const std::exception& e) {
        log::error(std::string("network.apply: ") + e.what());
        c->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::internal, e.what())));
        co_return;
    }
    // In place already: nothing happened, nothing to journal.
    if (!outcome.kept) srv.report_network(outcome, "request");
    proto::network_apply_result r;
    r.path = rules.path();
    r.applied = outcome.applied;
    r.nft_found = outcome.nft_found;
    r.error = outcome.error;
    c->post_final(*st, proto::encode(proto::make_network_apply_result(st->id, r)));
}

} // namespace

void network_apply(const request_call& call) {
    auto q = proto::parse_network_apply_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    auto st = call.conn.start_request<network_state>(call.id);
    call.conn.spawn_request(st, applying(call.srv, call.conn.shared_from_this(), st, std::move(q->ruleset)),
                            "network.apply failed");
}

} // namespace machine::agent::requests
