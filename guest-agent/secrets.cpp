#include "secrets.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <utility>

#include "files.hpp"
#include "log.hpp"
#include "machine/events.hpp"
#include "users.hpp"

namespace machine::agent {

namespace {

namespace proto = machine::protocol;
using clock = std::chrono::steady_clock;

constexpr std::string_view env_suffix = ".env";
constexpr std::string_view temp_marker = ".tmp-";      // in ".<set>.env.tmp-<random>"
constexpr std::size_t max_pending_wipes = 64;         // beyond: the oldest is wiped at once
constexpr std::size_t max_event_names_bytes = 60000;  // secrets.rendered stays under 64 KiB
// The largest file a render writes is ~3.2 MB (1 MiB of base64 whose values are all quotes);
// list does not read anything bigger, which is not one of its files.
constexpr off_t max_listed_file = 4 << 20;

// Closes an fd at scope exit.
struct fd_guard {
    int fd = -1;
    fd_guard() = default;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
    int release() {
        const int f = fd;
        fd = -1;
        return f;
    }
};

// Wipes a string that held secret bytes at scope exit.
struct wipe_guard {
    std::string& s;
    ~wipe_guard() { proto::wipe_secret_bytes(s); }
};

[[noreturn]] void refuse(proto::errc code, const std::string& message) { throw secrets_error(code, message); }

[[noreturn]] void io_failure(const std::string& what, int err) {
    refuse(proto::errc::internal, what + ": " + errno_text(err));
}

// Overwrites a regular file's bytes with zeros, in place (same inode, same length).
void zero_fill(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    static const std::array<char, 16384> zeros{};
    off_t off = 0;
    while (off < st.st_size) {
        const auto n = std::min<off_t>(st.st_size - off, static_cast<off_t>(zeros.size()));
        const ssize_t w = ::pwrite(fd, zeros.data(), static_cast<std::size_t>(n), off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            log::warning("secrets: zero-filling a file: " + errno_text(errno));
            return;
        }
        off += w;
    }
    ::fdatasync(fd);  // nothing to do on tmpfs; harmless elsewhere
}

// Zero-fills and removes `name` in `dfd` (a symlink or anything else not regular is only
// removed). True when something was there.
bool wipe_and_remove(int dfd, const std::string& name) {
    const int fd = ::openat(dfd, name.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return false;
        // A symlink (ELOOP), a directory...: not followed, not written; a non-directory goes.
        return ::unlinkat(dfd, name.c_str(), 0) == 0;
    }
    fd_guard guard(fd);
    // Out of the directory first: from here on nobody opens it by name, so no new reader
    // sees the zeros; then its pages are overwritten before the last reference goes.
    const bool removed = ::unlinkat(dfd, name.c_str(), 0) == 0;
    zero_fill(fd);
    return removed;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Names of the entries in `dfd` (without . and ..).
std::vector<std::string> entries_of(int dfd) {
    std::vector<std::string> out;
    const int copy = ::openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (copy < 0) io_failure("secrets directory: open", errno);
    DIR* d = ::fdopendir(copy);
    if (!d) {
        const int err = errno;
        ::close(copy);
        io_failure("secrets directory: read", err);
    }
    while (const dirent* e = ::readdir(d)) {
        const std::string_view name = e->d_name;
        if (name != "." && name != "..") out.emplace_back(name);
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

// "<set>.env" -> "<set>" when that is a valid set name.
std::optional<std::string> set_of(std::string_view file) {
    if (!ends_with(file, env_suffix)) return std::nullopt;
    std::string set(file.substr(0, file.size() - env_suffix.size()));
    if (!proto::is_valid_secret_set_name(set)) return std::nullopt;
    return set;
}

// A temporary file of a render that never finished (the agent died in between).
bool is_temporary(std::string_view name) {
    return name.size() > 1 && name.front() == '.' && name.find(temp_marker) != std::string_view::npos;
}

void sweep_temporaries(int dfd) {
    for (const auto& name : entries_of(dfd)) {
        if (!is_temporary(name)) continue;
        wipe_and_remove(dfd, name);
        log::warning("secrets: removed the unfinished render " + name);
    }
}

std::string random_suffix() {
    std::array<unsigned char, 8> bytes{};
    if (::getrandom(bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
        // O_EXCL makes a predictable name safe too; it only has to differ from the last one.
        static std::uint64_t counter = 0;
        const auto n = static_cast<std::uint64_t>(::getpid()) << 32 | ++counter;
        for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(n >> (8 * i));
    }
    std::string out;
    static constexpr char hex[] = "0123456789abcdef";
    for (const unsigned char b : bytes) {
        out += hex[b >> 4];
        out += hex[b & 15];
    }
    return out;
}

// Whether `fd` (a directory) is the root of a mount: statx says so on Linux >= 5.8; before
// that, a different device than its parent's.
bool is_mount_root(int fd) {
    struct statx stx {};
    if (::statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &stx) == 0 &&
        (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
        return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
    struct stat self {}, parent {};
    if (::fstat(fd, &self) != 0 || ::fstatat(fd, "..", &parent, 0) != 0) return false;
    return self.st_dev != parent.st_dev || self.st_ino == parent.st_ino;
}

// Why opening the directory with O_DIRECTORY|O_NOFOLLOW failed: a symlink gives ENOTDIR (an
// unsafe target), anything else is an I/O failure.
std::pair<proto::errc, std::string> open_failure(const std::string& dir, int err) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
        return {proto::errc::unsafe_target, "secrets directory " + dir + " is a symbolic link; refusing to use it"};
    return {proto::errc::internal, "secrets directory " + dir + ": open: " + errno_text(err)};
}

std::string octal_mode(mode_t m) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "0%o", static_cast<unsigned>(m & 07777));
    return buf;
}

std::string hex_type(unsigned long t) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%lx", t);
    return buf;
}

} // namespace

// --- the file format -----------------------------------------------------------------------------

std::string render_env_file(const proto::secrets_render_request& q) {
    // Exactly sized: a reallocation would leave a copy of the values in freed memory.
    std::size_t size = 128 + q.set.size();
    for (const auto& v : q.variables)
        size += v.name.size() + v.value.size() + 3 * static_cast<std::size_t>(std::count(v.value.begin(), v.value.end(), '\'')) + 12;
    std::string out;
    out.reserve(size);
    out += "# machine-agent secrets.render: set " + q.set + ", " + std::to_string(q.variables.size()) +
           " variables. Replaced by the next render; do not edit.\n";
    for (const auto& v : q.variables) {
        out += "export ";
        out += v.name;
        out += "='";
        std::string_view rest = v.value;
        for (auto quote = rest.find('\''); quote != std::string_view::npos; quote = rest.find('\'')) {
            out += rest.substr(0, quote);
            out += "'\\''";  // close the quotes, a quoted quote, open them again
            rest.remove_prefix(quote + 1);
        }
        out += rest;
        out += "'\n";
    }
    return out;
}

std::optional<std::size_t> count_env_variables(std::string_view s) {
    std::size_t count = 0;
    std::size_t pos = 0;
    while (pos < s.size()) {
        if (s[pos] == '\n') {
            ++pos;
            continue;
        }
        if (s[pos] == '#') {
            const auto nl = s.find('\n', pos);
            if (nl == std::string_view::npos) break;
            pos = nl + 1;
            continue;
        }
        if (s.substr(pos, 7) != "export ") return std::nullopt;
        const auto eq = s.find("='", pos + 7);
        if (eq == std::string_view::npos || !proto::is_valid_secret_name(s.substr(pos + 7, eq - pos - 7)))
            return std::nullopt;
        pos = eq + 2;
        for (;;) {
            const auto quote = s.find('\'', pos);
            if (quote == std::string_view::npos) return std::nullopt;
            pos = quote + 1;
            if (s.substr(pos, 3) == "\\''") {
                pos += 3;
                continue;
            }
            break;
        }
        if (pos >= s.size() || s[pos] != '\n') return std::nullopt;
        ++pos;
        ++count;
    }
    return count;
}

// --- the directory -------------------------------------------------------------------------------

secrets_store::secrets_store(asio::any_io_executor ex, secrets_setup setup)
    : setup_(std::move(setup)), timer_(ex) {}

secrets_store::~secrets_store() { wipe_due(true); }

// The checked directory, open, for writing a set owned by uid:gid. Mounts the tmpfs when it
// can and nothing is mounted there.
int secrets_store::open_for_render(uid_t uid, gid_t gid, const std::string& user) {
    const std::string& dir = setup_.dir;
    const std::string what = "secrets directory " + dir;
    bool created = false;
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
        if (errno != ENOENT) io_failure(what + ": stat", errno);
        if (::mkdir(dir.c_str(), 0700) != 0) io_failure(what + ": mkdir", errno);
        created = true;
        log::info("secrets: created " + dir);
    } else if (S_ISLNK(st.st_mode)) {
        refuse(proto::errc::unsafe_target, what + " is a symbolic link; refusing to use it");
    } else if (!S_ISDIR(st.st_mode)) {
        refuse(proto::errc::unsafe_target, what + " is not a directory");
    }
    // Undoes what this call did when it refuses.
    auto give_up = [&](proto::errc code, const std::string& why) {
        if (created) ::rmdir(dir.c_str());
        refuse(code, why);
    };

    bool mounted = false;
    {
        // By fd, not by name: the mount lands on the directory just checked, even if the name
        // were swapped for a symlink in between.
        const int pfd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (pfd < 0) {
            const auto [code, why] = open_failure(dir, errno);
            give_up(code, why);
        }
        fd_guard pguard(pfd);
        if (!is_mount_root(pfd) && ::geteuid() == 0) {
            const std::string owner = ",mode=0700,uid=" + std::to_string(uid) + ",gid=" + std::to_string(gid);
            std::string options = setup_.mount_options + owner;
            const std::string target = "/proc/self/fd/" + std::to_string(pfd);
            auto mount_tmpfs = [&] {
                return ::mount("tmpfs", target.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options.c_str()) == 0;
            };
            bool ok = mount_tmpfs();
            if (!ok && errno == EINVAL && options.find(",noswap") != std::string::npos) {
                // A kernel older than 6.4 (a VM made from an older image) does not know noswap:
                // mount without it rather than refuse every secret (Lima VMs have no swap).
                log::warning("secrets: this kernel's tmpfs has no noswap; mounting " + dir + " without it");
                options.erase(options.find(",noswap"), 7);
                ok = mount_tmpfs();
            }
            if (!ok) {
                const int err = errno;
                give_up(proto::errc::internal, "cannot mount a tmpfs on " + dir + ": " + errno_text(err));
            }
            mounted = true;
            log::info("secrets: mounted a tmpfs on " + dir + " (" + options + ", nosuid, nodev, noexec)");
        }
    }

    // Whatever is there now (the tmpfs just mounted, or what was mounted before) must pass.
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        const auto [code, why] = open_failure(dir, errno);
        if (mounted) ::umount2(dir.c_str(), MNT_DETACH);
        give_up(code, why);
    }
    fd_guard guard(dfd);
    struct statfs fs {};
    if (::fstatfs(dfd, &fs) != 0) io_failure(what + ": statfs", errno);
    if (static_cast<unsigned long>(fs.f_type) != TMPFS_MAGIC) {
        give_up(proto::errc::unsafe_target, what + " is not a tmpfs (filesystem type " + hex_type(static_cast<unsigned long>(fs.f_type)) + "); " +
                (::geteuid() == 0 ? "something else is mounted there"
                                  : "the agent is not root, so it cannot mount one: it must be a tmpfs already") +
                "; secrets are written to memory only");
    }
    if (::fstat(dfd, &st) != 0) io_failure(what + ": stat", errno);
    if (st.st_uid != uid || (st.st_mode & 07777) != 0700) {
        if (!created && !mounted)
            refuse(proto::errc::unsafe_target, what + " belongs to uid " + std::to_string(st.st_uid) + " with mode " +
                                              octal_mode(st.st_mode) + "; it must be " + user + "'s with mode 0700");
        if (::fchown(dfd, uid, gid) != 0 || ::fchmod(dfd, 0700) != 0) io_failure(what + ": chown/chmod", errno);
    }
    return guard.release();
}

// The directory for clear and list: -1 when there is none (so no sets). It is not mounted
// or fixed here, but it must still be a real directory on a tmpfs.
int secrets_store::open_existing() {
    const std::string what = "secrets directory " + setup_.dir;
    const int dfd = ::open(setup_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        if (errno == ENOENT) return -1;
        const auto [code, why] = open_failure(setup_.dir, errno);
        refuse(code, why);
    }
    fd_guard guard(dfd);
    struct statfs fs {};
    if (::fstatfs(dfd, &fs) != 0) io_failure(what + ": statfs", errno);
    if (static_cast<unsigned long>(fs.f_type) != TMPFS_MAGIC)
        refuse(proto::errc::unsafe_target, what + " is not a tmpfs (filesystem type " +
                                          hex_type(static_cast<unsigned long>(fs.f_type)) + ")");
    return guard.release();
}

// --- requests ------------------------------------------------------------------------------------

proto::secrets_render_result secrets_store::render(proto::secrets_render_request& q) {
    struct request_wipe {
        proto::secrets_render_request& q;
        ~request_wipe() { proto::wipe_secrets(q); }
    } wipe_request{q};

    const std::string& user_name = q.user.empty() ? setup_.default_user : q.user;
    if (user_name.empty())
        refuse(proto::errc::bad_request, "no 'user' in the request and the agent has no --user: whose are they?");
    const auto user = find_user(user_name);
    if (!user) refuse(proto::errc::no_such_user, "no user '" + user_name + "' in /etc/passwd");

    const int dfd = open_for_render(user->uid, user->gid, user->name);
    fd_guard dguard(dfd);
    sweep_temporaries(dfd);

    const std::string file = q.set + std::string(env_suffix);
    struct stat old_st {};
    const bool exists = ::fstatat(dfd, file.c_str(), &old_st, AT_SYMLINK_NOFOLLOW) == 0;
    if (!exists) {
        std::size_t sets = 0;
        for (const auto& name : entries_of(dfd))
            if (set_of(name)) ++sets;
        if (sets >= proto::max_secret_sets)
            refuse(proto::errc::busy, std::to_string(proto::max_secret_sets) +
                                          " secret sets are rendered already; clear one first");
    } else if (S_ISDIR(old_st.st_mode)) {
        refuse(proto::errc::unsafe_target, "secrets directory " + setup_.dir + ": " + file + " is a directory");
    }

    std::string content = render_env_file(q);
    wipe_guard content_wipe{content};

    const std::string temp = "." + file + std::string(temp_marker) + random_suffix();
    const int tfd = ::openat(dfd, temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (tfd < 0) io_failure("secrets: create " + setup_.dir + "/" + temp, errno);
    {
        fd_guard tguard(tfd);
        auto abandon = [&](const std::string& what) {
            const int err = errno;
            ::unlinkat(dfd, temp.c_str(), 0);
            zero_fill(tfd);  // whatever part of it was written
            io_failure("secrets: " + what + " " + setup_.dir + "/" + temp, err);
        };
        if (::fchown(tfd, user->uid, user->gid) != 0) abandon("chown");
        if (::fchmod(tfd, 0600) != 0) abandon("chmod");
        if (!write_all(tfd, content)) abandon("write");  // ENOSPC when the tmpfs is full
    }

    // The file it replaces, to zero-fill once it is out of the way.
    int old_fd = -1;
    if (exists && S_ISREG(old_st.st_mode))
        old_fd = ::openat(dfd, file.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    fd_guard old_guard(old_fd);
    if (::renameat(dfd, temp.c_str(), dfd, file.c_str()) != 0) {
        const int err = errno;
        wipe_and_remove(dfd, temp);
        io_failure("secrets: rename " + temp + " to " + file, err);
    }
    if (old_fd >= 0) schedule_wipe(old_guard.release());

    proto::secrets_render_result r;
    r.set = q.set;
    r.count = q.variables.size();
    r.path = setup_.dir + "/" + file;

    log::info("secrets: rendered set " + q.set + " (" + std::to_string(r.count) + " variables) for " + user->name);
    if (setup_.emit) {
        proto::json names = proto::json::array();
        std::size_t bytes = 0, omitted = 0;
        for (const auto& v : q.variables) {
            bytes += v.name.size() + 3;
            if (bytes > max_event_names_bytes) ++omitted;
            else names.push_back(v.name);
        }
        proto::json fields = {{"set", q.set}, {"names", std::move(names)}, {"count", r.count}, {"replaced", exists}};
        if (omitted) fields["names_omitted"] = omitted;
        try {
            setup_.emit("secrets.rendered", fields);
        } catch (const std::exception& e) {
            // The set is in place; only its record is missing.
            log::error(std::string("secrets: journal: ") + e.what());
        }
    }
    return r;
}

proto::secrets_clear_result secrets_store::clear(const std::optional<std::string>& set) {
    proto::secrets_clear_result r;
    wipe_due(true);  // replaced files waiting for their zeros: now
    const int dfd = open_existing();
    if (dfd < 0) return r;
    fd_guard dguard(dfd);
    sweep_temporaries(dfd);

    std::vector<std::string> files;
    if (set) {
        files.push_back(*set + std::string(env_suffix));
    } else {
        for (auto& name : entries_of(dfd))
            if (name.front() != '.' && ends_with(name, env_suffix)) files.push_back(std::move(name));
    }
    for (const auto& file : files) {
        if (!wipe_and_remove(dfd, file)) continue;
        // Every *.env goes; only set names can be reported (the host checks them).
        if (auto name = set_of(file); name && r.cleared.size() < proto::max_secret_sets)
            r.cleared.push_back(std::move(*name));
    }
    if (r.cleared.empty()) return r;

    std::string joined;
    for (const auto& s : r.cleared) joined += (joined.empty() ? "" : ", ") + s;
    log::info("secrets: cleared " + joined);
    if (setup_.emit) {
        try {
            setup_.emit("secrets.cleared", proto::json{{"sets", r.cleared}});
        } catch (const std::exception& e) {
            log::error(std::string("secrets: journal: ") + e.what());
        }
    }
    return r;
}

proto::secrets_list_result secrets_store::list() {
    proto::secrets_list_result r;
    const int dfd = open_existing();
    if (dfd < 0) return r;
    fd_guard dguard(dfd);
    for (const auto& name : entries_of(dfd)) {
        auto set = set_of(name);
        if (!set || r.sets.size() >= proto::max_secret_sets) continue;
        const int fd = ::openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) continue;  // a symlink, or gone since
        fd_guard guard(fd);
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        // Counted from the file itself: the agent keeps nothing of a set in memory.
        std::string text;
        wipe_guard text_wipe{text};
        if (st.st_size <= max_listed_file) {
            // Read straight into the string: no other buffer holds the values.
            text.resize(static_cast<std::size_t>(st.st_size));
            std::size_t got = 0;
            while (got < text.size()) {
                const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                got += static_cast<std::size_t>(n);
            }
            text.resize(got);
        }
        proto::secret_set_info info;
        info.set = std::move(*set);
        info.count = std::min<std::size_t>(count_env_variables(text).value_or(0), proto::max_secret_variables);
        info.bytes = static_cast<std::uint64_t>(st.st_size);
        const auto since_epoch = std::chrono::seconds(st.st_mtim.tv_sec) + std::chrono::nanoseconds(st.st_mtim.tv_nsec);
        info.mtime = events::format_timestamp(std::chrono::system_clock::time_point(
            std::chrono::duration_cast<std::chrono::system_clock::duration>(since_epoch)));
        r.sets.push_back(std::move(info));
    }
    return r;
}

// --- zero-filling replaced files -----------------------------------------------------------------

void secrets_store::schedule_wipe(int fd) {
    if (pending_.size() >= max_pending_wipes) {
        zero_fill(pending_.front().fd);
        ::close(pending_.front().fd);
        pending_.erase(pending_.begin());
    }
    pending_.push_back({fd, clock::now() + setup_.wipe_delay});
    arm_timer();
}

void secrets_store::arm_timer() {
    if (timer_armed_ || pending_.empty()) return;
    timer_armed_ = true;
    timer_.expires_at(pending_.front().due);
    // The store lives as long as the server, which outlives the loop's run: `this` stays valid
    // for every handler that can still be called.
    timer_.async_wait([this](const asio::error_code& ec) {
        timer_armed_ = false;
        if (ec) return;
        wipe_due(false);
        arm_timer();
    });
}

void secrets_store::wipe_due(bool all) {
    const auto now = clock::now();
    // Oldest first: `due` only grows along the vector.
    auto it = pending_.begin();
    for (; it != pending_.end() && (all || it->due <= now); ++it) {
        zero_fill(it->fd);
        ::close(it->fd);
    }
    pending_.erase(pending_.begin(), it);
}

} // namespace machine::agent
