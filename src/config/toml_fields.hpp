// Private to the config module: reading typed values out of a toml++ document while collecting
// problems with their source positions. Knows nothing about projects; config.cpp holds the
// schema.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

namespace machine::config::detail {

/// Parses TOML text; a syntax error becomes config_error `file:line:col: invalid TOML: ...`.
toml::table parse_toml(std::string_view text, const std::filesystem::path& file_label);

/// The problems found in one file. Everything is checked and collected, then the first in file
/// order is thrown: toml++ tables are unordered maps, so the order we visit keys in says
/// nothing about which problem the user sees first in the file.
class problems {
public:
    explicit problems(std::filesystem::path file) : file_(std::move(file)) {}

    /// Records `file:line:col: key_path: what` (without `key_path: ` when it is empty).
    void add(const toml::source_region& where, std::string_view key_path, std::string_view what);
    /// Throws config_error for the first problem in file order, if any.
    void raise_first() const;
    /// `file:line:col: key_path`: where a value is, for messages raised after parsing.
    std::string locate(const toml::source_region& where, std::string_view key_path) const;

private:
    struct entry {
        toml::source_position at;
        std::string message;
    };
    std::filesystem::path file_;
    std::vector<entry> entries_;
};

/// One key's value being read, with what the messages need to point at it.
struct field {
    const toml::node& value;
    std::string path;                    ///< `web.cpus`, or `cpus` in .machine.toml
    const toml::source_region& where;    ///< the key's own position
    problems& out;

    void report(std::string_view what) const { out.add(where, path, what); }
};

/// Element `i` of the array `f` holds, as `path[i]` at the element's own position.
field element_field(const field& f, const toml::array& array, std::size_t i);

/// `path.key`, quoting the key when it is not a bare TOML key.
std::string join_key_path(std::string_view prefix, std::string_view key);

/// A value as it would be written in TOML (`"four"`, `8`, `true`, `[1, 2]`), or `a table`;
/// escaped so that nothing from the file reaches a terminal raw, and shortened when long.
std::string describe(const toml::node& value);
/// `s` as a TOML basic string, escaped and shortened like describe().
std::string toml_string(std::string_view s);

/// A check on one string: "" when it is fine, else the problem ("must not be empty").
using string_rule = std::string (*)(std::string_view);

/// A string, checked by `rule` when given.
std::optional<std::string> read_string(const field& f, string_rule rule = nullptr);
std::optional<bool> read_bool(const field& f);
std::optional<std::int64_t> read_integer(const field& f);
/// An array whose elements are strings passing `rule`; an element's problem is reported at the
/// element as `path[i]`.
std::optional<std::vector<std::string>> read_strings(const field& f, string_rule rule);

/// One key a table may hold, and how its value is applied to a Target.
template <typename Target>
struct key_rule {
    std::string_view name;
    void (*apply)(const field&, Target&);
};

/// The problem text for a key no rule knows: a did-you-mean when one name is close, else the
/// list of valid keys.
std::string unknown_key_message(std::string_view key, const std::vector<std::string>& valid);

template <typename Target>
const key_rule<Target>* find_rule(std::span<const key_rule<Target>> rules, std::string_view key) {
    for (const auto& rule : rules)
        if (rule.name == key) return &rule;
    return nullptr;
}

template <typename Target>
std::vector<std::string> rule_names(std::span<const key_rule<Target>> rules) {
    std::vector<std::string> names;
    for (const auto& rule : rules) names.emplace_back(rule.name);
    return names;
}

/// Applies every key of `table` to `target` through `rules`; unknown keys are problems.
template <typename Target>
void apply_table(const toml::table& table, std::string_view prefix,
                 std::span<const key_rule<Target>> rules, Target& target, problems& out) {
    for (auto&& [key, value] : table) {
        const field f{value, join_key_path(prefix, key.str()), key.source(), out};
        if (const auto* rule = find_rule(rules, key.str()))
            rule->apply(f, target);
        else
            f.report(unknown_key_message(key.str(), rule_names(rules)));
    }
}

} // namespace machine::config::detail
