// The agent's server: one io_context on one thread, a Unix socket listener, a coroutine per
// connection, a coroutine per running command or subscription, and the journal.
#pragma once

#include <chrono>
#include <string>

#include "journal.hpp"
#include "network.hpp"

namespace machine::agent {

inline constexpr const char* default_socket = "/run/machine-agent/agent.sock";
inline constexpr const char* default_journal = "/var/lib/machine-agent/journal.jsonl";
inline constexpr const char* default_steps_state = "/var/lib/machine-agent/steps.json";
inline constexpr const char* default_secrets_dir = "/run/machine-secrets";

struct server_options {
    std::string socket_path = default_socket;
    std::string journal_path = default_journal;
    std::string steps_state_path = default_steps_state;  ///< what `provision` has done
    std::string secrets_dir = default_secrets_dir;       ///< the tmpfs secrets.render writes to
    std::string user;   ///< the VM user: user.ready, and the socket's group by default
    std::string group;  ///< the socket's group (name or number); default: the user's primary group
    bool systemd = true;  ///< false: no boot.finished, no sd_notify
    std::string systemctl = "systemctl";
    std::string tmux = "tmux";  ///< asked, as each session's user, how many clients are attached
    std::string runtime_dir_root = "/run/user";
    std::string boot_id_file = "/proc/sys/kernel/random/boot_id";
    /// The unit that runs the agent: its hash goes into hello, so the host can tell the
    /// installation is current without running anything in the VM.
    std::string unit_file = "/etc/systemd/system/machine-agent.service";
    /// machine's nftables table for the VM (network.apply), applied at every start when present.
    std::string network_rules = default_network_rules;
    std::string nft = "nft";
    journal::limits journal_limits;
    std::size_t max_clients = 64;
    std::chrono::milliseconds sync_interval{200};
    std::chrono::milliseconds user_poll{500};
};

/// Runs the agent until SIGTERM or SIGINT. Returns the process exit status; start-up failures
/// (socket in use, journal unreadable) are logged and give 1.
int serve(const server_options& options);

} // namespace machine::agent
