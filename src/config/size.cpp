// Memory and disk sizes as Lima takes them ("8GiB", "1.5GiB", "512MiB"), and durations ("45m").
#include "machine/config.hpp"

#include <array>
#include <algorithm>
#include <cmath>
#include <optional>

namespace machine::config {

namespace {

struct unit {
    std::string_view suffix;
    long double bytes;
};
constexpr std::array<unit, 4> units{{
    {"KiB", 0x1p10L},
    {"MiB", 0x1p20L},
    {"GiB", 0x1p30L},
    {"TiB", 0x1p40L},
}};

bool all_digits(std::string_view s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

// Bytes in "<digits>(.<digits>)?<unit>", or nullopt when `text` has another shape. Long double
// keeps every integer below 2^64 exact, which covers all sizes a long long can hold.
std::optional<long double> parse_bytes(std::string_view text) {
    for (const unit& u : units) {
        if (!text.ends_with(u.suffix)) continue;
        const std::string_view number = text.substr(0, text.size() - u.suffix.size());
        const std::size_t dot = number.find('.');
        const std::string_view whole = number.substr(0, dot);
        const std::string_view fraction =
            dot == std::string_view::npos ? std::string_view() : number.substr(dot + 1);
        if (!all_digits(whole) || (dot != std::string_view::npos && !all_digits(fraction)))
            return std::nullopt;
        long double value = 0;
        for (char c : whole) value = value * 10 + (c - '0');
        long double scale = 1;
        for (char c : fraction) value += (c - '0') * (scale /= 10);
        return value * u.bytes;
    }
    return std::nullopt;
}

} // namespace

std::optional<std::string> normalize_size(std::string_view text) {
    std::string normalized(text);
    if (all_digits(text)) {
        // A bare integer is a number of GiB, as in the reference tool; "08" -> "8GiB" (and
        // "0" -> "GiB", refused below).
        normalized = std::string(text.substr(std::min(text.find_first_not_of('0'), text.size()))) + "GiB";
    }
    const auto bytes = parse_bytes(normalized);
    // Zero (or less than a byte) is no size at all; 2^63 bytes and more do not fit a long long.
    if (!bytes || *bytes < 1 || *bytes >= 0x1p63L) return std::nullopt;
    return normalized;
}

long long size_bytes(std::string_view normalized) {
    const auto bytes = parse_bytes(normalized);
    return bytes ? static_cast<long long>(std::floor(*bytes)) : 0;
}

std::optional<std::chrono::seconds> parse_duration(std::string_view text) {
    std::chrono::seconds total{0};
    std::size_t i = 0;
    if (text.empty()) return std::nullopt;
    while (i < text.size()) {
        std::size_t j = i;
        long long n = 0;
        while (j < text.size() && text[j] >= '0' && text[j] <= '9' && j - i < 9) n = n * 10 + (text[j++] - '0');
        if (j == i || j >= text.size()) return std::nullopt;
        switch (text[j]) {
        case 's': total += std::chrono::seconds(n); break;
        case 'm': total += std::chrono::minutes(n); break;
        case 'h': total += std::chrono::hours(n); break;
        default: return std::nullopt;
        }
        i = j + 1;
    }
    if (total.count() <= 0) return std::nullopt;
    return total;
}

} // namespace machine::config
