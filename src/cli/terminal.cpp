#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "cli.hpp"
#include "machine/text.hpp"

namespace machine::cli {

bool stdin_is_terminal() { return ::isatty(STDIN_FILENO) == 1; }
bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }

bool confirm(const std::string& question) {
    std::fprintf(stderr, "%s [y/N] ", question.c_str());
    std::fflush(stderr);
    std::string answer;
    if (!std::getline(std::cin, answer)) {
        std::fputc('\n', stderr);
        return false;
    }
    answer = text::trim(answer);
    return answer == "y" || answer == "Y" || answer == "yes";
}

std::string human_bytes(std::int64_t bytes) {
    if (bytes <= 0) return "-";
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (v == static_cast<double>(static_cast<long long>(v))) std::snprintf(buf, sizeof buf, "%lld%s", static_cast<long long>(v), units[u]);
    else std::snprintf(buf, sizeof buf, "%.1f%s", v, units[u]);
    return buf;
}

} // namespace machine::cli
