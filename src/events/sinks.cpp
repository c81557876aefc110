#include <ctime>

#include "machine/events.hpp"
#include "machine/text.hpp"

namespace machine::events {

void json_lines_sink::write(const event& e) {
    const std::string line = to_json_line(e);
    std::fwrite(line.data(), 1, line.size(), out_);
    std::fputc('\n', out_);
    std::fflush(out_);
}

namespace {

std::string describe_state(const event& e) {
    const std::string state = e.text("state");
    const std::string detail = e.text("detail");
    return detail.empty() ? state : state + ": " + detail;
}

// An integer field as text ("" when absent or not an integer: guest events are untrusted).
std::string number(const event& e, std::string_view key) {
    const value* v = e.find(key);
    const auto* i = v ? std::get_if<std::int64_t>(v) : nullptr;
    return i ? std::to_string(*i) : std::string();
}

std::string seconds(const event& e) {
    const value* v = e.find("duration_ms");
    const auto* ms = v ? std::get_if<std::int64_t>(v) : nullptr;
    if (!ms) return {};
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(*ms) / 1000.0);
    return buf;
}

// The guest agent's session.started / session.ended, in words.
std::string describe_session(const event& e) {
    const std::string head = "session " + e.text("name") + " (" + e.text("agent") + ")";
    if (e.text("event") == "session.started") return head + " started as " + e.text("user") + ", pid " + number(e, "pid");
    const std::string reason = e.text("reason");
    const std::string how = reason == "exit"     ? "exited with status " + number(e, "exit_code")
                            : reason == "signal" ? "killed by signal " + number(e, "signal")
                                                 : "lost (its process vanished)";
    return head + " ended: " + how + " after " + seconds(e);
}

std::string escaped(const std::string& s) { return text::escape_for_terminal(s); }

value escaped(const value& v) {
    if (const auto* s = std::get_if<std::string>(&v)) return escaped(*s);
    if (const auto* list = std::get_if<std::vector<std::string>>(&v)) {
        std::vector<std::string> out;
        for (const auto& s : *list) out.push_back(escaped(s));
        return out;
    }
    return v;  // numbers and booleans print as themselves
}

// "net: allowed tcp github.com:443 (1200 B up, 3400 B down, 812 ms)",
// "net: REFUSED tcp evil.example:443: not in egress (+12 like it)".
std::string describe_connection(const event& e) {
    const bool allowed = e.type == type::net_allowed;
    std::string line = std::string("net: ") + (allowed ? "allowed " : "REFUSED ") + e.text("kind") + " " +
                       e.text("host") + ":" + number(e, "port");
    if (allowed)
        line += " (" + number(e, "bytes_up") + " B up, " + number(e, "bytes_down") + " B down, " +
                number(e, "duration_ms") + " ms)";
    else if (const std::string reason = e.text("reason"); !reason.empty())
        line += ": " + reason;
    if (e.find("suppressed")) line += " (+" + number(e, "suppressed") + " like it)";
    return line;
}

// The line for an event whose text is already escaped.
std::string describe(const event& e) {
    const std::string_view t = e.type;
    if (t == type::vm_state) return describe_state(e);
    if (t == type::step_started) return e.text("step") + "...";
    if (t == type::step_finished) {
        const value* ok = e.find("ok");
        const bool success = ok && std::get<bool>(*ok);
        std::string line = (success ? "done: " : "failed: ") + e.text("step") + " (" + seconds(e) + ")";
        if (const auto d = e.text("detail"); !d.empty()) line += " — " + d;
        return line;
    }
    if (t == type::message) return e.text("text");
    if (t == type::error) return "error: " + e.text("message");
    if (t == type::vm_done) return e.text("outcome") + " in " + seconds(e);
    if (t == type::guest && (e.text("event") == "session.started" || e.text("event") == "session.ended"))
        return describe_session(e);
    if (t == type::guest) {
        std::string line = "agent: " + e.text("event");
        for (const auto& [k, v] : e.fields) {
            if (k == "event" || k == "agent_seq") continue;
            line += " " + k + "=";
            if (const auto* s = std::get_if<std::string>(&v)) line += *s;
            else if (const auto* i = std::get_if<std::int64_t>(&v)) line += std::to_string(*i);
            else if (const auto* b = std::get_if<bool>(&v)) line += *b ? "true" : "false";
        }
        return line;
    }
    if (t == type::net_allowed || t == type::net_refused) return describe_connection(e);
    return {};  // lima.status and other machine-oriented events stay out of the human view
}

} // namespace

event escaped_for_terminal(const event& e) {
    event out;
    out.vm = escaped(e.vm);
    out.type = escaped(e.type);
    out.seq = e.seq;
    out.ts = e.ts;
    for (const auto& [k, v] : e.fields) out.fields.emplace_back(escaped(k), escaped(v));
    return out;
}

std::string terminal_sink::render(const event& e) { return describe(escaped_for_terminal(e)); }

void terminal_sink::write(const event& raw) {
    const event e = escaped_for_terminal(raw);
    const std::string body = describe(e);
    if (body.empty()) return;
    std::string line;
    if (show_time_) {
        const std::time_t secs = std::chrono::system_clock::to_time_t(e.ts);
        std::tm tm{};
        ::localtime_r(&secs, &tm);
        char buf[16];
        std::strftime(buf, sizeof buf, "%H:%M:%S ", &tm);
        line += buf;
    }
    if (!e.vm.empty()) line += "[" + e.vm + "] ";
    line += body + '\n';
    std::fwrite(line.data(), 1, line.size(), out_);
    std::fflush(out_);
}

} // namespace machine::events
