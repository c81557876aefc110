#include "steps_state.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "files.hpp"
#include "log.hpp"
#include "machine/protocol.hpp"

namespace machine::agent {

namespace {

using json = machine::protocol::json;

std::string parent_dir(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

// Closes an fd at scope exit unless released.
struct fd_guard {
    int fd;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

} // namespace

void steps_state::load() {
    steps_.clear();
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            log::warning("steps state " + path_ + ": " + errno_text(errno) + "; treating every step as new");
    } else {
        fd_guard guard{fd};
        std::string text;
        char buf[16384];
        bool read_failed = false;
        for (;;) {
            const ssize_t n = ::read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                log::warning("steps state " + path_ + ": " + errno_text(errno) + "; treating every step as new");
                read_failed = true;
                break;
            }
            if (n == 0) break;
            text.append(buf, static_cast<std::size_t>(n));
        }
        if (!read_failed) {
            const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
            if (j.is_discarded() || !j.is_object()) {
                log::warning("steps state " + path_ + " is corrupt (not a JSON object); treating every step as new");
            } else {
                std::size_t bad = 0;
                for (const auto& [name, v] : j.items()) {
                    const auto hash = v.is_object() ? v.find("hash") : v.end();
                    if (hash == v.end() || !hash->is_string()) {
                        ++bad;
                        continue;
                    }
                    const auto at = v.find("at");
                    steps_[name] = record{hash->get<std::string>(),
                                          at != v.end() && at->is_string() ? at->get<std::string>() : std::string()};
                }
                if (bad)
                    log::warning("steps state " + path_ + ": ignored " + std::to_string(bad) + " malformed entries");
            }
        }
    }
    for (const auto& name : unsaved_removals_) {
        const auto it = steps_.find(name);
        if (it != steps_.end()) steps_.erase(it);
    }
}

const steps_state::record* steps_state::find(std::string_view name) const {
    const auto it = steps_.find(name);
    return it == steps_.end() ? nullptr : &it->second;
}

std::optional<std::string> steps_state::record_success(const std::string& name, std::string hash, std::string at) {
    steps_[name] = record{std::move(hash), std::move(at)};
    if (auto err = save()) {
        steps_.erase(name);
        return err;
    }
    return std::nullopt;
}

std::optional<std::string> steps_state::forget(const std::string& name) {
    steps_.erase(name);
    if (auto err = save()) {
        unsaved_removals_.insert(name);
        return err;
    }
    return std::nullopt;
}

std::optional<std::string> steps_state::save() {
    json j = json::object();
    for (const auto& [name, r] : steps_) j[name] = json{{"hash", r.hash}, {"at", r.at}};
    const std::string text = j.dump(1) + "\n";

    const std::string dir = parent_dir(path_);
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);  // the agent's umask makes it 0700
    const std::string tmp = path_ + ".tmp";
    auto failed = [&](const std::string& what) -> std::optional<std::string> {
        const int err = errno;
        ::unlink(tmp.c_str());
        log::warning("steps state " + path_ + ": " + what + ": " + errno_text(err));
        return errno_text(err);
    };

    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return failed("create " + tmp);
    {
        fd_guard guard{fd};
        if (!write_all(fd, text)) return failed("write " + tmp);
        // tmpfs and ext4 with delayed allocation may only report ENOSPC here.
        if (::fsync(fd) != 0) return failed("fsync " + tmp);
    }
    if (::rename(tmp.c_str(), path_.c_str()) != 0) return failed("rename " + tmp);
    // The rename itself must survive a power cut too.
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
    unsaved_removals_.clear();  // steps_ no longer holds them, and it is on disk now
    return std::nullopt;
}

} // namespace machine::agent
