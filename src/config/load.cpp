// Finding and reading the configuration files, and what the host has.
#include "machine/config.hpp"

#include "files.hpp"

#include "machine/paths.hpp"
#include "machine/text.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace machine::config {

namespace fs = std::filesystem;

namespace {

config_error cannot_read(const fs::path& path, int err) {
    return config_error(
        text::sanitize_for_terminal("cannot read " + path.string() + ": " + std::strerror(err)));
}

} // namespace

// Read with open/read rather than a stream so that "missing" (fine) and every other failure (an
// error) can be told apart by errno.
std::optional<std::string> detail::read_if_exists(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return std::nullopt;
        throw cannot_read(path, errno);
    }
    std::string content;
    char buffer[16384];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n > 0) {
            content.append(buffer, static_cast<std::size_t>(n));
        } else if (n == 0) {
            break;
        } else if (errno != EINTR) {
            const int err = errno;  // EISDIR for a directory named projects.toml
            ::close(fd);
            throw cannot_read(path, err);
        }
    }
    ::close(fd);
    return content;
}

namespace {

// Absolute, without "." or ".." and without a trailing separator, so paths compare equal.
// An empty path is the current directory.
fs::path normal_dir(const fs::path& dir) {
    fs::path p = (dir.empty() ? fs::current_path() : fs::absolute(dir)).lexically_normal();
    if (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
    return p;
}

} // namespace

host_resources host_resources::detect() {
    host_resources host;
    if (const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN); cpus > 0) host.cpus = static_cast<int>(cpus);
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page_size = ::sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) host.memory_bytes = static_cast<long long>(pages) * page_size;
    return host;
}

std::optional<fs::path> find_local_file(const fs::path& start, const std::optional<fs::path>& stop) {
    const std::optional<fs::path> last = stop ? std::optional(normal_dir(*stop)) : std::nullopt;
    std::error_code ec;  // an unreadable directory on the way is just not a match
    for (fs::path dir = normal_dir(start);; dir = dir.parent_path()) {
        const fs::path candidate = dir / ".machine.toml";
        if (fs::exists(candidate, ec) && !fs::is_directory(candidate, ec)) return candidate;
        if (dir == last || dir == dir.parent_path()) return std::nullopt;
    }
}

config load_projects_file(const fs::path& file, const host_resources& host) {
    if (const auto text = detail::read_if_exists(file)) return parse_projects(*text, file, host);
    config result;
    result.defaults.host = host;
    result.projects_file = file;
    result.projects_file_exists = false;
    return result;
}

config load(const load_options& options) {
    config result = load_projects_file(options.config_dir / "projects.toml",
                                       options.host.value_or(host_resources::detect()));
    if (const auto local = find_local_file(options.working_dir, options.search_stop)) {
        // Gone between finding and reading it: as if it had never been there.
        if (const auto text = detail::read_if_exists(*local)) overlay_local(result, *text, *local);
    }
    return result;
}

config load_default() {
    return load({.config_dir = paths::config_dir(), .working_dir = fs::current_path()});
}

} // namespace machine::config
