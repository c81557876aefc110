// Private to src/ssh: the state behind ssh::session and ssh::channel, and the pump.
#pragma once

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <string.h>  // explicit_bzero

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include "machine/ssh.hpp"

namespace machine::ssh::detail {

struct pinned_key {
    std::string fingerprint;  // "SHA256:..."
    std::string type;         // "ssh-ed25519"; may be empty in a hand-written pin
};

// Reads a pin file; nullopt when it does not exist. Throws machine::error naming the file when
// it exists but is unreadable or malformed.
std::optional<pinned_key> read_pin(const std::filesystem::path& file);
void write_pin(const std::filesystem::path& file, const pinned_key& key);

// Host key algorithms to offer, the pinned key's type first (so a server with several host keys
// keeps presenting the one we pinned).
std::string host_key_preference(const std::string& pinned_type);

// Signal name ("TERM") -> number, 0 when unknown.
int signal_number(const std::string& name);

// Overwrites every byte `s` owns (its whole capacity, so bytes of an earlier, longer value go
// too) with zeros the compiler may not elide, then empties it. The secrets module has its own
// (machine::secrets::zero_in_place); ssh does not depend on it.
inline void wipe(std::string& s) noexcept {
    s.resize(s.capacity());
    ::explicit_bzero(s.data(), s.size());
    s.clear();
}

struct channel_core;

// Everything about one connection. Owned by ssh::session, by every channel_core (through their
// session) and by the pump coroutine while it runs.
struct session_core : std::enable_shared_from_this<session_core> {
    session_core(asio::any_io_executor ex, endpoint ep, host_key_pin pin);
    ~session_core();
    session_core(const session_core&) = delete;
    session_core& operator=(const session_core&) = delete;

    // ---- connection set-up (before the pump runs) ----
    // TCP connect, SSH handshake, host-key check, authentication. `phase` says where it is.
    asio::awaitable<void> handshake();
    // Retries `step` while it returns `again`, waiting on the socket in the direction libssh asks
    // for. Only while no pump runs: afterwards the pump may consume what the step waits for.
    asio::awaitable<int> drive_socket(std::function<int()> step, int again);
    // Starts the pump (after a successful handshake).
    void start_pump();

    // ---- after set-up ----
    // Retries `step` while it returns `again`, waiting for the pump to report progress.
    asio::awaitable<int> drive(std::function<int()> step, int again);
    // Wakes the pump: some libssh call outside it may have read packets into libssh's buffers.
    void kick();
    // Wakes every coroutine waiting in wait_progress().
    void notify();
    // Waits for the next notify(). Honours Asio cancellation (throws operation_aborted).
    asio::awaitable<void> wait_progress();

    // One pump round: let libssh read and process what arrived, flush what is pending, move
    // channel data into the channel buffers, detect a dead connection; notify on progress.
    void process();
    void drain(channel_core& c);
    void check_alive();
    // Waits until the socket is readable (or writable while output is pending) or kick().
    asio::awaitable<void> wait_io();

    bool gone() const { return closed_ || !lost_.empty(); }
    void throw_if_gone() const;
    void mark_lost(const std::string& why);
    void close();                           // explicit close: graceful disconnect
    void teardown(bool send_disconnect);    // frees libssh and the socket; idempotent

    void add_channel(channel_core* c);
    void remove_channel(channel_core* c);

    std::string libssh_error() const;

    endpoint ep_;
    host_key_pin pin_;
    std::string desc_;      // "user@host:port"
    std::string phase_ = "starting";
    std::optional<pinned_key> pinned_;
    std::string fingerprint_, key_type_;

    // Asio owns and waits on this descriptor; libssh reads and writes a duplicate of it
    // (libssh_fd_), because libssh 0.10.6 closes the descriptor it was given on socket errors
    // and in ssh_free (without a prior ssh_disconnect) - closing it twice could close some other
    // session's socket that reused the number. Declared before raw_, and teardown() frees the
    // libssh session before the socket closes.
    asio::ip::tcp::socket socket_;
    int libssh_fd_ = -1;        // handed to libssh (which then owns it), or -1
    ssh_session raw_ = nullptr;
    ssh_event event_ = nullptr;
    ssh_counter_struct counters_{};  // bytes read/written on the socket, updated by libssh

    asio::steady_timer kick_timer_;  // cancelled to wake the pump
    asio::steady_timer progress_;    // never expires; cancel() broadcasts progress
    bool kicked_ = false;
    bool changed_ = false;           // channel state changed since the last notify
    std::uint64_t notified_in_ = 0, notified_out_ = 0;
    bool pump_running_ = false;
    std::uint64_t wakeups_ = 0;

    bool closed_ = false;   // close() was called
    std::string lost_;      // non-empty: why the connection is dead

    std::vector<channel_core*> channels_;  // registered channels (not owned)
    std::vector<char> read_buffer_;
};

// One channel. Owned by ssh::channel (and coroutines running its operations).
struct channel_core {
    explicit channel_core(std::shared_ptr<session_core> s);
    ~channel_core();
    channel_core(const channel_core&) = delete;
    channel_core& operator=(const channel_core&) = delete;

    asio::awaitable<std::optional<std::string>> read(bool is_stderr);
    asio::awaitable<void> write(std::string data);
    // Writes [data, data + size) - memory the caller keeps alive and unchanged until this
    // completes (it co_awaits at once). No copy is made here; libssh copies each chunk into its
    // packet buffer, which it encrypts in place.
    asio::awaitable<void> write_bytes(const char* data, std::size_t size);
    asio::awaitable<void> send_eof();
    asio::awaitable<int> exit_status();
    void send_signal(const std::string& name);
    void close();
    // The session freed every libssh channel: forget ours.
    void detach() { ch_ = nullptr; }

    std::shared_ptr<session_core> session_;
    ssh_channel ch_ = nullptr;
    ssh_channel_callbacks_struct callbacks_{};  // its address is registered with libssh
    bool open_ = false;           // open (and exec) succeeded: the pump drains it
    std::string out_, err_;       // received, not yet read
    bool out_eof_ = false, err_eof_ = false;
    bool close_seen_ = false;     // the server sent CHANNEL_CLOSE
    bool local_closed_ = false;
    bool eof_sent_ = false;
    bool exited_ = false;
    int exit_code_ = -1;
    std::string exit_signal_;
};

} // namespace machine::ssh::detail
