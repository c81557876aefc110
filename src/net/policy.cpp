// The egress allowlist's vocabulary: which entries are host patterns (with a message that says
// what to write instead when one is not) and which names a pattern lets through.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>

#include "host_name.hpp"
#include "machine/net.hpp"
#include "machine/text.hpp"

namespace machine::net {

namespace {

/// The entry as a message quotes it: escaped (it may come from any file) and short.
std::string quoted(std::string_view entry) {
    constexpr std::size_t shown = 80;
    std::string s = text::escape_for_terminal(entry.substr(0, shown));
    if (entry.size() > shown) s += "...";
    return "\"" + s + "\"";
}

bool is_address(std::string_view s) {
    if (s.size() > 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
    if (s.empty() || s.size() >= INET6_ADDRSTRLEN) return false;
    const std::string z(s);
    std::array<unsigned char, sizeof(in6_addr)> bin{};
    return inet_pton(AF_INET, z.c_str(), bin.data()) == 1 || inet_pton(AF_INET6, z.c_str(), bin.data()) == 1;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

/// The host inside a URL-ish entry ("https://github.com/org", "github.com:443"), for the
/// "write github.com" hint; "" when there is no sensible one.
std::string host_in(std::string_view entry) {
    if (const auto scheme = entry.find("://"); scheme != std::string_view::npos) entry = entry.substr(scheme + 3);
    if (const auto at = entry.rfind('@', entry.find('/')); at != std::string_view::npos) entry = entry.substr(at + 1);
    entry = entry.substr(0, entry.find_first_of("/?#"));
    if (std::count(entry.begin(), entry.end(), ':') == 1) entry = entry.substr(0, entry.find(':'));
    std::string out(entry);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
    if (!out.empty() && out.back() == '.') out.pop_back();
    return out;
}

/// Why `name` (a pattern without its "*.") is not a host name, or "".
std::string name_problem(std::string_view entry, std::string_view name) {
    const auto q = quoted(entry);
    if (name.empty()) return q + " names no host";
    if (name.size() > max_host_name) return q + " is longer than a host name can be (253 bytes)";
    std::size_t start = 0;
    std::size_t labels = 0;
    for (;;) {
        const auto dot = name.find('.', start);
        const auto label = name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
        if (label.empty()) return q + " has an empty label (two dots, or a dot at the start)";
        if (label.size() > max_label) return q + " has a label longer than 63 bytes";
        const bool ok = std::all_of(label.begin(), label.end(), [](char c) {
            return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-';
        });
        if (!ok) return q + " is not a host name: use letters, digits, hyphens and dots";
        if (label.front() == '-' || label.back() == '-') return q + " has a label that starts or ends with a hyphen";
        ++labels;
        if (dot == std::string_view::npos) {
            if (std::all_of(label.begin(), label.end(), is_digit)) {
                return q + " is not a host name: its last label is a number";
            }
            break;
        }
        start = dot + 1;
    }
    if (labels < 2) return q + " is not a full host name: write one with its domain, such as github.com";
    return {};
}

} // namespace

std::string host_pattern_problem(std::string_view entry) {
    const auto q = quoted(entry);
    if (entry.empty()) return "an empty entry is not a host name";
    if (is_address(entry)) return q + " is an address: egress takes host names";
    if (entry.find_first_of("/:@?#") != std::string_view::npos) {
        const auto host = host_in(entry);
        if (!host.empty() && name_problem(host, host).empty()) return q + " is not a host name: write " + host;
        if (!host.empty() && is_address(host)) return q + " is an address: egress takes host names";
        return q + " is not a host name: write only the name, such as github.com";
    }
    if (entry.back() == '.') {
        return q + " ends with a dot: write " + std::string(entry.substr(0, entry.size() - 1));
    }
    std::string_view name = entry;
    if (entry.substr(0, 2) == "*.") {
        name = entry.substr(2);
        if (name.find('*') == std::string_view::npos && std::count(name.begin(), name.end(), '.') < 1) {
            return q + " is too wide: name a domain under a public suffix like *.example.com";
        }
    } else if (entry == "*") {
        return q + " is too wide: name a domain under a public suffix like *.example.com";
    }
    if (name.find('*') != std::string_view::npos) {
        return q + ": a wildcard is only \"*.\" at the start, as in *.example.com";
    }
    return name_problem(entry, name);
}

bool host_matches(std::string_view pattern, std::string_view host) {
    if (!host_pattern_problem(pattern).empty()) return false;
    const auto name = normalize_host_name(host);
    if (!name) return false;
    const bool wildcard = pattern.substr(0, 2) == "*.";
    const auto want = normalize_host_name(wildcard ? pattern.substr(2) : pattern);
    if (!want) return false;
    if (!wildcard) return *name == *want;
    // Every name under the domain, at any depth, and not the domain itself.
    return name->size() > want->size() + 1 && name->ends_with(*want) &&
           (*name)[name->size() - want->size() - 1] == '.';
}

} // namespace machine::net
