// Writing a project table into projects.toml (`machine create`): the table serialized by toml++,
// added after every byte the file already holds, and checked to load back before it is written.
#include "machine/config.hpp"

#include "files.hpp"

#include "machine/paths.hpp"
#include "machine/text.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include <toml++/toml.h>

namespace machine::config {

namespace fs = std::filesystem;

namespace {
#include "projects_example.inc"

// No literal, multi-line or raw-Unicode strings: every value is one double-quoted line of ASCII,
// its quotes, backslashes, newlines and other characters escaped by the library.
constexpr auto plain = toml::format_flags::none;

template <typename Node>
std::string line(std::string_view key, const Node& value) {
    std::ostringstream out;
    out << key << " = " << toml::toml_formatter(value, plain) << "\n";
    return out.str();
}

toml::array string_array(const std::vector<std::string>& items) {
    toml::array a;
    for (const auto& s : items) a.push_back(s);
    return a;
}

// The new file's text read back by the loader: `draft`'s project with the draft's values, or an
// error that says so (nothing is written then).
void require_loads_back(const std::string& text, const fs::path& file, const project_draft& d) {
    const config c = parse_projects(text, file);
    const auto it = c.projects.find(d.name);
    const bool same = it != c.projects.end() && it->second.repos == d.repos &&
                      (!d.profiles || it->second.profiles == *d.profiles) &&
                      (!d.shell || it->second.shell == *d.shell) && (!d.cpus || it->second.cpus == *d.cpus) &&
                      (!d.memory || it->second.memory == *d.memory) && (!d.disk || it->second.disk == *d.disk);
    if (!same)
        throw error(text::sanitize_for_terminal("internal error: the table for [" + d.name + "] does not read back from " +
                                                file.string() + " as written; nothing was written"));
}

// A symlinked projects.toml (kept with one's dotfiles) stays a link: its target is what changes.
fs::path written_path(const fs::path& file) {
    std::error_code ec;
    if (!fs::is_symlink(file, ec)) return file;
    const fs::path target = fs::read_symlink(file, ec);
    if (ec) throw error("cannot read the link " + file.string() + ": " + ec.message());
    return target.is_absolute() ? target : file.parent_path() / target;
}

// An exclusive flock on the projects file as it is now, so two `machine create` at once cannot
// both read the old text and have the second rename drop the first one's table. The file is
// replaced by rename, so the lock is on an inode: once it is held, the path must still name
// that inode, else the lock is taken again on the file that replaced it. Empty when the file
// does not exist (creating it is exclusive on its own).
class file_lock {
public:
    explicit file_lock(const fs::path& file) {
        for (;;) {
            fd_ = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd_ < 0) {
                if (errno == ENOENT) return;
                throw error("cannot open " + file.string() + ": " + std::strerror(errno));
            }
            while (::flock(fd_, LOCK_EX) != 0)
                if (errno != EINTR) throw error("cannot lock " + file.string() + ": " + std::strerror(errno));
            struct stat held {}, now {};
            if (::fstat(fd_, &held) == 0 && ::stat(file.c_str(), &now) == 0 && held.st_ino == now.st_ino &&
                held.st_dev == now.st_dev)
                return;
            ::close(fd_);  // replaced (or removed) while we waited: lock what is there now
        }
    }
    ~file_lock() {
        if (fd_ >= 0) ::close(fd_);
    }
    file_lock(const file_lock&) = delete;
    file_lock& operator=(const file_lock&) = delete;

private:
    int fd_ = -1;
};

} // namespace

std::string_view projects_example() { return kProjectsExample; }

std::string project_table_text(const project_draft& d) {
    text::require_valid_project_name(d.name);  // a bare TOML key, then: no quoting needed
    std::string out = "[" + d.name + "]\n";
    out += line("repos", string_array(d.repos));
    if (d.profiles) out += line("profiles", string_array(*d.profiles));
    if (d.shell) out += line("shell", toml::value<std::string>(*d.shell));
    if (d.cpus) out += line("cpus", toml::value<std::int64_t>(*d.cpus));
    if (d.memory) out += line("memory", toml::value<std::string>(*d.memory));
    if (d.disk) out += line("disk", toml::value<std::string>(*d.disk));
    return out;
}

added_project add_project(const fs::path& file_given, const project_draft& draft) {
    const fs::path file = written_path(file_given);
    added_project added{file, false, project_table_text(draft)};
    // Twice at most: a file that appears between our look and our create is then added to.
    for (int attempt = 0; attempt < 2; ++attempt) {
        const file_lock lock(file);
        const auto existing = detail::read_if_exists(file);
        if (!existing) {
            const std::string text = std::string(projects_example()) + "\n" + added.table;
            require_loads_back(text, file, draft);
            if (paths::create_file_exclusive(file, text, 0644)) {
                added.created = true;
                return added;
            }
            continue;
        }
        // A file that does not load is the user's to fix first: its own error, nothing written.
        if (parse_projects(*existing, file).projects.count(draft.name))
            throw config_error(text::sanitize_for_terminal(file.string() + ": there is a project [" + draft.name +
                                                           "] already; edit it there, or choose another name"));
        std::string text = *existing;
        if (!text.empty() && text.back() != '\n') text += '\n';
        if (!text.empty()) text += '\n';
        text += added.table;
        require_loads_back(text, file, draft);
        std::error_code ec;
        const auto mode = static_cast<unsigned>(fs::status(file, ec).permissions() & fs::perms::mask);
        paths::write_file_atomic(file, text, ec ? 0644 : mode);
        return added;
    }
    throw error("cannot write " + file.string() + ": it keeps appearing and disappearing");
}

} // namespace machine::config
