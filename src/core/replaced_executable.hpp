// What /proc/self/exe names, as a path to run again (platform_linux.cpp, platform_posix.cpp off
// macOS; unit-tested on its own). Once the running binary is replaced on disk (an upgrade, a
// rebuild) the kernel names it "PATH (deleted)": exec of that fails, and the helpers machine
// starts from itself (the egress proxy, the SSH agent filter) would not start. What runs next
// is the binary now at PATH.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <string_view>

namespace machine::platform::detail {

// `target`: what the /proc/self/exe link reads as; `running`: stat() through that link (the
// running binary, whether or not a name still leads to it).
inline std::filesystem::path replaced_executable(const std::filesystem::path& target, const struct stat& running) {
    constexpr std::string_view deleted = " (deleted)";
    struct stat at{};
    // The path still leads to the running binary (even one whose real name ends in " (deleted)").
    if (::stat(target.c_str(), &at) == 0 && at.st_dev == running.st_dev && at.st_ino == running.st_ino) return target;
    const std::string& s = target.native();
    if (s.size() <= deleted.size() || !s.ends_with(deleted)) return target;
    std::filesystem::path now(s.substr(0, s.size() - deleted.size()));
    return ::stat(now.c_str(), &at) == 0 && S_ISREG(at.st_mode) ? now : target;
}

} // namespace machine::platform::detail
