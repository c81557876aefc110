#include "guest_network.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"

namespace machine::vm {

using asio::awaitable;
using namespace std::chrono_literals;

namespace {

std::string ports_text(const std::vector<int>& ports) {
    if (ports.empty()) return "no host port open";
    std::string out = ports.size() == 1 ? "host port " : "host ports ";
    for (std::size_t i = 0; i < ports.size(); ++i) out += (i ? ", " : "") + std::to_string(ports[i]);
    return out + " open";
}

} // namespace

std::vector<std::string> host_interface_addresses() {
    std::vector<std::string> out;
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return out;
    for (const ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr) continue;
        char buf[INET6_ADDRSTRLEN] = {};
        const void* raw = nullptr;
        if (i->ifa_addr->sa_family == AF_INET) raw = &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr;
        else if (i->ifa_addr->sa_family == AF_INET6) raw = &reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr;
        if (raw && ::inet_ntop(i->ifa_addr->sa_family, raw, buf, sizeof buf)) out.emplace_back(buf);
    }
    ::freeifaddrs(list);
    return out;
}

awaitable<guest_rules_state> install_guest_rules(context& ctx, std::string vm, guest::connection& conn,
                                                 net::policy policy, guest_rules_options opt) {
    ctx.emit(events::step_started(vm, "firewall"));
    const auto t0 = std::chrono::steady_clock::now();
    std::string ruleset = net::guest_ruleset(policy, opt.host_addresses);
    const protocol::network_apply_result r = co_await conn.apply_network(std::move(ruleset));
    if (r.applied) {
        const std::string line = opt.isolated_outside
                                     ? "a second line behind the VM's network namespace"
                                     : "the only line on Lima's network: root in the VM can remove it";
        ctx.emit(events::step_finished(vm, "firewall", true, since(t0),
                                       "nftables in the VM, " + ports_text(policy.host_ports) + " (" + line + ")"));
        co_return guest_rules_state::applied;
    }
    if (!r.nft_found && opt.nft_may_come) {
        ctx.emit(events::step_finished(vm, "firewall", true, since(t0),
                                       "kept in the VM, applied once provisioning installs nftables"));
        co_return guest_rules_state::waiting_for_nft;
    }
    if (!r.nft_found && opt.isolated_outside) {
        // The namespace outside the VM is the line that holds; a VM without nftables (no base
        // profile) only lacks the repetition inside it. Said, not fatal.
        ctx.emit(events::step_finished(vm, "firewall", true, since(t0),
                                       "nftables is not installed in the VM: the network namespace outside it "
                                       "is the only line (the base profile installs nftables)"));
        co_return guest_rules_state::without_nft;
    }
    const std::string why = text::escape_for_terminal(r.error);  // from the VM
    ctx.emit(events::step_finished(vm, "firewall", false, since(t0), why));
    throw error("VM '" + vm + "': machine's network rules are NOT in place inside the VM: " + why +
                    (opt.isolated_outside ? std::string()
                                          : "; on Lima's own network the VM can reach the host's services"),
                exit_code::failure,
                r.nft_found ? "the rules are in " + text::escape_for_terminal(r.path) + " in the VM"
                            : "install nftables in the VM (the base profile does), then `machine up " + vm + "`");
}

} // namespace machine::vm
