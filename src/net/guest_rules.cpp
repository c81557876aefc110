// The second line, inside the guest: the nftables ruleset machine installs in every VM
// (net::guest_ruleset). machine-agent writes it to /etc/machine/network.nft and applies it with
// `nft -f` when machine asks and at every boot (guest-agent/network.cpp).
//
// What the guest must not reach is what Lima's user networks put behind a gateway address:
//   - the default network (QEMU slirp, 192.168.5.0/24): the gateway 192.168.5.2 is the host's
//     127.0.0.1 (`host.lima.internal`), so every host loopback service and every other VM's
//     forwarded ports; 192.168.5.3 is the DNS server (slirp's, or Lima's host resolver); slirp's
//     IPv6 twin is fec0::/64 (fec0::2 the host, fec0::3 DNS);
//   - user-v2 (gvisor-tap-vsock, 192.168.104.0/24 by default): the gateway .1 serves DNS and
//     DHCP, the rest of the subnet is the host and the other VMs on that network;
//   - link-local addresses (169.254.0.0/16, fe80::/10): through slirp they are the host's
//     (a cloud host's metadata service, 169.254.169.254, hands out its credentials);
//   - the host's own addresses (its LAN, VPN and docker0 addresses, when the caller passes them):
//     slirp connects to them from the host, so they reach every service listening on all of
//     the host's addresses. They are the host's when `machine up` ran: a host that changes
//     networks is covered again at the next `up`.
// Only TCP and UDP are refused: ICMP (neighbour discovery, ping) is left alone, and so are
// replies to connections the host opened (SSH, port forwards) and connections to the guest's own
// addresses. DHCP to the gateway stays open: without renewals the lease, and the network, end.
//
// The chains hook at priority -150, before Lima's own DNAT rules (priority -100, which send
// 192.168.5.3:53 to the host resolver's port on 192.168.5.2): the addresses seen here are the
// ones the guest asked for.
#include <arpa/inet.h>

#include <algorithm>
#include <set>
#include <stdexcept>
#include <string>

#include "machine/net.hpp"

namespace machine::net {

namespace {

constexpr const char* table_name = "inet machine_host_isolation";

// nft sends a rule with its anonymous set in one netlink message, which the kernel refuses
// ("Message too long") somewhere between 4096 and 6000 separate ranges: far more than a project
// opens, but a limit, so a bound of ours with a clear error rather than nft's.
constexpr std::size_t max_port_ranges = 4096;

// "22, 5432-5434": sorted, duplicates dropped, runs of consecutive ports as ranges (so even
// every port is one element).
std::string port_set(std::vector<int> ports) {
    for (const int p : ports)
        if (p < 1 || p > 65535) throw std::invalid_argument("host port " + std::to_string(p) + " is not 1..65535");
    std::sort(ports.begin(), ports.end());
    ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
    std::string out;
    std::size_t ranges = 0;
    for (std::size_t i = 0; i < ports.size();) {
        std::size_t j = i;
        while (j + 1 < ports.size() && ports[j + 1] == ports[j] + 1) ++j;
        out += (out.empty() ? "" : ", ") + std::to_string(ports[i]);
        if (j > i) out += "-" + std::to_string(ports[j]);
        ++ranges;
        i = j + 1;
    }
    if (ranges > max_port_ranges)
        throw std::invalid_argument("host ports make " + std::to_string(ranges) + " separate ranges; at most " +
                                    std::to_string(max_port_ranges) + " fit in the guest's firewall");
    return out;
}

constexpr std::size_t max_host_addresses = 256;

// The host's addresses as nft set elements, IPv4 and IPv6 apart, in the canonical text form;
// never the guest's own loopback (127.0.0.0/8, ::1, which are the guest's, not the host's) nor
// link-local (refused as a whole below).
std::pair<std::string, std::string> host_address_sets(const std::vector<std::string>& addresses) {
    std::set<std::string> v4, v6;
    for (const auto& text : addresses) {
        if (v4.size() + v6.size() >= max_host_addresses) break;
        in_addr a4{};
        in6_addr a6{};
        char buf[INET6_ADDRSTRLEN] = {};
        if (::inet_pton(AF_INET, text.c_str(), &a4) == 1) {
            const auto first = reinterpret_cast<const unsigned char*>(&a4)[0];
            const auto second = reinterpret_cast<const unsigned char*>(&a4)[1];
            if (first == 127 || first == 0 || (first == 169 && second == 254)) continue;
            if (::inet_ntop(AF_INET, &a4, buf, sizeof buf)) v4.insert(buf);
        } else if (::inet_pton(AF_INET6, text.c_str(), &a6) == 1) {
            if (IN6_IS_ADDR_LOOPBACK(&a6) || IN6_IS_ADDR_UNSPECIFIED(&a6) || IN6_IS_ADDR_LINKLOCAL(&a6) ||
                IN6_IS_ADDR_V4MAPPED(&a6))
                continue;
            if (::inet_ntop(AF_INET6, &a6, buf, sizeof buf)) v6.insert(buf);
        }
    }
    const auto join = [](const std::set<std::string>& s) {
        std::string out;
        for (const auto& a : s) out += (out.empty() ? "" : ", ") + a;
        return out;
    };
    return {join(v4), join(v6)};
}

} // namespace

std::string guest_ruleset(const policy& p, const std::vector<std::string>& host_addresses) {
    const std::string ports = port_set(p.host_ports);
    const auto [host_v4, host_v6] = host_address_sets(host_addresses);
    std::string r;
    r += "#!/usr/sbin/nft -f\n";
    r += "# machine: no connection from this VM to the host or other VMs, except the host ports the\n";
    r += "# project opens (host_ports) and DNS. Written by `machine up`, applied by machine-agent at every\n";
    r += "# boot. Root in the VM can remove it: where machine's network boundary outside the VM exists\n";
    r += "# (`machine doctor`), this table only repeats it.\n";
    // Declaring the table first makes the delete succeed when it does not exist yet: the whole
    // file is one transaction, so the table is replaced atomically (nft 1.0.6 has no `destroy`).
    r += std::string("table ") + table_name + "\n";
    r += std::string("delete table ") + table_name + "\n";
    r += std::string("table ") + table_name + " {\n";
    r += "\tchain output {\n";
    r += "\t\ttype filter hook output priority -150; policy accept;\n";
    r += "\t\tjump isolate\n";
    r += "\t}\n";
    // Containers in the VM (docker, podman) are routed, not local: the same rules.
    r += "\tchain forward {\n";
    r += "\t\ttype filter hook forward priority -150; policy accept;\n";
    r += "\t\tjump isolate\n";
    r += "\t}\n";
    r += "\tchain isolate {\n";
    r += "\t\tmeta l4proto != { tcp, udp } accept\n";
    r += "\t\tct state established,related accept\n";
    // Only a new connection (a SYN) is refused, whatever conntrack knows: a connection the host
    // opened to the guest (SSH, the agent) while no ruleset tracked it (after `nft flush
    // ruleset`) is picked up mid-stream as new, and its replies must still flow when the table
    // comes back.
    r += "\t\ttcp flags & (syn | ack) != syn accept\n";
    r += "\t\tfib daddr type local accept\n";
    r += "\t\tip daddr { 192.168.5.3, 192.168.104.1 } th dport 53 accept\n";
    r += "\t\tip daddr { 192.168.5.2, 192.168.104.1 } udp dport 67 accept\n";
    if (!ports.empty()) r += "\t\tip daddr 192.168.5.2 tcp dport { " + ports + " } accept\n";
    if (!host_v4.empty()) r += "\t\tip daddr { " + host_v4 + " } goto refuse\n";
    r += "\t\tip daddr { 192.168.5.0/24, 192.168.104.0/24, 169.254.0.0/16 } goto refuse\n";
    r += "\t\tip6 daddr fec0::3 th dport 53 accept\n";
    if (!host_v6.empty()) r += "\t\tip6 daddr { " + host_v6 + " } goto refuse\n";
    r += "\t\tip6 daddr { fec0::/64, fe80::/10 } goto refuse\n";
    r += "\t}\n";
    // Refused at once, so that tools fail fast instead of waiting for a timeout. The counters
    // show that this table refused (`nft list chain inet machine_host_isolation refuse`), also
    // where the namespace outside would have refused too.
    r += "\tchain refuse {\n";
    r += "\t\tmeta l4proto tcp counter reject with tcp reset\n";
    r += "\t\tcounter reject with icmpx type admin-prohibited\n";
    r += "\t}\n";
    r += "}\n";
    return r;
}

} // namespace machine::net
