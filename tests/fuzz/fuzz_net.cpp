// libFuzzer target for the egress proxy's parsers (src/net/sniff.hpp).
//
// Input: byte 0 picks the parser (sniff, PROXY header, DNS question), byte 1 the max_bytes
// given to sniff and the cut point, the rest is what the guest (or the bridge) sent. Checked
// on every input, besides no crash and no sanitizer report:
//  - a decision taken on a prefix (done or bad) is the decision on the whole: the proxy may act
//    on it as soon as it comes, more bytes never change it;
//  - a name found is a lower-case host name of at most 253 bytes, a head no longer than its input
//    or max_bytes;
//  - a PROXY header consumes at most 107 bytes; a DNS question's error answer is a response.
#include <cstdint>
#include <string>
#include <string_view>

#include "sniff.hpp"

namespace net = machine::net;

namespace {

[[noreturn]] void fail(const char* why) {
    (void)why;
    __builtin_trap();
}

bool same(const net::sniff_result& a, const net::sniff_result& b) {
    return a.state == b.state && a.found.what == b.found.what && a.found.host == b.found.host &&
           a.found.port == b.found.port && a.found.head_bytes == b.found.head_bytes;
}

void check_sniff(std::string_view in, std::size_t max_bytes, std::size_t cut) {
    const auto whole = net::sniff(in, max_bytes);
    const auto& f = whole.found;
    if (f.host.size() > 253) fail("host over 253 bytes");
    if (f.host.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_.:") != std::string::npos) fail("host bytes");
    if (f.head_bytes > in.size() || f.head_bytes > max_bytes) fail("head longer than its input");
    if (f.port < 0 || f.port > 65535) fail("port out of range");
    const auto part = net::sniff(in.substr(0, cut), max_bytes);
    if (part.state != net::parse_state::need_more && !same(part, whole)) fail("more bytes changed a decision");
}

void check_proxy(std::string_view in) {
    const auto r = net::parse_proxy_header(in);
    if (r.state != net::parse_state::done) return;
    if (r.consumed > 107 || r.consumed > in.size()) fail("PROXY header consumed too much");
    const std::string again = "PROXY " + std::string(r.dst.v6 ? "TCP6 " : "TCP4 ") + r.source + " " + r.dst.address +
                              " 1 " + std::to_string(r.dst.port) + "\r\n";
    const auto r2 = net::parse_proxy_header(again);
    if (r2.state != net::parse_state::done || r2.dst.address != r.dst.address) fail("canonical address does not parse");
}

void check_dns(std::string_view in) {
    const auto q = net::parse_dns_query(in);
    const auto answer = net::dns_error_response(in, 5);
    if (!q) {
        if (!answer.empty()) fail("an answer to a query that does not parse");
        return;
    }
    if (q->name.empty() || q->name.size() > 253) fail("DNS name length");
    if (answer.size() < 12 || answer.substr(0, 2) != in.substr(0, 2)) fail("answer id");
    if (net::parse_dns_query(answer)) fail("an answer that parses as a query");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
    switch (data[0] % 3) {
    case 0: check_sniff(in, 1 + data[1] * 8, in.size() * data[1] / 255); break;
    case 1: check_proxy(in); break;
    default: check_dns(in); break;
    }
    return 0;
}
