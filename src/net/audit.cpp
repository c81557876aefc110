// The audit trail's format: one JSON object a line, in the envelope's style of `watch --json`
// (`{"v":1,"ts":"...","type":"net.allowed",...}`), and its reader. The reader is for
// `machine net NAME`: it must never fail on what it finds (a line torn by a crash, a file of
// another format, a file grown huge) and never read more than the tail.
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <ctime>
#include <fstream>

#include <nlohmann/json.hpp>

#include "audit_writer.hpp"
#include "machine/events.hpp"
#include "machine/net.hpp"

namespace machine::net {

namespace {

constexpr int audit_version = 1;
constexpr std::string_view allowed_type = "net.allowed";
constexpr std::string_view refused_type = "net.refused";
// A line longer than this is not one of ours (ours are a few hundred bytes).
constexpr std::size_t max_line = 4096;
// How much of each file (the log and its .1) is read: the default cap, so about twice the cap
// in all; a file grown past it by something else costs no more.
constexpr std::uintmax_t max_read_per_file = 1024 * 1024;

/// "2026-11-27T12:00:01.234Z" (events::format_timestamp's form) back to a time point.
std::optional<std::chrono::system_clock::time_point> parse_timestamp(std::string_view s) {
    // Positions of the separators in YYYY-MM-DDTHH:MM:SS.mmmZ.
    if (s.size() != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
        s[19] != '.' || s[23] != 'Z') {
        return std::nullopt;
    }
    auto number = [&](std::size_t at, std::size_t len, int& out) {
        const auto* first = s.data() + at;
        const auto* last = first + len;
        if (!std::all_of(first, last, [](char c) { return c >= '0' && c <= '9'; })) return false;
        return std::from_chars(first, last, out).ptr == last;
    };
    int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, ms = 0;
    if (!number(0, 4, year) || !number(5, 2, month) || !number(8, 2, day) || !number(11, 2, hour) ||
        !number(14, 2, minute) || !number(17, 2, second) || !number(20, 3, ms)) {
        return std::nullopt;
    }
    if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return std::nullopt;
    std::tm tm{};
    tm.tm_year = year - 1900;
    tm.tm_mon = month - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = minute;
    tm.tm_sec = second;
    const std::time_t secs = ::timegm(&tm);
    return std::chrono::system_clock::from_time_t(secs) + std::chrono::milliseconds(ms);
}

/// A string field of at most `cap` bytes with no control byte (what the writer wrote is
/// escaped; a line that has one was not written by it).
bool text_field(const nlohmann::json& j, const char* key, std::size_t cap, std::string& out) {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_string()) return false;
    const auto& s = it->get_ref<const std::string&>();
    if (s.size() > cap) return false;
    if (std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
        return false;
    }
    out = s;
    return true;
}

bool count_field(const nlohmann::json& j, const char* key, std::int64_t& out) {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) return false;
    out = it->get<std::int64_t>();
    return out >= 0;
}

/// The last `limit` bytes of a regular file, from its first whole line; "" when there is no
/// such file.
std::string read_tail(const std::filesystem::path& p, std::uintmax_t limit) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) return {};
    std::ifstream in(p, std::ios::binary);
    if (!in) return {};
    in.seekg(0, std::ios::end);
    const auto size = static_cast<std::uintmax_t>(std::max<std::streamoff>(in.tellg(), 0));
    const auto start = size > limit ? size - limit : 0;
    in.seekg(static_cast<std::streamoff>(start));
    std::string out(static_cast<std::size_t>(size - start), '\0');
    in.read(out.data(), static_cast<std::streamsize>(out.size()));
    out.resize(static_cast<std::size_t>(std::max<std::streamsize>(in.gcount(), 0)));
    if (start > 0) {
        // We began inside a line: drop its rest.
        const auto nl = out.find('\n');
        out.erase(0, nl == std::string::npos ? out.size() : nl + 1);
    }
    return out;
}

void parse_lines(std::string_view text, std::vector<audit_record>& out) {
    std::size_t pos = 0;
    while (pos < text.size()) {
        const auto nl = text.find('\n', pos);
        const auto line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
        pos = nl == std::string_view::npos ? text.size() : nl + 1;
        if (line.size() > max_line) continue;
        if (auto r = parse_audit_line(line)) out.push_back(std::move(*r));
    }
}

} // namespace

std::string to_json_line(const audit_record& r) {
    nlohmann::ordered_json j;
    j["v"] = audit_version;
    j["ts"] = events::format_timestamp(r.ts);
    j["type"] = r.allowed ? allowed_type : refused_type;
    j["kind"] = r.kind;
    j["host"] = r.host;
    j["port"] = r.port;
    j["bytes_up"] = r.bytes_up;
    j["bytes_down"] = r.bytes_down;
    j["duration_ms"] = r.duration_ms;
    if (!r.reason.empty()) j["reason"] = r.reason;
    if (r.suppressed > 0) j["suppressed"] = r.suppressed;
    return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::optional<audit_record> parse_audit_line(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.size() > max_line || line.front() != '{') return std::nullopt;
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return std::nullopt;
    const auto v = j.find("v");
    if (v == j.end() || !v->is_number_integer() || v->get<std::int64_t>() != audit_version) return std::nullopt;

    audit_record r;
    std::string type, ts;
    if (!text_field(j, "type", 32, type) || (type != allowed_type && type != refused_type)) return std::nullopt;
    r.allowed = type == allowed_type;
    if (!text_field(j, "ts", 32, ts)) return std::nullopt;
    const auto when = parse_timestamp(ts);
    if (!when) return std::nullopt;
    r.ts = *when;
    if (!text_field(j, "kind", audit_max_kind, r.kind) || !text_field(j, "host", audit_max_host, r.host)) {
        return std::nullopt;
    }
    std::int64_t port = 0;
    if (!count_field(j, "port", port) || port > 65535) return std::nullopt;
    r.port = static_cast<int>(port);
    if (!count_field(j, "bytes_up", r.bytes_up) || !count_field(j, "bytes_down", r.bytes_down) ||
        !count_field(j, "duration_ms", r.duration_ms)) {
        return std::nullopt;
    }
    if (j.contains("reason") && !text_field(j, "reason", audit_max_reason, r.reason)) return std::nullopt;
    if (j.contains("suppressed") && !count_field(j, "suppressed", r.suppressed)) return std::nullopt;
    return r;
}

std::vector<audit_record> read_audit_log(const std::filesystem::path& log, std::size_t max) {
    std::vector<audit_record> out;
    if (max == 0) return out;
    auto rotated = log;
    rotated += ".1";
    parse_lines(read_tail(rotated, max_read_per_file), out);
    parse_lines(read_tail(log, max_read_per_file), out);
    if (out.size() > max) out.erase(out.begin(), out.end() - static_cast<std::ptrdiff_t>(max));
    return out;
}

} // namespace machine::net
