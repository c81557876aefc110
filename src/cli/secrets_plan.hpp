// Which secret sets `machine secrets` renders into a VM, decided from the project's
// declarations and what the VM's .envrc files say (pure: no I/O, tested directly). Internal to
// the CLI module.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "machine/config.hpp"
#include "machine/protocol.hpp"

namespace machine::cli {

/// One set to render: where its variables come from, and which repos load it.
struct planned_set {
    std::string name;
    std::vector<config::secret_source> sources;
    std::vector<std::string> used_by;  ///< "~/code/web/.envrc"
};

struct secrets_plan {
    std::vector<planned_set> sets;
    std::vector<std::string> warnings;  ///< one line each, escaped: a .envrc is the VM's text
};

/// The project's declared sets, each with the repos whose .envrc loads it. The VM only says
/// which repos use which set: it never chooses what the host reads. A `use op_env X` for a set
/// the project does not declare is a warning naming the file and line, and the entry to add to
/// projects.toml. With `only_repo`, just the sets that repo uses (an error when it has no
/// .envrc, or uses no declared set).
secrets_plan plan_secret_sets(const config::project& p, const std::vector<protocol::envrc_secrets>& repos,
                              const std::optional<std::string>& only_repo);

/// `~/code/<dir>/.envrc`, escaped for the terminal.
std::string shown_envrc(const protocol::envrc_secrets& r);

/// `--repo web` names ~/code/web, or a nested ~/code/org/web by either spelling.
bool repo_matches(const protocol::envrc_secrets& r, const std::string& repo);

} // namespace machine::cli
