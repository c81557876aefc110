// session.register, session.end and session.list (PROTOCOL.md §4 `session.*`); the registry
// itself is session_registry.hpp.
#include <algorithm>
#include <cerrno>
#include <map>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>

#include "connection.hpp"
#include "files.hpp"
#include "log.hpp"
#include "machine/events.hpp"
#include "machine/supervise.hpp"
#include "requests.hpp"
#include "server_core.hpp"
#include "spawn.hpp"
#include "tmux.hpp"
#include "users.hpp"

namespace machine::agent::requests {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;

constexpr auto tmux_list_limit = 2000ms;            // one `tmux list-sessions`
constexpr auto session_list_budget = 3000ms;        // all of them, for one session.list
constexpr std::size_t tmux_output_cap = 64u << 10;
constexpr std::size_t max_list_users = 8;           // distinct users asked per session.list

struct listing_state : request_state {
    using request_state::request_state;
    proc::stopper* tmux = nullptr;  // the `tmux list-sessions` running now, if any
    // The listing then ends at once.
    void stop() override {
        if (tmux) tmux->force();
    }
    void kill_now() override { stop(); }
};

// Attached clients per tmux session of one user: `tmux list-sessions` run as that user (its
// tmux server is the one `session attach` used), bounded in time and output. Empty when the
// user has no tmux server, or tmux fails or is too slow.
// `srv` by reference: see run_command.
awaitable<std::map<std::string, std::uint64_t>> tmux_sessions_of(server& srv, std::shared_ptr<listing_state> st,
                                                                 std::string user_name,
                                                                 std::chrono::milliseconds limit) {
    std::map<std::string, std::uint64_t> none;
    const auto user = find_user(user_name);
    if (!user) co_return none;
    spawn_spec spec;
    spec.argv = {srv.options().tmux, "list-sessions", "-F", tmux::list_format};
    spec.env = child_environment(*user, srv.options().runtime_dir_root, {});
    spec.cwd = home_or_root(*user);
    spec.as_user = *user;
    spec.pipe_stderr = false;  // "no server running on ..." is an answer, not news
    child_process child;
    try {
        child = spawn(spec);
    } catch (const spawn_failure& e) {
        log::warning(std::string("session.list: tmux: ") + e.what());
        co_return none;
    }
    auto ex = co_await asio::this_coro::executor;
    const pid_t pid = child.pid;
    proc::stopper stopper(ex, proc::stop_ladder::kill_only(), [pid](int sig) { ::kill(-pid, sig); });
    stopper.deadline(std::chrono::steady_clock::now() + limit);
    st->tmux = &stopper;
    struct forget_at_end {
        listing_state& st;
        ~forget_at_end() { st.tmux = nullptr; }
    } forget{*st};
    if (st->cancelled) stopper.force();
    std::string text;
    proc::child_watch watch;
    watch.pid = child.pid;
    watch.pidfd = child.pidfd;
    watch.out = proc::output_pipe::collected(child.stdout_fd, text, tmux_output_cap, 4096);
    watch.on_reaped = [&stopper] { stopper.exited(); };
    auto draining = proc::drain_and_reap(std::move(watch));  // named first: house style §4
    const int status = co_await (std::move(draining) && stopper.run());
    if (stopper.why() == proc::stopper::reason::deadline) {
        log::warning("session.list: tmux list-sessions as " + user->name + " took longer than " +
                     std::to_string(limit.count()) + " ms: killed");
        co_return none;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) co_return none;
    co_return tmux::parse_list(text);
}

// `srv` by reference: see run_command.
awaitable<void> session_listing(server& srv, std::shared_ptr<connection> c, std::shared_ptr<listing_state> st) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto snapshot = srv.sessions().list();
    std::map<std::string, std::map<std::string, std::uint64_t>> attached;  // user -> tmux session -> clients
    for (const auto& s : snapshot) {
        if (attached.count(s.user) || attached.size() >= max_list_users) continue;
        const auto spent =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
        if (st->cancelled || spent >= session_list_budget) break;
        const auto limit = std::min(tmux_list_limit, session_list_budget - spent);
        attached[s.user] = co_await tmux_sessions_of(srv, st, s.user, limit);
    }
    proto::session_list_result r;
    for (const auto& s : snapshot) {
        const live_session* now = srv.sessions().find(s.name);
        if (!now || now->owner != s.owner) continue;  // ended while tmux was asked
        proto::session_info info;
        info.name = s.name;
        info.agent = s.agent;
        info.user = s.user;
        info.started_at = events::format_timestamp(s.started_at);
        info.pid = s.pid;
        if (const auto u = attached.find(s.user); u != attached.end()) {
            if (const auto n = u->second.find(s.name); n != u->second.end())
                info.attached = std::min(n->second, proto::max_session_attached);
        }
        r.sessions.push_back(std::move(info));
    }
    c->post_final(*st, proto::encode(proto::make_session_list_result(st->id, r)));
}

} // namespace

void session_register(const request_call& call) {
    auto q = proto::parse_session_register_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    if (!call.conn.registered_session().empty())
        return call.reply_error(proto::errc::bad_request, "this connection has already registered session '" +
                                                               call.conn.registered_session() + "'");
    // Whose session it is: the peer's credentials, not anything it says.
    const auto uid = call.conn.peer_uid();
    if (!uid) return call.reply_error(proto::errc::internal, "SO_PEERCRED: " + errno_text(errno));
    if (auto refused = call.srv.sessions().add(&call.conn, *uid, *q))
        return call.reply_error(refused->first, refused->second);
    call.conn.set_registered_session(q->name);
    call.reply(proto::encode(proto::make_result(call.id, proto::json{{"name", q->name}})));
}

void session_end(const request_call& call) {
    auto q = proto::parse_session_end_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    if (call.conn.registered_session().empty())
        return call.reply_error(proto::errc::not_found, "no session is registered on this connection");
    call.srv.sessions().end(call.conn.registered_session(), *q);
    call.conn.set_registered_session({});
    call.reply(proto::encode(proto::make_result(call.id)));
}

void session_list(const request_call& call) {
    auto st = call.conn.start_request<listing_state>(call.id);
    call.conn.spawn_request(st, session_listing(call.srv, call.conn.shared_from_this(), st), "session listing failed");
}

} // namespace machine::agent::requests
