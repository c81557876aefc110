// The parsers the egress proxy decides from (see sniff.hpp). Every one reads through a
// bounds-checked cursor or an explicit size test: a length field from the guest can never make
// us read past the bytes we were given, nor wait for more than `max_bytes`. Problem texts are
// fixed strings: nothing the guest sent is echoed into them.
#include "sniff.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "host_name.hpp"

namespace machine::net {

namespace {

constexpr std::string_view crlf = "\r\n";

// A bounds-checked big-endian cursor: each read fails instead of running past the end.
class reader {
public:
    explicit reader(std::string_view in) : in_(in) {}

    bool u8(std::uint32_t& v) { return uint(1, v); }
    bool u16(std::uint32_t& v) { return uint(2, v); }
    bool u24(std::uint32_t& v) { return uint(3, v); }
    bool bytes(std::size_t n, std::string_view& v) {
        if (n > remaining()) return false;
        v = in_.substr(pos_, n);
        pos_ += n;
        return true;
    }
    /// A vector with a `width`-byte length prefix (TLS's opaque<..>).
    bool prefixed(int width, std::string_view& v) {
        std::uint32_t n = 0;
        return uint(width, n) && bytes(n, v);
    }
    std::size_t remaining() const { return in_.size() - pos_; }
    std::size_t position() const { return pos_; }

private:
    bool uint(int width, std::uint32_t& v) {
        if (remaining() < static_cast<std::size_t>(width)) return false;
        v = 0;
        for (int i = 0; i < width; ++i) v = (v << 8) | static_cast<unsigned char>(in_[pos_++]);
        return true;
    }

    std::string_view in_;
    std::size_t pos_ = 0;
};

/// A decimal port 0..65535: 1-5 digits, nothing else (no sign, no spaces).
std::optional<int> parse_port(std::string_view s) {
    if (s.empty() || s.size() > 5) return std::nullopt;
    int v = 0;
    for (const char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + (c - '0');
    }
    if (v > 65535) return std::nullopt;
    return v;
}

/// The canonical text of an address (inet_ntop of inet_pton), or nullopt.
std::optional<std::string> canonical_address(std::string_view text, int family) {
    if (text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
    const std::string z(text);  // inet_pton wants a terminated string
    std::array<unsigned char, sizeof(in6_addr)> bin{};
    if (inet_pton(family, z.c_str(), bin.data()) != 1) return std::nullopt;
    std::array<char, INET6_ADDRSTRLEN> out{};
    if (!inet_ntop(family, bin.data(), out.data(), out.size())) return std::nullopt;
    return std::string(out.data());
}

std::vector<std::string_view> split_on_space(std::string_view line) {
    std::vector<std::string_view> parts;
    std::size_t start = 0;
    for (;;) {
        const auto sp = line.find(' ', start);
        parts.push_back(line.substr(start, sp == std::string_view::npos ? std::string_view::npos : sp - start));
        if (sp == std::string_view::npos) return parts;
        start = sp + 1;
    }
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
               return lower(x) == lower(y);
           });
}

// ---- TLS ----------------------------------------------------------------------------------

constexpr unsigned char tls_handshake_record = 22;
constexpr unsigned char tls_client_hello = 1;
constexpr std::uint32_t tls_max_fragment = 1u << 14;  // RFC 8446 §5.1
constexpr std::uint32_t ext_server_name = 0;
constexpr std::uint32_t sni_host_name = 0;

sniff_result bad(std::string problem) {
    sniff_result r;
    r.state = parse_state::bad;
    r.problem = std::move(problem);
    return r;
}

sniff_result need_more() { return sniff_result{}; }

/// The SNI extension's body (RFC 6066 §3): its host_name, "" when it names none.
sniff_result parse_server_name(std::string_view ext) {
    reader r(ext);
    std::string_view list;
    if (!r.prefixed(2, list) || r.remaining() != 0 || list.empty()) return bad("bad SNI extension");
    reader names(list);
    std::optional<std::string> host;
    while (names.remaining() > 0) {
        std::uint32_t type = 0;
        std::string_view name;
        if (!names.u8(type) || !names.prefixed(2, name)) return bad("bad SNI extension");
        if (type != sni_host_name) continue;  // no other type is defined; skipped as the RFC says
        if (host) return bad("two SNI names");
        host = normalize_host_name(name);
        if (!host) return bad("bad SNI");
    }
    sniff_result out;
    out.state = parse_state::done;
    out.found.what = first_bytes::kind::tls;
    out.found.host = host.value_or("");
    return out;
}

/// A whole ClientHello body (RFC 8446 §4.1.2, also TLS 1.0-1.2's form).
sniff_result parse_client_hello(std::string_view body) {
    reader r(body);
    std::uint32_t version = 0;
    std::string_view random, session_id, suites, compression;
    if (!r.u16(version) || !r.bytes(32, random)) return bad("truncated ClientHello");
    if (!r.prefixed(1, session_id) || session_id.size() > 32) return bad("bad ClientHello session id");
    if (!r.prefixed(2, suites) || suites.empty() || suites.size() % 2 != 0) return bad("bad ClientHello cipher suites");
    if (!r.prefixed(1, compression) || compression.empty()) return bad("bad ClientHello compression methods");

    sniff_result out;
    out.state = parse_state::done;
    out.found.what = first_bytes::kind::tls;
    if (r.remaining() == 0) return out;  // no extensions at all: no SNI

    std::string_view extensions;
    if (!r.prefixed(2, extensions) || r.remaining() != 0) return bad("bad ClientHello extensions length");
    reader ext(extensions);
    bool seen_sni = false;
    while (ext.remaining() > 0) {
        std::uint32_t type = 0;
        std::string_view data;
        if (!ext.u16(type) || !ext.prefixed(2, data)) return bad("bad ClientHello extension");
        if (type != ext_server_name) continue;
        if (seen_sni) return bad("two SNI extensions");
        seen_sni = true;
        out = parse_server_name(data);
        if (out.state == parse_state::bad) return out;
    }
    return out;
}

/// The ClientHello in `buf`, which may be spread over several handshake records.
sniff_result sniff_tls(std::string_view buf, std::size_t max_bytes) {
    std::string handshake;  // the handshake bytes of the records so far
    std::size_t pos = 0;
    for (;;) {
        // Enough handshake bytes: is the message whole, and is it a ClientHello?
        reader h(handshake);
        std::uint32_t type = 0, length = 0;
        if (h.u8(type) && h.u24(length)) {
            if (type != tls_client_hello) return bad("not a ClientHello");
            // The records carrying it cost at least one 5-byte header per 16 KiB on top.
            if (std::size_t{length} + 4 + 5 > max_bytes) return bad("ClientHello over " + std::to_string(max_bytes) + " bytes");
            if (handshake.size() >= std::size_t{length} + 4) {
                return parse_client_hello(std::string_view(handshake).substr(4, length));
            }
        }
        if (buf.size() - pos < 5) break;
        reader rec(buf.substr(pos, 5));
        std::uint32_t record_type = 0, version = 0, record_length = 0;
        rec.u8(record_type);
        rec.u16(version);
        rec.u16(record_length);
        if (record_type != tls_handshake_record) return bad("TLS record before the ClientHello is whole");
        if ((version >> 8) != 3) return bad("bad TLS record version");
        if (record_length == 0 || record_length > tls_max_fragment) return bad("bad TLS record length");
        if (pos + 5 + record_length > max_bytes) {
            return bad("ClientHello over " + std::to_string(max_bytes) + " bytes");
        }
        if (buf.size() - pos - 5 < record_length) break;
        handshake.append(buf.substr(pos + 5, record_length));
        pos += 5 + record_length;
    }
    if (buf.size() >= max_bytes) return bad("ClientHello over " + std::to_string(max_bytes) + " bytes");
    return need_more();
}

// ---- HTTP ---------------------------------------------------------------------------------

// The methods a request may start with. Anything else is not HTTP for us: a connection whose
// first bytes cannot be a prefix of one of these is `other` at once (an SSH banner "SSH-2.0-"
// is other at its first byte), so a protocol whose server speaks first never waits.
constexpr std::array<std::string_view, 17> http_methods = {
    "GET",  "HEAD",  "POST",     "PUT",       "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    "COPY", "LOCK",  "MKCOL",    "MOVE",      "PROPFIND", "PROPPATCH", "REPORT", "UNLOCK",
};

/// True while `buf` can still be the start of "<method> ".
bool may_be_http(std::string_view buf) {
    for (const auto m : http_methods) {
        const std::string with_space = std::string(m) + ' ';
        const auto n = std::min(buf.size(), with_space.size());
        if (buf.substr(0, n) == std::string_view(with_space).substr(0, n)) return true;
    }
    return false;
}

bool is_tchar(char c) {
    return is_label_byte(c) || std::strchr("!#$%&'*+.^`|~", c) != nullptr;
}

struct authority {
    std::string host;
    std::optional<int> port;
};

/// `host[:port]` or `[v6][:port]` (RFC 9110 §4.2's authority without userinfo). The host is a
/// DNS name or an IP literal.
std::optional<authority> parse_authority(std::string_view s) {
    authority out;
    std::string_view host_part, port_part;
    bool has_port = false;
    if (!s.empty() && s.front() == '[') {
        const auto close = s.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        const auto v6 = canonical_address(s.substr(1, close - 1), AF_INET6);
        if (!v6) return std::nullopt;
        out.host = *v6;
        const auto rest = s.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') return std::nullopt;
            has_port = true;
            port_part = rest.substr(1);
        }
    } else {
        const auto colon = s.rfind(':');
        host_part = s.substr(0, colon);
        if (colon != std::string_view::npos) {
            has_port = true;
            port_part = s.substr(colon + 1);
        }
        auto name = normalize_host_name(host_part);
        if (!name) return std::nullopt;
        out.host = std::move(*name);
    }
    if (has_port) {
        out.port = parse_port(port_part);
        if (!out.port || *out.port == 0) return std::nullopt;
    }
    return out;
}

/// The request head `head` (request line, header lines, CRLFCRLF included), whole.
sniff_result parse_request_head(std::string_view head) {
    const auto line_end = head.find(crlf);
    const auto request_line = head.substr(0, line_end);
    const auto parts = split_on_space(request_line);
    if (parts.size() != 3) return bad("bad HTTP request line");
    const auto method = parts[0], target = parts[1], version = parts[2];
    if (version != "HTTP/1.1" && version != "HTTP/1.0") return bad("bad HTTP version");
    if (target.empty() ||
        std::any_of(target.begin(), target.end(), [](char c) { return c <= 0x20 || c >= 0x7f; })) {
        return bad("bad HTTP request target");
    }

    // The header lines: exactly one Host, no folded lines, no space before a colon.
    std::optional<std::string_view> host_value;
    std::size_t pos = line_end + 2;
    for (;;) {
        const auto end = head.find(crlf, pos);
        const auto line = head.substr(pos, end - pos);
        if (line.empty()) break;
        pos = end + 2;
        const auto colon = line.find(':');
        if (colon == std::string_view::npos || colon == 0) return bad("bad HTTP header line");
        const auto name = line.substr(0, colon);
        if (!std::all_of(name.begin(), name.end(), is_tchar)) return bad("bad HTTP header name");
        if (!iequals(name, "host")) continue;
        if (host_value) return bad("two Host headers");
        auto value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
        host_value = value;
    }

    sniff_result out;
    out.state = parse_state::done;
    out.found.head_bytes = head.size();
    if (method == "CONNECT") {
        const auto a = parse_authority(target);
        if (!a || !a->port) return bad("bad CONNECT target");
        out.found.what = first_bytes::kind::http_connect;
        out.found.host = a->host;
        out.found.port = *a->port;
        return out;
    }
    out.found.what = first_bytes::kind::http;
    constexpr std::string_view http_scheme = "http://", https_scheme = "https://";
    const bool http = target.size() > http_scheme.size() && iequals(target.substr(0, http_scheme.size()), http_scheme);
    const bool https =
        target.size() > https_scheme.size() && iequals(target.substr(0, https_scheme.size()), https_scheme);
    if (http || https) {
        // Absolute form (a client that thinks it talks to a proxy): the target names the host,
        // and a Host header, if any, is ignored (RFC 9112 §3.2.2).
        auto rest = target.substr(http ? http_scheme.size() : https_scheme.size());
        const auto a = parse_authority(rest.substr(0, rest.find_first_of("/?#")));
        // userinfo ("http://allowed.com@other.com/") fails here: '@' is no host-name byte.
        if (!a) return bad("bad host in the request target");
        out.found.host = a->host;
        out.found.port = a->port.value_or(http ? 80 : 443);
        return out;
    }
    if (target.front() != '/' && target != "*") return bad("bad HTTP request target");
    if (!host_value) {
        if (version == "HTTP/1.1") return bad("no Host header");
        return out;  // HTTP/1.0 without Host: no name
    }
    const auto a = parse_authority(*host_value);
    if (!a) return bad("bad Host header");
    out.found.host = a->host;
    out.found.port = a->port.value_or(0);
    return out;
}

sniff_result sniff_http(std::string_view buf, std::size_t max_bytes) {
    // Lines end in CRLF only: a bare CR or LF is bad now (rather than never ending the head,
    // and so that we and the server cannot see different lines).
    const auto window = buf.substr(0, max_bytes);
    std::size_t end = std::string_view::npos;
    for (std::size_t i = 0; i < window.size(); ++i) {
        const char c = window[i];
        if (c == '\n' && (i == 0 || window[i - 1] != '\r')) return bad("bare LF in the request head");
        if (c == '\r' && i + 1 < window.size() && window[i + 1] != '\n') return bad("bare CR in the request head");
        if (c == '\0') return bad("NUL in the request head");
        if (c == '\n' && i >= 3 && window.substr(i - 3, 4) == "\r\n\r\n") {
            end = i + 1;
            break;
        }
    }
    if (end != std::string_view::npos) return parse_request_head(buf.substr(0, end));
    if (buf.size() >= max_bytes) return bad("request head over " + std::to_string(max_bytes) + " bytes");
    // The request line, once it is whole, can be judged before the rest comes.
    const auto line_end = buf.find(crlf);
    if (line_end != std::string_view::npos) {
        const auto parts = split_on_space(buf.substr(0, line_end));
        if (parts.size() != 3 || (parts[2] != "HTTP/1.1" && parts[2] != "HTTP/1.0")) {
            return bad("bad HTTP request line");
        }
    }
    return need_more();
}

// ---- DNS ----------------------------------------------------------------------------------

constexpr std::size_t dns_header = 12;

struct parsed_question {
    dns_question q;
    std::size_t end = 0;  // offset just past the question
};

std::optional<parsed_question> parse_question(std::string_view msg) {
    reader r(msg);
    std::uint32_t id = 0, flags = 0, qd = 0, an = 0, ns = 0, ar = 0;
    if (!r.u16(id) || !r.u16(flags) || !r.u16(qd) || !r.u16(an) || !r.u16(ns) || !r.u16(ar)) return std::nullopt;
    const bool response = (flags & 0x8000) != 0;
    const auto opcode = (flags >> 11) & 0xF;
    if (response || opcode != 0 || qd != 1 || an != 0 || ns != 0) return std::nullopt;

    parsed_question out;
    out.q.id = static_cast<std::uint16_t>(id);
    std::string name;
    for (;;) {
        std::uint32_t len = 0;
        if (!r.u8(len)) return std::nullopt;
        if (len == 0) break;
        if (len > max_label) return std::nullopt;  // 0xC0 pointers and the reserved 0x40/0x80 forms too
        std::string_view label;
        if (!r.bytes(len, label)) return std::nullopt;
        if (!std::all_of(label.begin(), label.end(), is_label_byte)) return std::nullopt;
        if (!name.empty()) name += '.';
        name += label;
        if (name.size() > max_host_name) return std::nullopt;
    }
    auto normal = normalize_host_name(name);
    if (!normal) return std::nullopt;  // the root name: no question a guest needs answered
    out.q.name = std::move(*normal);
    std::uint32_t qtype = 0, qclass = 0;
    if (!r.u16(qtype) || !r.u16(qclass)) return std::nullopt;
    out.q.qtype = static_cast<std::uint16_t>(qtype);
    out.q.qclass = static_cast<std::uint16_t>(qclass);
    out.end = r.position();
    return out;
}

// ---- addresses ----------------------------------------------------------------------------

/// 16 bytes for either family: IPv4 (and IPv4-mapped IPv6) as ::ffff:a.b.c.d.
struct address_bytes {
    std::array<unsigned char, 16> b{};
    bool v4() const {
        static constexpr std::array<unsigned char, 12> mapped = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return std::equal(mapped.begin(), mapped.end(), b.begin());
    }
    bool operator==(const address_bytes&) const = default;
};

std::optional<address_bytes> parse_address(std::string_view text) {
    if (text.size() > 2 && text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
    text = text.substr(0, text.find('%'));  // a zone (fe80::1%eth0) does not change the class
    if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
    const std::string z(text);
    address_bytes out;
    in_addr v4{};
    if (inet_pton(AF_INET, z.c_str(), &v4) == 1) {
        out.b[10] = out.b[11] = 0xff;
        std::memcpy(out.b.data() + 12, &v4, 4);
        return out;
    }
    if (inet_pton(AF_INET6, z.c_str(), out.b.data()) == 1) return out;
    return std::nullopt;
}

} // namespace

// ---- PROXY protocol v1 ----------------------------------------------------------------------

proxy_header_result parse_proxy_header(std::string_view buf) {
    constexpr std::size_t max_line = 107;  // HAProxy's spec, CRLF included
    constexpr std::string_view prefix = "PROXY ";
    proxy_header_result out;
    auto fail = [&](std::string problem) {
        out.state = parse_state::bad;
        out.problem = std::move(problem);
        return out;
    };
    const auto n = std::min(buf.size(), prefix.size());
    if (buf.substr(0, n) != prefix.substr(0, n)) return fail("not a PROXY protocol v1 header");
    const auto end = buf.substr(0, max_line).find(crlf);
    if (end == std::string_view::npos) {
        if (buf.size() >= max_line) return fail("PROXY header over 107 bytes");
        const auto cr = buf.find('\r');
        if (cr != std::string_view::npos && cr + 1 < buf.size()) return fail("bare CR in the PROXY header");
        if (buf.find('\n') != std::string_view::npos) return fail("bare LF in the PROXY header");
        return out;
    }
    const auto line = buf.substr(0, end);
    if (line.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) {
        return fail("control byte in the PROXY header");
    }
    const auto parts = split_on_space(line);
    if (parts.size() >= 2 && parts[1] == "UNKNOWN") return fail("PROXY UNKNOWN: no destination");
    if (parts.size() != 6) return fail("PROXY header needs 6 fields");
    int family = 0;
    if (parts[1] == "TCP4") family = AF_INET;
    else if (parts[1] == "TCP6") family = AF_INET6;
    else return fail("PROXY header protocol is not TCP4 or TCP6");
    const auto src = canonical_address(parts[2], family);
    const auto dst = canonical_address(parts[3], family);
    if (!src || !dst) return fail("bad address in the PROXY header");
    const auto sport = parse_port(parts[4]);
    const auto dport = parse_port(parts[5]);
    if (!sport || !dport) return fail("bad port in the PROXY header");
    out.state = parse_state::done;
    out.dst = destination{*dst, *dport, family == AF_INET6};
    out.source = *src;
    out.consumed = end + crlf.size();
    return out;
}

// ---- first bytes --------------------------------------------------------------------------

sniff_result sniff(std::string_view buf, std::size_t max_bytes) {
    if (buf.empty()) return need_more();
    const auto first = static_cast<unsigned char>(buf[0]);
    if (first == tls_handshake_record) {
        // A TLS record's version is 3.x; 0x16 followed by anything else is some other protocol.
        if (buf.size() >= 2 && buf[1] != 3) {
            sniff_result r;
            r.state = parse_state::done;
            r.found.what = first_bytes::kind::other;
            return r;
        }
        return sniff_tls(buf, max_bytes);
    }
    if (may_be_http(buf)) {
        if (buf.find(' ') == std::string_view::npos) {  // still in the method
            return buf.size() >= max_bytes ? bad("request head over " + std::to_string(max_bytes) + " bytes")
                                            : need_more();
        }
        return sniff_http(buf, max_bytes);
    }
    sniff_result r;
    r.state = parse_state::done;
    r.found.what = first_bytes::kind::other;
    return r;
}

// ---- DNS ----------------------------------------------------------------------------------

std::optional<dns_question> parse_dns_query(std::string_view message) {
    if (message.size() < dns_header) return std::nullopt;
    auto q = parse_question(message);
    if (!q) return std::nullopt;
    return q->q;
}

std::string dns_error_response(std::string_view query, int rcode) {
    const auto q = parse_question(query);
    if (!q) return {};
    std::string out;
    out.reserve(q->end);
    out += query.substr(0, 2);  // the id
    const auto rd = static_cast<unsigned char>(query[2]) & 0x01;
    out += static_cast<char>(0x80 | rd);              // QR, opcode 0, not AA, not TC, RD as asked
    out += static_cast<char>(0x80 | (rcode & 0x0F));  // RA, rcode
    out += std::string_view("\0\1\0\0\0\0\0\0", 8);    // one question, no records
    out += query.substr(dns_header, q->end - dns_header);  // the question as the guest spelled it
    return out;
}

// ---- addresses ----------------------------------------------------------------------------

address_class classify(std::string_view addr, const std::vector<std::string>& host_addresses) {
    const auto a = parse_address(addr);
    // Not an address at all: the class the proxy refuses everywhere.
    if (!a) return address_class::unspecified;
    const auto& b = a->b;
    if (a->v4()) {
        const unsigned char o0 = b[12], o1 = b[13];
        if (o0 == 127) return address_class::loopback;
        if (o0 == 0) return address_class::unspecified;
        if (o0 == 169 && o1 == 254) return address_class::link_local;
        if ((o0 & 0xF0) == 224) return address_class::multicast;
        if (o0 == 255 && o1 == 255 && b[14] == 255 && b[15] == 255) return address_class::multicast;
    } else {
        const bool zero_prefix = std::all_of(b.begin(), b.begin() + 15, [](unsigned char c) { return c == 0; });
        if (zero_prefix && b[15] == 1) return address_class::loopback;
        if (zero_prefix && b[15] == 0) return address_class::unspecified;
        if (b[0] == 0xfe && (b[1] & 0xC0) == 0x80) return address_class::link_local;
        if (b[0] == 0xff) return address_class::multicast;
    }
    for (const auto& h : host_addresses) {
        const auto hb = parse_address(h);
        if (hb && *hb == *a) return address_class::host;
    }
    return address_class::other;
}

std::vector<std::string> host_interface_addresses() {
    std::vector<std::string> out;
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) return out;
    for (const ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr) continue;
        std::array<char, INET6_ADDRSTRLEN> text{};
        const void* bin = nullptr;
        const int family = i->ifa_addr->sa_family;
        if (family == AF_INET) bin = &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr;
        else if (family == AF_INET6) bin = &reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr;
        else continue;
        if (inet_ntop(family, bin, text.data(), text.size())) out.emplace_back(text.data());
    }
    freeifaddrs(list);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

} // namespace machine::net
