// Parsers for everything limactl prints. Pure functions: no I/O.
#include <cctype>
#include <ctime>
#include <sstream>

#include <nlohmann/json.hpp>

#include "machine/lima.hpp"
#include "machine/text.hpp"

namespace machine::lima {

using json = nlohmann::json;

std::string_view to_string(status s) {
    switch (s) {
    case status::running: return "Running";
    case status::stopped: return "Stopped";
    case status::broken: return "Broken";
    case status::unknown: break;
    }
    return "Unknown";
}

std::string normalize_version(std::string_view text) {
    std::string t = text::trim(text);
    if (const auto sp = t.rfind(' '); sp != std::string::npos) t = t.substr(sp + 1);
    if (!t.empty() && (t[0] == 'v' || t[0] == 'V') && t.size() > 1 && std::isdigit(static_cast<unsigned char>(t[1])))
        t.erase(0, 1);
    return t;
}

namespace {

template <class T>
T get_or(const json& j, const char* key, T fallback) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    try {
        return it->get<T>();
    } catch (const json::exception&) {
        return fallback;
    }
}

status parse_status(std::string_view s) {
    if (s == "Running") return status::running;
    if (s == "Stopped") return status::stopped;
    if (s == "Broken") return status::broken;
    return status::unknown;
}

// `errors` may be absent, [], strings, or Go error values marshalled as objects (see the
// contract, §1 "errors encoding").
std::vector<std::string> parse_errors(const json& j) {
    std::vector<std::string> out;
    const auto it = j.find("errors");
    if (it == j.end() || !it->is_array()) return out;
    for (const auto& e : *it) {
        if (e.is_string()) out.push_back(e.get<std::string>());
        else if (e.is_object() && e.contains("Op") && e.contains("Path"))
            out.push_back(get_or<std::string>(e, "Op", "") + " " + get_or<std::string>(e, "Path", "") + ": error");
        else out.push_back(e.dump());
    }
    return out;
}

instance to_instance(const json& j) {
    if (!j.is_object()) throw protocol_error("limactl list: expected a JSON object per instance, got " + std::string(j.type_name()));
    instance i;
    i.name = get_or<std::string>(j, "name", "");
    if (i.name.empty()) throw protocol_error("limactl list: an instance has no name");
    i.hostname = get_or<std::string>(j, "hostname", "");
    i.status_text = get_or<std::string>(j, "status", "");
    i.state = parse_status(i.status_text);
    i.dir = get_or<std::string>(j, "dir", "");
    i.vm_type = get_or<std::string>(j, "vmType", "");
    i.arch = get_or<std::string>(j, "arch", "");
    i.cpus = get_or<int>(j, "cpus", 0);
    i.memory_bytes = get_or<std::int64_t>(j, "memory", 0);
    i.disk_bytes = get_or<std::int64_t>(j, "disk", 0);
    i.ssh_local_port = get_or<int>(j, "sshLocalPort", 0);
    i.ssh_config_file = get_or<std::string>(j, "sshConfigFile", "");
    i.host_agent_pid = get_or<int>(j, "hostAgentPID", 0);
    i.driver_pid = get_or<int>(j, "driverPID", 0);
    i.is_protected = get_or<bool>(j, "protected", false);
    i.lima_version = normalize_version(get_or<std::string>(j, "limaVersion", ""));
    i.errors = parse_errors(j);
    if (const auto c = j.find("config"); c != j.end() && c->is_object()) {
        if (const auto sh = c->find("ssh"); sh != c->end() && sh->is_object())
            if (const auto fa = sh->find("forwardAgent"); fa != sh->end() && fa->is_boolean())
                i.forward_agent = fa->get<bool>();
        // The stand-in's extension (absent with Lima itself): where the VM's network leads.
        if (const auto eg = c->find("machineEgress"); eg != c->end() && eg->is_object())
            if (const auto so = eg->find("socket"); so != eg->end() && so->is_string())
                i.egress_socket = so->get<std::string>();
    }
    return i;
}

} // namespace

std::vector<instance> parse_list(std::string_view text) {
    std::vector<instance> out;
    std::istringstream in{std::string(text)};
    std::size_t index = 0;
    for (;;) {
        in >> std::ws;
        if (in.peek() == std::char_traits<char>::eof()) break;
        ++index;
        json value;
        try {
            in >> value;  // reads exactly one JSON value
        } catch (const json::exception& e) {
            throw protocol_error("limactl list printed malformed JSON (value " +
                                 std::to_string(index) + "): " + e.what());
        }
        if (value.is_array()) {
            for (const auto& v : value) out.push_back(to_instance(v));
        } else {
            out.push_back(to_instance(value));
        }
    }
    return out;
}

namespace {

// Reads a Go %q-quoted string starting at s[i] == '"'; advances i past the closing quote.
std::string read_go_quoted(std::string_view s, std::size_t& i) {
    std::string out;
    ++i;
    while (i < s.size() && s[i] != '"') {
        char c = s[i++];
        if (c != '\\' || i >= s.size()) {
            out += c;
            continue;
        }
        const char esc = s[i++];
        switch (esc) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '"': out += '"'; break;
        case 'x':
        case 'u':
        case 'U': {
            const std::size_t digits = esc == 'x' ? 2 : esc == 'u' ? 4 : 8;
            if (i + digits > s.size()) break;
            const unsigned long cp = std::stoul(std::string(s.substr(i, digits)), nullptr, 16);
            i += digits;
            if (esc == 'x' || cp < 0x80) {
                out += static_cast<char>(cp);
            } else if (cp < 0x800) {
                out += static_cast<char>(0xC0 | (cp >> 6));
                out += static_cast<char>(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out += static_cast<char>(0xE0 | (cp >> 12));
                out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
                out += static_cast<char>(0x80 | (cp & 0x3F));
            } else {
                out += static_cast<char>(0xF0 | (cp >> 18));
                out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
                out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
                out += static_cast<char>(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: out += esc; break;
        }
    }
    if (i < s.size()) ++i;  // closing quote
    return out;
}

std::optional<log_line> parse_text_log_line(std::string_view s) {
    log_line line;
    std::size_t i = 0;
    bool any = false;
    while (i < s.size()) {
        while (i < s.size() && s[i] == ' ') ++i;
        const std::size_t key_start = i;
        while (i < s.size() && s[i] != '=' && s[i] != ' ') ++i;
        if (i >= s.size() || s[i] != '=') return any ? std::optional(line) : std::nullopt;
        const std::string key(s.substr(key_start, i - key_start));
        ++i;
        std::string value;
        if (i < s.size() && s[i] == '"') {
            value = read_go_quoted(s, i);
        } else {
            const std::size_t v_start = i;
            while (i < s.size() && s[i] != ' ') ++i;
            value = std::string(s.substr(v_start, i - v_start));
        }
        any = true;
        if (key == "time") line.time = value;
        else if (key == "level") line.level = value;
        else if (key == "msg") line.msg = value;
        else line.fields[key] = value;
    }
    if (line.level.empty()) return std::nullopt;
    return line;
}

std::optional<log_line> parse_json_log_line(std::string_view s) {
    const json j = json::parse(s, nullptr, false);
    if (!j.is_object() || !j.contains("level")) return std::nullopt;
    log_line line;
    for (const auto& [k, v] : j.items()) {
        const std::string value = v.is_string() ? v.get<std::string>() : v.dump();
        if (k == "time") line.time = value;
        else if (k == "level") line.level = value;
        else if (k == "msg") line.msg = value;
        else line.fields[k] = value;
    }
    return line;
}

} // namespace

std::optional<log_line> parse_log_line(std::string_view line) {
    const std::string t = text::trim(line);
    if (t.empty()) return std::nullopt;
    if (t.front() == '{') return parse_json_log_line(t);
    return parse_text_log_line(t);
}

std::string fatal_message(std::string_view stderr_text) {
    std::string fatal, error;
    for (const auto& raw : text::split_lines(stderr_text)) {
        const auto line = parse_log_line(raw);
        if (!line) continue;
        if (line->level == "fatal") fatal = line->msg;
        else if (line->level == "error") error = line->msg;
    }
    return fatal.empty() ? error : fatal;
}

std::vector<std::string> quoted_names(std::string_view msg) {
    std::vector<std::string> names;
    for (std::size_t i = 0; i < msg.size(); ++i) {
        const char q = msg[i];
        if (q != '`' && q != '"') continue;
        const auto end = msg.find(q, i + 1);
        if (end == std::string_view::npos) break;
        names.emplace_back(msg.substr(i + 1, end - i - 1));
        i = end;
    }
    return names;
}

std::optional<ha_event> parse_ha_event(std::string_view line) {
    const json j = json::parse(line, nullptr, false);
    if (!j.is_object()) return std::nullopt;
    const auto st = j.find("status");
    if (st == j.end() || !st->is_object()) return std::nullopt;
    ha_event e;
    e.time = get_or<std::string>(j, "time", "");
    e.running = get_or<bool>(*st, "running", false);
    e.degraded = get_or<bool>(*st, "degraded", false);
    e.exiting = get_or<bool>(*st, "exiting", false);
    e.ssh_local_port = get_or<int>(*st, "sshLocalPort", 0);
    if (const auto errs = st->find("errors"); errs != st->end() && errs->is_array())
        for (const auto& x : *errs)
            e.errors.push_back(x.is_string() ? x.get<std::string>() : x.dump());
    if (const auto pf = st->find("portForward"); pf != st->end() && pf->is_object()) {
        port_forward f;
        f.type = get_or<std::string>(*pf, "type", "");
        f.protocol = get_or<std::string>(*pf, "protocol", "");
        f.guest_addr = get_or<std::string>(*pf, "guestAddr", "");
        f.host_addr = get_or<std::string>(*pf, "hostAddr", "");
        f.error = get_or<std::string>(*pf, "error", "");
        e.forward = f;
    }
    return e;
}

std::optional<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view s) {
    std::tm tm{};
    int consumed = 0;
    const std::string str(s);
    if (std::sscanf(str.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                    &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6)
        return std::nullopt;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    std::size_t i = static_cast<std::size_t>(consumed);
    std::int64_t nanos = 0;
    if (i < str.size() && str[i] == '.') {
        ++i;
        int digits = 0;
        while (i < str.size() && std::isdigit(static_cast<unsigned char>(str[i]))) {
            if (digits < 9) {
                nanos = nanos * 10 + (str[i] - '0');
                ++digits;
            }
            ++i;
        }
        while (digits++ < 9) nanos *= 10;
    }
    long offset = 0;
    if (i < str.size() && (str[i] == 'Z' || str[i] == 'z')) {
        ++i;
    } else if (i < str.size() && (str[i] == '+' || str[i] == '-')) {
        int hh = 0, mm = 0;
        if (std::sscanf(str.c_str() + i + 1, "%2d:%2d", &hh, &mm) != 2) return std::nullopt;
        offset = (hh * 3600L + mm * 60L) * (str[i] == '-' ? -1 : 1);
        i += 6;
    } else {
        return std::nullopt;
    }
    if (i != str.size()) return std::nullopt;
    const std::time_t t = ::timegm(&tm) - offset;
    return std::chrono::system_clock::from_time_t(t) +
           std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(nanos));
}

bool parse_info_flag(std::string_view json_text, std::string_view key) {
    const json doc = json::parse(json_text, nullptr, false);
    if (!doc.is_object()) return false;
    const auto it = doc.find(std::string(key));
    return it != doc.end() && it->is_boolean() && it->get<bool>();
}

bool parse_info_isolates(std::string_view json_text) { return parse_info_flag(json_text, "machineEgress"); }

std::optional<hibernate_outcome> parse_hibernate_outcome(std::string_view json_text) {
    const json doc = json::parse(json_text, nullptr, false);
    if (!doc.is_object() || !doc.contains("resumed") || !doc["resumed"].is_boolean()) return std::nullopt;
    hibernate_outcome o;
    o.resumed = doc["resumed"].get<bool>();
    if (doc.contains("took") && doc["took"].is_number()) o.took_seconds = doc["took"].get<double>();
    if (doc.contains("reason") && doc["reason"].is_string())
        o.reason = text::escape_for_terminal(doc["reason"].get<std::string>().substr(0, 500));
    return o;
}

std::optional<stand_in_image> parse_info_guest_image(std::string_view json_text) {
    const json doc = json::parse(json_text, nullptr, false);
    if (!doc.is_object()) return std::nullopt;
    const auto it = doc.find("machineGuestImage");
    if (it == doc.end() || !it->is_object()) return std::nullopt;
    const json& g = *it;
    if (!g.contains("ready") || !g["ready"].is_boolean()) return std::nullopt;
    stand_in_image out;
    out.ready = g["ready"].get<bool>();
    if (g.contains("image") && g["image"].is_string()) out.image = g["image"].get<std::string>();
    if (g.contains("cache") && g["cache"].is_string()) out.cache = g["cache"].get<std::string>();
    if (g.contains("problems") && g["problems"].is_array())
        for (const auto& p : g["problems"])
            if (p.is_string()) out.problems.push_back(p.get<std::string>());
    return out;
}

} // namespace machine::lima
