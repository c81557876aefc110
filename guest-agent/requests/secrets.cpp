// secrets.* (secrets.hpp): done at once, on the loop (a few small writes to a tmpfs; discover
// scans with a budget of directories and bytes).
#include "discover.hpp"
#include "log.hpp"
#include "requests.hpp"
#include "secrets.hpp"
#include "server_core.hpp"
#include "users.hpp"

namespace machine::agent::requests {

namespace {

namespace proto = machine::protocol;

// A secrets_error is the client's answer, not an internal error.
template <class F>
void answering_errors(const request_call& call, F&& f) {
    try {
        f();
    } catch (const secrets_error& e) {
        log::warning(call.message.type + ": " + e.what());
        call.reply_error(e.code(), e.what());
    }
}

// secrets.discover: the VM user's ~/code (discover.hpp).
proto::secrets_discover_result discover_for_user(const server& srv) {
    const std::string& name = srv.options().user;
    if (name.empty()) throw secrets_error(proto::errc::bad_request, "the agent has no --user: whose ~/code is it?");
    const auto user = find_user(name);
    if (!user) throw secrets_error(proto::errc::no_such_user, "no user '" + name + "' in /etc/passwd");
    std::string home = user->home;
    while (home.size() > 1 && home.back() == '/') home.pop_back();
    // A home that is not an absolute path has no ~/code to speak of.
    if (home.empty() || home.front() != '/') return {};
    return discover_envrc_secrets(home == "/" ? "/code" : home + "/code");
}

} // namespace

void secrets_render(const request_call& call) {
    answering_errors(call, [&] {
        auto q = proto::parse_secrets_render_request(call.message.body);
        proto::wipe_secrets(call.message.body);  // the encoded values; `q` holds them now (and wipes them)
        if (!q) return call.reply_error(q.code, q.error);
        const auto r = call.srv.secrets().render(*q);
        call.reply(proto::encode(proto::make_secrets_render_result(call.id, r)));
    });
}

void secrets_clear(const request_call& call) {
    answering_errors(call, [&] {
        auto q = proto::parse_secrets_clear_request(call.message.body);
        if (!q) return call.reply_error(q.code, q.error);
        call.reply(proto::encode(proto::make_secrets_clear_result(call.id, call.srv.secrets().clear(q->set))));
    });
}

void secrets_list(const request_call& call) {
    answering_errors(call, [&] { call.reply(proto::encode(proto::make_secrets_list_result(call.id, call.srv.secrets().list()))); });
}

void secrets_discover(const request_call& call) {
    answering_errors(call, [&] {
        call.reply(proto::encode(proto::make_secrets_discover_result(call.id, discover_for_user(call.srv))));
    });
}

} // namespace machine::agent::requests
