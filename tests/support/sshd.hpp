// A real OpenSSH server for tests: /usr/sbin/sshd on 127.0.0.1, a free port, throwaway keys.
//
//     machine::test::sshd_server sshd;                 // started, accepting connections
//     auto s = co_await ssh::session::connect(sshd.endpoint(), sshd.pin("vm1", true));
//     sshd.stop();                                     // kills the server and every connection
//     sshd.start();                                    // same port, same host key
//     sshd.restart_with_new_host_key();                // same port, a different host key
//
// Everything lives in a temporary directory removed by the destructor: sshd_config, an ed25519
// host key, an authorized user key (identity_file()), authorized_keys and the server's log
// (-e: its stderr, LogLevel VERBOSE by default, read with log()). The server runs as the current
// user and lets options::user (default: the current user; root may log in too, PermitRootLogin
// prohibit-password) in with that key, with UsePAM no,
// StrictModes no, TCP forwarding allowed (stream-local forwarding refused), internal-sftp, and MaxStartups high
// enough for many concurrent handshakes. It needs /usr/sbin/sshd and ssh-keygen; it creates
// /run/sshd (sshd's privilege-separation directory) when it is missing.
//
// Not thread-safe; meant for one test at a time. Synchronous: it does not use an io_context.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "machine/ssh.hpp"

namespace machine::test {

class sshd_server {
public:
    struct options {
        /// Lines appended to sshd_config, e.g. "ClientAliveInterval 1".
        std::vector<std::string> extra_config;
        /// Start in the constructor (otherwise call start()).
        bool start = true;
        /// sshd's LogLevel. DEBUG1 and above also make the session processes print debug lines
        /// on the channel's stderr, so only tests that need them should ask.
        std::string log_level = "VERBOSE";
        /// The account to log in as; empty: the current user. Another account needs a root
        /// test process (the server then reads authorized_keys as that user, so the directory
        /// is made world-readable). Note that OpenSSH refuses "signal" channel requests in root
        /// sessions ("session signalling requires privilege separation"): tests of remote
        /// signals need an unprivileged account, see unprivileged_user().
        std::string user;
        /// UsePAM yes instead of no. Without PAM, sshd refuses accounts whose password is locked
        /// ("!" in /etc/shadow), which is how most service and cloud accounts are set up.
        bool use_pam = false;
    };

    sshd_server();
    explicit sshd_server(options opt);
    ~sshd_server();  ///< stops the server and removes the directory
    sshd_server(const sshd_server&) = delete;
    sshd_server& operator=(const sshd_server&) = delete;

    /// Starts sshd (on the same port as before) and waits until it listens. Throws
    /// std::runtime_error with the server's log when it does not come up.
    void start();
    /// Kills sshd and every process it started (connections, their shells and commands) with
    /// SIGKILL, so open connections see their TCP connection end. Idempotent.
    void stop();
    /// stop() + start().
    void restart();
    /// Replaces the host key with a freshly generated one; effective at the next start().
    void regenerate_host_key();
    /// stop(), regenerate_host_key(), start().
    void restart_with_new_host_key();
    bool running() const { return pid_ > 0; }

    int port() const { return port_; }
    std::string user() const { return user_; }
    const std::filesystem::path& dir() const { return dir_; }
    /// The authorized private key.
    std::filesystem::path identity_file() const { return dir_ / "user_key"; }
    std::filesystem::path host_public_key() const { return dir_ / "host_key.pub"; }
    /// The host key's fingerprint as `ssh-keygen -l` prints it ("SHA256:...").
    std::string host_fingerprint() const;
    /// The endpoint to connect to as user() with identity_file().
    ssh::endpoint endpoint() const;
    /// A pin file (inside dir()) for `vm_name`.
    ssh::host_key_pin pin(const std::string& vm_name, bool record_if_absent) const;

    /// Generates another key pair in dir() named `name`, NOT authorized; returns the private key.
    std::filesystem::path make_key(const std::string& name) const;
    /// Appends `public_key`'s line to authorized_keys.
    void authorize(const std::filesystem::path& public_key) const;

    /// Everything sshd logged so far (all starts).
    std::string log() const;

private:
    void write_config() const;

    options opt_;
    std::filesystem::path dir_;
    std::string user_;
    int port_ = 0;
    pid_t pid_ = -1;
    bool started_once_ = false;  // the port is fixed from the first successful start on
};

/// Runs argv (argv[0] looked up in PATH) synchronously with only fds 0-2 inherited; returns its
/// stdout. Throws std::runtime_error (with stderr) when it fails to start or exits non-zero.
std::string run_sync(const std::vector<std::string>& argv);

/// An account tests may log in as that is not root: the current user when not root, else the
/// first account with uid >= 1000 and a real shell; nullopt when there is none.
std::optional<std::string> unprivileged_user();

/// Pids of all live descendants of `pid` (from /proc).
std::vector<pid_t> descendants(pid_t pid);

} // namespace machine::test
