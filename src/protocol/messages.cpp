// Typed messages: builders and field-checking parsers for every request and agent message.
#include <algorithm>
#include <limits>

#include "machine/protocol.hpp"

namespace machine::protocol {

namespace {

// Reads fields of one message; the first problem found is kept in error().
class field_reader {
public:
    explicit field_reader(const json& body) : body_(body) {}

    const std::string& error() const { return error_; }
    bool ok() const { return error_.empty() && body_.is_object(); }

    const json* find(const char* key) {
        if (!body_.is_object()) {
            fail("the message is not an object");
            return nullptr;
        }
        const auto it = body_.find(key);
        if (it == body_.end() || it->is_null()) return nullptr;
        return &*it;
    }

    std::optional<std::string> string(const char* key, bool required, bool allow_nul = false) {
        const json* v = find(key);
        if (!v) return missing(key, required), std::nullopt;
        if (!v->is_string()) return fail(std::string("'") + key + "' must be a string"), std::nullopt;
        const auto& s = v->get_ref<const std::string&>();
        if (!allow_nul && s.find('\0') != std::string::npos)
            return fail(std::string("'") + key + "' contains a NUL character"), std::nullopt;
        return s;
    }

    std::optional<std::uint64_t> uint(const char* key, bool required,
                                      std::uint64_t max = std::numeric_limits<std::uint64_t>::max()) {
        const json* v = find(key);
        if (!v) return missing(key, required), std::nullopt;
        std::optional<std::uint64_t> n;
        if (v->is_number_unsigned()) n = v->get<std::uint64_t>();
        else if (v->is_number_integer() && v->get<std::int64_t>() >= 0)
            n = static_cast<std::uint64_t>(v->get<std::int64_t>());
        if (!n || *n > max) {
            return fail(std::string("'") + key + "' must be an integer from 0 to " + std::to_string(max)),
                   std::nullopt;
        }
        return n;
    }

    std::optional<std::int64_t> integer(const char* key, bool required) {
        const json* v = find(key);
        if (!v) return missing(key, required), std::nullopt;
        if (!v->is_number_integer()) return fail(std::string("'") + key + "' must be an integer"), std::nullopt;
        return v->get<std::int64_t>();
    }

    std::optional<bool> boolean(const char* key, bool required) {
        const json* v = find(key);
        if (!v) return missing(key, required), std::nullopt;
        if (!v->is_boolean()) return fail(std::string("'") + key + "' must be true or false"), std::nullopt;
        return v->get<bool>();
    }

    const json* object(const char* key, bool required) {
        const json* v = find(key);
        if (!v) return missing(key, required), nullptr;
        if (!v->is_object()) return fail(std::string("'") + key + "' must be an object"), nullptr;
        return v;
    }

    const json* array(const char* key, bool required) {
        const json* v = find(key);
        if (!v) return missing(key, required), nullptr;
        if (!v->is_array()) return fail(std::string("'") + key + "' must be an array"), nullptr;
        return v;
    }

    void fail(std::string why) {
        if (error_.empty()) error_ = std::move(why);
    }

private:
    void missing(const char* key, bool required) {
        if (required) fail(std::string("missing '") + key + "'");
    }

    const json& body_;
    std::string error_;
};

template <class T>
parsed<T> done(field_reader& r, T value) {
    if (!r.ok()) return parsed<T>::fail(r.error().empty() ? "the message is not an object" : r.error());
    return parsed<T>{std::move(value), {}, errc::bad_request};
}

bool is_envelope_key(std::string_view k) { return k == "v" || k == "id" || k == "type"; }

} // namespace

bool is_valid_event_name(std::string_view name) {
    if (name.empty() || name.size() > 64) return false;
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (!alnum(name.front())) return false;
    return std::all_of(name.begin(), name.end(),
                       [&](char c) { return alnum(c) || c == '.' || c == '_' || c == '-'; });
}

bool is_reserved_field(std::string_view key) {
    return is_envelope_key(key) || key == "seq" || key == "ts" || key == "event";
}

// --- hello ---------------------------------------------------------------------------------

json make_hello_request(std::uint64_t id, const hello_request& r) {
    json j = make_request(id, type::hello);
    if (!r.client.empty()) j["client"] = r.client;
    return j;
}

parsed<hello_request> parse_hello_request(const json& body) {
    field_reader r(body);
    hello_request h;
    if (auto c = r.string("client", false, true)) h.client = *c;
    return done(r, std::move(h));
}

json make_hello_result(std::uint64_t id, const hello_result& h) {
    json j = make_envelope(id, type::result);
    j["protocol"] = h.protocol;
    j["agent_version"] = h.agent_version;
    j["capabilities"] = h.capabilities;
    j["boot_id"] = h.boot_id;
    j["journal"] = {{"id", h.journal.id}, {"first_seq", h.journal.first_seq}, {"last_seq", h.journal.last_seq}};
    j["limits"] = {{"max_line", h.max_line}, {"output_chunk", h.output_chunk}, {"max_event_bytes", h.max_event_bytes}};
    return j;
}

parsed<hello_result> parse_hello_result(const json& body) {
    field_reader r(body);
    hello_result h;
    if (auto p = r.integer("protocol", true)) h.protocol = static_cast<int>(*p);
    if (auto s = r.string("agent_version", true)) h.agent_version = *s;
    if (auto s = r.string("boot_id", false)) h.boot_id = *s;
    if (const json* caps = r.array("capabilities", true)) {
        for (const auto& c : *caps) {
            if (!c.is_string()) r.fail("'capabilities' must hold strings");
            else h.capabilities.push_back(c.get<std::string>());
        }
    }
    if (const json* jr = r.object("journal", true)) {
        field_reader jf(*jr);
        if (auto s = jf.string("id", false)) h.journal.id = *s;
        if (auto n = jf.uint("first_seq", true)) h.journal.first_seq = *n;
        if (auto n = jf.uint("last_seq", true)) h.journal.last_seq = *n;
        if (!jf.ok()) r.fail("journal: " + jf.error());
    }
    if (const json* lim = r.object("limits", false)) {
        field_reader lf(*lim);
        if (auto n = lf.uint("max_line", false)) h.max_line = *n;
        if (auto n = lf.uint("output_chunk", false)) h.output_chunk = *n;
        if (auto n = lf.uint("max_event_bytes", false)) h.max_event_bytes = *n;
        if (!lf.ok()) r.fail("limits: " + lf.error());
    }
    return done(r, std::move(h));
}

// --- run -----------------------------------------------------------------------------------

json make_run_request(std::uint64_t id, const run_request& q) {
    json j = make_request(id, type::run);
    j["argv"] = q.argv;
    j["user"] = q.user;
    if (q.cwd) j["cwd"] = *q.cwd;
    if (!q.env.empty()) {
        json env = json::object();
        for (const auto& [k, v] : q.env) env[k] = v;
        j["env"] = std::move(env);
    }
    if (q.stdin_data) j["stdin_b64"] = base64_encode(*q.stdin_data);
    if (q.grace_ms) j["grace_ms"] = *q.grace_ms;
    return j;
}

parsed<run_request> parse_run_request(const json& body) {
    field_reader r(body);
    run_request q;
    if (const json* argv = r.array("argv", true)) {
        if (argv->empty()) r.fail("'argv' must not be empty");
        else if (argv->size() > max_argv) r.fail("'argv' has more than " + std::to_string(max_argv) + " items");
        std::size_t i = 0;
        for (const auto& a : *argv) {
            if (!a.is_string()) {
                r.fail("argv[" + std::to_string(i) + "] must be a string");
                break;
            }
            const auto& s = a.get_ref<const std::string&>();
            if (s.find('\0') != std::string::npos) {
                r.fail("argv[" + std::to_string(i) + "] contains a NUL character");
                break;
            }
            q.argv.push_back(s);
            ++i;
        }
        if (!q.argv.empty() && q.argv[0].empty()) r.fail("argv[0] must not be empty");
    }
    if (auto u = r.string("user", true)) {
        if (u->empty()) r.fail("'user' must not be empty");
        q.user = *u;
    }
    if (auto c = r.string("cwd", false)) {
        if (c->empty() || c->front() != '/') r.fail("'cwd' must be an absolute path");
        q.cwd = *c;
    }
    if (const json* env = r.object("env", false)) {
        for (const auto& [k, v] : env->items()) {
            if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos) {
                r.fail("env: invalid variable name '" + k + "'");
                break;
            }
            if (!v.is_string()) {
                r.fail("env: '" + k + "' must be a string");
                break;
            }
            const auto& s = v.get_ref<const std::string&>();
            if (s.find('\0') != std::string::npos) {
                r.fail("env: '" + k + "' contains a NUL character");
                break;
            }
            q.env.emplace_back(k, s);
        }
    }
    if (auto s = r.string("stdin_b64", false)) {
        q.stdin_data = base64_decode(*s);
        if (!q.stdin_data) r.fail("'stdin_b64' is not valid base64");
    }
    if (auto g = r.uint("grace_ms", false, 3'600'000)) q.grace_ms = static_cast<std::uint32_t>(*g);
    return done(r, std::move(q));
}

json make_output(std::uint64_t id, std::string_view stream, std::string_view data) {
    json j = make_envelope(id, type::output);
    j["stream"] = stream;
    j["data_b64"] = base64_encode(data);
    return j;
}

parsed<output_chunk> parse_output(const json& body) {
    field_reader r(body);
    output_chunk o;
    if (auto s = r.string("stream", true)) {
        if (*s != "stdout" && *s != "stderr") r.fail("'stream' must be stdout or stderr");
        o.stream = *s;
    }
    if (auto d = r.string("data_b64", true)) {
        if (auto raw = base64_decode(*d)) o.data = std::move(*raw);
        else r.fail("'data_b64' is not valid base64");
    }
    return done(r, std::move(o));
}

json make_run_result(std::uint64_t id, const run_result& q) {
    json j = make_envelope(id, type::result);
    if (q.signal) j["signal"] = *q.signal;
    else j["exit_code"] = q.exit_code.value_or(-1);
    j["cancelled"] = q.cancelled;
    j["duration_ms"] = q.duration_ms;
    return j;
}

parsed<run_result> parse_run_result(const json& body) {
    field_reader r(body);
    run_result q;
    if (auto e = r.integer("exit_code", false)) q.exit_code = static_cast<int>(*e);
    if (auto s = r.integer("signal", false)) q.signal = static_cast<int>(*s);
    if (q.exit_code.has_value() == q.signal.has_value()) r.fail("exactly one of 'exit_code' and 'signal' is expected");
    if (auto c = r.boolean("cancelled", false)) q.cancelled = *c;
    if (auto d = r.uint("duration_ms", false)) q.duration_ms = *d;
    return done(r, std::move(q));
}

// --- cancel, health, subscribe ---------------------------------------------------------------

json make_cancel_request(std::uint64_t id, const cancel_request& q) {
    json j = make_request(id, type::cancel);
    j["target"] = q.target;
    return j;
}

parsed<cancel_request> parse_cancel_request(const json& body) {
    field_reader r(body);
    cancel_request q;
    if (auto t = r.uint("target", true, max_id)) q.target = *t;
    return done(r, q);
}

json make_health_result(std::uint64_t id, const health_result& h) {
    json j = make_envelope(id, type::result);
    j["uptime_ms"] = h.uptime_ms;
    j["rss_kib"] = h.rss_kib;
    j["clients"] = h.clients;
    j["running"] = h.running;
    j["subscribers"] = h.subscribers;
    j["journal"] = {{"first_seq", h.journal_first_seq},
                    {"last_seq", h.journal_last_seq},
                    {"events", h.journal_events},
                    {"bytes", h.journal_bytes}};
    return j;
}

parsed<health_result> parse_health_result(const json& body) {
    field_reader r(body);
    health_result h;
    if (auto n = r.uint("uptime_ms", true)) h.uptime_ms = *n;
    if (auto n = r.uint("rss_kib", true)) h.rss_kib = *n;
    if (auto n = r.uint("clients", true)) h.clients = *n;
    if (auto n = r.uint("running", true)) h.running = *n;
    if (auto n = r.uint("subscribers", true)) h.subscribers = *n;
    if (const json* jr = r.object("journal", true)) {
        field_reader jf(*jr);
        if (auto n = jf.uint("first_seq", true)) h.journal_first_seq = *n;
        if (auto n = jf.uint("last_seq", true)) h.journal_last_seq = *n;
        if (auto n = jf.uint("events", true)) h.journal_events = *n;
        if (auto n = jf.uint("bytes", true)) h.journal_bytes = *n;
        if (!jf.ok()) r.fail("journal: " + jf.error());
    }
    return done(r, h);
}

json make_subscribe_request(std::uint64_t id, const subscribe_request& q) {
    json j = make_request(id, type::subscribe);
    j["from_seq"] = q.from_seq;
    return j;
}

parsed<subscribe_request> parse_subscribe_request(const json& body) {
    field_reader r(body);
    subscribe_request q;
    if (auto n = r.uint("from_seq", false)) q.from_seq = *n;
    return done(r, q);
}

// --- events ----------------------------------------------------------------------------------

namespace {
void append_event_fields(json& j, const event_record& e) {
    j["seq"] = e.seq;
    j["ts"] = e.ts;
    j["event"] = e.event;
    if (e.fields.is_object())
        for (const auto& [k, v] : e.fields.items())
            if (!is_reserved_field(k)) j[k] = v;
}
} // namespace

json make_event(std::uint64_t id, const event_record& e) {
    json j = make_envelope(id, type::event);
    append_event_fields(j, e);
    return j;
}

parsed<event_record> parse_event(const json& body) {
    field_reader r(body);
    event_record e;
    if (auto n = r.uint("seq", true)) e.seq = *n;
    if (auto s = r.string("ts", true)) e.ts = *s;
    if (auto s = r.string("event", true)) e.event = *s;
    if (body.is_object())
        for (const auto& [k, v] : body.items())
            if (!is_reserved_field(k)) e.fields[k] = v;
    return done(r, std::move(e));
}

std::string journal_line(const event_record& e) {
    json j = json::object();
    append_event_fields(j, e);
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string event_message_from_journal_line(std::uint64_t id, std::string_view line) {
    // journal_line() always starts with {"seq": so the envelope goes in front of its first key.
    std::string out = R"({"v":1,"id":)";
    out += std::to_string(id);
    out += R"(,"type":"event",)";
    if (!line.empty()) line.remove_prefix(1);
    out += line;
    out += '\n';
    return out;
}

json make_gap(std::uint64_t id, const gap_notice& g) {
    json j = make_envelope(id, type::gap);
    j["from_seq"] = g.from_seq;
    j["to_seq"] = g.to_seq;
    return j;
}

parsed<gap_notice> parse_gap(const json& body) {
    field_reader r(body);
    gap_notice g;
    if (auto n = r.uint("from_seq", true)) g.from_seq = *n;
    if (auto n = r.uint("to_seq", true)) g.to_seq = *n;
    return done(r, g);
}

json make_live(std::uint64_t id, std::uint64_t seq) {
    json j = make_envelope(id, type::live);
    j["seq"] = seq;
    return j;
}

json make_emit_request(std::uint64_t id, const emit_request& q) {
    json j = make_request(id, type::emit);
    j["event"] = q.event;
    j["fields"] = q.fields.is_object() ? q.fields : json::object();
    return j;
}

parsed<emit_request> parse_emit_request(const json& body) {
    field_reader r(body);
    emit_request q;
    if (auto s = r.string("event", true)) {
        if (!is_valid_event_name(*s))
            r.fail("'event' must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit");
        q.event = *s;
    }
    if (const json* f = r.object("fields", false)) {
        for (const auto& [k, v] : f->items()) {
            if (is_reserved_field(k)) {
                r.fail("fields: '" + k + "' is reserved (v, id, type, seq, ts, event)");
                break;
            }
        }
        q.fields = *f;
    }
    if (!r.ok()) return done(r, std::move(q));
    // What the journal will hold: the fields plus seq, ts and the name (≤ ~70 bytes).
    const std::size_t size = q.fields.dump(-1, ' ', false, json::error_handler_t::replace).size() +
                             q.event.size() + 80;
    if (size > max_event_bytes)
        return parsed<emit_request>::fail("the event is larger than " + std::to_string(max_event_bytes) +
                                              " bytes",
                                          errc::too_large);
    return done(r, std::move(q));
}

parsed<error_reply> parse_error(const json& body) {
    field_reader r(body);
    error_reply e;
    if (auto s = r.string("code", true, true)) e.code = *s;
    if (auto s = r.string("message", false, true)) e.message = *s;
    return done(r, std::move(e));
}

} // namespace machine::protocol
