// The steps `up` and `bake` share: boot an instance, reach its guest agent, wait until the VM
// is ready, and everything decided about a project before any VM work starts.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <asio/awaitable.hpp>

#include "cli.hpp"
#include "machine/provision.hpp"

namespace machine::ssh {
class session;
}

namespace machine::cli {

/// A project with its provisioning plan, decided before anything runs (so a bad profile is a
/// config error, exit 2, with nothing created).
struct up_target {
    config::project project;
    provision::plan plan;         ///< what the project's profiles do before its repos are cloned
    provision::plan after_clone;  ///< what they do once the repos are there
    provision::plan base;         ///< the part a cached base disk holds (bake profiles, in order)
};

/// False when MACHINE_AGENT=off (tests against a fake limactl): no guest-side work at all.
bool agent_enabled();

up_target make_target(const provision::catalog& cat, provision::host_values host, config::project p);

/// `limactl start`, following the host agent's events; an interrupted start stops the VM. With
/// a template in `create_from`, the instance is created from it by the same call.
asio::awaitable<void> boot_instance(context& ctx, lima::client& lima, std::string name,
                                    std::filesystem::path ha_log, cancel_signal* cancel,
                                    std::filesystem::path create_from);

/// An SSH session to the VM (host key pinned in the VM's state directory) with our guest
/// agent installed and current. The key is recorded only when machine created the VM
/// (expect_new_vm_key); a VM without a pin is refused, naming `machine pin NAME`.
asio::awaitable<std::shared_ptr<ssh::session>> open_guest(context& ctx, std::string name, lima::instance inst,
                                                          cancel_signal* cancel);

/// Waits until the agent reports this boot's boot.finished and user.ready.
asio::awaitable<void> wait_until_ready(context& ctx, std::string name, std::shared_ptr<ssh::session> session);

/// The name of a fresh cached base for `t` (a stopped instance holding t.base), baking it
/// first when there is none or `force` is set.
asio::awaitable<std::string> ensure_base(context& ctx, const up_target& t, bool force, cancel_signal* cancel);

/// The disk a base is made with; projects with a smaller disk start from the plain image.
inline constexpr const char* base_disk = "16GiB";

} // namespace machine::cli
