// hello, health, emit and cancel: answered at once.
#include "connection.hpp"
#include "log.hpp"
#include "requests.hpp"
#include "server_core.hpp"

namespace machine::agent::requests {

namespace proto = machine::protocol;

void hello(const request_call& call) {
    auto q = proto::parse_hello_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    if (!q->client.empty()) log::debug("hello from " + q->client);
    call.reply(proto::encode(proto::make_hello_result(call.id, call.srv.hello())));
}

void health(const request_call& call) {
    call.reply(proto::encode(proto::make_health_result(call.id, call.srv.health())));
}

void emit(const request_call& call) {
    auto q = proto::parse_emit_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    const std::uint64_t seq = call.srv.append_event(q->event, q->fields);
    call.reply(proto::encode(proto::make_result(call.id, proto::json{{"seq", seq}})));
}

void cancel(const request_call& call) {
    auto q = proto::parse_cancel_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    const auto target = call.conn.find_request(q->target);
    if (!target) return call.reply_error(proto::errc::not_found, "no request " + std::to_string(q->target) + " in flight");
    call.conn.cancel(target);
    call.reply(proto::encode(proto::make_result(call.id, proto::json{{"target", q->target}})));
}

} // namespace machine::agent::requests
