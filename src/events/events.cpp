#include "machine/events.hpp"

#include <ctime>

#include <nlohmann/json.hpp>

namespace machine::events {

const value* event::find(std::string_view key) const {
    for (const auto& [k, v] : fields)
        if (k == key) return &v;
    return nullptr;
}

std::string event::text(std::string_view key) const {
    const value* v = find(key);
    if (!v) return {};
    if (const auto* s = std::get_if<std::string>(v)) return *s;
    return {};
}

namespace {
event make(std::string vm, const char* type, std::vector<std::pair<std::string, value>> fields) {
    event e;
    e.vm = std::move(vm);
    e.type = type;
    e.fields = std::move(fields);
    return e;
}
} // namespace

event vm_state(std::string vm, std::string state, std::string detail) {
    std::vector<std::pair<std::string, value>> f{{"state", std::move(state)}};
    if (!detail.empty()) f.emplace_back("detail", std::move(detail));
    return make(std::move(vm), type::vm_state, std::move(f));
}

event step_started(std::string vm, std::string step) {
    return make(std::move(vm), type::step_started, {{"step", std::move(step)}});
}

event step_finished(std::string vm, std::string step, bool ok, std::chrono::milliseconds took,
                    std::string detail) {
    std::vector<std::pair<std::string, value>> f{{"step", std::move(step)},
                                                 {"ok", ok},
                                                 {"duration_ms", std::int64_t(took.count())}};
    if (!detail.empty()) f.emplace_back("detail", std::move(detail));
    return make(std::move(vm), type::step_finished, std::move(f));
}

event step_output(std::string vm, std::string step, std::string stream, std::string line) {
    return make(std::move(vm), type::step_output,
                {{"step", std::move(step)}, {"stream", std::move(stream)}, {"line", std::move(line)}});
}

event message(std::string vm, std::string level, std::string text) {
    return make(std::move(vm), type::message, {{"level", std::move(level)}, {"text", std::move(text)}});
}

event error(std::string vm, std::string message, std::string diagnostics) {
    std::vector<std::pair<std::string, value>> f{{"message", std::move(message)}};
    if (!diagnostics.empty()) f.emplace_back("diagnostics", std::move(diagnostics));
    return make(std::move(vm), type::error, std::move(f));
}

event vm_done(std::string vm, std::string outcome, std::chrono::milliseconds took) {
    return make(std::move(vm), type::vm_done,
                {{"outcome", std::move(outcome)}, {"duration_ms", std::int64_t(took.count())}});
}

event net_connection(std::string vm, connection c) {
    std::vector<std::pair<std::string, value>> f{{"kind", std::move(c.kind)},
                                                 {"host", std::move(c.host)},
                                                 {"port", static_cast<std::int64_t>(c.port)},
                                                 {"bytes_up", c.bytes_up},
                                                 {"bytes_down", c.bytes_down},
                                                 {"duration_ms", c.duration_ms}};
    if (!c.reason.empty()) f.emplace_back("reason", std::move(c.reason));
    if (c.suppressed > 0) f.emplace_back("suppressed", c.suppressed);
    return make(std::move(vm), c.allowed ? type::net_allowed : type::net_refused, std::move(f));
}

event guest_event(std::string vm, std::string name, std::uint64_t seq,
                  std::vector<std::pair<std::string, value>> fields) {
    // The agent's own seq is `agent_seq`: `seq` is the envelope's. Fields may not shadow
    // the envelope either.
    std::vector<std::pair<std::string, value>> f{{"event", std::move(name)},
                                                 {"agent_seq", static_cast<std::int64_t>(seq)}};
    for (auto& kv : fields) {
        const std::string& k = kv.first;
        if (k == "v" || k == "seq" || k == "ts" || k == "vm" || k == "type" || k == "event" || k == "agent_seq")
            continue;
        f.push_back(std::move(kv));
    }
    return make(std::move(vm), type::guest, std::move(f));
}

std::string format_timestamp(std::chrono::system_clock::time_point t) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch());
    const std::time_t secs = static_cast<std::time_t>(ms.count() / 1000);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[40];
    const auto n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ms.count() % 1000));
    return buf;
}

std::string to_json_line(const event& e) {
    // nlohmann::ordered_json keeps the envelope's keys first, in a stable order.
    nlohmann::ordered_json j;
    j["v"] = envelope_version;
    j["seq"] = e.seq;
    j["ts"] = format_timestamp(e.ts);
    j["vm"] = e.vm;
    j["type"] = e.type;
    for (const auto& [k, v] : e.fields) {
        std::visit([&](const auto& x) { j[k] = x; }, v);
    }
    // Invalid UTF-8 from a child process must not abort serialization.
    return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

void bus::emit(event e) {
    e.seq = ++seq_;
    e.ts = std::chrono::system_clock::now();
    for (const auto& s : sinks_) s->write(e);
}

} // namespace machine::events
