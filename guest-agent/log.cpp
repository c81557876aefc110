#include "log.hpp"

#include <unistd.h>

#include <string>

namespace machine::agent::log {

namespace {
level g_max = level::info;
}

void set_level(level max) { g_max = max; }

bool enabled(level l) { return static_cast<int>(l) <= static_cast<int>(g_max); }

void write(level l, std::string_view message) {
    if (!enabled(l)) return;
    std::string line = "<" + std::to_string(static_cast<int>(l)) + ">";
    line.append(message);
    line.push_back('\n');
    // One write(2) per line, so lines from concurrent children never interleave inside ours.
    const char* p = line.data();
    std::size_t left = line.size();
    while (left > 0) {
        const ssize_t n = ::write(STDERR_FILENO, p, left);
        if (n <= 0) return;
        p += n;
        left -= static_cast<std::size_t>(n);
    }
}

} // namespace machine::agent::log
