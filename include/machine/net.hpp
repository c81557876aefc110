// A VM's network as machine controls it: the egress policy, the host-side proxy every guest
// connection goes through, and the audit trail it keeps.
//
// How a guest's traffic reaches the proxy (the stand-in; see tools/limactl_lib/netns.py): QEMU
// runs in its own network namespace whose only way out is a bridge that connects, for every
// guest TCP connection, to the proxy's Unix socket and sends one PROXY protocol v1 header line
// (HAProxy's spec: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, at most 107 bytes) naming the
// destination the guest asked for, then the guest's bytes. A guest DNS query (UDP, any server)
// arrives the same way, as DNS over TCP (RFC 7766 two-byte length prefix) to destination port 53.
// The guest's gateway (192.168.5.2, host.lima.internal) arrives as destination 127.0.0.1.
//
// The proxy decides from the destination and, when an allowlist is set, from the name the
// guest's first bytes carry (TLS SNI, an HTTP Host header, an HTTP CONNECT or absolute-URI
// target); it never decrypts. Everything from the guest is hostile: sizes, rates and times are
// capped, text is escaped before it reaches a log or a terminal.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace machine::net {

// ---- policy -----------------------------------------------------------------------------

/// Why an `egress` entry is not a host pattern ("" when it is one). A pattern is a DNS host name
/// (letters, digits, hyphens, dots; labels 1..63 bytes, 253 in all; at least one dot; no
/// trailing dot, no IP address) or `*.` followed by one (every name under it, not the name
/// itself). Case does not matter.
std::string host_pattern_problem(std::string_view entry);

/// True when `host` (a DNS name, any case, a trailing dot ignored) matches `pattern`.
bool host_matches(std::string_view pattern, std::string_view host);

struct policy {
    /// Host patterns a VM may reach; nullopt: the open internet (the default).
    std::optional<std::vector<std::string>> allow;
    /// Ports on the host's 127.0.0.1 the VM may reach (through its gateway). Nothing else on
    /// the host, and no other VM, is ever reachable.
    std::vector<int> host_ports;
};

/// Where each host in a policy's allowlist came from, for `machine up` to say which it added.
struct allow_entry {
    std::string pattern;
    std::string origin;  ///< "projects.toml:12:11", "profile node", "machine's provisioning"
};

// ---- the proxy --------------------------------------------------------------------------

struct limits {
    std::size_t max_header_bytes = 16 * 1024;       ///< HTTP request head or TLS ClientHello
    std::chrono::milliseconds first_bytes_timeout{10000};  ///< allowlist mode: name must come by then
    std::chrono::milliseconds connect_timeout{10000};      ///< upstream connect (after resolving)
    std::chrono::milliseconds dns_timeout{3000};           ///< one upstream DNS exchange
    std::size_t max_connections = 256;              ///< open at once, per VM (one proxy per VM)
    double connections_per_second = 50;             ///< sustained new connections, per VM
    double connection_burst = 200;                  ///< ... and the burst above that rate
    std::size_t max_events_per_second = 20;         ///< audit lines per second; the rest counted
    std::chrono::milliseconds proxy_header_timeout{5000};  ///< the bridge's PROXY line must come by then
    std::chrono::milliseconds idle_timeout{10 * 60 * 1000};  ///< a connection without a byte either way ends
};

struct proxy_options {
    std::string vm;                      ///< the VM's name, for logs and events
    std::filesystem::path listen;        ///< the Unix socket the VM's bridge connects to
    policy rules;
    limits caps;
    std::filesystem::path audit_log;     ///< JSON lines, one per connection (see audit_record)
    std::size_t audit_log_max_bytes = 1024 * 1024;  ///< then rotated to `<name>.1` (one kept)
    /// Polled every `idle_check`; the proxy exits when it returns false. Called on its thread.
    std::function<bool()> still_wanted;
    std::chrono::milliseconds idle_check{5000};

    /// The resolver guest DNS queries go to (UDP): an IPv4/IPv6 address; "" means the first
    /// `nameserver` of /etc/resolv.conf.
    std::string dns_server;
    int dns_port = 53;

    // ---- seams for tests and tests/bench (machine leaves them empty) ----
    /// Name -> addresses (as text), instead of the host's resolver (getaddrinfo).
    std::function<std::vector<std::string>(const std::string& name)> resolve;
    /// The destination the policy chose (address, port) -> where to connect instead, so that
    /// servers on 127.0.0.1 can stand for public addresses. Decisions still see the chosen one.
    std::function<std::pair<std::string, int>(const std::string& address, int port)> redirect;
};

/// Serves until still_wanted() says no. Blocking; runs its own io_context on the calling thread.
/// Removes the socket on exit. 0 after a normal stop, 1 when the socket cannot be set up.
int run_proxy(const proxy_options& opt);

// ---- the audit trail --------------------------------------------------------------------

/// One line of the audit log: a connection (or DNS question) allowed or refused.
struct audit_record {
    std::chrono::system_clock::time_point ts;
    bool allowed = false;
    std::string kind;        ///< "tcp" or "dns"
    std::string host;        ///< the name asked for, else the address (escaped, at most 253 bytes)
    int port = 0;
    std::int64_t bytes_up = 0;    ///< guest -> destination
    std::int64_t bytes_down = 0;  ///< destination -> guest
    std::int64_t duration_ms = 0;
    std::string reason;      ///< refused: why ("not in egress", "host address", ...); allowed: ""
    std::int64_t suppressed = 0;  ///< records folded into this one by the rate limit
};

std::string to_json_line(const audit_record& r);
/// nullopt for a line that is not a record (a torn or foreign line is skipped, never fatal).
std::optional<audit_record> parse_audit_line(std::string_view line);
/// The last `max` records of `log` and its rotated predecessor, oldest first.
std::vector<audit_record> read_audit_log(const std::filesystem::path& log, std::size_t max);

// ---- the second line, inside the guest ---------------------------------------------------

/// The nftables ruleset (`nft -f` input) machine installs in the guest: no connection to the
/// gateway or the host except `host_ports` and DNS. With Lima's own network it is the only line
/// (root in the VM can remove it); with the stand-in it repeats what the namespace enforces.
/// `host_addresses`: the host's own interface addresses (IPv4 or IPv6 text), refused too: through
/// the user network they reach the host's services that listen on all addresses. Loopback,
/// link-local and text that is not an address are left out; at most 256 are used.
std::string guest_ruleset(const policy& p, const std::vector<std::string>& host_addresses = {});

} // namespace machine::net
