// The egress proxy's parsers (src/net/sniff.hpp) against real and hand-built hostile bytes:
// PROXY v1 lines, TLS ClientHellos (every length field lied about), HTTP request heads fed a
// byte at a time, other protocols, DNS questions, address classes.
#include <boost/test/unit_test.hpp>

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "sniff.hpp"

namespace machine::net {
// For Boost.Test's messages.
std::ostream& operator<<(std::ostream& os, parse_state s) {
    return os << (s == parse_state::done ? "done" : s == parse_state::bad ? "bad" : "need_more");
}
std::ostream& operator<<(std::ostream& os, first_bytes::kind k) {
    using kind = first_bytes::kind;
    return os << (k == kind::tls ? "tls" : k == kind::http ? "http" : k == kind::http_connect ? "http_connect" : "other");
}
std::ostream& operator<<(std::ostream& os, address_class c) { return os << static_cast<int>(c); }
} // namespace machine::net

using namespace machine::net;
using kind = first_bytes::kind;
using strings = std::vector<std::string>;

namespace {

std::string from_hex(std::string_view hex) {
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
        out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
    }
    return out;
}

// A ClientHello as Python's ssl module (OpenSSL 3.0) sent it for server_hostname
// "registry.npmjs.org" (ssl.MemoryBIO, the first bytes of do_handshake): one record, TLS 1.3
// with key shares, 517 bytes.
const std::string real_hello = from_hex(
    "1603010200010001fc030398fafcdb44a76d015f162e89e44e962e3b548c25681beae9b8b091f5944bc0f520c6f4f46e"
    "7b813e051bbbf73906120201adeb73c503328c5bdb6ab7f0e452bc780024130213031301c02cc030c02bc02fcca9cca8"
    "c024c028c023c027009f009e006b006700ff0100018f00000017001500001272656769737472792e6e706d6a732e6f72"
    "67000b000403000102000a00160014001d0017001e001900180100010101020103010400230000001600000017000000"
    "0d002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602002b00"
    "050403040303002d00020101003300260024001d0020a6561613228603468495e237403bcc887be9c8402ab218300766"
    "9db101dbf668001500db0000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000");

std::string u16(std::size_t v) { return {static_cast<char>((v >> 8) & 0xFF), static_cast<char>(v & 0xFF)}; }
std::string u24(std::size_t v) { return static_cast<char>((v >> 16) & 0xFF) + u16(v); }
std::string vec8(const std::string& s) { return static_cast<char>(s.size()) + s; }
std::string vec16(const std::string& s) { return u16(s.size()) + s; }

std::string sni_extension(const strings& names) {
    std::string list;
    for (const auto& n : names) list += '\0' + vec16(n);
    return u16(0) + vec16(vec16(list));
}

// A ClientHello body: version, random, session id, one suite, null compression, `extensions`
// (nullopt: no extensions block at all).
std::string hello_body(const std::optional<std::string>& extensions) {
    std::string b = "\x03\x03" + std::string(32, 'r') + vec8(std::string(32, 's')) + vec16("\x13\x01") +
                    vec8(std::string(1, '\0'));
    if (extensions) b += vec16(*extensions);
    return b;
}

std::string handshake(const std::string& body) { return '\x01' + u24(body.size()) + body; }

std::string record(const std::string& fragment) { return "\x16\x03\x01" + u16(fragment.size()) + fragment; }

// supported_versions, so that SNI is not the first extension.
const std::string supported_versions = u16(43) + vec16(vec8("\x03\x04"));

std::string hello(const strings& names) {
    return record(handshake(hello_body(supported_versions + sni_extension(names))));
}

sniff_result sniff16k(std::string_view b) { return sniff(b, 16384); }

} // namespace

BOOST_AUTO_TEST_SUITE(net_sniff)

// ---- PROXY v1 ------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(proxy_header_good) {
    const std::string line = "PROXY TCP4 192.168.5.15 93.184.216.34 40000 443\r\n";
    const auto r = parse_proxy_header(line + "\x16\x03\x01");
    BOOST_TEST(r.state == parse_state::done);
    BOOST_TEST(r.dst.address == "93.184.216.34");
    BOOST_TEST(r.dst.port == 443);
    BOOST_TEST(!r.dst.v6);
    BOOST_TEST(r.source == "192.168.5.15");
    BOOST_TEST(r.consumed == line.size());

    const auto v6 = parse_proxy_header("PROXY TCP6 FE80:0:0::1 2001:DB8:0:0::1 0 65535\r\n");
    BOOST_TEST(v6.state == parse_state::done);
    BOOST_TEST(v6.dst.address == "2001:db8::1");  // canonical text, so classify and logs agree
    BOOST_TEST(v6.dst.port == 65535);
    BOOST_TEST(v6.dst.v6);

    const std::string longest =
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    BOOST_TEST(parse_proxy_header(longest).state == parse_state::done);
}

BOOST_AUTO_TEST_CASE(proxy_header_need_more_until_crlf) {
    const std::string line = "PROXY TCP4 10.0.0.1 1.1.1.1 1234 53\r\n";
    for (std::size_t n = 0; n < line.size(); ++n) {
        BOOST_TEST(parse_proxy_header(line.substr(0, n)).state == parse_state::need_more, n);
    }
    BOOST_TEST(parse_proxy_header(line).state == parse_state::done);
    // 107 bytes (the spec's maximum, CRLF included) without a CRLF: bad; one fewer: waiting.
    const std::string endless = "PROXY " + std::string(200, 'x');
    BOOST_TEST(parse_proxy_header(endless.substr(0, 106)).state == parse_state::need_more);
    BOOST_TEST(parse_proxy_header(endless.substr(0, 107)).state == parse_state::bad);
}

BOOST_AUTO_TEST_CASE(proxy_header_bad) {
    for (const auto& bad : strings{
             "PROXY UNKNOWN\r\n",
             "PROXY UNKNOWN 1.1.1.1 2.2.2.2 1 2\r\n",
             "PROXY TCP5 1.1.1.1 2.2.2.2 1 2\r\n",
             "PROXY tcp4 1.1.1.1 2.2.2.2 1 2\r\n",
             "PROXY TCP4  1.1.1.1 2.2.2.2 1 2\r\n",  // two spaces
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 2 \r\n",  // trailing space
             "PROXY TCP4 1.1.1.1 2.2.2.2 1\r\n",
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 65536\r\n",
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 +80\r\n",
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 -1\r\n",
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 123456\r\n",
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 8O\r\n",
             "PROXY TCP4 1.1.1.1 01.2.3.4 1 2\r\n",
             "PROXY TCP4 1.1.1.1 1.2.3 1 2\r\n",
             "PROXY TCP4 1.1.1.1 ::1 1 2\r\n",  // an IPv6 address in TCP4
             "PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
             "PROXY TCP4 1.1.1.1 example.com 1 2\r\n",
             "PROXY TCP4 1.1.1.1\t2.2.2.2 1 2\r\n",
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 2\n",     // bare LF
             "PROXY TCP4 1.1.1.1 2.2.2.2\r1 2\r\n",  // bare CR
             "GET / HTTP/1.1\r\n",                   // bad at once: not the prefix
             "X",
             "PROXY TCP4 1.1.1.1 2.2.2.2 1 2" + std::string(100, ' ') + "\r\n",  // CRLF past 107 bytes
         }) {
        const auto r = parse_proxy_header(bad);
        BOOST_TEST(r.state == parse_state::bad, bad);
        BOOST_TEST(!r.problem.empty());
    }
}

// ---- TLS ----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(tls_real_client_hello) {
    BOOST_TEST(real_hello.size() == 517u);
    const auto r = sniff16k(real_hello);
    BOOST_TEST(r.state == parse_state::done, r.problem);
    BOOST_TEST(r.found.what == kind::tls);
    BOOST_TEST(r.found.host == "registry.npmjs.org");
    BOOST_TEST(r.found.port == 0);
    // Every prefix is need_more: nothing is decided on a part.
    for (std::size_t n = 0; n < real_hello.size(); ++n) {
        BOOST_TEST(sniff16k(std::string_view(real_hello).substr(0, n)).state == parse_state::need_more, n);
    }
}

BOOST_AUTO_TEST_CASE(tls_hello_split_across_records) {
    // The real handshake message cut into records of 1, 200 and the rest.
    const std::string hs = real_hello.substr(5);
    const std::string split = record(hs.substr(0, 1)) + record(hs.substr(1, 200)) + record(hs.substr(201));
    const auto r = sniff16k(split);
    BOOST_TEST(r.state == parse_state::done, r.problem);
    BOOST_TEST(r.found.host == "registry.npmjs.org");
    for (std::size_t n = 0; n < split.size(); ++n) {
        BOOST_TEST(sniff16k(std::string_view(split).substr(0, n)).state == parse_state::need_more, n);
    }
    // A record of another type (an alert) before the hello is whole is bad.
    const std::string alert = record(hs.substr(0, 10)) + "\x15\x03\x01" + u16(2) + "\x02\x28";
    BOOST_TEST(sniff16k(alert).state == parse_state::bad);
}

BOOST_AUTO_TEST_CASE(tls_hand_built_hellos) {
    auto host_of = [](const std::string& bytes) {
        const auto r = sniff16k(bytes);
        BOOST_TEST(r.state == parse_state::done, r.problem);
        BOOST_TEST(r.found.what == kind::tls);
        return r.found.host;
    };
    BOOST_TEST(host_of(hello({"github.com"})) == "github.com");
    BOOST_TEST(host_of(hello({"API.Anthropic.COM."})) == "api.anthropic.com");
    BOOST_TEST(host_of(hello({"_acme.a-b.example"})) == "_acme.a-b.example");
}

BOOST_AUTO_TEST_CASE(tls_no_sni) {
    // No SNI extension, and no extensions at all: a TLS connection with no name.
    const auto no_sni = sniff16k(record(handshake(hello_body(supported_versions))));
    BOOST_TEST(no_sni.state == parse_state::done);
    BOOST_TEST(no_sni.found.what == kind::tls);
    BOOST_TEST(no_sni.found.host == "");
    const auto bare = sniff16k(record(handshake(hello_body(std::nullopt))));
    BOOST_TEST(bare.state == parse_state::done);
    BOOST_TEST(bare.found.what == kind::tls);
    BOOST_TEST(bare.found.host == "");
}

BOOST_AUTO_TEST_CASE(tls_bad_names) {
    for (const auto& names : std::vector<strings>{
             {"allowed.com", "evil.com"},  // two host names
             {},                           // an empty ServerNameList
             {"evil .com"},
             {"evil\x1b[2J.com"},
             {"evil\n.com"},
             {std::string("evil\0.com", 9)},
             {"\xc3\xa9vil.com"},
             {"a..com"},
             {"."},
             {""},
             {std::string(64, 'a') + ".com"},
             {std::string(250, 'a').insert(60, ".").insert(120, ".").insert(180, ".") + ".com"},
             {"allowed.com/evil.com"},
             {"1.2.3.4:443"},
         }) {
        const auto r = sniff16k(hello(names));
        BOOST_TEST(r.state == parse_state::bad, (names.empty() ? "(none)" : names.front()));
    }
    // Two SNI extensions, each with one name.
    const std::string two = sni_extension({"a.com"}) + sni_extension({"b.com"});
    BOOST_TEST(sniff16k(record(handshake(hello_body(two)))).state == parse_state::bad);
}

BOOST_AUTO_TEST_CASE(tls_lengths_past_the_end) {
    const std::string good = hello({"github.com"});
    BOOST_TEST(sniff16k(good).state == parse_state::done);
    // Every length field inside the hand-built ClientHello, one at a time, made to claim one
    // byte more, one byte less, and (two-byte fields) 256 more than is there: bad every time,
    // and never a read past the input (the sanitizer build would say).
    const std::string body = good.substr(9);         // after the record and handshake headers
    const std::size_t sid = 2 + 32;                  // session id length (1 byte)
    const std::size_t suites = sid + 1 + 32;         // cipher suites length (2)
    const std::size_t comp = suites + 2 + 2;         // compression methods length (1)
    const std::size_t exts = comp + 1 + 1;           // extensions length (2)
    const std::size_t ext1_len = exts + 2 + 2;       // supported_versions' length (2)
    const std::size_t sni_len = ext1_len + 2 + 3 + 2;  // server_name extension's length (2)
    const std::size_t list_len = sni_len + 2;        // ServerNameList length (2)
    const std::size_t name_len = list_len + 2 + 1;   // HostName length (2)
    BOOST_TEST(body.substr(name_len + 2) == "github.com");
    struct field {
        std::size_t at;
        int width;
    };
    for (const field f : {field{sid, 1}, field{suites, 2}, field{comp, 1}, field{exts, 2}, field{ext1_len, 2},
                          field{sni_len, 2}, field{list_len, 2}, field{name_len, 2}}) {
        for (const int delta : {+1, -1, +256}) {
            if (delta == 256 && f.width == 1) continue;
            std::string b = body;
            unsigned value = static_cast<unsigned char>(b[f.at]);
            if (f.width == 2) value = value << 8 | static_cast<unsigned char>(b[f.at + 1]);
            value += delta;
            if (f.width == 2) b.replace(f.at, 2, u16(value));
            else b[f.at] = static_cast<char>(value);
            const auto r = sniff16k(record(handshake(b)));
            BOOST_TEST(r.state == parse_state::bad, "field at " << f.at << " delta " << delta << ": " << r.problem);
        }
    }
    // The handshake length: more than came is need_more; more than max_bytes is bad at once
    // (no waiting for 16 MB).
    std::string hs = handshake(body);
    hs[3] = static_cast<char>(hs[3] + 1);
    BOOST_TEST(sniff16k(record(hs)).state == parse_state::need_more);
    BOOST_TEST(sniff16k(record('\x01' + u24(0xFFFFFF) + body)).state == parse_state::bad);
    // Record lengths: over 2^14, zero.
    BOOST_TEST(sniff16k(std::string("\x16\x03\x01\x40\x01", 5)).state == parse_state::bad);
    BOOST_TEST(sniff16k(std::string("\x16\x03\x01\x00\x00", 5)).state == parse_state::bad);
    // A ServerHello, and a ClientHello cut short inside a length that says it is whole.
    BOOST_TEST(sniff16k(record('\x02' + u24(body.size()) + body)).state == parse_state::bad);
    BOOST_TEST(sniff16k(record(handshake(body.substr(0, 40)))).state == parse_state::bad);
}

BOOST_AUTO_TEST_CASE(tls_over_max_bytes) {
    // A ClientHello padded past max_bytes: bad once its length is known, whatever comes next.
    const std::string pad = u16(21) + vec16(std::string(3000, '\0'));
    const auto big = record(handshake(hello_body(pad + sni_extension({"a.com"}))));
    BOOST_TEST(sniff(big, 16384).state == parse_state::done);
    BOOST_TEST(sniff(big, 2048).state == parse_state::bad);
    BOOST_TEST(sniff(std::string_view(big).substr(0, 9), 2048).state == parse_state::bad);
}

BOOST_AUTO_TEST_CASE(tls_every_byte_changed) {
    // Whatever one byte of a real hello becomes, the result is one of the three states and a
    // name, if any, is a bounded lower-case host name.
    for (std::size_t i = 0; i < real_hello.size(); ++i) {
        for (const unsigned char v : {0x00, 0x41, 0x7f, 0xff}) {
            std::string b = real_hello;
            b[i] = static_cast<char>(v);
            const auto r = sniff16k(b);
            BOOST_TEST(r.found.host.size() <= 253u);
            BOOST_TEST(r.found.host.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_.") == std::string::npos);
        }
    }
}

// ---- HTTP ---------------------------------------------------------------------------------

namespace {

// The head fed a byte at a time: need_more until its last byte, then the result.
sniff_result fed_byte_by_byte(const std::string& head) {
    for (std::size_t n = 1; n < head.size(); ++n) {
        const auto r = sniff16k(std::string_view(head).substr(0, n));
        BOOST_TEST(r.state == parse_state::need_more, "at byte " << n << " " << r.problem);
        if (r.state != parse_state::need_more) return r;
    }
    return sniff16k(head + "body bytes after the head");
}

} // namespace

BOOST_AUTO_TEST_CASE(http_host_header) {
    const std::string head =
        "GET /index.html HTTP/1.1\r\nUser-Agent: curl\r\nhOsT:  Deb.Debian.org. \r\nAccept: */*\r\n\r\n";
    const auto r = fed_byte_by_byte(head);
    BOOST_TEST(r.state == parse_state::done, r.problem);
    BOOST_TEST(r.found.what == kind::http);
    BOOST_TEST(r.found.host == "deb.debian.org");
    BOOST_TEST(r.found.port == 0);
    BOOST_TEST(r.found.head_bytes == head.size());

    const auto with_port = sniff16k("POST /x HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");
    BOOST_TEST(with_port.found.host == "example.com");
    BOOST_TEST(with_port.found.port == 8080);
    const auto v6 = sniff16k("GET / HTTP/1.1\r\nHost: [2001:DB8::1]:81\r\n\r\n");
    BOOST_TEST(v6.state == parse_state::done, v6.problem);
    BOOST_TEST(v6.found.host == "2001:db8::1");
    BOOST_TEST(v6.found.port == 81);
    const auto http10 = sniff16k("GET / HTTP/1.0\r\n\r\n");
    BOOST_TEST(http10.state == parse_state::done);
    BOOST_TEST(http10.found.what == kind::http);
    BOOST_TEST(http10.found.host == "");
}

BOOST_AUTO_TEST_CASE(http_connect) {
    const std::string head = "CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n";
    const auto r = fed_byte_by_byte(head);
    BOOST_TEST(r.state == parse_state::done, r.problem);
    BOOST_TEST(r.found.what == kind::http_connect);
    BOOST_TEST(r.found.host == "github.com");
    BOOST_TEST(r.found.port == 443);
    BOOST_TEST(r.found.head_bytes == head.size());
    const auto v6 = sniff16k("CONNECT [::1]:22 HTTP/1.1\r\n\r\n");
    BOOST_TEST(v6.found.host == "::1");
    BOOST_TEST(v6.found.port == 22);
    for (const auto& bad : strings{"CONNECT github.com HTTP/1.1\r\n\r\n", "CONNECT github.com:0 HTTP/1.1\r\n\r\n",
                                   "CONNECT github.com:99999 HTTP/1.1\r\n\r\n", "CONNECT :443 HTTP/1.1\r\n\r\n",
                                   "CONNECT [::1 HTTP/1.1\r\n\r\n", "CONNECT [nothost]:443 HTTP/1.1\r\n\r\n"}) {
        BOOST_TEST(sniff16k(bad).state == parse_state::bad, bad);
    }
}

BOOST_AUTO_TEST_CASE(http_absolute_uri) {
    // The target names the host; a Host header (even a different one) does not count.
    const std::string head = "GET http://Example.COM:8080/a/b?c HTTP/1.1\r\nHost: allowed.com\r\n\r\n";
    const auto r = fed_byte_by_byte(head);
    BOOST_TEST(r.state == parse_state::done, r.problem);
    BOOST_TEST(r.found.what == kind::http);
    BOOST_TEST(r.found.host == "example.com");
    BOOST_TEST(r.found.port == 8080);
    BOOST_TEST(sniff16k("GET http://deb.debian.org/debian HTTP/1.1\r\n\r\n").found.port == 80);
    BOOST_TEST(sniff16k("GET http://deb.debian.org HTTP/1.1\r\n\r\n").found.host == "deb.debian.org");
    BOOST_TEST(sniff16k("GET https://a.b/ HTTP/1.1\r\n\r\n").found.port == 443);
    // userinfo could make a naive reader see the allowed name: it is bad.
    BOOST_TEST(sniff16k("GET http://allowed.com@evil.com/ HTTP/1.1\r\n\r\n").state == parse_state::bad);
}

BOOST_AUTO_TEST_CASE(http_bad_heads) {
    for (const auto& bad : strings{
             "GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n",  // duplicate Host
             "GET / HTTP/1.1\r\nHost: a.com\r\nHOST: a.com\r\n\r\n",
             "GET / HTTP/1.1\r\n\r\n",  // HTTP/1.1 needs Host
             "GET / HTTP/1.1\r\nHost:\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: a b.com\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: a.com:\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: a.com:+80\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: evil\x1b]0;x\x07.com\r\n\r\n",
             "GET / HTTP/1.1\r\nHost : a.com\r\n\r\n",          // space before the colon
             "GET / HTTP/1.1\r\nX: y\r\n Host: a.com\r\n\r\n",  // folded line
             "GET / HTTP/1.1\r\nHost: a.com\n\r\n",             // bare LF
             "GET / HTTP/1.1\r\nHost: a.com\r\r\n\r\n",         // bare CR
             "GET / HTTP/2.0\r\nHost: a.com\r\n\r\n",
             "GET  / HTTP/1.1\r\nHost: a.com\r\n\r\n",
             "GET / HTTP/1.1 \r\nHost: a.com\r\n\r\n",
             "GET /a\x7f HTTP/1.1\r\nHost: a.com\r\n\r\n",
             "GET a.com HTTP/1.1\r\nHost: a.com\r\n\r\n",
             "GET / HTTP/1.1\r\nnocolon\r\n\r\n",
             std::string("GET / HTTP/1.1\r\nHost: a.com\0\r\n\r\n", 32),
         }) {
        BOOST_TEST(sniff16k(bad).state == parse_state::bad, bad);
    }
    // A bad request line is bad as soon as it is whole, not when the head ends.
    BOOST_TEST(sniff16k("GET / FTP/1.1\r\n").state == parse_state::bad);
}

BOOST_AUTO_TEST_CASE(http_oversized_head) {
    const std::string start = "GET / HTTP/1.1\r\nHost: a.com\r\nX: ";
    const std::string end = "\r\n\r\n";
    const std::string exact = start + std::string(1024 - start.size() - end.size(), 'x') + end;
    BOOST_TEST(sniff(exact, 1024).state == parse_state::done);
    const std::string over = start + std::string(1025 - start.size() - end.size(), 'x') + end;
    BOOST_TEST(sniff(over, 1024).state == parse_state::bad);
    // Without an end in sight: bad at max_bytes, need_more just before.
    const std::string endless = start + std::string(5000, 'x');
    BOOST_TEST(sniff(std::string_view(endless).substr(0, 1023), 1024).state == parse_state::need_more);
    const auto r = sniff(std::string_view(endless).substr(0, 1024), 1024);
    BOOST_TEST(r.state == parse_state::bad);
    BOOST_TEST(r.problem == "request head over 1024 bytes");
    // Even a limit shorter than a method holds.
    BOOST_TEST(sniff("CONNEC", 6).state == parse_state::bad);
    BOOST_TEST(sniff("CONNE", 6).state == parse_state::need_more);
}

BOOST_AUTO_TEST_CASE(other_protocols_decided_at_once) {
    // A protocol whose first bytes are no TLS record or HTTP method is other on those bytes:
    // the proxy does not wait for a name that will never come.
    for (const auto& first : strings{"S", "SSH-2.0-OpenSSH_9.2p1\r\n", std::string(1, '\0'), "\x01", "\xff", "Q", "g",
                                     "\x16\x01", "GETS", "POSTGRES", "CONNECTX", "G\r\n"}) {
        const auto r = sniff16k(first);
        BOOST_TEST(r.state == parse_state::done, first);
        BOOST_TEST(r.found.what == kind::other, first);
        BOOST_TEST(r.found.host == "");
    }
    for (const auto& partial : strings{"", "G", "GE", "GET", "P", "PU", "CONNEC", "\x16", "\x16\x03"}) {
        BOOST_TEST(sniff16k(partial).state == parse_state::need_more, partial);
    }
}

// ---- DNS ----------------------------------------------------------------------------------

namespace {

std::string dns_name(const strings& labels) {
    std::string out;
    for (const auto& l : labels) out += vec8(l);
    return out + '\0';
}

// A query: id 0x1234, RD, one question, one additional record (an EDNS OPT).
std::string dns_query(const std::string& qname, std::uint16_t qtype = 1) {
    std::string q = "\x12\x34" + std::string("\x01\x00", 2) + u16(1) + u16(0) + u16(0) + u16(1);
    q += qname + u16(qtype) + u16(1);
    q += std::string("\0\0\x29\x04\xd0\0\0\0\0\0\0", 11);  // OPT: root, type 41, 1232 bytes
    return q;
}

} // namespace

BOOST_AUTO_TEST_CASE(dns_good_query) {
    const auto q = parse_dns_query(dns_query(dns_name({"Registry", "npmjs", "ORG"}), 28));
    BOOST_REQUIRE(q);
    BOOST_TEST(q->id == 0x1234);
    BOOST_TEST(q->name == "registry.npmjs.org");
    BOOST_TEST(q->qtype == 28);
    BOOST_TEST(q->qclass == 1);
    BOOST_TEST(parse_dns_query(dns_query(dns_name({"_dmarc", "a-b", "c0"})))->name == "_dmarc.a-b.c0");
    // 253 bytes is the longest name.
    const strings longest = {std::string(63, 'a'), std::string(63, 'b'), std::string(63, 'c'), std::string(61, 'd')};
    BOOST_TEST(parse_dns_query(dns_query(dns_name(longest)))->name.size() == 253u);
}

BOOST_AUTO_TEST_CASE(dns_bad_queries) {
    const std::string good = dns_query(dns_name({"a", "com"}));
    BOOST_REQUIRE(parse_dns_query(good));
    auto with_byte = [&](std::size_t at, char v) {
        std::string m = good;
        m[at] = v;
        return m;
    };
    const strings bad = {
        with_byte(2, '\x81'),                         // QR=1: a response
        with_byte(2, '\x09'),                         // opcode 1 (inverse query)
        with_byte(5, '\x02'),                         // QDCOUNT 2
        with_byte(5, '\x00'),                         // QDCOUNT 0
        with_byte(7, '\x01'),                         // an answer in a query
        with_byte(9, '\x01'),                         // an authority record
        dns_query(std::string("\x01" "a\xc0\x0c", 4)),  // a compression pointer
        dns_query(std::string("\xc0\x0c", 2)),
        dns_query(std::string("\x41" "a", 2)),  // reserved label type 0x40
        dns_query(std::string(1, '\0')),        // the root name
        dns_query(dns_name({std::string(64, 'a'), "com"})),
        dns_query(dns_name({std::string(63, 'a'), std::string(63, 'b'), std::string(63, 'c'), std::string(62, 'd')})),
        dns_query(dns_name({"a b", "com"})),
        dns_query(dns_name({"a.b", "com"})),  // a dot inside a label
        dns_query(dns_name({"\xff", "com"})),
        dns_query(dns_name({std::string("a\0", 2), "com"})),
        dns_query(dns_name({"a\\046b", "com"})),
    };
    for (const auto& m : bad) BOOST_TEST(!parse_dns_query(m));
    // Every prefix of a good question is short of something.
    const std::string no_opt = good.substr(0, good.size() - 11);
    for (std::size_t n = 0; n < no_opt.size(); ++n) BOOST_TEST(!parse_dns_query(no_opt.substr(0, n)), n);
}

BOOST_AUTO_TEST_CASE(dns_error_answers) {
    const std::string query = dns_query(dns_name({"Evil", "example"}));
    const std::string answer = dns_error_response(query, 5);
    const std::string question = dns_name({"Evil", "example"}) + u16(1) + u16(1);
    BOOST_TEST(answer.size() == 12 + question.size());
    BOOST_TEST(answer.substr(0, 2) == "\x12\x34");
    BOOST_TEST(static_cast<unsigned char>(answer[2]) == 0x81);  // QR, RD echoed
    BOOST_TEST(static_cast<unsigned char>(answer[3]) == 0x85);  // RA, REFUSED
    BOOST_TEST(answer.substr(4, 8) == std::string("\0\1\0\0\0\0\0\0", 8));
    BOOST_TEST(answer.substr(12) == question);  // the name as the guest spelled it
    BOOST_TEST(static_cast<unsigned char>(dns_error_response(query, 3)[3]) == 0x83);
    BOOST_TEST(!parse_dns_query(answer));  // it is a response
    BOOST_TEST(dns_error_response("garbage", 3).empty());
    BOOST_TEST(dns_error_response(answer, 3).empty());
}

// ---- addresses ----------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(address_classes) {
    const strings host = {"192.168.1.20", "2001:db8::20", "fe80::1%eth0"};
    const std::vector<std::pair<std::string, address_class>> cases = {
        {"127.0.0.1", address_class::loopback},
        {"127.255.0.9", address_class::loopback},
        {"::1", address_class::loopback},
        {"::ffff:127.0.0.1", address_class::loopback},  // mapped: the IPv4 it names
        {"[::1]", address_class::loopback},
        {"192.168.1.20", address_class::host},
        {"::ffff:192.168.1.20", address_class::host},
        {"2001:DB8::20", address_class::host},
        {"169.254.169.254", address_class::link_local},
        {"::ffff:169.254.169.254", address_class::link_local},
        {"fe80::abcd", address_class::link_local},
        {"febf::1", address_class::link_local},
        {"0.0.0.0", address_class::unspecified},
        {"0.1.2.3", address_class::unspecified},
        {"::", address_class::unspecified},
        {"::ffff:0.0.0.0", address_class::unspecified},
        {"224.0.0.1", address_class::multicast},
        {"239.255.255.250", address_class::multicast},
        {"255.255.255.255", address_class::multicast},
        {"ff02::1", address_class::multicast},
        {"::ffff:224.0.0.1", address_class::multicast},
        {"93.184.216.34", address_class::other},
        {"192.168.1.21", address_class::other},
        {"10.0.0.1", address_class::other},
        {"2606:4700::1111", address_class::other},
        {"fec0::1", address_class::other},
        {"not-an-address", address_class::unspecified},  // never reachable
        {"", address_class::unspecified},
        {"1.2.3.4.5", address_class::unspecified},
    };
    for (const auto& [addr, want] : cases) BOOST_TEST(classify(addr, host) == want, addr);
}

BOOST_AUTO_TEST_CASE(host_addresses_are_classified_as_the_host) {
    const auto mine = host_interface_addresses();
    BOOST_TEST(!mine.empty());
    for (const auto& a : mine) {
        const auto c = classify(a, mine);
        BOOST_TEST((c == address_class::loopback || c == address_class::host || c == address_class::link_local), a);
    }
}

BOOST_AUTO_TEST_SUITE_END()
