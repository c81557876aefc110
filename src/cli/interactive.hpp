// Sessions through OpenSSH: `machine claude|codex` (the agent's tmux session), `machine ssh`
// (a login shell), `machine run` (one command) and the repo clones of `up`. Internal to the CLI
// module.
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

/// What `ssh` needs to reach a VM with its pinned host key (pure: tested without a VM).
struct openssh_target {
    std::string name;                     ///< the project (Lima's host alias is lima-<name>)
    std::filesystem::path ssh_config;     ///< Lima's ssh.config for the instance
    std::filesystem::path known_hosts;    ///< the pin's known_hosts file
    bool forward_agent = false;
};

/// `ssh -F <ssh.config> [-t|-T] <pinning, no-master and forwarding options> lima-<name> [-- <remote>]`:
/// the one way every OpenSSH connection to a VM is built (ssh, claude, codex, run, clones).
/// Lima's ssh.config turns host-key checking off and shares one ControlMaster, which Lima opened
/// without checking the key; these options turn checking back on against our pin and open a
/// connection of our own (ControlMaster=no, ControlPath=none: OpenSSH takes the first value it
/// obtains, and -o comes before -F's file). `remote` is argv for the VM: each word is quoted for
/// the remote shell (ssh hands the remote side one string).
std::vector<std::string> openssh_argv(const openssh_target& t, bool tty, const std::vector<std::string>& remote);

/// `machine run`'s argv for the VM: `command` run in `dir` (relative to the home directory; the
/// home directory itself when `dir` does not exist), as `machine ssh` starts its shell there.
std::vector<std::string> run_in_dir(const std::string& dir, const std::vector<std::string>& command);

/// The directory sessions, shells and `run` start in: the primary repo under ~/code ("." without one).
std::string primary_repo_dir(const config::project& p);

/// Checks the key the VM presents against its pin with a libssh connection of machine's own,
/// before OpenSSH runs: a VM without a pin, or with another key, is refused with machine's
/// message naming the VM (and both fingerprints); the pin's known_hosts file for OpenSSH is
/// rewritten from the pin on the way.
asio::awaitable<void> verify_pin(context& ctx, std::string name, lima::instance inst);

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
