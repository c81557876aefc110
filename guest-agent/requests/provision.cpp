// provision: the step engine (provision.hpp); at most one job in the agent at a time.
// provision.pending: which steps a provision would not skip as unchanged.
#include "connection.hpp"
#include "log.hpp"
#include "provision.hpp"
#include "requests.hpp"
#include "server_core.hpp"

namespace machine::agent::requests {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;

struct provision_state : request_state {
    provision_state(std::uint64_t id, std::shared_ptr<provision_job> job) : request_state(id), job(std::move(job)) {}
    std::shared_ptr<provision_job> job;
    void stop() override { job->cancel(); }
    void kill_now() override { job->kill_now(); }
};

// The job stays the server's `provision` until this task ends.
awaitable<void> provision_task(server& srv, std::shared_ptr<connection> c, std::shared_ptr<provision_state> st) {
    struct release {
        server& srv;
        const std::shared_ptr<provision_job>& job;
        ~release() {
            if (srv.provision == job) srv.provision.reset();
        }
    } released_at_end{srv, st->job};
    const auto result = co_await st->job->run();
    // After shutting_down (already sent) this does nothing; the journal has the story.
    c->post_final(*st, proto::encode(proto::make_provision_result(st->id, result)));
}

} // namespace

void provision(const request_call& call) {
    auto q = proto::parse_provision_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    server& srv = call.srv;
    if (srv.provision) return call.reply_error(proto::errc::busy, "provision '" + srv.provision->plan() + "' is running");
    auto job = std::make_shared<provision_job>(srv.provision_setup_for_job(), std::move(*q));
    // Every user first: a plan that cannot finish does not start.
    if (auto missing = job->resolve_users()) return call.reply_error(proto::errc::no_such_user, *missing);
    auto st = call.conn.start_request<provision_state>(call.id, job);
    srv.provision = job;
    call.conn.spawn_request(st, provision_task(srv, call.conn.shared_from_this(), st));
}

void provision_pending(const request_call& call) {
    auto q = proto::parse_provision_pending_request(call.message.body);
    if (!q) return call.reply_error(q.code, q.error);
    server& srv = call.srv;
    steps_state& state = *srv.provision_setup_for_job().state;
    // The file is the truth, read again as a provision does; while one runs, it keeps memory and
    // the file the same.
    if (!srv.provision) state.load();
    proto::provision_pending_result r;
    for (const auto& s : q->steps)
        if (!state.unchanged(s.name, s.hash)) r.pending.push_back(s.name);
    call.reply(proto::encode(proto::make_provision_pending_result(call.id, r)));
}

} // namespace machine::agent::requests
