// The one check of what counts as a DNS host name in the net module: the sniffers (SNI, HTTP
// Host, DNS questions) and the egress policy all normalise names through it, so a name the
// policy matched is spelled exactly as the one the proxy resolves.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace machine::net {

inline constexpr std::size_t max_host_name = 253;  // RFC 1035 §2.3.4, without the trailing dot
inline constexpr std::size_t max_label = 63;

/// True for the bytes a label may hold: letters, digits, '-' and '_' (service labels such as
/// _dmarc exist in real names; anything else, including escapes and non-ASCII, is refused).
constexpr bool is_label_byte(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/// `name` lower-cased with one trailing dot removed, when it is a host name: labels of 1..63
/// label bytes, 253 bytes in all. nullopt otherwise (empty, "..", "a..b", a space, a byte over
/// 0x7f, ...).
inline std::optional<std::string> normalize_host_name(std::string_view name) {
    if (!name.empty() && name.back() == '.') name.remove_suffix(1);
    if (name.empty() || name.size() > max_host_name) return std::nullopt;
    std::string out;
    out.reserve(name.size());
    std::size_t label = 0;
    for (const char c : name) {
        if (c == '.') {
            if (label == 0) return std::nullopt;
            label = 0;
        } else if (is_label_byte(c)) {
            if (++label > max_label) return std::nullopt;
        } else {
            return std::nullopt;
        }
        out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
    }
    if (label == 0) return std::nullopt;
    return out;
}

} // namespace machine::net
