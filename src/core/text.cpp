#include "machine/text.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <optional>

#include "machine/error.hpp"

namespace machine::text {

std::size_t edit_distance(std::string_view a, std::string_view b) {
    // Optimal string alignment distance: Levenshtein plus adjacent transpositions, so "wbe"
    // is one typo away from "web".
    const std::size_t n = a.size(), m = b.size();
    std::vector<std::vector<std::size_t>> d(n + 1, std::vector<std::size_t>(m + 1));
    for (std::size_t i = 0; i <= n; ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= m; ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= n; ++i) {
        for (std::size_t j = 1; j <= m; ++j) {
            const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[n][m];
}

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
    std::string best;
    std::size_t best_distance = std::string::npos;
    for (const auto& candidate : candidates) {
        const std::size_t d = edit_distance(word, candidate);
        if (d < best_distance) {
            best_distance = d;
            best = candidate;
        }
    }
    // Accept roughly one typo per three characters, at least one.
    const std::size_t limit = std::max<std::size_t>(1, word.size() / 3);
    return best_distance <= limit ? best : std::string{};
}

bool is_valid_project_name(std::string_view name) {
    if (name.empty() || name.size() > 63) return false;
    auto ok_first = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (!ok_first(name.front())) return false;
    return std::all_of(name.begin(), name.end(), [&](char c) { return ok_first(c) || c == '-'; });
}

void require_valid_project_name(std::string_view name) {
    if (!is_valid_project_name(name)) {
        // Escaped, not sanitized: a newline or a bidi control in the name must not break or
        // reorder the one-line message around it.
        throw usage_error("invalid project name '" + escape_for_terminal(name) +
                          "' (use a-z, 0-9 and hyphens, starting with a letter or digit, at "
                          "most 63 characters)");
    }
}

namespace {

// Length of the UTF-8 sequence starting at s[i], or 0 when it is invalid.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) n = 3;
    else if (c >= 0xF0 && c <= 0xF4) n = 4;
    else return 0;
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k) {
        if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
    }
    return n;
}

} // namespace

std::string sanitize_for_terminal(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size();) {
        const auto c = static_cast<unsigned char>(in[i]);
        if (c == 0x1B) {  // ESC: skip the whole sequence
            ++i;
            if (i < in.size() && in[i] == '[') {  // CSI: parameters then a final byte 0x40-0x7E
                ++i;
                while (i < in.size() && !(in[i] >= 0x40 && in[i] <= 0x7E)) ++i;
                if (i < in.size()) ++i;
            } else if (i < in.size() && (in[i] == ']' || in[i] == 'P' || in[i] == '_' ||
                                         in[i] == '^')) {  // OSC/DCS/APC/PM: until BEL or ST
                ++i;
                while (i < in.size() && in[i] != '\a' &&
                       !(in[i] == 0x1B && i + 1 < in.size() && in[i + 1] == '\\'))
                    ++i;
                if (i < in.size()) i += (in[i] == '\a') ? 1 : 2;
            } else if (i < in.size()) {
                ++i;  // two-byte escape
            }
            continue;
        }
        if (c == '\n' || c == '\t') {
            out += static_cast<char>(c);
            ++i;
        } else if (c < 0x20 || c == 0x7F) {
            ++i;  // other C0 controls (including CR, BEL, BS) are dropped
        } else if (c < 0x80) {
            out += static_cast<char>(c);
            ++i;
        } else if (const std::size_t n = utf8_sequence_length(in, i); n > 0) {
            // C1 controls (U+0080..U+009F) are encoded as C2 80..C2 9F: drop them too.
            if (!(n == 2 && c == 0xC2 && static_cast<unsigned char>(in[i + 1]) < 0xA0))
                out.append(in.substr(i, n));
            i += n;
        } else {
            out += "\xEF\xBF\xBD";
            ++i;
        }
    }
    return out;
}

namespace {

// A well-formed UTF-8 sequence: its code point and length in bytes.
struct code_point {
    char32_t value;
    std::size_t length;
};

// The code point encoded at s[i], or nullopt when the bytes there are not well-formed UTF-8
// (a stray continuation byte, a cut sequence, an overlong form, a surrogate, > U+10FFFF).
std::optional<code_point> decode_utf8(std::string_view s, std::size_t i) {
    const auto lead = static_cast<unsigned char>(s[i]);
    std::size_t length = 0;
    char32_t value = 0;
    if (lead < 0x80) return code_point{lead, 1};
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2;
        value = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        value = lead & 0x0F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        value = lead & 0x07;
    } else {
        return std::nullopt;
    }
    if (i + length > s.size()) return std::nullopt;
    for (std::size_t k = 1; k < length; ++k) {
        const auto c = static_cast<unsigned char>(s[i + k]);
        if ((c & 0xC0) != 0x80) return std::nullopt;
        value = (value << 6) | (c & 0x3F);
    }
    constexpr char32_t shortest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (value < shortest[length] || (value >= 0xD800 && value <= 0xDFFF) || value > 0x10FFFF) return std::nullopt;
    return code_point{value, length};
}

// Code points a terminal must not receive raw from a VM: controls; the line and paragraph
// separators; the interlinear annotation characters; and Unicode's Default_Ignorable_Code_Point
// set (DerivedCoreProperties.txt, as of Unicode 14), which holds the bidi
// controls, the zero-width characters and every other character meant to be invisible.
bool shown_escaped(char32_t cp) {
    struct range {
        char32_t first, last;
    };
    static constexpr range ranges[] = {
        {0x0000, 0x001F}, {0x007F, 0x009F}, {0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x061C, 0x061C},
        {0x115F, 0x1160}, {0x17B4, 0x17B5}, {0x180B, 0x180F}, {0x200B, 0x200F}, {0x2028, 0x202E},
        {0x2060, 0x206F}, {0x3164, 0x3164}, {0xFE00, 0xFE0F}, {0xFEFF, 0xFEFF}, {0xFFA0, 0xFFA0},
        {0xFFF0, 0xFFFB}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0000, 0xE0FFF},
    };
    return std::any_of(std::begin(ranges), std::end(ranges),
                       [cp](const range& r) { return cp >= r.first && cp <= r.last; });
}

void append_hex(std::string& out, const char* prefix, std::uint32_t value, int digits) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%s%0*x", prefix, digits, static_cast<unsigned>(value));
    out += buf;
}

// How code point `cp` is shown: `\n`, `\x1b`, `\u202e`, `\U000e0041`.
void append_escaped(std::string& out, char32_t cp) {
    switch (cp) {
    case '\n': out += "\\n"; return;
    case '\r': out += "\\r"; return;
    case '\t': out += "\\t"; return;
    default: break;
    }
    if (cp < 0x80) append_hex(out, "\\x", cp, 2);
    else if (cp <= 0xFFFF) append_hex(out, "\\u", cp, 4);
    else append_hex(out, "\\U", cp, 8);
}

} // namespace

std::string escape_for_terminal(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size();) {
        const auto cp = decode_utf8(in, i);
        if (!cp) {
            append_hex(out, "\\x", static_cast<unsigned char>(in[i]), 2);
            ++i;
            continue;
        }
        if (cp->value == '\\') out += "\\\\";
        else if (shown_escaped(cp->value)) append_escaped(out, cp->value);
        else out.append(in.substr(i, cp->length));
        i += cp->length;
    }
    return out;
}

std::string shell_quote(std::string_view s) {
    // A leading '=' stays quoted: zsh (a VM user's shell may be zsh) expands an unquoted
    // `=word` to the path of the command `word` (its EQUALS option, on by default), so
    // `tmux kill-session -t =claude` would name /usr/bin/claude.
    if (!s.empty() && s.front() != '=' && std::all_of(s.begin(), s.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("@%_+=:,./-").find(c) != std::string_view::npos;
        }))
        return std::string(s);
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') out += "'\\''";
        else out += c;
    }
    out += "'";
    return out;
}

std::string last_line(std::string_view s) {
    auto lines = split_lines(s);
    while (!lines.empty() && trim(lines.back()).empty()) lines.pop_back();
    return lines.empty() ? std::string() : trim(lines.back());
}

std::vector<std::string> split_lines(std::string_view s) {
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start < s.size()) {
        std::size_t end = s.find('\n', start);
        if (end == std::string_view::npos) end = s.size();
        std::string_view line = s.substr(start, end - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        lines.emplace_back(line);
        start = end + 1;
    }
    return lines;
}

std::string tail(std::string_view s, std::size_t max_bytes) {
    if (s.size() <= max_bytes) return std::string(s);
    std::string_view t = s.substr(s.size() - max_bytes);
    if (const auto nl = t.find('\n'); nl != std::string_view::npos && nl + 1 < t.size())
        t.remove_prefix(nl + 1);
    return std::string(t);
}

std::string trim(std::string_view s) {
    const auto first = s.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) return {};
    const auto last = s.find_last_not_of(" \t\r\n");
    return std::string(s.substr(first, last - first + 1));
}

bool is_valid_secret_set_name(std::string_view set) {
    if (set.empty() || set.size() > 64) return false;
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (!alnum(set.front())) return false;
    return std::all_of(set.begin(), set.end(), [&](char c) { return alnum(c) || c == '_' || c == '-'; });
}

bool is_op_environment_id(std::string_view id) {
    return !id.empty() && id.size() <= 128 &&
           std::all_of(id.begin(), id.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); });
}

bool is_valid_secret_name(std::string_view name) {
    // Read-only in bash, or special: a secrets file assigning one would fail or mislead.
    constexpr std::string_view bash_reserved[] = {"UID", "EUID", "PPID", "BASHOPTS", "SHELLOPTS", "BASH_VERSINFO", "_"};
    if (name.empty() || name.size() > 128) return false;
    auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
    if (!letter(name.front())) return false;
    if (!std::all_of(name.begin(), name.end(), [&](char c) { return letter(c) || (c >= '0' && c <= '9'); }))
        return false;
    return std::find(std::begin(bash_reserved), std::end(bash_reserved), name) == std::end(bash_reserved);
}

log_limiter::log_limiter(std::string verb, std::string noun, clock::duration interval)
    : verb_(std::move(verb)), noun_(std::move(noun)), interval_(interval) {}

std::optional<std::string> log_limiter::note(std::string_view kind, std::string_view detail, clock::time_point now) {
    ++pending_;
    auto known = std::find_if(kinds_.begin(), kinds_.end(), [&](const auto& k) { return k.first == kind; });
    if (known != kinds_.end()) ++known->second;
    else if (kinds_.size() < max_kinds) kinds_.emplace_back(std::string(kind), 1);
    else ++other_;

    if (last_line_ && now - *last_line_ < interval_) return std::nullopt;
    std::string line = pending_ == 1 ? std::string(detail) : summary(now);
    reset(now);
    return line;
}

std::optional<std::string> log_limiter::flush(clock::time_point now) {
    if (pending_ == 0) return std::nullopt;
    std::string line = summary(now);
    reset(now);
    return line;
}

std::string log_limiter::summary(clock::time_point now) const {
    // The window starts at the last line; there always is one, as note() logs the first event.
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.1f", std::chrono::duration<double>(now - last_line_.value_or(now)).count());
    std::string out = verb_ + ' ' + std::to_string(pending_) + ' ' + noun_ + (pending_ == 1 ? "" : "s") +
                      " in the last " + secs + " s (";
    for (const auto& [kind, n] : kinds_) out += kind + " x" + std::to_string(n) + ", ";
    if (other_) out += "other x" + std::to_string(other_) + ", ";
    out.resize(out.size() - 2);
    return out + ')';
}

void log_limiter::reset(clock::time_point now) {
    last_line_ = now;
    pending_ = 0;
    kinds_.clear();
    other_ = 0;
}

} // namespace machine::text
