#include "machine/paths.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "machine/error.hpp"

namespace machine::paths {

namespace fs = std::filesystem;

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
}

fs::path home_dir() {
    if (auto h = env("HOME"); !h.empty()) return h;
    if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) return pw->pw_dir;
    throw error("cannot determine the home directory: HOME is unset");
}

namespace {
fs::path xdg(const char* var, const fs::path& fallback_in_home) {
    if (auto v = env(var); !v.empty() && fs::path(v).is_absolute()) return v;
    return home_dir() / fallback_in_home;
}
} // namespace

fs::path config_dir() {
    if (auto v = env("MACHINE_CONFIG_DIR"); !v.empty()) return v;
    return xdg("XDG_CONFIG_HOME", ".config") / "machine";
}

fs::path state_dir() {
    if (auto v = env("MACHINE_STATE_DIR"); !v.empty()) return v;
    return xdg("XDG_STATE_HOME", ".local/state") / "machine";
}

fs::path cache_dir() { return xdg("XDG_CACHE_HOME", ".cache") / "machine"; }

void write_file_atomic(const fs::path& path, std::string_view content, unsigned mode) {
    fs::create_directories(path.parent_path());
    std::random_device rd;
    const fs::path tmp = path.parent_path() /
                         ("." + path.filename().string() + ".tmp" + std::to_string(rd()));
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) throw error("cannot write " + tmp.string() + ": " + std::strerror(errno));
    std::size_t done = 0;
    while (done < content.size()) {
        const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            const int e = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            throw error("cannot write " + tmp.string() + ": " + std::strerror(e));
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        ::unlink(tmp.c_str());
        throw error("cannot write " + path.string() + ": " + std::strerror(errno));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        throw error("cannot write " + path.string() + ": " + std::strerror(e));
    }
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error("cannot read " + path.string() + ": " + std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

} // namespace machine::paths
