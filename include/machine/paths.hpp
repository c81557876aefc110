// Where machine keeps its files on the host (XDG base directories, with overrides).
#pragma once

#include <filesystem>
#include <string>

namespace machine::paths {

// $MACHINE_CONFIG_DIR, else $XDG_CONFIG_HOME/machine, else ~/.config/machine.
std::filesystem::path config_dir();
// $MACHINE_STATE_DIR, else $XDG_STATE_HOME/machine, else ~/.local/state/machine.
std::filesystem::path state_dir();
// $XDG_CACHE_HOME/machine, else ~/.cache/machine.
std::filesystem::path cache_dir();
// $HOME (or the passwd entry when unset).
std::filesystem::path home_dir();

// Value of an environment variable, or "" when unset.
std::string env(const char* name);

// Writes `content` to `path` atomically (temporary file in the same directory, fsync,
// rename), creating parent directories. `mode` applies to the new file.
void write_file_atomic(const std::filesystem::path& path, std::string_view content,
                       unsigned mode = 0644);

// Writes `content` to a new file `path`: staged under another name, then linked into place,
// so no half-written file ever appears and link() refuses to replace one. False, with nothing
// written, when `path` exists already.
bool create_file_exclusive(const std::filesystem::path& path, std::string_view content, unsigned mode = 0644);

std::string read_file(const std::filesystem::path& path);

// True when something listens on the Unix socket `socket` (a connect() succeeds, or would once
// the listener's backlog drains).
bool socket_accepts(const std::filesystem::path& socket);

// Makes `socket` ready for a helper to bind (the agent filter, the egress proxy): its directory
// must belong to this user and be private (the socket exists with the umask's mode between
// bind() and chmod(), and only the directory keeps others out meanwhile); a stale socket there
// (nobody accepts on it) is removed, and then true is returned; a live one belongs to another
// process, and anything else at the path is an error. `who` starts each message.
bool prepare_socket_path(const std::filesystem::path& socket, std::string_view who);

// The socket file a listener of this process has just bound at `socket` (after
// prepare_socket_path): made private (0600) at once, and removed when this goes out of scope,
// unless another file has taken the path since (an old process never unlinks a newer one's).
class owned_socket_file {
public:
    owned_socket_file(std::filesystem::path socket, std::string_view who);
    ~owned_socket_file();
    owned_socket_file(const owned_socket_file&) = delete;
    owned_socket_file& operator=(const owned_socket_file&) = delete;

private:
    std::filesystem::path path_;
    unsigned long long device_ = 0, inode_ = 0;
};

} // namespace machine::paths
