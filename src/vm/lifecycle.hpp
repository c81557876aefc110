// The steps `up` and `bake` share: boot an instance, reach its guest agent, wait until the VM
// is ready. Internal to the vm module.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <asio/awaitable.hpp>

#include "machine/vm.hpp"

namespace machine::ssh {
class session;
}

namespace machine::vm {

/// limactl's log lines (its progress: image download or build, boot) as the VM's info,
/// warning and error messages.
lima::log_handler lima_log_to_events(context& ctx, std::string name);

/// `limactl start`, following the host agent's events; an interrupted start stops the VM. With
/// a template in `create_from`, the instance is created from it by the same call.
asio::awaitable<void> boot_instance(context& ctx, lima::driver& lima, std::string name,
                                    std::filesystem::path ha_log, cancel_signal* cancel,
                                    std::filesystem::path create_from);

/// An SSH session to the VM (host key pinned in the VM's state directory) with our guest
/// agent installed and current. The key is recorded only when machine created the VM
/// (expect_new_vm_key); a VM without a pin is refused, naming `machine pin NAME`.
asio::awaitable<std::shared_ptr<ssh::session>> open_guest(context& ctx, std::string name, lima::instance inst,
                                                          cancel_signal* cancel);

/// What a warning about a setting that applies at the VM's next start tells the user to run:
/// "machine down NAME && machine up NAME" (one wording for every such warning).
std::string restart_hint(const std::string& name);

/// Sets the guest's clock from the host's through its agent (as root), saying by how much it was
/// off when that is 2 s or more: after a pause, a hibernation or a snapshot's memory the guest's
/// clock is where it stood (the guest has no time sync of its own). A failure is a warning.
asio::awaitable<void> sync_guest_clock(context& ctx, std::shared_ptr<ssh::session> session, const std::string& name);

/// Waits until the agent reports this boot's boot.finished and user.ready.
asio::awaitable<void> wait_until_ready(context& ctx, std::string name, std::shared_ptr<ssh::session> session);

} // namespace machine::vm
