// What an existing VM's lima.yaml must change to match its project, for the settings Lima reads
// only when a VM starts: cpus, memory, disk, agent forwarding (ssh.forwardAgent) and machine's
// egress socket. `up` gives a stopped VM all of them in one `limactl edit` before its start, and
// tells a running VM's user the restart that applies its resources. Internal to the vm module.
#pragma once

#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "machine/config.hpp"
#include "machine/lima.hpp"
#include "machine/vm.hpp"

namespace machine::vm {

struct setting_change {
    std::string key;      ///< the lima.yaml key: "cpus", "memory", "disk", "ssh.forwardAgent", ...
    std::string current;  ///< as people read it ("2", "4GiB"); empty: not said in up's output
    std::string wanted;   ///< the project's value, as people read it
    std::string set;      ///< the assignment `limactl edit --set` takes (`.cpus = 4`)
};

/// The resources (cpus, memory, disk) in which `inst` differs from project `p`, in that order.
/// A value `limactl list` did not give (0) is left alone, and so is a project without a table
/// of its own (zero-config, or a VM made outside machine): it asks for nothing. A disk only
/// grows: config_error (exit 2) naming the project and both sizes when `p` asks for less.
std::vector<setting_change> resource_changes(const config::project& p, const lima::instance& inst);

/// What to tell the user when the project asks for another CPU architecture than the VM's
/// (`arch`): no start changes it, only a new VM. Empty when they match, or either is not known.
std::string arch_change_warning(const config::project& p, const lima::instance& inst);

/// Everything a stopped `inst` needs before it starts: resource_changes, then agent forwarding
/// when the project changed `forward_agent`, then the egress socket when machine serves the VM
/// one (`egress_socket` not empty) and the instance names another.
std::vector<setting_change> changes_before_start(const config::project& p, const lima::instance& inst,
                                                 const std::string& egress_socket);

/// "cpus 2 -> 4, memory 4GiB -> 8GiB": the changes that are said (current not empty).
std::string describe_changes(const std::vector<setting_change>& changes);

/// Applies `changes` to the stopped instance `name` in one `limactl edit` (none when empty) and
/// says which resources change ("cpus 2 -> 4, applied at this start").
asio::awaitable<void> edit_before_start(context& ctx, lima::driver& lima, std::string name,
                                        std::vector<setting_change> changes);

/// "4GiB", "1.5GiB", "512MiB": bytes as Lima's sizes are written (the largest binary unit that
/// leaves at most two decimals).
std::string size_text(long long bytes);

} // namespace machine::vm
