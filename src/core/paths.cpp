#include "machine/paths.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "machine/error.hpp"
#include "machine/platform.hpp"

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

bool create_file_exclusive(const fs::path& path, std::string_view content, unsigned mode) {
    fs::create_directories(path.parent_path());
    std::random_device rd;
    const fs::path staged = path.parent_path() / ("." + path.filename().string() + ".new" + std::to_string(rd()));
    write_file_atomic(staged, content, mode);
    const int linked = ::link(staged.c_str(), path.c_str());
    const int err = errno;
    ::unlink(staged.c_str());
    if (linked == 0) return true;
    if (err == EEXIST) return false;
    throw error("cannot write " + path.string() + ": " + std::strerror(err));
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error("cannot read " + path.string() + ": " + std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool socket_accepts(const std::filesystem::path& socket) {
    sockaddr_un sa{};
    if (socket.native().size() >= sizeof(sa.sun_path)) return false;
    const int fd = platform::open_socket(AF_UNIX, SOCK_STREAM, true);
    if (fd < 0) return false;
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, socket.c_str(), socket.native().size() + 1);
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa));
    const int err = errno;
    ::close(fd);
    return rc == 0 || err == EAGAIN;  // EAGAIN: a listener whose backlog is full
}

bool prepare_socket_path(const std::filesystem::path& listen, std::string_view who_) {
    const std::string who(who_);
    const auto dir = listen.has_parent_path() ? listen.parent_path() : std::filesystem::path(".");
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0)
        throw error(who + ": cannot use directory " + dir.string() + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode)) throw error(who + ": " + dir.string() + " is not a directory");
    if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0)
        throw error(who + ": directory " + dir.string() + " must belong to this user and be private (0700)");
    if (::lstat(listen.c_str(), &st) != 0) {
        if (errno == ENOENT) return false;
        throw error(who + ": cannot use " + listen.string() + ": " + std::strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode)) throw error(who + ": " + listen.string() + " exists and is not a socket");
    if (listen.native().size() >= sizeof(sockaddr_un{}.sun_path))
        throw error(who + ": socket path too long: " + listen.string());
    if (socket_accepts(listen)) throw error(who + ": " + listen.string() + " is in use by a running process");
    if (::unlink(listen.c_str()) != 0 && errno != ENOENT)
        throw error(who + ": cannot remove stale socket " + listen.string() + ": " + std::strerror(errno));
    return true;
}

owned_socket_file::owned_socket_file(std::filesystem::path socket, std::string_view who) : path_(std::move(socket)) {
    struct stat st {};
    if (::lstat(path_.c_str(), &st) != 0)
        throw error(std::string(who) + ": cannot use " + path_.string() + ": " + std::strerror(errno));
    device_ = st.st_dev;
    inode_ = st.st_ino;
    if (::chmod(path_.c_str(), 0600) != 0) {
        const int err = errno;
        ::unlink(path_.c_str());
        throw error(std::string(who) + ": cannot make " + path_.string() + " private: " + std::strerror(err));
    }
}

owned_socket_file::~owned_socket_file() {
    struct stat now {};
    if (::lstat(path_.c_str(), &now) == 0 && now.st_dev == device_ && now.st_ino == inode_) ::unlink(path_.c_str());
}

} // namespace machine::paths
