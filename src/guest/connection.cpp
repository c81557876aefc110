// A connection to the guest agent over an SSH channel: requests, streamed replies, events.
#include <stdexcept>

#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "machine/guest.hpp"
#include "machine/ssh.hpp"

namespace machine::guest {

using asio::awaitable;
namespace pr = machine::protocol;

connection::connection(std::shared_ptr<ssh::channel> ch, std::function<void(const std::string&)> on_problem)
    : channel_(std::move(ch)), on_problem_(std::move(on_problem)),
      // Agent messages may carry `id: null` (errors about lines it could not decode).
      decoder_(pr::decoder_options{pr::max_line_bytes, false}) {}

connection::~connection() {
    if (channel_) channel_->close();
}

awaitable<std::unique_ptr<connection>> connection::open(std::shared_ptr<ssh::session> session,
                                                        std::function<void(const std::string&)> on_problem,
                                                        std::string socket) {
    auto ch = co_await session->open_unix_socket(std::move(socket));
    co_return std::make_unique<connection>(std::move(ch), std::move(on_problem));
}

awaitable<void> connection::send(const pr::json& message) {
    std::string line = pr::encode(message);
    co_await channel_->write(std::move(line));
}

// The next message for request `id` (or `also`, when non-zero). Anything else the agent sends
// is reported and skipped: a misbehaving guest cannot make us act on a line we did not ask for.
awaitable<pr::message> connection::next_for(std::uint64_t id, std::uint64_t also) {
    for (;;) {
        while (next_pending_ < pending_.size()) {
            pr::decoded item = std::move(pending_[next_pending_++]);
            if (auto* bad = std::get_if<pr::decode_error>(&item)) {
                if (on_problem_) on_problem_("bad line from the guest agent (" + std::string(pr::to_string(bad->code)) + "): " + bad->message);
                continue;
            }
            auto& m = std::get<pr::message>(item);
            if (m.id && (*m.id == id || (also && *m.id == also))) co_return std::move(m);
            if (on_problem_) {
                std::string what = "unexpected '" + m.type + "' message from the guest agent";
                if (m.type == pr::type::error)
                    if (auto e = pr::parse_error(m.body)) what = "the guest agent reported: " + e->message + " (" + e->code + ")";
                on_problem_(what);
            }
        }
        pending_.clear();
        next_pending_ = 0;
        auto chunk = co_await channel_->read();
        if (!chunk) {
            decoder_.finish(pending_);
            for (auto& item : pending_)
                if (auto* bad = std::get_if<pr::decode_error>(&item); bad && on_problem_)
                    on_problem_("the guest agent's last line was cut off: " + bad->message);
            pending_.clear();
            throw ssh::connection_lost("the guest agent closed the connection");
        }
        decoder_.feed(*chunk, pending_);
    }
}

namespace {
[[noreturn]] void refused(const pr::message& m) {
    auto e = pr::parse_error(m.body);
    if (e) throw agent_error(e->code, e->message);
    throw agent_error("internal", "malformed error message");
}

[[noreturn]] void malformed(const std::string& what, const std::string& why) {
    throw error("the guest agent sent a malformed " + what + ": " + why);
}
} // namespace

// The final message of a request that streams nothing; anything else with its id is reported
// and skipped.
awaitable<pr::message> connection::final_for(std::uint64_t id) {
    for (;;) {
        pr::message m = co_await next_for(id);
        if (pr::is_final(m.type)) co_return m;
        if (on_problem_) on_problem_("unexpected '" + m.type + "' message from the guest agent");
    }
}

// Sends a request that streams nothing and returns its result message; an `error` reply
// becomes agent_error.
awaitable<pr::message> connection::call(std::uint64_t id, const pr::json& message) {
    co_await send(message);
    pr::message m = co_await final_for(id);
    if (m.type == pr::type::error) refused(m);
    co_return m;
}

namespace {
// The value of a parsed result, or the error that says which result was malformed and why.
template <typename T>
T checked(pr::parsed<T> r, const char* what) {
    if (!r) malformed(what, r.error);
    return std::move(*r);
}
} // namespace

awaitable<pr::hello_result> connection::hello(std::string client) {
    const std::uint64_t id = next_id_++;
    // Named first: a temporary aggregate inside a co_await expression is destroyed twice by
    // g++ 12 (house style §4).
    pr::hello_request request;
    request.client = std::move(client);
    const pr::json message = pr::make_hello_request(id, request);
    const pr::message m = co_await call(id, message);
    pr::hello_result r = checked(pr::parse_hello_result(m.body), "hello result");
    if (r.protocol != pr::version)
        throw error("the guest agent speaks protocol " + std::to_string(r.protocol) + ", this machine speaks " +
                    std::to_string(pr::version));
    co_return r;
}

awaitable<pr::run_result> connection::run(pr::run_request request,
                                          std::function<void(const pr::output_chunk&)> on_output) {
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_run_request(id, request);
    co_await send(message);
    for (;;) {
        const pr::message m = co_await next_for(id);
        if (m.type == pr::type::output) {
            auto chunk = pr::parse_output(m.body);
            if (!chunk) malformed("output message", chunk.error);
            if (on_output) on_output(*chunk);
        } else if (m.type == pr::type::result) {
            auto r = pr::parse_run_result(m.body);
            if (!r) malformed("run result", r.error);
            co_return std::move(*r);
        } else if (m.type == pr::type::error) {
            refused(m);
        } else if (on_problem_) {
            on_problem_("unexpected '" + m.type + "' message in a run");
        }
    }
}

awaitable<std::uint64_t> connection::subscribe(std::uint64_t from_seq,
                                               std::function<bool(const pr::event_record&)> on_event,
                                               std::function<void(const pr::gap_notice&)> on_gap) {
    const std::uint64_t id = next_id_++;
    pr::subscribe_request request;
    request.from_seq = from_seq;
    const pr::json message = pr::make_subscribe_request(id, request);
    co_await send(message);
    std::uint64_t last = from_seq;
    std::uint64_t cancel_id = 0;
    bool subscription_done = false, cancel_done = false;
    while (!subscription_done || (cancel_id && !cancel_done)) {
        const pr::message m = co_await next_for(id, cancel_id);
        if (cancel_id && m.id == cancel_id) {
            cancel_done = true;  // its result or not_found (the subscription ended first)
            continue;
        }
        if (m.type == pr::type::event) {
            auto e = pr::parse_event(m.body);
            if (!e) malformed("event", e.error);
            // Exactly once, in order: a seq at or below the last one is a duplicate.
            if (e->seq <= last) {
                if (on_problem_) on_problem_("the guest agent repeated event " + std::to_string(e->seq));
                continue;
            }
            last = e->seq;
            if (!cancel_id && !on_event(*e)) {
                cancel_id = next_id_++;
                pr::cancel_request cancel;
                cancel.target = id;
                const pr::json cancel_message = pr::make_cancel_request(cancel_id, cancel);
                co_await send(cancel_message);
            }
        } else if (m.type == pr::type::gap) {
            auto g = pr::parse_gap(m.body);
            if (g && on_gap) on_gap(*g);
            if (g) last = std::max(last, g->to_seq);
        } else if (m.type == pr::type::live) {
            // replay caught up; nothing to do
        } else if (m.type == pr::type::result) {
            subscription_done = true;
        } else if (m.type == pr::type::error) {
            refused(m);
        }
    }
    co_return last;
}

awaitable<pr::provision_result> connection::provision(pr::provision_request request) {
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_provision_request(id, request);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_provision_result(m.body), "provision result");
}

awaitable<std::uint64_t> connection::emit(pr::emit_request request) {
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_emit_request(id, request);
    const pr::message m = co_await call(id, message);
    const auto seq = m.body.find("seq");
    if (seq == m.body.end() || !seq->is_number_unsigned()) malformed("emit result", "no seq");
    co_return seq->get<std::uint64_t>();
}

awaitable<std::vector<pr::session_info>> connection::list_sessions() {
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_session_list_request(id);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_session_list_result(m.body), "session list").sessions;
}

awaitable<pr::secrets_render_result> connection::render_secrets(pr::secrets_render_request request) {
    const std::uint64_t id = next_id_++;
    pr::json message = pr::make_secrets_render_request(id, request);
    pr::wipe_secrets(request);
    std::string line;
    try {
        line = pr::encode(message);
    } catch (const std::length_error&) {
        pr::wipe_secrets(message);
        throw error("the secret set '" + request.set + "' is too large for the guest agent: one request is at most " +
                    std::to_string(pr::max_line_bytes) + " bytes, base64 included (about 760 KiB of values)");
    }
    pr::wipe_secrets(message);
    co_await channel_->write(std::move(line));
    pr::message m = co_await final_for(id);
    if (m.type == pr::type::error) refused(m);
    pr::secrets_render_result r = checked(pr::parse_secrets_render_result(m.body), "secrets.render result");
    if (r.set != request.set) malformed("secrets.render result", "it is for set '" + r.set + "'");
    co_return r;
}

awaitable<std::vector<std::string>> connection::clear_secrets(std::optional<std::string> set) {
    const std::uint64_t id = next_id_++;
    pr::secrets_clear_request request;
    request.set = std::move(set);
    const pr::json message = pr::make_secrets_clear_request(id, request);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_secrets_clear_result(m.body), "secrets.clear result").cleared;
}

awaitable<std::vector<pr::envrc_secrets>> connection::discover_secrets() {
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_secrets_discover_request(id);
    const pr::message m = co_await call(id, message);
    pr::secrets_discover_result r = checked(pr::parse_secrets_discover_result(m.body), "secrets.discover result");
    if (r.truncated && on_problem_)
        on_problem_("the guest agent left some repos or `use op_env` lines out of secrets.discover (too many to list)");
    co_return std::move(r.repos);
}

awaitable<std::vector<pr::secret_set_info>> connection::list_secrets() {
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_secrets_list_request(id);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_secrets_list_result(m.body), "secrets.list result").sets;
}

awaitable<std::unique_ptr<connection>> connect_agent(std::shared_ptr<ssh::session> session,
                                                     std::chrono::milliseconds patience,
                                                     std::function<void(const std::string&)> on_problem) {
    const auto deadline = std::chrono::steady_clock::now() + patience;
    asio::steady_timer retry(co_await asio::this_coro::executor);
    for (;;) {
        std::exception_ptr failure;
        try {
            auto conn = co_await connection::open(session, on_problem);
            co_return conn;
        } catch (const ssh::connection_lost&) {
            throw;  // the VM is gone: no point retrying
        } catch (const error&) {
            failure = std::current_exception();  // the agent is not listening yet
        }
        if (std::chrono::steady_clock::now() >= deadline) std::rethrow_exception(failure);
        retry.expires_after(std::chrono::milliseconds(250));
        co_await retry.async_wait(asio::use_awaitable);
    }
}

} // namespace machine::guest
