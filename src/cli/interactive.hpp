// Sessions through OpenSSH (vm::openssh_argv): `machine claude|codex` (the agent's tmux session),
// `machine ssh` (a login shell), `machine run` (one command). Internal to the CLI module.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <asio/awaitable.hpp>

#include "cli.hpp"
#include "machine/config.hpp"

namespace machine::cli {

/// The argv for the VM (through OpenSSH) that runs `command` in `dir`, relative to the home
/// directory; in the home directory itself, silently, when `dir` does not exist (yet). An empty
/// `command` is the user's login shell.
std::vector<std::string> run_in_dir(const std::string& dir, const std::vector<std::string>& command);

/// The directory sessions, shells and `run` start in: the primary repo under ~/code ("." without one).
std::string primary_repo_dir(const config::project& p);

/// What `machine run` (`command`) and `machine ssh` (no command: the login shell) run in the
/// VM: run_in_dir of the project's primary_repo_dir, one choice for both.
std::vector<std::string> in_primary_repo(const config::project& p, const std::vector<std::string>& command);

/// The agents' logins the project's VM lacks, delivered to its agent (vm::sync_credentials)
/// through the VM's pinned master (vm::connect_to_agent): what `machine claude|codex|ssh|run` do
/// once they have their target and before they run. Nothing is asked of the VM when the project
/// receives no login; a delivery that fails is a warning, and the attach goes on.
asio::awaitable<void> deliver_credentials(context& ctx, const config::project& project, lima::instance inst);

/// What `machine pin` did: the fingerprint recorded (or found), the one it replaced.
struct pin_outcome {
    std::string fingerprint;
    std::string key_type;
    std::optional<std::string> replaced;  ///< the previous pin's fingerprint, with --replace
    bool unchanged = false;               ///< the VM presents the pinned key already
};

/// `machine pin NAME [--replace]`: records the key the VM presents now when none is pinned; with
/// a different pinned key refuses (host_key_mismatch) unless `replace`.
asio::awaitable<pin_outcome> repin(context& ctx, std::string name, lima::instance inst, bool replace);

/// A session name for `--session`: letters, digits, '_' and '-', at most 64, not starting with
/// '-'. Throws usage_error naming what is wrong (before anything runs).
void require_valid_session_name(const std::string& s);

} // namespace machine::cli
