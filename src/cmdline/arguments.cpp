// The specs' vocabulary (flag, value, positional...) and what callers read the parsed command
// line through (arguments).
#include <stdexcept>

#include "machine/cmdline.hpp"

namespace machine::cmdline {

std::vector<std::string> option::spellings() const {
    std::vector<std::string> out;
    std::string::size_type from = 0;
    for (;;) {
        const auto comma = names.find(',', from);
        out.push_back(names.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
        if (comma == std::string::npos) return out;
        from = comma + 1;
    }
}

std::string option::key() const { return spellings().back(); }

namespace {

option make(option_kind kind, std::string names, std::string help, completes to = completes::nothing) {
    option o;
    o.kind = kind;
    o.names = std::move(names);
    o.help = std::move(help);
    o.to = to;
    return o;
}

} // namespace

option flag(std::string names, std::string help) { return make(option_kind::flag, std::move(names), std::move(help)); }

option value(std::string names, std::string help, completes to) {
    return make(option_kind::value, std::move(names), std::move(help), to);
}

option number(std::string names, std::string help, int default_number) {
    option o = make(option_kind::number, std::move(names), std::move(help));
    o.default_number = default_number;
    return o;
}

option choice(std::string names, std::string help, std::vector<std::string> words, std::string default_value) {
    option o = one_of(make(option_kind::value, std::move(names), std::move(help)), std::move(words));
    o.default_value = std::move(default_value);
    return o;
}

option positional(std::string name, std::string help, completes to) {
    return make(option_kind::positional, std::move(name), std::move(help), to);
}

option positionals(std::string name, std::string help, completes to) {
    option o = make(option_kind::positional, std::move(name), std::move(help), to);
    o.many = true;
    return o;
}

option required(option o) {
    o.required = true;
    return o;
}

option repeatable(option o) {
    o.many = true;
    return o;
}

option excluding(option o, std::vector<std::string> others) {
    o.excludes = std::move(others);
    return o;
}

option one_of(option o, std::vector<std::string> words) {
    o.to = completes::words;
    o.words = std::move(words);
    return o;
}

const arguments::slot& arguments::at(const std::string& key) const {
    const auto it = slots.find(key);
    if (it == slots.end()) throw std::logic_error("command '" + command + "' has no option '" + key + "'");
    return it->second;
}

bool arguments::flag(const std::string& key) const { return at(key).flag; }

std::optional<std::string> arguments::value(const std::string& key) const {
    const slot& s = at(key);
    if (s.given || !s.text.empty()) return s.text;
    return std::nullopt;
}

std::vector<std::string> arguments::values(const std::string& key) const { return at(key).texts; }

int arguments::number(const std::string& key) const { return at(key).number; }

std::string arguments::named_project() const {
    std::vector<std::string> given;
    for (const auto& [key, s] : slots) {
        if (s.declared->kind != option_kind::positional || !s.given) continue;
        if (s.declared->many) given.insert(given.end(), s.texts.begin(), s.texts.end());
        else given.push_back(s.text);
    }
    return given.size() == 1 ? given.front() : "";
}

} // namespace machine::cmdline
