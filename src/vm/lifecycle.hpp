// The steps `up` and `bake` share: boot an instance, reach its guest agent, wait until the VM
// is ready. Internal to the vm module.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <asio/awaitable.hpp>

#include "machine/guest.hpp"
#include "machine/vm.hpp"
#include "guest_link.hpp"

namespace machine::vm {

/// limactl's log lines (its progress: image download or build, boot) as the VM's info,
/// warning and error messages.
lima::log_handler lima_log_to_events(context& ctx, std::string name);

/// `limactl start`, following the host agent's events; an interrupted start stops the VM. With
/// a template in `create_from`, the instance is created from it by the same call.
asio::awaitable<void> boot_instance(context& ctx, lima::driver& lima, std::string name,
                                    std::filesystem::path ha_log, cancel_signal* cancel,
                                    std::filesystem::path create_from);

/// A running VM's guest agent, current, and the way to it.
struct reached_guest {
    guest_link link;
    std::unique_ptr<guest::connection> agent;  ///< for requests one after another
    std::string boot_id;                       ///< the VM's boot, as its agent said it
};

/// A connection to the guest agent and its hello.
struct greeted_agent {
    std::unique_ptr<guest::connection> conn;
    protocol::hello_result hello;
};

/// The agent's hello through the VM's master, asked before the VM is listed: `up` asks while
/// `limactl list` runs (each takes ~0.1 s under emulation), for the instance Lima keeps under
/// the name's directory. open_guest uses it only for a listed instance with the same ssh.config.
struct master_hello {
    master_before_listing master;        ///< its link reset when the VM is paused (asked again later)
    std::optional<greeted_agent> agent;  ///< nullopt: no agent answered through it
};
asio::awaitable<master_hello> hello_over_master(context& ctx, std::string name, lima::driver& lima);

/// The VM's guest agent, installed or upgraded when it is not this machine's (step "agent").
/// A VM with machine's SSH master (it ran since an earlier up) is reached through it, without a
/// handshake, as long as its agent is current; otherwise over a libssh session of machine's own.
/// The host key is pinned: recorded only when machine created the VM (expect_new_vm_key); a VM
/// without a pin otherwise is refused, naming `machine pin NAME`. `asked` (may be null): what
/// hello_over_master found before the VM was listed, used instead of asking again.
asio::awaitable<reached_guest> open_guest(context& ctx, std::string name, lima::instance inst, cancel_signal* cancel,
                                          master_hello* asked = nullptr);

/// What a warning about a setting that applies at the VM's next start tells the user to run:
/// "machine down NAME && machine up NAME" (one wording for every such warning).
std::string restart_hint(const std::string& name);

/// Sets the guest's clock from the host's through its agent (as root), saying by how much it was
/// off when that is 2 s or more: after a pause, a hibernation or a snapshot's memory the guest's
/// clock is where it stood (the guest has no time sync of its own). A failure is a warning.
asio::awaitable<void> sync_guest_clock(context& ctx, guest::connection& agent, const std::string& name);

/// Waits until the agent reports this boot's boot.finished and user.ready.
asio::awaitable<void> wait_until_ready(context& ctx, std::string name, const guest_link& link);

} // namespace machine::vm
