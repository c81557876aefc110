#include "placeholders.hpp"

#include <algorithm>
#include <iterator>

#include "machine/forge_keys.hpp"

namespace machine::provision::detail {

namespace {
constexpr placeholder table[] = {
    {"git.name", true, [](const host_values& h) { return h.git_name; }},
    {"git.email", true, [](const host_values& h) { return h.git_email; }},
    {"git.signing_key", true, [](const host_values& h) { return h.git_signing_key; }},
    {"vm.user", false, [](const host_values& h) { return h.vm_user; }},
    {"vm.shell", true, [](const host_values& h) { return h.vm_shell; }},
    {"claude.mode", true, [](const host_values& h) { return h.claude_mode; }},
    {"forge.known_hosts", false, [](const host_values&) { return forge::known_hosts_text(); }},
};
} // namespace

std::span<const placeholder> placeholders() { return table; }

const placeholder* find_placeholder(std::string_view name) {
    const auto* it = std::find_if(std::begin(table), std::end(table), [&](const placeholder& p) { return p.name == name; });
    return it == std::end(table) ? nullptr : it;
}

} // namespace machine::provision::detail
