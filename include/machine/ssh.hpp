// SSH to the VMs with libssh in non-blocking mode, on the same single-threaded io_context as
// everything else.
//
// Model: an Asio tcp::socket connects and is what the loop waits on; libssh works on a
// duplicate of its descriptor (libssh 0.10.6 closes the descriptor it was given on a socket
// error and in ssh_free, so it must not be the one Asio owns). Handshake and authentication
// are driven by retrying libssh calls while waiting on the socket in the direction libssh asks
// for. After that, ONE pump coroutine per session reads the socket, lets libssh process the
// packets and moves every channel's data into per-channel buffers, bounded per stream (see
// channel_options and channel); channel operations wait on those buffers (a broadcast from
// the pump), never on the socket. The session owns its pump (as Boost.Redis's connection owns
// its async_run): close() ends it, closed() waits until it has finished, and when it fails the
// failure is what every pending and later operation reports. Everything here must run on the
// io_context's single thread.
//
// Host keys are pinned per VM: no known_hosts, no ~/.ssh, no agent. The first connection after
// `machine create` records the key's SHA256 fingerprint; every later connection must match.
//
// Cancellation: every awaitable below can be cancelled through Asio's per-operation
// cancellation (so it can lose a race: machine::first_of(op, sleep_for(d))); connect() and run()
// also take a timeout and a cancel_signal.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <asio/awaitable.hpp>

#include "machine/error.hpp"

namespace machine {
class cancel_signal;
}

namespace machine::ssh {

/// Where to connect and as whom.
struct endpoint {
    std::string host = "127.0.0.1";       ///< IP address or host name
    int port = 22;                        ///< TCP port
    std::string user;                     ///< remote user name (required)
    std::filesystem::path identity_file;  ///< unencrypted private key (required)
};

/// Reads Lima's `<instance>/ssh.config` (Hostname, Port, User, the first IdentityFile; values may
/// be quoted) from the first `Host` block. Throws machine::error naming the file when it cannot be
/// read or a field is missing or invalid.
endpoint endpoint_from_lima_ssh_config(const std::filesystem::path& ssh_config);

/// Host-key pinning for one VM. The pin file holds one line, `SHA256:<base64> <key-type>`.
struct host_key_pin {
    std::filesystem::path file;    ///< where the pin lives (under the VM's state directory)
    std::string vm_name;           ///< named in error messages
    bool record_if_absent = false; ///< true only for the first connection after creating the VM
    /// When set: once the key is verified (or first recorded), the same key as an OpenSSH
    /// known_hosts line for `known_hosts_alias`, for `ssh -o UserKnownHostsFile=… -o HostKeyAlias=…`
    /// (interactive sessions go through OpenSSH, pinned to the same key).
    std::filesystem::path known_hosts;
    std::string known_hosts_alias;
};

/// The server's host key differs from the pinned one. Nothing is sent to such a server after the
/// key exchange: no authentication attempt, no disconnect message.
class host_key_mismatch : public error {
public:
    host_key_mismatch(const std::string& vm_name, const std::string& expected,
                      const std::string& actual, const std::filesystem::path& pin_file);
    const std::string& expected() const noexcept { return expected_; }  ///< pinned fingerprint
    const std::string& actual() const noexcept { return actual_; }      ///< the server's
private:
    std::string expected_, actual_;
};

/// The server refused our key (or the identity file cannot be loaded).
class auth_error : public error {
public:
    using error::error;
};

/// connect() did not finish within its timeout. The message says which phase was stuck.
class timeout_error : public error {
public:
    using error::error;
};

/// The session is gone (peer closed or reset the connection, or close() was called). Every
/// pending and later operation on the session and its channels fails with it, promptly.
class connection_lost : public error {
public:
    using error::error;
};

/// Fingerprint of a public key blob the way OpenSSH prints it: "SHA256:" + base64 of the SHA-256
/// digest without '=' padding. Exposed for tests and diagnostics.
std::string fingerprint_sha256(const std::string& sha256_digest);

/// Result of session::run(), shaped like proc::result.
struct exec_result {
    int exit_code = -1;       ///< when the command exited normally
    std::string exit_signal;  ///< signal name without "SIG" ("TERM") when it was killed
    std::string out;          ///< stdout (capped at run_options::max_output)
    std::string err;          ///< stderr (capped likewise)
    bool timed_out = false;   ///< run_options::timeout expired (the command was signalled)
    bool cancelled = false;   ///< the cancel_signal fired (the command was signalled)

    /// Exited normally with status 0.
    bool ok() const { return exit_signal.empty() && exit_code == 0; }
    /// Shell convention: the exit code, or 128 + signal number; -1 when unknown.
    int status() const;
};

/// Options for session::run(). Stopping a command uses SSH "signal" requests, which OpenSSH
/// delivers to the command's process group - except in root sessions, where it refuses them
/// ("session signalling requires privilege separation"): there run() gives up after the
/// escalation, closes the channel and returns, and the command may keep running.
struct run_options {
    std::optional<std::chrono::milliseconds> timeout;  ///< then signal the remote command
    cancel_signal* cancel = nullptr;        ///< graceful: INT, TERM, KILL; forceful: KILL at once
    std::chrono::milliseconds grace{3000};  ///< between the signals of the escalation
    std::string stdin_data;                 ///< written to the command, then EOF
    std::size_t max_output = 16 << 20;      ///< per stream; the rest is discarded
};

/// Per-channel buffering (session::exec).
struct channel_options {
    /// Per stream: once this many received bytes wait unread, the session stops taking that
    /// stream from the server (so it stops granting window and a well-behaved server stops
    /// sending) until read() takes them.
    std::size_t high_water = 1 << 20;
    /// Nobody will read stderr: drain it and drop it (counted in buffer_state::err_discarded).
    bool discard_stderr = false;
};

namespace detail {
struct session_core;
struct channel_core;
} // namespace detail

class channel;

/// One authenticated SSH connection. Created only by connect(); shared by its channels (a
/// channel keeps its session open). Destroying the last reference closes the connection.
class session : public std::enable_shared_from_this<session> {
public:
    /// Connects, checks the host key against `pin` (recording it when allowed and absent) and
    /// authenticates with `ep.identity_file`. Throws timeout_error after `timeout`,
    /// interrupted_error when `cancel` fires, host_key_mismatch, auth_error, or machine::error
    /// (connection refused, protocol failure...).
    static asio::awaitable<std::shared_ptr<session>> connect(
        endpoint ep, host_key_pin pin, cancel_signal* cancel = nullptr,
        std::chrono::milliseconds timeout = std::chrono::seconds(15));

    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    /// Opens a "session" channel and starts `command` in the remote user's shell. Read both
    /// of its streams (concurrently, as run() does), or open it with discard_stderr: see
    /// channel.
    asio::awaitable<std::shared_ptr<channel>> exec(std::string command);
    asio::awaitable<std::shared_ptr<channel>> exec(std::string command, channel_options options);

    /// Runs `command` to completion, collecting its output and exit status (like proc::run).
    /// A timeout or cancellation signals the remote command and ends the run promptly; it is
    /// reported in the result, not thrown. Throws connection_lost when the connection dies.
    asio::awaitable<exec_result> run(std::string command, run_options options);
    /// run() with default options. (An overload, not a `= {}` default argument: g++ 12 corrupts
    /// a brace-initialized aggregate default argument of a coroutine called inside co_await.)
    asio::awaitable<exec_result> run(std::string command);

    /// Closes the connection (sends SSH_MSG_DISCONNECT when it is still healthy) and stops the
    /// pump. Pending operations on the session and its channels fail with connection_lost.
    /// Idempotent. The pump finishes at the loop's next turn: co_await closed() to know it has.
    void close();
    /// Waits until the connection is gone - close() was called or it was lost - and the pump
    /// has finished: from then on nothing of this session runs on the loop. Throws
    /// operation_aborted when cancelled.
    asio::awaitable<void> closed();
    /// True while the pump runs: from connect() until it has finished after the connection
    /// was closed or lost.
    bool pump_running() const;
    /// False once the connection was closed or found dead.
    bool alive() const;
    /// The server's host key fingerprint, "SHA256:...".
    std::string fingerprint() const;
    /// The server's host key type, e.g. "ssh-ed25519".
    std::string host_key_type() const;
    /// "VM 'name' (user@host:port)" (just "user@host:port" without a VM name), for messages.
    std::string description() const;
    /// The VM's name (from its host_key_pin), for messages.
    std::string vm_name() const;
    /// How often the pump woke up so far (tests use it to prove the pump does not spin).
    std::uint64_t pump_wakeups() const;

    explicit session(std::shared_ptr<detail::session_core> core);  ///< internal: use connect()

private:
    asio::awaitable<std::shared_ptr<channel>> open_channel(std::string command, channel_options options);
    std::shared_ptr<detail::session_core> core_;
};

/// A channel of a session: an exec'd command. The session's pump
/// buffers each stream's data as it arrives, up to channel_options::high_water bytes per
/// stream; a stream that reaches the mark is left with the server (flow control) until read()
/// takes it. The two streams share one SSH window, though: once a stream nobody reads also has
/// that much waiting inside libssh, the channel stalls - the other stream is not read either -
/// so, as with a pipe, a caller that reads one stream to its end before touching the other
/// can wait forever on a command that fills both. Read both concurrently (as session::run()
/// does) or open the channel with discard_stderr. A server that keeps sending while 8 MiB of a
/// stream wait unread (it ignores its window) gets the channel dropped: reads, writes and
/// exit_status() then throw machine::error naming the VM, after the data already buffered.
/// Reading stdout never blocks another channel.
class channel {
public:
    ~channel();  ///< closes the channel
    channel(const channel&) = delete;
    channel& operator=(const channel&) = delete;

    /// Next chunk of stdout (everything buffered so far); nullopt at end of stream or after
    /// close(). Throws connection_lost once the buffered data is consumed and the session died.
    asio::awaitable<std::optional<std::string>> read();
    /// Same for stderr (extended data). On a channel that discards stderr it returns nullopt
    /// once the stream ends.
    asio::awaitable<std::optional<std::string>> read_stderr();
    /// Writes all of `data`, waiting for the remote window as needed (libssh may accept less
    /// than asked, even nothing). Completes when libssh has queued every byte for sending.
    asio::awaitable<void> write(std::string data);
    /// write() for secret bytes: writes `data` straight from the caller's buffer (no copy on
    /// our side), then overwrites all of the string's memory with zeros and empties it - also
    /// when the write fails or is cancelled. `data` must stay alive until this completes:
    /// co_await it at once (`co_await ch->write_secret(line);`). libssh copies each chunk into
    /// its packet buffer, which it encrypts in place before sending.
    asio::awaitable<void> write_secret(std::string& data);
    /// Tells the remote side no more data will come (the command sees EOF on stdin).
    asio::awaitable<void> send_eof();
    /// Waits for the command's exit: its status, or 128 + signal number when it was killed.
    /// Throws machine::error when the channel closes without an exit status.
    asio::awaitable<int> exit_status();
    /// The signal name ("TERM") when the command was killed by one; empty otherwise.
    std::string exit_signal() const;
    /// Sends a signal ("INT", "TERM", "KILL"...) to the remote command's process group (OpenSSH
    /// ignores it in root sessions, see run_options).
    void send_signal(const std::string& name);
    /// Closes the channel; pending reads return nullopt. Idempotent.
    void close();
    /// True after the server closed the channel and all its data was read.
    bool closed_by_remote() const;

    /// What is buffered for this channel right now (tests and diagnostics).
    struct buffer_state {
        std::size_t out = 0, err = 0;      ///< received, waiting for read() / read_stderr()
        /// Left inside libssh by the pump's last round (a stream at its mark, or stalled).
        std::size_t out_in_libssh = 0, err_in_libssh = 0;
        std::uint64_t err_discarded = 0;   ///< stderr bytes dropped (discard_stderr)
        bool stalled = false;              ///< see the class comment
    };
    buffer_state buffers() const;

    channel(std::shared_ptr<session> owner, std::shared_ptr<detail::channel_core> core);  ///< internal

private:
    std::shared_ptr<session> owner_;
    std::shared_ptr<detail::channel_core> core_;
};

} // namespace machine::ssh
