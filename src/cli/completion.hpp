// Shell completion: `machine completion bash|zsh|fish` prints a script made from the command
// table, and the scripts ask `machine project-names` for the configured projects.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "command_table.hpp"

namespace machine::cli {

// The completion script for `shell` ("bash", "zsh" or "fish"; "" for another): the visible
// rows, their options, and project names where a row takes one.
std::string completion_script(std::string_view shell, std::span<const command> rows, std::span<const option> globals);

// `machine project-names`: the projects configured in projects.toml, one per line, read from
// that file alone (no Lima, no .machine.toml), for completion scripts. A broken configuration
// prints nothing at all (exit 2): a script completes nothing rather than show an error.
int print_project_names(const arguments&);

} // namespace machine::cli
