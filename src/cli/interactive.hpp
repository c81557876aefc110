// Interactive sessions through OpenSSH: `machine claude|codex` (the agent's tmux session) and
// `machine ssh` (a login shell). Internal to the CLI module.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "machine/config.hpp"

namespace machine::cli {

/// What `ssh` needs to reach a VM with its pinned host key (pure: tested without a VM).
struct openssh_target {
    std::string name;                     ///< the project (Lima's host alias is lima-<name>)
    std::filesystem::path ssh_config;     ///< Lima's ssh.config for the instance
    std::filesystem::path known_hosts;    ///< the pin's known_hosts file
    bool forward_agent = false;
};

/// `ssh -F <ssh.config> [-t] <pinning and forwarding options> lima-<name> [-- <remote>]`.
/// Lima's ssh.config turns host-key checking off; these options turn it back on against our pin
/// (command-line options win over the file). `remote` is argv for the VM: each word is quoted
/// for the remote shell (ssh hands the remote side one string).
std::vector<std::string> openssh_argv(const openssh_target& t, bool tty, const std::vector<std::string>& remote);

/// A session name for `--session`: letters, digits, '_' and '-', at most 64, not starting with
/// '-'. Throws usage_error naming what is wrong (before anything runs).
void require_valid_session_name(const std::string& s);

} // namespace machine::cli
