#include "toml_fields.hpp"

#include "machine/config.hpp"
#include "machine/text.hpp"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <tuple>

namespace machine::config::detail {

namespace fs = std::filesystem;

namespace {

// Values quoted in messages are cut here: a message is one line, whatever the file holds.
constexpr std::size_t max_shown_chars = 60;

std::string position_prefix(const fs::path& file, const toml::source_position& at) {
    return file.string() + ":" + std::to_string(at.line) + ":" + std::to_string(at.column) + ": ";
}

bool is_bare_key(std::string_view key) {
    return !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-';
    });
}

// Cuts `s` to at most `limit` bytes without splitting a UTF-8 sequence.
std::string_view shorten(std::string_view s, std::size_t limit) {
    if (s.size() <= limit) return s;
    std::size_t end = limit;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
    return s.substr(0, end);
}

std::string escape_char(char c) {
    switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\t': return "\\t";
    case '\r': return "\\r";
    default: break;
    }
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04X", static_cast<unsigned char>(c));
        return buf;
    }
    return std::string(1, c);
}

} // namespace

toml::table parse_toml(std::string_view text, const fs::path& file_label) {
    try {
        return toml::parse(text, file_label.string());
    } catch (const toml::parse_error& e) {
        // toml++'s description may quote bytes from the file; sanitize the whole message.
        const std::string message = position_prefix(file_label, e.source().begin) +
                                    "invalid TOML: " + std::string(e.description());
        throw config_error(text::sanitize_for_terminal(message));
    }
}

void problems::add(const toml::source_region& where, std::string_view key_path,
                   std::string_view what) {
    std::string message = position_prefix(file_, where.begin);
    if (!key_path.empty()) message.append(key_path).append(": ");
    message.append(what);
    entries_.push_back({where.begin, text::sanitize_for_terminal(message)});
}

std::string problems::locate(const toml::source_region& where, std::string_view key_path) const {
    std::string at = position_prefix(file_, where.begin);
    at.append(key_path);
    return text::sanitize_for_terminal(at);
}

void problems::raise_first() const {
    const auto first = std::min_element(entries_.begin(), entries_.end(), [](const entry& a, const entry& b) {
        return std::tie(a.at.line, a.at.column) < std::tie(b.at.line, b.at.column);
    });
    if (first != entries_.end()) throw config_error(first->message);
}

field element_field(const field& f, const toml::array& array, std::size_t i) {
    const toml::node& element = *array.get(i);
    return {element, f.path + "[" + std::to_string(i) + "]", element.source(), f.out};
}

std::string join_key_path(std::string_view prefix, std::string_view key) {
    std::string path(prefix);
    if (!path.empty()) path += '.';
    path += is_bare_key(key) ? std::string(key) : toml_string(key);
    return path;
}

std::string toml_string(std::string_view s) {
    const std::string_view shown = shorten(s, max_shown_chars);
    std::string out = "\"";
    for (char c : shown) out += escape_char(c);
    if (shown.size() < s.size()) out += "...";
    out += '"';
    return out;
}

std::string describe(const toml::node& value) {
    if (const auto* s = value.as_string()) return toml_string(s->get());
    if (value.is_table()) return "a table";
    if (const auto* array = value.as_array()) {
        std::string out = "[";
        for (std::size_t i = 0; i < array->size(); ++i) {
            if (i > 0) out += ", ";
            out += describe(*array->get(i));
        }
        out += "]";
        return out.size() <= max_shown_chars ? out : "[...]";
    }
    // Numbers, booleans, dates: toml++ prints them as TOML.
    std::ostringstream os;
    value.visit([&](const auto& v) { os << v; });
    return os.str();
}

std::optional<std::string> read_string(const field& f, string_rule rule) {
    const auto* s = f.value.as_string();
    if (!s) {
        f.report("expected a string, got " + describe(f.value));
        return std::nullopt;
    }
    if (const std::string problem = rule ? rule(s->get()) : std::string(); !problem.empty()) {
        f.report(problem);
        return std::nullopt;
    }
    return s->get();
}

std::optional<bool> read_bool(const field& f) {
    if (const auto* b = f.value.as_boolean()) return b->get();
    f.report("expected a boolean, got " + describe(f.value));
    return std::nullopt;
}

std::optional<std::int64_t> read_integer(const field& f) {
    // TOML booleans are their own type, so `cpus = true` is refused here too.
    if (const auto* i = f.value.as_integer()) return i->get();
    f.report("expected an integer, got " + describe(f.value));
    return std::nullopt;
}

std::optional<std::vector<std::string>> read_strings(const field& f, string_rule rule) {
    const auto* array = f.value.as_array();
    if (!array) {
        f.report("expected an array of strings, got " + describe(f.value));
        return std::nullopt;
    }
    std::vector<std::string> values;
    bool ok = true;
    for (std::size_t i = 0; i < array->size(); ++i) {
        const auto value = read_string(element_field(f, *array, i), rule);
        if (value) values.push_back(*value);
        ok = ok && value;
    }
    if (!ok) return std::nullopt;
    return values;
}

std::string unknown_key_message(std::string_view key, const std::vector<std::string>& valid) {
    if (const std::string match = text::closest_match(key, valid); !match.empty())
        return "unknown key (did you mean " + toml_string(match) + "?)";
    std::string list;
    for (const auto& name : valid) list += (list.empty() ? "" : ", ") + name;
    return "unknown key; valid keys: " + list;
}

} // namespace machine::config::detail
