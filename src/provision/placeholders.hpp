// The ${...} values a profile step's env may hold: the one list that parsing checks names
// against, that tells a per-project value (not for a base disk every project shares) from a
// shared one, and that planning fills in. Internal to the provision module.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "machine/provision.hpp"

namespace machine::provision::detail {

struct placeholder {
    std::string_view name;                     ///< as written between "${" and "}"
    bool per_project;                          ///< differs between projects (git identity, shell...)
    std::string (*value)(const host_values&);  ///< what it becomes in a plan
};

std::span<const placeholder> placeholders();
/// The placeholder named `name`, or nullptr.
const placeholder* find_placeholder(std::string_view name);

} // namespace machine::provision::detail
