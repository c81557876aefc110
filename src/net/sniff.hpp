// What the proxy reads from a guest connection before deciding: the bridge's PROXY header, the
// name in the guest's first bytes, a DNS question. Pure functions over bytes the VM chose: every
// one is bounded, never reads past its input, and says "need more", "done" or "bad".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace machine::net {

enum class parse_state { need_more, done, bad };

// ---- PROXY protocol v1 (the bridge's first line) ------------------------------------------

struct destination {
    std::string address;  ///< the textual IPv4/IPv6 address the guest connected to
    int port = 0;
    bool v6 = false;
};

struct proxy_header_result {
    parse_state state = parse_state::need_more;
    destination dst;
    std::string source;        ///< the guest's address (for logs)
    std::size_t consumed = 0;  ///< bytes of the header line, CRLF included
    std::string problem;       ///< when bad
};

/// Parses `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` at the start of `buf`. More than
/// 107 bytes without CRLF, UNKNOWN, or any malformed field is bad.
proxy_header_result parse_proxy_header(std::string_view buf);

// ---- the name in a connection's first bytes ----------------------------------------------

struct first_bytes {
    enum class kind {
        tls,           ///< a TLS ClientHello; host = its SNI ("" when it has none)
        http,          ///< an HTTP/1.x request; host/port from an absolute URI, else Host
        http_connect,  ///< `CONNECT host:port HTTP/1.x`; host and port from the target
        other,         ///< neither (SSH, a database protocol, ...): no name
    };
    kind what = kind::other;
    std::string host;      ///< lower-case, trailing dot removed; "" when none
    int port = 0;          ///< 0 when the bytes do not say (transparent TLS/HTTP)
    std::size_t head_bytes = 0;  ///< http/http_connect: length of the request head (CRLFCRLF included)
};

struct sniff_result {
    parse_state state = parse_state::need_more;
    first_bytes found;
    std::string problem;  ///< when bad (e.g. "request head over 16384 bytes", "bad SNI")
};

/// Looks at the first bytes of a guest connection. need_more until a whole ClientHello (up to
/// `max_bytes`, across TLS records) or a whole request head (CRLFCRLF) is there; past
/// `max_bytes` it is bad. A host that is not a valid DNS name or IP literal is bad.
sniff_result sniff(std::string_view buf, std::size_t max_bytes);

// ---- DNS --------------------------------------------------------------------------------

struct dns_question {
    std::uint16_t id = 0;
    std::string name;     ///< lower-case, no trailing dot; escaped form of odd bytes is bad
    std::uint16_t qtype = 0;
    std::uint16_t qclass = 0;
};

/// A standard query with exactly one question (RFC 1035 §4.1; no compression in the question).
std::optional<dns_question> parse_dns_query(std::string_view message);

/// An answer to `query` with `rcode` (3 NXDOMAIN, 5 REFUSED, 2 SERVFAIL) and no records,
/// echoing its id and question. Empty when the query cannot be parsed.
std::string dns_error_response(std::string_view query, int rcode);

// ---- addresses --------------------------------------------------------------------------

enum class address_class {
    loopback,     ///< 127.0.0.0/8, ::1 (the guest's gateway arrives as 127.0.0.1)
    host,         ///< one of the host's own addresses (any interface)
    link_local,   ///< 169.254.0.0/16 (cloud metadata), fe80::/10
    unspecified,  ///< 0.0.0.0/8, ::
    multicast,    ///< 224.0.0.0/4, 255.255.255.255, ff00::/8
    other,        ///< everything else: the internet and the user's LAN
};

/// `addr` as text; `host_addresses` the host's own interface addresses as text.
address_class classify(std::string_view addr, const std::vector<std::string>& host_addresses);

/// The host's interface addresses now (getifaddrs), as text.
std::vector<std::string> host_interface_addresses();

} // namespace machine::net
