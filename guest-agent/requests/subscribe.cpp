// subscribe: the journal from a sequence number on, then live events until cancelled.
#include "connection.hpp"
#include "requests.hpp"
#include "server_core.hpp"

namespace machine::agent::requests {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;

constexpr std::size_t replay_batch = 256u << 10;  // journal bytes per read_after

struct subscription_state : request_state {
    subscription_state(std::uint64_t id, server& srv) : request_state(id), srv(srv) {}
    server& srv;
    void stop() override { srv.new_events().notify_all(); }  // the subscription re-checks and ends
};

// `srv` by reference: see run_command.
awaitable<void> subscription(server& srv, std::shared_ptr<connection> c, std::shared_ptr<request_state> st,
                             std::uint64_t from_seq) {
    ++srv.subscribers;
    std::uint64_t last = from_seq;
    bool live_sent = false;
    bool client_gone = false;
    while (!st->cancelled && !client_gone) {
        journal& jr = srv.events_journal();
        if (jr.events() > 0 && last + 1 < jr.first_seq()) {
            const proto::gap_notice gap{last + 1, jr.first_seq() - 1};
            if (!co_await c->send(proto::encode(proto::make_gap(st->id, gap)), *st)) break;
            last = gap.to_seq;
            continue;
        }
        auto batch = jr.read_after(last, replay_batch);
        if (batch.empty()) {
            if (!live_sent) {
                live_sent = true;
                if (!co_await c->send(proto::encode(proto::make_live(st->id, last)), *st)) break;
                continue;
            }
            co_await srv.new_events().wait();
            continue;
        }
        for (auto& e : batch) {
            if (st->cancelled) break;
            // The stored line already is the event; only the envelope is added.
            if (!co_await c->send(proto::event_message_from_journal_line(st->id, e.line), *st)) {
                client_gone = true;
                break;
            }
            last = e.seq;
        }
    }
    --srv.subscribers;
    proto::json fields = {{"last_seq", last}, {"cancelled", true}};
    c->post_final(*st, proto::encode(proto::make_result(st->id, fields)));
}

} // namespace

void subscribe(const request_call& call) {
    auto q = proto::parse_subscribe_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    const auto last = call.srv.events_journal().last_seq();
    if (q->from_seq > last)
        return call.reply_error(proto::errc::bad_seq, "from_seq " + std::to_string(q->from_seq) +
                                                          " is beyond the journal's last seq " + std::to_string(last) +
                                                          " (journal " + call.srv.events_journal().id() + ")");
    auto st = call.conn.start_request<subscription_state>(call.id, call.srv);
    call.conn.spawn_request(st, subscription(call.srv, call.conn.shared_from_this(), st, q->from_seq),
                            "subscription failed");
}

} // namespace machine::agent::requests
