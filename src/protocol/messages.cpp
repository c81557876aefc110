// Typed messages: builders and field-checking parsers for every request and agent message.
#include <algorithm>
#include <limits>

#include "machine/platform.hpp"
#include "machine/protocol.hpp"
#include "machine/text.hpp"

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

// `items`, the array field `field` of r's message: at most `max` objects, each read from its own
// field_reader by `read_item(item_reader, item_json, value, where)` into a T appended to `out`.
// read_item may check the item against those before it (in `out`) and add to `where` (the
// item's place in messages, "field[i]") what is known to be safe to show. The first problem
// fails `r`, naming the item: "field[i] must be an object", "field[i]: <what>". A rejected item
// is appended all the same, so that a caller wiping secrets on failure reaches it.
template <class T, class ReadItem>
void read_objects(field_reader& r, const json& items, const char* field, std::size_t max, std::vector<T>& out,
                  ReadItem read_item) {
    if (items.size() > max) r.fail(std::string("'") + field + "' has more than " + std::to_string(max) + " items");
    if (!r.ok()) return;
    out.reserve(out.size() + items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
        std::string where = std::string(field) + "[" + std::to_string(i) + "]";
        const json& item = items[i];
        if (!item.is_object()) {
            r.fail(where + " must be an object");
            return;
        }
        field_reader ir(item);
        T value;
        read_item(ir, item, value, where);
        out.push_back(std::move(value));
        if (!ir.ok()) {
            r.fail(where + ": " + ir.error());
            return;
        }
    }
}

// An argv array (`field` names it in errors): 1..max_argv strings without NUL, argv[0] not empty.
void read_argv(field_reader& r, const json& argv, const std::string& field, std::vector<std::string>& out) {
    if (argv.empty()) r.fail("'" + field + "' must not be empty");
    else if (argv.size() > max_argv) r.fail("'" + field + "' has more than " + std::to_string(max_argv) + " items");
    std::size_t i = 0;
    for (const auto& a : argv) {
        if (!a.is_string()) {
            r.fail(field + "[" + std::to_string(i) + "] must be a string");
            return;
        }
        const auto& s = a.get_ref<const std::string&>();
        if (s.find('\0') != std::string::npos) {
            r.fail(field + "[" + std::to_string(i) + "] contains a NUL character");
            return;
        }
        out.push_back(s);
        ++i;
    }
    if (!out.empty() && out[0].empty()) r.fail(field + "[0] must not be empty");
}

// An `env` object of string -> string, names without '=' or NUL.
void read_env(field_reader& r, const json& env, std::vector<std::pair<std::string, std::string>>& out) {
    for (const auto& [k, v] : env.items()) {
        if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos) {
            r.fail("env: invalid variable name '" + k + "'");
            return;
        }
        if (!v.is_string()) {
            r.fail("env: '" + k + "' must be a string");
            return;
        }
        const auto& s = v.get_ref<const std::string&>();
        if (s.find('\0') != std::string::npos) {
            r.fail("env: '" + k + "' contains a NUL character");
            return;
        }
        out.emplace_back(k, s);
    }
}

json env_object(const std::vector<std::pair<std::string, std::string>>& env) {
    json j = json::object();
    for (const auto& [k, v] : env) j[k] = v;
    return j;
}

// Characters (code points) of a UTF-8 string: the bytes that do not continue a sequence.
std::size_t utf8_length(std::string_view s) {
    return static_cast<std::size_t>(
        std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

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
    j["deployment"] = {{"binary_sha256", h.deployment.binary_sha256},
                       {"unit_sha256", h.deployment.unit_sha256},
                       {"user", h.deployment.user}};
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
    if (const json* dep = r.object("deployment", false)) {
        field_reader df(*dep);
        if (auto s = df.string("binary_sha256", false)) h.deployment.binary_sha256 = *s;
        if (auto s = df.string("unit_sha256", false)) h.deployment.unit_sha256 = *s;
        if (auto s = df.string("user", false)) h.deployment.user = *s;
        if (!df.ok()) r.fail("deployment: " + df.error());
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
    if (!q.env.empty()) j["env"] = env_object(q.env);
    if (q.stdin_data) j["stdin_b64"] = base64_encode(*q.stdin_data);
    if (q.grace_ms) j["grace_ms"] = *q.grace_ms;
    return j;
}

parsed<run_request> parse_run_request(const json& body) {
    field_reader r(body);
    run_request q;
    if (const json* argv = r.array("argv", true)) read_argv(r, *argv, "argv", q.argv);
    if (auto u = r.string("user", true)) {
        if (u->empty()) r.fail("'user' must not be empty");
        q.user = *u;
    }
    if (auto c = r.string("cwd", false)) {
        if (c->empty() || c->front() != '/') r.fail("'cwd' must be an absolute path");
        q.cwd = *c;
    }
    if (const json* env = r.object("env", false)) read_env(r, *env, q.env);
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

// --- provision -------------------------------------------------------------------------------

namespace {

bool is_step_hash(std::string_view h) {
    return !h.empty() && h.size() <= 128 &&
           std::all_of(h.begin(), h.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

constexpr std::string_view outcomes[] = {"unchanged", "satisfied", "ran", "failed", "not_run"};

// A step's name and hash, by provision's rules (provision.pending names its steps alike).
void read_step_identity(field_reader& sr, std::string& name, std::string& hash) {
    if (auto n = sr.string("name", true)) {
        if (!is_valid_step_name(*n))
            sr.fail("'name' must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit");
        name = *n;
    }
    if (auto h = sr.string("hash", true)) {
        if (!is_step_hash(*h)) sr.fail("'hash' must be 1-128 characters of 0-9 a-f");
        hash = *h;
    }
}

// Step names are unique in a request.
template <typename Step>
void refuse_repeated_name(field_reader& sr, const std::vector<Step>& earlier, const std::string& name) {
    if (!sr.ok()) return;
    for (std::size_t k = 0; k < earlier.size(); ++k) {
        if (earlier[k].name == name) {
            sr.fail("'name' '" + name + "' is already used by steps[" + std::to_string(k) + "]");
            break;
        }
    }
}

} // namespace

json make_provision_request(std::uint64_t id, const provision_request& q) {
    json j = make_request(id, type::provision);
    j["plan"] = q.plan;
    j["force"] = q.force;
    json steps = json::array();
    for (const auto& s : q.steps) {
        json step = json::object();
        step["name"] = s.name;
        step["user"] = s.user;
        if (!s.env.empty()) step["env"] = env_object(s.env);
        if (!s.check.empty()) step["check"] = s.check;
        step["run"] = s.run;
        step["timeout_ms"] = s.timeout_ms;
        step["hash"] = s.hash;
        steps.push_back(std::move(step));
    }
    j["steps"] = std::move(steps);
    return j;
}

parsed<provision_request> parse_provision_request(const json& body) {
    field_reader r(body);
    provision_request q;
    if (auto p = r.string("plan", true)) {
        if (p->empty() || utf8_length(*p) > 64) r.fail("'plan' must be 1-64 characters");
        q.plan = *p;
    }
    if (auto f = r.boolean("force", false)) q.force = *f;
    if (const json* steps = r.array("steps", true)) {
        if (steps->empty()) r.fail("'steps' must not be empty");
        read_objects(r, *steps, "steps", max_provision_steps, q.steps,
                     [&q](field_reader& sr, const json&, provision_step& s, std::string&) {
            read_step_identity(sr, s.name, s.hash);
            if (auto u = sr.string("user", true)) {
                if (u->empty()) sr.fail("'user' must not be empty");
                s.user = *u;
            }
            if (const json* env = sr.object("env", false)) read_env(sr, *env, s.env);
            if (const json* check = sr.array("check", false)) read_argv(sr, *check, "check", s.check);
            if (const json* run = sr.array("run", true)) read_argv(sr, *run, "run", s.run);
            if (auto t = sr.uint("timeout_ms", false, max_step_timeout_ms)) {
                if (*t == 0) sr.fail("'timeout_ms' must be an integer from 1 to " + std::to_string(max_step_timeout_ms));
                s.timeout_ms = *t;
            }
            refuse_repeated_name(sr, q.steps, s.name);
        });
    }
    return done(r, std::move(q));
}

json make_provision_pending_request(std::uint64_t id, const provision_pending_request& q) {
    json j = make_request(id, type::provision_pending);
    json steps = json::array();
    for (const auto& s : q.steps) steps.push_back(json{{"name", s.name}, {"hash", s.hash}});
    j["steps"] = std::move(steps);
    return j;
}

parsed<provision_pending_request> parse_provision_pending_request(const json& body) {
    field_reader r(body);
    provision_pending_request q;
    if (const json* steps = r.array("steps", true)) {
        read_objects(r, *steps, "steps", max_provision_steps, q.steps,
                     [&q](field_reader& sr, const json&, step_identity& s, std::string&) {
            read_step_identity(sr, s.name, s.hash);
            refuse_repeated_name(sr, q.steps, s.name);
        });
    }
    return done(r, std::move(q));
}

json make_provision_pending_result(std::uint64_t id, const provision_pending_result& q) {
    json j = make_envelope(id, type::result);
    j["pending"] = q.pending;
    return j;
}

bool is_boot_id(std::string_view id) {
    return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
    });
}

parsed<provision_pending_result> parse_provision_pending_result(const json& body) {
    field_reader r(body);
    provision_pending_result q;
    if (const json* pending = r.array("pending", true)) {
        if (pending->size() > max_provision_steps)
            r.fail("'pending' holds more than " + std::to_string(max_provision_steps) + " steps");
        for (std::size_t i = 0; r.ok() && i < pending->size(); ++i) {
            const json& name = (*pending)[i];
            if (!name.is_string() || !is_valid_step_name(name.get_ref<const std::string&>()))
                r.fail("'pending[" + std::to_string(i) + "]' is not a step name");
            else
                q.pending.push_back(name.get<std::string>());
        }
    }
    return done(r, std::move(q));
}

json make_provision_result(std::uint64_t id, const provision_result& q) {
    json j = make_envelope(id, type::result);
    j["ok"] = q.ok;
    j["cancelled"] = q.cancelled;
    j["duration_ms"] = q.duration_ms;
    json steps = json::array();
    for (const auto& s : q.steps) {
        json step = json::object();
        step["name"] = s.name;
        step["outcome"] = s.outcome;
        step["duration_ms"] = s.duration_ms;
        if (!s.reason.empty()) step["reason"] = s.reason;
        if (s.exit_code) step["exit_code"] = *s.exit_code;
        if (s.signal) step["signal"] = *s.signal;
        if (s.outcome == "failed" || !s.tail.empty()) step["tail"] = s.tail;
        if (!s.error.empty()) step["error"] = s.error;
        steps.push_back(std::move(step));
    }
    j["steps"] = std::move(steps);
    return j;
}

parsed<provision_result> parse_provision_result(const json& body) {
    field_reader r(body);
    provision_result q;
    if (auto b = r.boolean("ok", true)) q.ok = *b;
    if (auto b = r.boolean("cancelled", false)) q.cancelled = *b;
    if (auto d = r.uint("duration_ms", false)) q.duration_ms = *d;
    if (const json* steps = r.array("steps", true)) {
        for (std::size_t i = 0; r.ok() && i < steps->size(); ++i) {
            const std::string where = "steps[" + std::to_string(i) + "]";
            field_reader sr((*steps)[i]);
            step_outcome s;
            if (auto n = sr.string("name", true)) s.name = *n;
            if (auto o = sr.string("outcome", true)) {
                if (std::find(std::begin(outcomes), std::end(outcomes), *o) == std::end(outcomes))
                    sr.fail("'outcome' must be unchanged, satisfied, ran, failed or not_run");
                s.outcome = *o;
            }
            if (auto d = sr.uint("duration_ms", false)) s.duration_ms = *d;
            if (auto t = sr.string("reason", false)) s.reason = *t;
            if (auto e = sr.integer("exit_code", false)) s.exit_code = static_cast<int>(*e);
            if (auto g = sr.integer("signal", false)) s.signal = static_cast<int>(*g);
            if (const json* tail = sr.array("tail", false)) {
                for (const auto& line : *tail) {
                    if (!line.is_string()) {
                        sr.fail("'tail' must hold strings");
                        break;
                    }
                    s.tail.push_back(line.get<std::string>());
                }
            }
            if (auto e = sr.string("error", false, true)) s.error = *e;
            if (sr.ok() && s.outcome == "failed" && s.reason.empty()) sr.fail("missing 'reason' of a failed step");
            if (!sr.ok()) r.fail(where + ": " + (sr.error().empty() ? "must be an object" : sr.error()));
            else q.steps.push_back(std::move(s));
        }
    }
    return done(r, std::move(q));
}

// --- sessions --------------------------------------------------------------------------------

namespace {

bool is_session_user(std::string_view u) {
    return !u.empty() && u.size() <= max_session_user &&
           std::all_of(u.begin(), u.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; });
}

bool is_agent_word(std::string_view a) {
    return !a.empty() && a.size() <= max_session_agent && std::all_of(a.begin(), a.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
}

bool is_timestamp_text(std::string_view t) {
    return !t.empty() && t.size() <= 64 && std::all_of(t.begin(), t.end(), [](char c) {
        return (c >= '0' && c <= '9') || c == 'T' || c == 'Z' || c == ':' || c == '.' || c == '+' || c == '-';
    });
}

} // namespace

bool is_valid_session_name(std::string_view name) {
    if (name.empty() || name.size() > max_session_name || name.front() == '-') return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
}

bool is_valid_agent_kind(std::string_view agent) { return agent == "claude" || agent == "codex"; }

json make_session_register_request(std::uint64_t id, const session_register_request& q) {
    json j = make_request(id, type::session_register);
    j["name"] = q.name;
    j["agent"] = q.agent;
    j["pid"] = q.pid;
    if (!q.tty.empty()) j["tty"] = q.tty;
    if (q.running_ms) j["running_ms"] = q.running_ms;
    if (q.resumed) j["resumed"] = true;
    return j;
}

parsed<session_register_request> parse_session_register_request(const json& body) {
    field_reader r(body);
    session_register_request q;
    if (auto n = r.string("name", true)) {
        if (!is_valid_session_name(*n))
            r.fail("'name' must be 1-64 characters of A-Z a-z 0-9 _ - not starting with '-'");
        q.name = *n;
    }
    if (auto a = r.string("agent", true)) {
        if (!is_valid_agent_kind(*a)) r.fail("'agent' must be claude or codex");
        q.agent = *a;
    }
    if (auto p = r.uint("pid", true, static_cast<std::uint64_t>(max_session_pid))) {
        if (*p == 0) r.fail("'pid' must be an integer from 1 to " + std::to_string(max_session_pid));
        q.pid = static_cast<std::int64_t>(*p);
    }
    if (auto t = r.string("tty", false)) {
        if (!is_session_user(*t) || t->size() > max_session_tty) r.fail("'tty' must be 1-64 printable characters");
        q.tty = *t;
    }
    // Ten years: anything longer is a bug.
    if (auto m = r.uint("running_ms", false, 10ull * 366 * 24 * 3600 * 1000)) q.running_ms = *m;
    if (auto b = r.boolean("resumed", false)) q.resumed = *b;
    return done(r, std::move(q));
}

json make_session_end_request(std::uint64_t id, const session_end_request& q) {
    json j = make_request(id, type::session_end);
    if (q.signal) j["signal"] = *q.signal;
    else j["exit_code"] = q.exit_code.value_or(-1);
    j["duration_ms"] = q.duration_ms;
    return j;
}

parsed<session_end_request> parse_session_end_request(const json& body) {
    field_reader r(body);
    session_end_request q;
    if (auto e = r.uint("exit_code", false, 255)) q.exit_code = static_cast<int>(*e);
    if (auto s = r.uint("signal", false, 64)) {
        if (*s == 0) r.fail("'signal' must be an integer from 1 to 64");
        q.signal = static_cast<int>(*s);
    }
    if (r.ok() && q.exit_code.has_value() == q.signal.has_value())
        r.fail("exactly one of 'exit_code' and 'signal' is expected");
    if (auto d = r.uint("duration_ms", true)) q.duration_ms = *d;
    return done(r, std::move(q));
}

json make_session_list_request(std::uint64_t id) { return make_request(id, type::session_list); }

json make_session_list_result(std::uint64_t id, const session_list_result& q) {
    json j = make_envelope(id, type::result);
    json sessions = json::array();
    for (const auto& s : q.sessions) {
        json one = json::object();
        one["name"] = s.name;
        one["agent"] = s.agent;
        one["user"] = s.user;
        one["started_at"] = s.started_at;
        one["pid"] = s.pid;
        one["attached"] = s.attached;
        sessions.push_back(std::move(one));
    }
    j["sessions"] = std::move(sessions);
    return j;
}

parsed<session_list_result> parse_session_list_result(const json& body) {
    field_reader r(body);
    session_list_result q;
    if (const json* sessions = r.array("sessions", true)) {
        read_objects(r, *sessions, "sessions", max_sessions, q.sessions,
                     [&q](field_reader& sr, const json&, session_info& s, std::string&) {
            if (auto n = sr.string("name", true)) {
                if (!is_valid_session_name(*n)) sr.fail("'name' is not a session name");
                else s.name = *n;
            }
            if (auto a = sr.string("agent", true)) {
                if (!is_agent_word(*a)) sr.fail("'agent' must be 1-32 characters of a-z 0-9 _ -");
                else s.agent = *a;
            }
            if (auto u = sr.string("user", false)) {
                if (!is_session_user(*u)) sr.fail("'user' must be 1-64 printable characters");
                else s.user = *u;
            }
            if (auto t = sr.string("started_at", true)) {
                if (!is_timestamp_text(*t)) sr.fail("'started_at' is not an RFC 3339 time");
                else s.started_at = *t;
            }
            if (auto p = sr.uint("pid", true, static_cast<std::uint64_t>(max_session_pid)))
                s.pid = static_cast<std::int64_t>(*p);
            if (auto n = sr.uint("attached", true, max_session_attached)) s.attached = *n;
            if (sr.ok()) {
                for (const auto& other : q.sessions)
                    if (other.name == s.name) sr.fail("'name' '" + s.name + "' is listed twice");
            }
        });
    }
    return done(r, std::move(q));
}

// --- secrets ---------------------------------------------------------------------------------

namespace {

// Paths from the VM: printable, bounded, absolute.
bool is_secret_path(std::string_view p) {
    return !p.empty() && p.front() == '/' && p.size() <= max_secret_path &&
           std::all_of(p.begin(), p.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; });
}

// An array of set names (a clear result), capped and checked like the sets themselves.
void read_set_names(field_reader& r, const json& sets, const char* field, std::vector<std::string>& out) {
    if (sets.size() > max_secret_sets) {
        r.fail(std::string("'") + field + "' has more than " + std::to_string(max_secret_sets) + " items");
        return;
    }
    for (const auto& s : sets) {
        if (!s.is_string() || !is_valid_secret_set_name(s.get_ref<const std::string&>())) {
            r.fail(std::string("'") + field + "' must hold set names");
            return;
        }
        out.push_back(s.get<std::string>());
    }
}

constexpr const char* set_name_rule = "'set' must be 1-64 characters of a-z 0-9 _ - starting with a letter or digit";

} // namespace

// The rules are shared with projects.toml (text.hpp), so config and protocol cannot disagree.
bool is_valid_secret_set_name(std::string_view set) { return text::is_valid_secret_set_name(set); }

bool is_valid_secret_name(std::string_view name) { return text::is_valid_secret_name(name); }

void wipe_secret_bytes(std::string& s) {
    platform::wipe_memory(s.data(), s.size());
    s.clear();
}

void wipe_secrets(secrets_render_request& r) {
    for (auto& v : r.variables) wipe_secret_bytes(v.value);
}

void wipe_secrets(json& message) {
    if (!message.is_object()) return;
    const auto vars = message.find("variables");
    if (vars == message.end() || !vars->is_array()) return;
    for (auto& v : *vars) {
        if (!v.is_object()) continue;
        const auto b = v.find("value_b64");
        if (b != v.end() && b->is_string()) wipe_secret_bytes(b->get_ref<std::string&>());
    }
}

json make_secrets_render_request(std::uint64_t id, const secrets_render_request& q) {
    json j = make_request(id, type::secrets_render);
    j["set"] = q.set;
    json vars = json::array();
    for (const auto& v : q.variables) {
        json one = json::object();
        one["name"] = v.name;
        one["value_b64"] = base64_encode(v.value);
        vars.push_back(std::move(one));
    }
    j["variables"] = std::move(vars);
    if (!q.user.empty()) j["user"] = q.user;
    return j;
}

parsed<secrets_render_request> parse_secrets_render_request(const json& body) {
    field_reader r(body);
    secrets_render_request q;
    if (auto s = r.string("set", true)) {
        if (!is_valid_secret_set_name(*s)) r.fail(set_name_rule);
        q.set = *s;
    }
    if (auto u = r.string("user", false)) {
        if (u->empty()) r.fail("'user' must not be empty");
        q.user = *u;
    }
    if (const json* vars = r.array("variables", true); vars && r.ok()) {
        read_objects(r, *vars, "variables", max_secret_variables, q.variables,
                     [&q](field_reader& vr, const json& jv, secret_variable& v, std::string& where) {
            // Only the index until the name is known to be one: a value pasted into the name
            // field must not come back in the error.
            if (auto n = vr.string("name", true, true)) {
                if (!is_valid_secret_name(*n))
                    vr.fail("'name' must be 1-128 characters of A-Z a-z 0-9 _, not starting with a digit, and not "
                            "one bash cannot assign (UID, EUID, PPID, BASHOPTS, SHELLOPTS, BASH_VERSINFO, _)");
                else v.name = *n;
            }
            if (vr.ok()) where += " '" + v.name + "'";
            // By reference, not field_reader::string(): no copy of the encoded value to forget.
            if (const auto b = jv.find("value_b64"); b == jv.end() || b->is_null()) {
                vr.fail("missing 'value_b64'");
            } else if (!b->is_string()) {
                vr.fail("'value_b64' must be a string");
            } else if (auto raw = base64_decode(b->get_ref<const std::string&>())) {
                v.value = std::move(*raw);
            } else {
                vr.fail("'value_b64' is not valid base64");
            }
            if (vr.ok() && v.value.find('\0') != std::string::npos) vr.fail("the value contains a NUL byte");
            if (vr.ok() && v.value.size() > max_secret_value_bytes)
                vr.fail("the value is longer than " + std::to_string(max_secret_value_bytes) + " bytes");
            if (!vr.ok()) return;  // appended all the same: wiped with the others below
            for (std::size_t k = 0; k < q.variables.size(); ++k) {
                if (q.variables[k].name == v.name) {
                    vr.fail("the name is already used by variables[" + std::to_string(k) + "]");
                    break;
                }
            }
        });
    }
    if (!r.ok()) wipe_secrets(q);
    return done(r, std::move(q));
}

json make_secrets_render_result(std::uint64_t id, const secrets_render_result& q) {
    json j = make_envelope(id, type::result);
    j["set"] = q.set;
    j["count"] = q.count;
    j["path"] = q.path;
    return j;
}

parsed<secrets_render_result> parse_secrets_render_result(const json& body) {
    field_reader r(body);
    secrets_render_result q;
    if (auto s = r.string("set", true)) {
        if (!is_valid_secret_set_name(*s)) r.fail(set_name_rule);
        q.set = *s;
    }
    if (auto n = r.uint("count", true, max_secret_variables)) q.count = *n;
    if (auto p = r.string("path", true)) {
        if (!is_secret_path(*p)) r.fail("'path' must be an absolute path of printable characters");
        q.path = *p;
    }
    return done(r, std::move(q));
}

json make_network_apply_request(std::uint64_t id, const network_apply_request& q) {
    json j = make_request(id, type::network_apply);
    j["ruleset"] = q.ruleset;
    return j;
}

parsed<network_apply_request> parse_network_apply_request(const json& body) {
    field_reader r(body);
    network_apply_request q;
    if (auto s = r.string("ruleset", true)) {
        if (s->size() > max_network_ruleset_bytes)
            r.fail("'ruleset' is longer than " + std::to_string(max_network_ruleset_bytes) + " bytes");
        else q.ruleset = std::move(*s);
    }
    return done(r, std::move(q));
}

json make_network_apply_result(std::uint64_t id, const network_apply_result& q) {
    json j = make_envelope(id, type::result);
    j["path"] = q.path;
    j["applied"] = q.applied;
    j["nft_found"] = q.nft_found;
    if (!q.error.empty()) j["error"] = q.error;
    return j;
}

parsed<network_apply_result> parse_network_apply_result(const json& body) {
    field_reader r(body);
    network_apply_result q;
    if (auto p = r.string("path", true)) {
        if (!is_secret_path(*p)) r.fail("'path' must be an absolute path of printable characters");
        q.path = *p;
    }
    if (auto b = r.boolean("applied", true)) q.applied = *b;
    if (auto b = r.boolean("nft_found", true)) q.nft_found = *b;
    if (auto e = r.string("error", false)) {
        if (e->size() > max_network_error_bytes)
            r.fail("'error' is longer than " + std::to_string(max_network_error_bytes) + " bytes");
        q.error = *e;
    }
    if (r.ok() && !q.applied && q.error.empty()) r.fail("a ruleset that was not applied needs an 'error'");
    return done(r, std::move(q));
}

json make_secrets_clear_request(std::uint64_t id, const secrets_clear_request& q) {
    json j = make_request(id, type::secrets_clear);
    if (q.set) j["set"] = *q.set;
    return j;
}

parsed<secrets_clear_request> parse_secrets_clear_request(const json& body) {
    field_reader r(body);
    secrets_clear_request q;
    if (auto s = r.string("set", false)) {
        if (!is_valid_secret_set_name(*s)) r.fail(set_name_rule);
        q.set = *s;
    }
    return done(r, std::move(q));
}

json make_secrets_clear_result(std::uint64_t id, const secrets_clear_result& q) {
    json j = make_envelope(id, type::result);
    j["cleared"] = q.cleared;
    return j;
}

parsed<secrets_clear_result> parse_secrets_clear_result(const json& body) {
    field_reader r(body);
    secrets_clear_result q;
    if (const json* sets = r.array("cleared", true)) read_set_names(r, *sets, "cleared", q.cleared);
    return done(r, std::move(q));
}

json make_secrets_list_request(std::uint64_t id) { return make_request(id, type::secrets_list); }

json make_secrets_list_result(std::uint64_t id, const secrets_list_result& q) {
    json j = make_envelope(id, type::result);
    json sets = json::array();
    for (const auto& s : q.sets) {
        json one = json::object();
        one["set"] = s.set;
        one["count"] = s.count;
        one["bytes"] = s.bytes;
        one["mtime"] = s.mtime;
        sets.push_back(std::move(one));
    }
    j["sets"] = std::move(sets);
    return j;
}

parsed<secrets_list_result> parse_secrets_list_result(const json& body) {
    field_reader r(body);
    secrets_list_result q;
    if (const json* sets = r.array("sets", true)) {
        read_objects(r, *sets, "sets", max_secret_sets, q.sets,
                     [&q](field_reader& sr, const json&, secret_set_info& s, std::string&) {
            if (auto n = sr.string("set", true)) {
                if (!is_valid_secret_set_name(*n)) sr.fail(set_name_rule);
                else s.set = *n;
            }
            if (auto n = sr.uint("count", true, max_secret_variables)) s.count = *n;
            if (auto n = sr.uint("bytes", true)) s.bytes = *n;
            if (auto t = sr.string("mtime", true)) {
                if (!is_timestamp_text(*t)) sr.fail("'mtime' is not an RFC 3339 time");
                else s.mtime = *t;
            }
            if (sr.ok()) {
                for (const auto& other : q.sets)
                    if (other.set == s.set) sr.fail("'set' '" + s.set + "' is listed twice");
            }
        });
    }
    return done(r, std::move(q));
}

// --- secrets.discover ------------------------------------------------------------------------

namespace {

// No C0 control, no DEL, no C1 control (U+0080-U+009F, UTF-8 C2 80..C2 9F): text from the VM
// that may reach a terminal. (The JSON parser has already rejected invalid UTF-8.)
bool is_printable_text(std::string_view s) {
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7f) return false;
        if (c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) <= 0x9F) return false;
    }
    return true;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

} // namespace

bool is_valid_repo_dir(std::string_view dir) {
    if (dir.empty() || !is_printable_text(dir)) return false;
    const auto slash = dir.find('/');
    auto component_ok = [](std::string_view c) {
        return !c.empty() && c.size() <= max_repo_dir_component && c != "." && c != "..";
    };
    if (slash == std::string_view::npos) return component_ok(dir);
    return component_ok(dir.substr(0, slash)) && component_ok(dir.substr(slash + 1)) &&
           dir.find('/', slash + 1) == std::string_view::npos;
}

bool is_valid_envrc_token(std::string_view token) {
    return !token.empty() && token.size() <= max_envrc_token && is_printable_text(token);
}

json make_secrets_discover_request(std::uint64_t id) { return make_request(id, type::secrets_discover); }

json make_secrets_discover_result(std::uint64_t id, const secrets_discover_result& q) {
    json j = make_envelope(id, type::result);
    json repos = json::array();
    for (const auto& repo : q.repos) {
        json one = json::object();
        one["dir"] = repo.dir;
        one["path"] = repo.path;
        json uses = json::array();
        for (const auto& u : repo.uses) uses.push_back(json{{"set", u.set}, {"line", u.line}});
        one["uses"] = std::move(uses);
        repos.push_back(std::move(one));
    }
    j["repos"] = std::move(repos);
    if (q.truncated) j["truncated"] = true;
    return j;
}

parsed<secrets_discover_result> parse_secrets_discover_result(const json& body) {
    field_reader r(body);
    secrets_discover_result q;
    if (const json* repos = r.array("repos", true)) {
        // Only the index in messages: a hostile dir must not come back in the error.
        read_objects(r, *repos, "repos", max_discovered_repos, q.repos,
                     [&q](field_reader& rr, const json&, envrc_secrets& repo, std::string&) {
            if (auto d = rr.string("dir", true)) {
                if (!is_valid_repo_dir(*d))
                    rr.fail("'dir' must be one or two path components of printable characters");
                else repo.dir = *d;
            }
            if (auto p = rr.string("path", true); p && rr.ok()) {
                // The path is the dir's .envrc under some ~/code: nothing else is ever reported.
                if (!is_secret_path(*p) || !is_printable_text(*p) || !ends_with(*p, "/code/" + repo.dir + "/.envrc"))
                    rr.fail("'path' must be an absolute path ending in /code/<dir>/.envrc");
                else repo.path = *p;
            }
            if (const json* uses = rr.array("uses", true); uses && rr.ok()) {
                if (uses->empty() || uses->size() > max_envrc_uses)
                    rr.fail("'uses' must have 1 to " + std::to_string(max_envrc_uses) + " items");
                read_objects(rr, *uses, "uses", max_envrc_uses, repo.uses,
                             [&repo](field_reader& ur, const json&, envrc_use& u, std::string&) {
                    if (auto s = ur.string("set", true)) {
                        if (!is_valid_envrc_token(*s)) ur.fail("'set' must be 1-128 printable bytes");
                        else u.set = *s;
                    }
                    // A line within the first 64 KiB of the file.
                    if (auto n = ur.uint("line", true, envrc_read_bytes)) {
                        if (*n == 0) ur.fail("'line' must be an integer from 1 to " + std::to_string(envrc_read_bytes));
                        u.line = *n;
                    }
                    if (ur.ok() && !repo.uses.empty() && u.line < repo.uses.back().line)
                        ur.fail("'line' is before the previous use's");
                });
            }
            if (rr.ok() && !q.repos.empty() && repo.dir <= q.repos.back().dir)
                rr.fail("'dir' is not after the previous repo's (they are sorted, each once)");
        });
    }
    if (auto t = r.boolean("truncated", false)) q.truncated = *t;
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
