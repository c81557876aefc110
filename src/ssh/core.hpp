// Private to src/ssh: the state behind ssh::session and ssh::channel, and the pump.
#pragma once

#include <libssh/callbacks.h>
#include <libssh/libssh.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/ip/tcp.hpp>

#include "machine/async.hpp"
#include "machine/platform.hpp"
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
    platform::wipe_memory(s.data(), s.size());
    s.clear();
}

struct channel_core;

// Memory per channel. libssh 0.10.6 (src/channels.c) grants each channel a 1,280,000-byte
// window (WINDOWBASE) and tops it up (grow_window) in two places: on every read
// (ssh_channel_read_timeout, which ssh_channel_read_nonblocking uses) once less than half is
// left, and on every arriving data packet while the window plus what that packet's stream
// already holds is under half (channel_rcv_data). The window is per channel, shared by stdout
// and stderr. And channel_rcv_data accepts a packet larger than the window anyway ("Let's
// accept it anyway"; 0.11 refuses it, 0.10.6 does not, nor does Debian's 0.10.6-0+deb12u3),
// buffering it without limit. So what bounds the memory is:
//  - our buffer (channel_core::out_/err_): the pump stops reading a stream from libssh once it
//    holds high_water bytes (it may overshoot by one read, 64 KiB);
//  - libssh's buffer for a stream we do not read: while we read nothing on the channel, about
//    640 KB plus a window (1.9 MB) from a server that honours the window. Reading the other
//    stream (or discarding it) keeps topping the window up, though, so once libssh holds
//    high_water bytes of a stream nobody reads, the pump stops reading the channel's other
//    stream too ("stalled", like a full pipe) until that stream is read;
//  - a server that sends past its window (or games the top-up on arrival with tiny packets on
//    the other stream) still grows libssh's buffer: once it holds more than libssh_hold_limit
//    bytes that we are not reading, the channel is dropped with an error (channel_core::fail),
//    and from then on everything libssh receives for it is thrown away on arrival.
inline constexpr std::size_t default_high_water = 1 << 20;
inline constexpr std::size_t libssh_hold_limit = 8 << 20;

// Everything about one connection. Owned by ssh::session, by every channel_core (through their
// session) and by the pump while it runs.
//
// The pump is owned by the session the way Boost.Redis's connection owns its async_run: it is
// spawned once the handshake is done, bound to pump_stop_; close() ends it (the socket closes
// and pump_stop_ cancels its wait); pump_ended() runs when it has finished, however it finished
// (an exception it threw becomes the reason the connection is lost, for every waiter), and
// closed() waits for that. It never outlives the session by more than the loop turn that
// resumes it after close().
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
    // The pump: process(), then wait_io(), until the connection is gone. Only start_pump() runs it.
    asio::awaitable<void> pump();
    // The pump's completion: records a failure, frees libssh after a loss, wakes every waiter.
    void pump_ended(std::exception_ptr failure);
    // Until the connection is gone and the pump has finished (see ssh::session::closed()).
    asio::awaitable<void> closed();

    // ---- after set-up ----
    // Retries `step` while it returns `again`, waiting for the pump to report progress.
    asio::awaitable<int> drive(std::function<int()> step, int again);
    // Wakes the pump: some libssh call outside it may have read packets into libssh's buffers.
    // A kick while the pump is busy is kept: its next wait_io() returns at once.
    void kick();
    // Wakes every coroutine waiting in wait_progress().
    void notify();
    // Waits for the next notify(). Honours Asio cancellation (throws operation_aborted), which
    // ends the caller's wait-and-recheck loop.
    asio::awaitable<void> wait_progress();

    // One pump round: let libssh read and process what arrived, flush what is pending, move
    // channel data into the channel buffers, detect a dead connection; notify on progress.
    void process();
    void drain(channel_core& c);
    // Reads (at most one pump round's worth of) one stream of `c` from libssh into its buffer,
    // or into nothing when the stream is discarded. Returns false when it left data in libssh.
    bool drain_stream(channel_core& c, bool is_stderr);
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

    notifier kick_;                  // wakes the pump (notify_one: kept while it is busy)
    notifier progress_;              // the pump's broadcast to channel operations (notify_all)
    bool changed_ = false;           // channel state changed since the last notify
    std::uint64_t notified_in_ = 0, notified_out_ = 0;
    asio::cancellation_signal pump_stop_;  // the pump's cancellation slot: close() ends it
    bool pump_running_ = false;      // from start_pump() until pump_ended()
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
    // Drops the channel with `why` (the server would not stop sending what nobody reads):
    // readers get what is buffered, then machine::error(why); libssh discards everything that
    // arrives for it from now on and the server is told the channel is closed.
    void fail(const std::string& why);
    // From now on libssh hands every data packet for this channel to a callback that drops it
    // (a closed or failed channel lives on in libssh until the server confirms the close).
    void discard_arrivals();
    bool stream_eof(bool is_stderr) const { return is_stderr ? err_eof_ : out_eof_; }
    void throw_if_failed() const;
    // The session freed every libssh channel: forget ours.
    void detach() { ch_ = nullptr; }

    std::shared_ptr<session_core> session_;
    ssh_channel ch_ = nullptr;
    ssh_channel_callbacks_struct callbacks_{};  // its address is registered with libssh
    bool open_ = false;           // open (and exec) succeeded: the pump drains it
    std::string out_, err_;       // received, not yet read (each about high_water_ at most)
    std::size_t high_water_ = default_high_water;
    bool discard_err_ = false;    // stderr has no reader: read and drop it
    std::uint64_t discarded_err_ = 0;
    std::size_t held_out_ = 0, held_err_ = 0;  // left in libssh by the pump's last round
    bool stalled_ = false;        // a stream nobody reads holds the window: read nothing
    std::string failed_;          // non-empty: dropped (see fail())
    bool discarding_ = false;     // discard_arrivals() was called
    bool out_eof_ = false, err_eof_ = false;
    bool close_seen_ = false;     // the server sent CHANNEL_CLOSE
    bool local_closed_ = false;
    bool eof_sent_ = false;
    bool exited_ = false;
    int exit_code_ = -1;
    std::string exit_signal_;
};

} // namespace machine::ssh::detail
