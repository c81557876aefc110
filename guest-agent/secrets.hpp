// Secrets in the VM (PROTOCOL.md §4 `secrets.*`): the agent writes each set the host renders
// into a tmpfs of its own, as one bash-sourceable file per set, and nowhere else.
//
// The directory (default /run/machine-secrets) is checked before every write: not a symlink,
// a tmpfs (statfs), owned by the VM user with mode 0700. As root the agent mounts the tmpfs
// itself when nothing is mounted there (nosuid, nodev, noexec, 16 MiB); otherwise it must
// already be one. A file is written under a temporary name (O_EXCL|O_NOFOLLOW), then renamed
// over the old one, so a reader sees the old set or the new one, never a part. The replaced
// file's bytes are overwritten with zeros shortly after the rename; `clear` zero-fills at once.
//
// Values never reach the journal, the log or an error message; buffers that held them are
// wiped. Every file operation is relative to the checked directory's fd, never following a
// symlink. Single-threaded, like the rest of the agent.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/steady_timer.hpp>

#include "machine/protocol.hpp"

namespace machine::agent {

struct secrets_setup {
    std::string dir;           ///< /run/machine-secrets, or --secrets-dir
    std::string default_user;  ///< the agent's --user: the owner when a request names none
    /// Appends an event to the journal. May throw on I/O failure (logged, not the client's problem).
    std::function<void(std::string_view event, const protocol::json& fields)> emit;
    /// Between replacing a set and zero-filling the file it replaced: a reader that opened the
    /// old file just before the rename still reads it whole.
    std::chrono::milliseconds wipe_delay{500};
    /// Before mode, uid and gid. `noswap` (Linux 6.4+): the values never reach a swap device.
    std::string mount_options = "size=16m,noswap";
};

/// A refusal for the client: its code and a one-line message, which never holds a value.
class secrets_error : public std::runtime_error {
public:
    secrets_error(protocol::errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
    protocol::errc code() const noexcept { return code_; }

private:
    protocol::errc code_;
};

class secrets_store {
public:
    secrets_store(asio::any_io_executor ex, secrets_setup setup);
    /// Zero-fills whatever replaced file is still waiting for it.
    ~secrets_store();
    secrets_store(const secrets_store&) = delete;
    secrets_store& operator=(const secrets_store&) = delete;

    /// Writes `<dir>/<set>.env` for a parsed (valid) request. Wipes the request's values before
    /// returning, whatever happens. Throws secrets_error; nothing is written then.
    protocol::secrets_render_result render(protocol::secrets_render_request& request);
    /// Zero-fills and removes one set, or every `*.env`. A set that is not there is no error.
    protocol::secrets_clear_result clear(const std::optional<std::string>& set);
    /// The sets rendered now: names, counts, sizes, times.
    protocol::secrets_list_result list();

    const std::string& dir() const noexcept { return setup_.dir; }

private:
    struct pending_wipe {
        int fd;
        std::chrono::steady_clock::time_point due;
    };

    int open_for_render(uid_t uid, gid_t gid, const std::string& user);
    int open_existing();
    void schedule_wipe(int fd);
    void arm_timer();
    void wipe_due(bool all);

    secrets_setup setup_;
    asio::steady_timer timer_;
    bool timer_armed_ = false;
    std::vector<pending_wipe> pending_;
};

/// The file for `variables`: a comment line, then `export NAME='value'` per variable with each
/// `'` written as `'\''`, so that bash's `source` gives back every byte.
std::string render_env_file(const protocol::secrets_render_request& request);
/// Variables in a file render_env_file() wrote; nullopt when it is not in that form.
std::optional<std::size_t> count_env_variables(std::string_view text);

} // namespace machine::agent
