// The in-guest nftables ruleset (net::guest_ruleset): its text, that nft accepts it, and what it
// does to connections, in an unprivileged network namespace (`unshare -rn`) that stands in for a
// guest on Lima's user network (192.168.5.15/24, default route via 192.168.5.2).
#include <boost/test/unit_test.hpp>

#include <fstream>
#include <map>
#include <regex>

#include "machine/net.hpp"
#include "machine/proc.hpp"
#include "machine/text.hpp"
#include "test_support.hpp"

using namespace machine;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Runs argv to completion (at most 30 s).
proc::result run(std::vector<std::string> argv) {
    asio::io_context io;
    proc::command cmd;
    cmd.argv = std::move(argv);
    proc::run_options opt;
    opt.limit.timeout = 30s;
    return test::co_run(io, proc::run(std::move(cmd), std::move(opt)));
}

// Whether this host lets us run nft in a namespace of our own (skipped otherwise: the check needs
// nftables and unprivileged user namespaces).
bool namespaces_available() {
    static const bool ok = [] {
        if (!proc::find_program("nft") || !proc::find_program("unshare")) return false;
        try {
            return run({"unshare", "-rn", "nft", "list", "ruleset"}).ok();
        } catch (const std::exception&) {
            return false;
        }
    }();
    return ok;
}

fs::path write_ruleset(const test::temp_dir& dir, const net::policy& p, const std::vector<std::string>& hosts = {}) {
    const fs::path file = dir.path / "network.nft";
    std::ofstream(file) << net::guest_ruleset(p, hosts);
    return file;
}

// What `nft -c` (check only, no kernel state) says of the ruleset: "" when it accepts it.
std::string nft_check(const net::policy& p) {
    test::temp_dir dir;
    const fs::path file = write_ruleset(dir, p);
    const proc::result r = run({"unshare", "-rn", "nft", "-c", "-f", file.string()});
    return r.ok() ? std::string() : "nft -c failed (" + std::to_string(r.status()) + "): " + r.err;
}

net::policy with_ports(std::vector<int> ports) {
    net::policy p;
    p.host_ports = std::move(ports);
    return p;
}

// The probe run inside the namespace: a listener on the guest's own port 8080, then one TCP
// connection per target, each reported as `host:port refused` (an immediate RST: what our rule
// does) or `host:port open` (connected, or still waiting after 1 s: nothing answers on the
// namespace's fake link, which is what an allowed connection to a silent host looks like).
constexpr const char* probe_script = R"PY(
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080)); srv.listen()
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(1.0)
    try:
        s.connect((host, int(port))); verdict = "open"
    except ConnectionRefusedError:
        verdict = "refused"
    except OSError:
        verdict = "open"
    s.close()
    print(target, verdict, flush=True)
)PY";

// Sets up a guest-like namespace (a veth whose peer answers nothing), applies the ruleset (when
// `apply`), probes `targets` and returns target -> "refused" | "open".
std::map<std::string, std::string> probe_in_namespace(const net::policy& p, const std::vector<std::string>& targets,
                                                      bool apply = true, const std::vector<std::string>& hosts = {}) {
    test::temp_dir dir;
    const fs::path rules = write_ruleset(dir, p, hosts);
    const fs::path script = dir.path / "probe.py";
    std::ofstream(script) << probe_script;
    std::string setup =
        "set -e; ip link set lo up; ip link add v0 type veth peer name v1; ip link set v1 up; "
        "ip addr add 192.168.5.15/24 dev v0; ip link set v0 up; ip route add default via 192.168.5.2; ";
    if (apply) setup += "nft -f " + text::shell_quote(rules.string()) + "; ";
    setup += "exec python3 " + text::shell_quote(script.string()) + " \"$@\"";
    std::vector<std::string> argv = {"unshare", "-rn", "sh", "-c", setup, "probe"};
    argv.insert(argv.end(), targets.begin(), targets.end());
    const proc::result r = run(argv);
    BOOST_TEST_REQUIRE(r.ok(), "the probe failed: " << r.err);
    std::map<std::string, std::string> out;
    for (const auto& line : text::split_lines(r.out)) {
        const auto space = line.find(' ');
        if (space != std::string::npos) out[line.substr(0, space)] = line.substr(space + 1);
    }
    return out;
}

// Every other port, so that no two make a range.
std::vector<int> separate_ports(int count) {
    std::vector<int> ports;
    for (int i = 0; i < count; ++i) ports.push_back(1 + 2 * i);
    return ports;
}

std::string describe(const std::map<std::string, std::string>& verdicts) {
    std::string out;
    for (const auto& [target, verdict] : verdicts) out += target + " " + verdict + "; ";
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(net_guest_rules)

BOOST_AUTO_TEST_CASE(one_table_replaced_in_one_transaction) {
    const std::string r = net::guest_ruleset({});
    // Declared, deleted, then defined: applying it twice (every boot, every up) replaces the
    // table instead of adding a second copy of its rules, and touches no other table.
    const auto declare = r.find("table inet machine_host_isolation\n");
    const auto remove = r.find("delete table inet machine_host_isolation\n");
    const auto define = r.find("table inet machine_host_isolation {\n");
    BOOST_TEST(declare != std::string::npos);
    BOOST_TEST(remove > declare);
    BOOST_TEST(define > remove);
    BOOST_TEST(!contains(r, "flush ruleset"));
    const std::regex table_line(R"((^|\n)(delete )?table )");
    BOOST_TEST(std::distance(std::sregex_iterator(r.begin(), r.end(), table_line), std::sregex_iterator()) == 3);
    // Hooks before Lima's DNAT of the DNS address (-100), for local and routed (container) traffic.
    BOOST_TEST(contains(r, "type filter hook output priority -150; policy accept;"));
    BOOST_TEST(contains(r, "type filter hook forward priority -150; policy accept;"));
}

BOOST_AUTO_TEST_CASE(what_is_refused_and_what_stays_open) {
    const std::string r = net::guest_ruleset({});
    BOOST_TEST(contains(r, "ip daddr { 192.168.5.0/24, 192.168.104.0/24, 169.254.0.0/16 } goto refuse"));
    BOOST_TEST(contains(r, "ip6 daddr { fec0::/64, fe80::/10 } goto refuse"));
    BOOST_TEST(contains(r, "ip daddr { 192.168.5.3, 192.168.104.1 } th dport 53 accept"));
    BOOST_TEST(contains(r, "ip6 daddr fec0::3 th dport 53 accept"));
    BOOST_TEST(contains(r, "udp dport 67 accept"));  // DHCP renewals
    BOOST_TEST(contains(r, "ct state established,related accept"));  // the host's SSH, port forwards
    BOOST_TEST(contains(r, "meta l4proto tcp counter reject with tcp reset"));
    BOOST_TEST(contains(r, "counter reject with icmpx type admin-prohibited"));
    // No host port: no rule opening the gateway.
    BOOST_TEST(!contains(r, "ip daddr 192.168.5.2 tcp dport"));
}

BOOST_AUTO_TEST_CASE(host_ports_open_exactly_those_ports_on_the_gateway) {
    const std::string r = net::guest_ruleset(with_ports({6379, 5432, 5432, 3001, 3000, 3002}));
    BOOST_TEST(contains(r, "\t\tip daddr 192.168.5.2 tcp dport { 3000-3002, 5432, 6379 } accept\n"));
    // ... before the subnet is refused.
    BOOST_TEST(r.find("tcp dport { 3000-3002, 5432, 6379 }") < r.find("192.168.5.0/24"));
}

BOOST_AUTO_TEST_CASE(the_hosts_own_addresses_are_refused_but_never_the_guests_loopback) {
    const std::string r = net::guest_ruleset(
        {}, {"10.0.0.5", "172.17.0.1", "10.0.0.5", "127.0.0.1", "127.1.2.3", "169.254.3.4", "0.0.0.0", "::1",
             "fe80::1", "2001:DB8::5", "::ffff:10.0.0.5", "not an address", "10.0.0.5; flush ruleset"});
    BOOST_TEST(contains(r, "\t\tip daddr { 10.0.0.5, 172.17.0.1 } goto refuse\n"), r);
    BOOST_TEST(contains(r, "\t\tip6 daddr { 2001:db8::5 } goto refuse\n"), r);
    BOOST_TEST(!contains(r, "127."));
    BOOST_TEST(!contains(r, "::1 "));
    BOOST_TEST(!contains(r, "flush"));
    // None given, or none usable: no rule for them.
    BOOST_TEST(net::guest_ruleset({}, {"127.0.0.1", "::1"}) == net::guest_ruleset({}));
    std::vector<std::string> many;
    for (int i = 0; i < 300; ++i) many.push_back("10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250));
    const std::string capped = net::guest_ruleset({}, many);
    BOOST_TEST(contains(capped, "10.1.0.0,"));
    BOOST_TEST(!contains(capped, "10.1.1.6,"));  // the 257th
}

BOOST_AUTO_TEST_CASE(a_port_out_of_range_is_a_bug_not_a_rule) {
    BOOST_CHECK_THROW(net::guest_ruleset(with_ports({0})), std::invalid_argument);
    BOOST_CHECK_THROW(net::guest_ruleset(with_ports({65536})), std::invalid_argument);
    BOOST_CHECK_THROW(net::guest_ruleset(with_ports({-22})), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(at_most_4096_separate_ranges) {
    BOOST_CHECK_NO_THROW(net::guest_ruleset(with_ports(separate_ports(4096))));
    BOOST_CHECK_THROW(net::guest_ruleset(with_ports(separate_ports(4097))), std::invalid_argument);
    std::vector<int> all;
    for (int port = 1; port <= 65535; ++port) all.push_back(port);
    BOOST_TEST(contains(net::guest_ruleset(with_ports(all)), "tcp dport { 1-65535 } accept"));
}

BOOST_AUTO_TEST_CASE(nft_accepts_it) {
    if (!namespaces_available()) {
        BOOST_TEST_MESSAGE("SKIPPED: net_guest_rules/nft_accepts_it: no nft or no unprivileged namespaces");
        return;
    }
    BOOST_TEST(nft_check({}) == "");
    BOOST_TEST(nft_check(with_ports({5432, 6379, 8080})) == "");
    BOOST_TEST(nft_check(with_ports({1, 65535})) == "");
    test::temp_dir dir;
    const fs::path with_hosts = dir.path / "hosts.nft";
    std::ofstream(with_hosts) << net::guest_ruleset(with_ports({22}), {"10.0.0.5", "2001:db8::5"});
    const proc::result r = run({"unshare", "-rn", "nft", "-c", "-f", with_hosts.string()});
    BOOST_TEST(r.ok(), r.err);
    BOOST_TEST(nft_check(with_ports(separate_ports(4096))) == "");  // the most it allows
    std::vector<int> all;
    for (int port = 1; port <= 65535; ++port) all.push_back(port);
    BOOST_TEST(nft_check(with_ports(all)) == "");
}

BOOST_AUTO_TEST_CASE(applied_it_refuses_the_host_and_keeps_the_rest) {
    if (!namespaces_available()) {
        BOOST_TEST_MESSAGE("SKIPPED: net_guest_rules/applied_it_refuses_the_host_and_keeps_the_rest");
        return;
    }
    const std::vector<std::string> targets = {
        "192.168.5.2:5432",   // a host port the project opened
        "192.168.5.2:6000",   // any other host port
        "192.168.5.2:22",     // another VM's forwarded SSH lands on the host's loopback too
        "192.168.5.9:80",     // the rest of the user network
        "192.168.5.3:53",     // DNS
        "192.168.5.3:80",     // the DNS server's other ports
        "192.168.104.7:80",   // user-v2: another VM
        "169.254.169.254:80", // link-local: a cloud host's metadata service
        "192.168.5.15:8080",  // the guest's own address
        "127.0.0.1:8080",     // the guest's loopback
        "203.0.113.5:443",    // the internet
        "198.51.100.7:80",    // the host's own LAN address
    };
    const auto seen = probe_in_namespace(with_ports({5432}), targets, true, {"198.51.100.7"});
    const std::map<std::string, std::string> want = {
        {"192.168.5.2:5432", "open"},    {"192.168.5.2:6000", "refused"},   {"192.168.5.2:22", "refused"},
        {"192.168.5.9:80", "refused"},   {"192.168.5.3:53", "open"},        {"192.168.5.3:80", "refused"},
        {"192.168.104.7:80", "refused"}, {"169.254.169.254:80", "refused"}, {"192.168.5.15:8080", "open"},
        {"127.0.0.1:8080", "open"},      {"203.0.113.5:443", "open"},       {"198.51.100.7:80", "refused"},
    };
    BOOST_TEST((seen == want), "seen: " << describe(seen));
    // Without the rules nothing is refused: the verdicts above are the ruleset's.
    const auto bare = probe_in_namespace(with_ports({5432}), {"192.168.5.2:6000", "169.254.169.254:80"}, false);
    BOOST_TEST(bare.at("192.168.5.2:6000") == "open");
    BOOST_TEST(bare.at("169.254.169.254:80") == "open");
}

BOOST_AUTO_TEST_SUITE_END()
