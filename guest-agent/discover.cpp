#include "discover.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "files.hpp"
#include "log.hpp"

namespace machine::agent {

namespace {

namespace proto = machine::protocol;

struct fd_guard {
    int fd = -1;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

// Length of the valid UTF-8 sequence starting at s[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF); 0 when there is none.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) return 1;
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else return 0;
    if (i + n > s.size()) return 0;
    const auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return 0;
    for (std::size_t k = 2; k < n; ++k)
        if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
    return n;
}

// A character that may reach a terminal: not a C0 or C1 control, not DEL.
bool printable_sequence(std::string_view s, std::size_t i, std::size_t n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (n == 1) return c >= 0x20 && c != 0x7f;
    return !(n == 2 && c == 0xC2 && static_cast<unsigned char>(s[i + 1]) <= 0x9F);
}

// True when every character of `name` is printable UTF-8: such a name survives JSON unchanged,
// so the path the host is told is the path on disk.
bool is_printable_utf8(std::string_view name) {
    for (std::size_t i = 0; i < name.size();) {
        const std::size_t n = utf8_sequence(name, i);
        if (n == 0 || !printable_sequence(name, i, n)) return false;
        i += n;
    }
    return true;
}

// The token as written, made printable ('?' for anything else) and cut at a character boundary.
std::string printable_token(std::string_view raw) {
    std::string out;
    for (std::size_t i = 0; i < raw.size();) {
        std::size_t n = utf8_sequence(raw, i);
        std::string_view ch = "?";
        if (n != 0 && printable_sequence(raw, i, n)) ch = raw.substr(i, n);
        else n = std::max<std::size_t>(n, 1);
        if (out.size() + ch.size() > proto::max_envrc_token) break;
        out += ch;
        i += n;
    }
    return out;
}

bool is_blank(char c) { return c == ' ' || c == '\t'; }
// \S in the reference tool's pattern: anything but these.
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || c == '\n'; }

// `[ \t]*use[ \t]+op_env[ \t]+(\S+)` at the start of `line`; the raw token, or empty.
std::string_view op_env_token(std::string_view line) {
    std::size_t i = 0;
    auto skip_blanks = [&] {
        const std::size_t start = i;
        while (i < line.size() && is_blank(line[i])) ++i;
        return i > start;
    };
    auto word = [&](std::string_view w) {
        if (line.substr(i, w.size()) != w) return false;
        i += w.size();
        return true;
    };
    skip_blanks();
    if (!word("use") || !skip_blanks() || !word("op_env") || !skip_blanks()) return {};
    const std::size_t start = i;
    while (i < line.size() && !is_space(line[i])) ++i;
    return line.substr(start, i - start);
}

// Names in `dfd` worth looking into, sorted (so that the budget cuts the same way every time).
std::vector<std::string> subdirectory_names(int dfd) {
    std::vector<std::string> out;
    const int copy = ::openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (copy < 0) return out;
    DIR* d = ::fdopendir(copy);
    if (!d) {
        ::close(copy);
        return out;
    }
    while (const dirent* e = ::readdir(d)) {
        const std::string_view name = e->d_name;
        if (name.empty() || name.front() == '.') continue;  // ., .., and hidden ones (.git...)
        if (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN) continue;
        if (!is_printable_utf8(name)) continue;
        out.emplace_back(name);
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

// A subdirectory of `dfd`, never through a symlink. O_NONBLOCK: whatever it turns out to be,
// opening it does not wait (O_DIRECTORY is checked before anything is opened).
int open_subdirectory(int dfd, const std::string& name) {
    return ::openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
}

class scanner {
public:
    scanner(std::string code_dir, const discover_limits& limits) : code_dir_(std::move(code_dir)), limits_(limits) {}

    proto::secrets_discover_result run() {
        const int fd = ::open(code_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            // Missing (no repo cloned yet), or a symlink (like `find` without -L: not followed).
            if (errno != ENOENT) log::info("secrets.discover: " + code_dir_ + ": " + errno_text(errno));
            return std::move(result_);
        }
        fd_guard code(fd);
        for (const auto& name : subdirectory_names(code.fd)) {
            if (!enter(code.fd, name)) break;
        }
        auto& repos = result_.repos;
        std::sort(repos.begin(), repos.end(), [](const auto& a, const auto& b) { return a.dir < b.dir; });
        if (repos.size() > proto::max_discovered_repos) {
            repos.resize(proto::max_discovered_repos);
            result_.truncated = true;
        }
        return std::move(result_);
    }

private:
    // Opens `name` in `parent` as a directory (within the budget); false once it is spent.
    bool budget_for_directory() {
        if (dirs_ >= limits_.max_dirs) {
            result_.truncated = true;
            return false;
        }
        ++dirs_;
        return true;
    }

    // ~/code/NAME: its .envrc, then each ~/code/NAME/SUB/.envrc.
    bool enter(int code_fd, const std::string& name) {
        if (!budget_for_directory()) return false;
        const int fd = open_subdirectory(code_fd, name);
        if (fd < 0) return true;  // a file, a symlink, gone
        fd_guard dir(fd);
        if (!look_at_envrc(dir.fd, name)) return false;
        for (const auto& sub : subdirectory_names(dir.fd)) {
            if (!budget_for_directory()) return false;
            const int sfd = open_subdirectory(dir.fd, sub);
            if (sfd < 0) continue;
            fd_guard subdir(sfd);
            if (!look_at_envrc(subdir.fd, name + "/" + sub)) return false;
        }
        return true;
    }

    // Reads `.envrc` in `dfd` when it is a regular file; false once the byte budget is spent.
    bool look_at_envrc(int dfd, const std::string& dir) {
        // lstat first: a FIFO, a socket or a device is never opened (opening some devices acts).
        struct stat st {};
        if (::fstatat(dfd, ".envrc", &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) return true;
        if (bytes_ >= limits_.max_bytes) {
            result_.truncated = true;
            return false;
        }
        const int fd = ::openat(dfd, ".envrc", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) return true;
        fd_guard file(fd);
        // Again on what was opened: it may have been swapped since the lstat.
        if (::fstat(file.fd, &st) != 0 || !S_ISREG(st.st_mode)) return true;

        // One byte more than the limit tells whether the file goes on beyond it.
        const std::size_t want = std::min(limits_.read_bytes, limits_.max_bytes - bytes_);
        std::string text(want + 1, '\0');
        std::size_t got = 0;
        while (got < text.size()) {
            const ssize_t n = ::read(file.fd, text.data() + got, text.size() - got);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got += static_cast<std::size_t>(n);
        }
        const bool complete = got <= want;
        if (!complete && want < limits_.read_bytes) result_.truncated = true;  // cut by the budget, not the limit
        text.resize(std::min(got, want));
        bytes_ += text.size();

        bool truncated = false;
        auto uses = op_env_uses(text, complete, truncated);
        if (truncated) result_.truncated = true;
        if (uses.empty()) return true;
        proto::envrc_secrets repo;
        repo.dir = dir;
        repo.path = code_dir_ + "/" + dir + "/.envrc";
        repo.uses = std::move(uses);
        result_.repos.push_back(std::move(repo));
        return true;
    }

    std::string code_dir_;
    discover_limits limits_;
    std::size_t dirs_ = 0;
    std::size_t bytes_ = 0;
    proto::secrets_discover_result result_;
};

} // namespace

std::vector<proto::envrc_use> op_env_uses(std::string_view text, bool complete, bool& truncated) {
    std::vector<proto::envrc_use> out;
    std::uint64_t line_number = 0;
    for (std::size_t pos = 0; pos < text.size();) {
        const auto nl = text.find('\n', pos);
        if (nl == std::string_view::npos && !complete) break;  // cut by the read limit
        const std::size_t end = nl == std::string_view::npos ? text.size() : nl;
        const std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        ++line_number;
        const auto token = op_env_token(line);
        if (token.empty()) continue;
        if (out.size() >= proto::max_envrc_uses) {
            truncated = true;
            break;
        }
        out.push_back({printable_token(token), line_number});
    }
    return out;
}

proto::secrets_discover_result discover_envrc_secrets(const std::string& code_dir, const discover_limits& limits) {
    return scanner(code_dir, limits).run();
}

} // namespace machine::agent
