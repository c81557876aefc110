// The VM's network rules inside the guest (the second line, issue 15): the project's
// net::guest_ruleset sent to the guest agent, which keeps it in /etc/machine/network.nft and
// applies it now and at every boot (guest-agent/PROTOCOL.md §4 `network.apply`).
// Internal to the vm module (the unit tests reach it).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "machine/net.hpp"
#include "machine/vm.hpp"

namespace machine::guest {
class connection;
}
namespace machine::ssh {
class session;
}

namespace machine::vm {

enum class guest_rules_state {
    applied,
    waiting_for_nft,  ///< kept in the VM, not applied yet: nftables is not installed (yet)
    without_nft,      ///< nftables is not in the VM (a project without the base profile): only
                      ///< the boundary outside the VM holds, and up said so
};

struct guest_rules_options {
    /// nftables may be installed by the provisioning still to come (the base profile): a VM
    /// without nft is then waiting_for_nft, said as a note, instead of an error.
    bool nft_may_come = false;
    /// machine's network boundary outside the VM holds (the stand-in's namespace): the rules
    /// repeat it. Else they are the only line, and up says so.
    bool isolated_outside = false;
    /// The host's own addresses, refused in the VM too (host_interface_addresses()).
    std::vector<std::string> host_addresses;
};

/// This computer's interface addresses (getifaddrs), as text: what a guest could reach the
/// host's services on besides the gateway. guest_ruleset leaves loopback and link-local out.
std::vector<std::string> host_interface_addresses();

/// Sends `net::guest_ruleset(policy)` through `conn` as step "firewall". Applied: the step's
/// detail says which line it is. Not applied (nft refused it, or nft is missing and cannot
/// come): throws an error, loud, with nft's complaint escaped: without the rules a VM on
/// Lima's own network reaches the host.
asio::awaitable<guest_rules_state> install_guest_rules(context& ctx, std::string vm, guest::connection& conn,
                                                       net::policy policy, guest_rules_options opt);

} // namespace machine::vm
