// A connection to the guest agent through its relay (guest.hpp, class stream): requests,
// streamed replies, events.
//
// Deadlines: every request runs inside a request_scope that names it and sets when it must be
// answered (request_deadlines). Reads and writes race a sleep until that time (first_of), and the
// message loop also compares the clock with it for every line, so a flood that keeps the
// stream busy cannot keep a request alive past its deadline. A flood ends a request sooner:
// past max_bad_lines bad or unexpected lines it fails. Either closes the stream.
#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <system_error>
#include <variant>

#include <asio/error.hpp>

#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/ssh.hpp"

namespace machine::guest {

using asio::awaitable;
namespace pr = machine::protocol;
using namespace std::chrono_literals;

namespace {

std::string seconds_text(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g s", static_cast<double>(d.count()) / 1000.0);
    return buf;
}

// At most `max` bytes of text from the agent for a warning, cut at a character boundary (the
// sinks escape what is left).
std::string clipped(std::string_view text, std::size_t max = 64) {
    if (text.size() <= max) return std::string(text);
    std::size_t n = max;
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
    return std::string(text.substr(0, n)) + "...";
}

// The deadline's side of a race ended because the race itself was cancelled.
[[noreturn]] void aborted() { throw std::system_error(asio::error::operation_aborted); }

} // namespace

request_timeout::request_timeout(const std::string& vm, std::string request, std::chrono::milliseconds after,
                                 bool silence)
    : error((vm.empty() ? std::string() : "VM '" + vm + "': ") +
            (silence ? "the guest agent went silent during " + request + ": nothing for " + seconds_text(after)
                     : "the guest agent did not answer " + request + " within " + seconds_text(after))),
      request_(std::move(request)) {}

agent_unavailable::agent_unavailable(const std::string& vm, int relay_status)
    : error((vm.empty() ? std::string() : "VM '" + vm + "': ") +
            (relay_status == 127 ? std::string("the guest agent is not installed (no ") + agent_install_path + ")"
             : relay_status == 69 ? std::string("no guest agent is listening on ") + agent_socket
                                  : "the guest agent's relay exited with status " + std::to_string(relay_status))),
      relay_status_(relay_status) {}

agent_flood::agent_flood(const std::string& vm, const std::string& request, std::uint64_t lines)
    : error((vm.empty() ? std::string() : "VM '" + vm + "': ") + "the guest agent sent " + std::to_string(lines) +
            " bad or unexpected lines during " + request + "; gave up on it") {}

std::chrono::milliseconds provision_deadline(const pr::provision_request& request, std::chrono::milliseconds margin) {
    using ms = std::chrono::milliseconds;
    // Capped: a day per step and 512 steps stay far below overflow, but the request is the
    // caller's and may break the rules.
    constexpr ms cap = std::chrono::hours(24 * 365);
    ms total = margin;
    for (const auto& step : request.steps) {
        const ms timeout{static_cast<ms::rep>(std::min<std::uint64_t>(step.timeout_ms, 86'400'000))};
        const ms check = step.check.empty() ? ms(0) : 2 * std::min<ms>(timeout, 60s);
        total += timeout + 5s + check + 1s;
        if (total > cap) return cap;
    }
    return total;
}

// The request in flight: set by begin(), cleared (and what was counted of the agent's bad
// lines said) when the request ends, however it ends.
class connection::request_scope {
public:
    explicit request_scope(connection& c) : c_(&c) {}
    request_scope(request_scope&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
    request_scope(const request_scope&) = delete;
    request_scope& operator=(const request_scope&) = delete;
    request_scope& operator=(request_scope&&) = delete;
    ~request_scope() {
        if (!c_) return;
        c_->request_ = nullptr;
        c_->deadline_ = clock::time_point::max();
        c_->on_silence_ = false;
        try {
            c_->flush_problems();
        } catch (...) {
            // a warning that cannot be said must not turn into another failure
        }
    }

private:
    connection* c_;
};

connection::connection(std::unique_ptr<stream> s, std::function<void(const std::string&)> on_problem,
                       std::string vm)
    : stream_(std::move(s)), on_problem_(std::move(on_problem)), vm_(std::move(vm)),
      // Agent messages may carry `id: null` (errors about lines it could not decode).
      decoder_(pr::decoder_options{pr::max_line_bytes, false}) {}

connection::~connection() {
    if (stream_) stream_->close();
}

awaitable<std::unique_ptr<connection>> connection::open(std::shared_ptr<ssh::session> session,
                                                        std::function<void(const std::string&)> on_problem,
                                                        std::string socket, std::string relay) {
    std::string command = relay_command(socket, relay);
    ssh::channel_options options;
    options.discard_stderr = true;  // the relay's one line of complaint: its exit status says it
    auto ch = co_await session->exec(std::move(command), options);
    co_return std::make_unique<connection>(channel_stream(std::move(ch)), std::move(on_problem), session->vm_name());
}

// The relay's exit status once its output ended; nullopt when the stream ended without one or
// the way to the VM died. A hostile guest may never send it: waited for only briefly.
awaitable<std::optional<int>> connection::relay_exit_status() {
    try {
        auto r = co_await first_of(stream_->exit_status(), sleep_for(2s));
        if (r.index() == 0) co_return std::get<0>(r);
    } catch (const error&) {
    }
    co_return std::nullopt;
}

connection::request_scope connection::begin(const char* request, std::chrono::milliseconds limit, bool on_silence) {
    if (broken_)
        throw error((vm_.empty() ? std::string() : "VM '" + vm_ + "': ") +
                    "this connection to the guest agent was closed after a request timed out or was flooded");
    request_ = request;
    bad_lines_ = 0;
    limit_ = limit;
    on_silence_ = on_silence;
    deadline_ = clock::now() + limit;
    return request_scope(*this);
}

void connection::timed_out() {
    broken_ = true;
    stream_->close();  // a late answer must not be taken for the next request's
    throw request_timeout(vm_, request_ ? request_ : "a request", limit_, on_silence_);
}

void connection::problem(std::string_view kind, const std::string& detail) {
    ++bad_lines_;
    if (on_problem_)
        if (auto line = problems_.note(kind, detail, clock::now())) on_problem_(*line);
    if (bad_lines_ > deadlines_.max_bad_lines) {
        broken_ = true;
        stream_->close();
        // The error gives the count: no summary line besides it (`watch` reconnects to such an
        // agent about once a second, and each attempt would add one).
        problems_ = text::log_limiter{"the guest agent sent", "bad or unexpected line"};
        throw agent_flood(vm_, request_ ? request_ : "a request", bad_lines_);
    }
}

void connection::flush_problems() {
    if (!on_problem_) return;
    if (auto line = problems_.flush(clock::now())) on_problem_(*line);
}

// The next chunk from the agent, or a timeout at the request's deadline.
awaitable<std::optional<std::string>> connection::read_chunk() {
    if (deadline_ == clock::time_point::max()) co_return co_await stream_->read();  // a live subscription
    if (clock::now() >= deadline_) timed_out();
    // A failed read ends the race too (and is rethrown here).
    auto r = co_await first_of(stream_->read(), sleep_until(deadline_));
    if (r.index() == 1) {
        if (!std::get<1>(r)) aborted();
        timed_out();
    }
    co_return std::move(std::get<0>(r));
}

// The relay's end, once the agent's side is gone: a relay that failed (no agent listening, none
// installed) is agent_unavailable, one that ended well means the agent hung up.
void connection::relay_ended(std::optional<int> status) {
    if (status && *status != 0) throw agent_unavailable(vm_, *status);
    throw ssh::connection_lost("the guest agent closed the connection");
}

// Writes one line, as write_line. A relay that ended before the line went out (no agent: it
// exits at once) closes the stream under the write: said as for a read that found the end.
awaitable<void> connection::send_line(std::string& line, bool secret) {
    bool relay_gone = false;
    try {
        co_await write_line(line, secret);
    } catch (const ssh::connection_lost&) {
        throw;
    } catch (const error&) {
        if (!stream_->closed_by_remote()) throw;
        relay_gone = true;  // (no co_await in a handler)
    }
    if (relay_gone) relay_ended(co_await relay_exit_status());
}

// Writes one line (a `secret` one is wiped however the write ends), or times out at the
// request's deadline: an agent that stops reading fills the SSH window or the pipe, and the write would
// wait forever.
awaitable<void> connection::write_line(std::string& line, bool secret) {
    // `line` stays the caller's until this completes: a secret one is written from that buffer
    // and wiped (stream::write_secret), however the write ends.
    awaitable<void> write = secret ? stream_->write_secret(line) : stream_->write(std::move(line));
    if (deadline_ == clock::time_point::max()) {
        co_await std::move(write);
        co_return;
    }
    auto r = co_await first_of(std::move(write), sleep_until(deadline_));
    if (r.index() == 1) {
        if (!std::get<1>(r)) aborted();
        timed_out();
    }
}

awaitable<void> connection::send(const pr::json& message) {
    std::string line = pr::encode(message);
    co_await send_line(line, false);
}

// The next message for request `id` (or `also`, when non-zero). Anything else the agent sends
// is reported (rate-limited) and skipped: a misbehaving guest cannot make us act on a line we
// did not ask for, nor keep us past the request's deadline by sending lines.
awaitable<pr::message> connection::next_for(std::uint64_t id, std::uint64_t also) {
    for (;;) {
        while (next_pending_ < pending_.size()) {
            if (clock::now() >= deadline_) timed_out();
            pr::decoded item = std::move(pending_[next_pending_++]);
            if (auto* bad = std::get_if<pr::decode_error>(&item)) {
                const std::string code(pr::to_string(bad->code));
                problem(code, "bad line from the guest agent (" + code + "): " + clipped(bad->message, 200));
                continue;
            }
            auto& m = std::get<pr::message>(item);
            if (m.id && (*m.id == id || (also && *m.id == also))) {
                if (on_silence_) deadline_ = clock::now() + limit_;
                co_return std::move(m);
            }
            const std::string kind = "unexpected '" + clipped(m.type, 32) + "'";
            std::string what = kind + " message from the guest agent";
            if (m.type == pr::type::error)
                if (auto e = pr::parse_error(m.body))
                    what = "the guest agent reported: " + clipped(e->message, 200) + " (" + clipped(e->code, 32) + ")";
            problem(kind, what);
        }
        pending_.clear();
        next_pending_ = 0;
        auto chunk = co_await read_chunk();
        if (!chunk) {
            decoder_.finish(pending_);
            flush_problems();  // what was counted comes first
            for (auto& item : pending_)
                if (auto* bad = std::get_if<pr::decode_error>(&item); bad && on_problem_)
                    on_problem_("the guest agent's last line was cut off: " + clipped(bad->message, 200));
            pending_.clear();
            // The relay's exit status tells an agent that hung up (0) from none being there.
            relay_ended(co_await relay_exit_status());
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
        const std::string kind = "unexpected '" + clipped(m.type, 32) + "'";
        problem(kind, kind + " message from the guest agent");
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
    const auto scope = begin("hello", deadlines_.hello, false);
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
    const std::chrono::milliseconds silence = deadlines_.run_silence;
    co_return co_await run(std::move(request), std::move(on_output), silence);
}

awaitable<pr::run_result> connection::run(pr::run_request request,
                                          std::function<void(const pr::output_chunk&)> on_output,
                                          std::chrono::milliseconds silence) {
    // On silence: a command may run for hours, but not without the agent saying anything.
    const auto scope = begin("run", silence, true);
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
        } else {
            const std::string kind = "unexpected '" + clipped(m.type, 32) + "'";
            problem(kind, kind + " message in a run");
        }
    }
}

awaitable<std::uint64_t> connection::subscribe(std::uint64_t from_seq,
                                               std::function<bool(const pr::event_record&)> on_event,
                                               std::function<void(const pr::gap_notice&)> on_gap) {
    // On silence until `live` (a replay may be long, but not quiet); none once live: a journal
    // with nothing new is normal.
    const auto scope = begin("subscribe", deadlines_.subscribe_replay, true);
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
                problem("repeated event", "the guest agent repeated event " + std::to_string(e->seq));
                continue;
            }
            last = e->seq;
            if (!cancel_id && !on_event(*e)) {
                cancel_id = next_id_++;
                // From here on the agent has deadlines_.cancel to end the subscription.
                request_ = "cancel";
                limit_ = deadlines_.cancel;
                on_silence_ = false;
                deadline_ = clock::now() + limit_;
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
            // Replay caught up: from now on silence is normal (unless a cancel is pending).
            if (!cancel_id) {
                deadline_ = clock::time_point::max();
                on_silence_ = false;
            }
        } else if (m.type == pr::type::result) {
            subscription_done = true;
        } else if (m.type == pr::type::error) {
            refused(m);
        }
    }
    co_return last;
}

awaitable<pr::provision_result> connection::provision(pr::provision_request request) {
    const auto scope = begin("provision", provision_deadline(request, deadlines_.provision_margin), false);
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_provision_request(id, request);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_provision_result(m.body), "provision result");
}

awaitable<std::uint64_t> connection::emit(pr::emit_request request) {
    const auto scope = begin("emit", deadlines_.emit, false);
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_emit_request(id, request);
    const pr::message m = co_await call(id, message);
    const auto seq = m.body.find("seq");
    if (seq == m.body.end() || !seq->is_number_unsigned()) malformed("emit result", "no seq");
    co_return seq->get<std::uint64_t>();
}

awaitable<std::vector<pr::session_info>> connection::list_sessions() {
    const auto scope = begin("session.list", deadlines_.session_list, false);
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_session_list_request(id);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_session_list_result(m.body), "session list").sessions;
}

namespace {
// Wipes a line that holds secrets when the scope ends, whatever happened to it.
struct wipe_at_exit {
    std::string& line;
    ~wipe_at_exit() { pr::wipe_secret_bytes(line); }
};
} // namespace

awaitable<pr::secrets_render_result> connection::render_secrets(pr::secrets_render_request request) {
    const std::uint64_t id = next_id_++;
    pr::json message = pr::make_secrets_render_request(id, request);
    pr::wipe_secrets(request);
    std::string line;
    const wipe_at_exit wipe{line};  // e.g. when begin() refuses a connection that timed out
    try {
        line = pr::encode(message);
    } catch (const std::length_error&) {
        pr::wipe_secrets(message);
        throw error("the secret set '" + request.set + "' is too large for the guest agent: one request is at most " +
                    std::to_string(pr::max_line_bytes) + " bytes, base64 included (about 760 KiB of values)");
    }
    pr::wipe_secrets(message);
    const auto scope = begin("secrets.render", deadlines_.secrets_render, false);
    co_await send_line(line, true);  // wipes `line`, written or not
    pr::message m = co_await final_for(id);
    if (m.type == pr::type::error) refused(m);
    pr::secrets_render_result r = checked(pr::parse_secrets_render_result(m.body), "secrets.render result");
    if (r.set != request.set) malformed("secrets.render result", "it is for set '" + r.set + "'");
    co_return r;
}

awaitable<std::vector<std::string>> connection::clear_secrets(std::optional<std::string> set) {
    const auto scope = begin("secrets.clear", deadlines_.secrets_clear, false);
    const std::uint64_t id = next_id_++;
    pr::secrets_clear_request request;
    request.set = std::move(set);
    const pr::json message = pr::make_secrets_clear_request(id, request);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_secrets_clear_result(m.body), "secrets.clear result").cleared;
}

awaitable<std::vector<pr::envrc_secrets>> connection::discover_secrets() {
    const auto scope = begin("secrets.discover", deadlines_.secrets_discover, false);
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_secrets_discover_request(id);
    const pr::message m = co_await call(id, message);
    pr::secrets_discover_result r = checked(pr::parse_secrets_discover_result(m.body), "secrets.discover result");
    if (r.truncated && on_problem_)
        on_problem_("the guest agent left some repos or `use op_env` lines out of secrets.discover (too many to list)");
    co_return std::move(r.repos);
}

awaitable<std::vector<std::string>> connection::pending_steps(pr::provision_pending_request request) {
    const auto scope = begin("provision.pending", deadlines_.provision_pending, false);
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_provision_pending_request(id, request);
    const pr::message m = co_await call(id, message);
    pr::provision_pending_result r = checked(pr::parse_provision_pending_result(m.body), "provision.pending result");
    // The agent answers about the steps it was asked about, each once.
    std::vector<std::string> pending;
    for (auto& name : r.pending) {
        const bool asked = std::any_of(request.steps.begin(), request.steps.end(),
                                       [&](const pr::step_identity& s) { return s.name == name; });
        if (!asked || std::find(pending.begin(), pending.end(), name) != pending.end())
            throw error((vm_.empty() ? std::string() : "VM '" + vm_ + "': ") +
                        "the guest agent answered provision.pending with a step it was not asked about");
        pending.push_back(std::move(name));
    }
    co_return pending;
}

awaitable<std::vector<pr::secret_set_info>> connection::list_secrets() {
    const auto scope = begin("secrets.list", deadlines_.secrets_list, false);
    const std::uint64_t id = next_id_++;
    const pr::json message = pr::make_secrets_list_request(id);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_secrets_list_result(m.body), "secrets.list result").sets;
}

awaitable<pr::network_apply_result> connection::apply_network(std::string ruleset) {
    const auto scope = begin("network.apply", deadlines_.network_apply, false);
    const std::uint64_t id = next_id_++;
    pr::network_apply_request request;
    request.ruleset = std::move(ruleset);
    const pr::json message = pr::make_network_apply_request(id, request);
    const pr::message m = co_await call(id, message);
    co_return checked(pr::parse_network_apply_result(m.body), "network.apply result");
}

awaitable<std::unique_ptr<connection>> connect_agent(std::shared_ptr<ssh::session> session,
                                                     std::chrono::milliseconds patience,
                                                     std::function<void(const std::string&)> on_problem,
                                                     std::string socket, std::string relay) {
    const auto deadline = std::chrono::steady_clock::now() + patience;
    for (;;) {
        std::exception_ptr failure;
        try {
            auto conn = co_await connection::open(session, on_problem, socket, relay);
            co_return conn;
        } catch (const ssh::connection_lost&) {
            throw;  // the VM is gone: no point retrying
        } catch (const error&) {
            failure = std::current_exception();  // the agent is not listening yet
        }
        if (std::chrono::steady_clock::now() >= deadline) std::rethrow_exception(failure);
        const bool slept = co_await sleep_for(std::chrono::milliseconds(250));  // named: see async.hpp
        if (!slept) aborted();
    }
}

} // namespace machine::guest
