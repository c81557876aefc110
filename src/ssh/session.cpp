// ssh::session: connection set-up, the pump, teardown.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/connect.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include "core.hpp"
#include "machine/async.hpp"
#include "machine/cancel.hpp"
#include "machine/paths.hpp"

namespace machine::ssh {

namespace {

using asio::awaitable;
using asio::use_awaitable;
using asio::experimental::as_tuple;
using tcp = asio::ip::tcp;

// libssh objects with their own deleters.
struct key_deleter {
    void operator()(ssh_key k) const { ssh_key_free(k); }
};
using key_ptr = std::unique_ptr<std::remove_pointer_t<ssh_key>, key_deleter>;

void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && !(flags & O_NONBLOCK)) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

std::once_flag g_ssh_init;

// The verified host key as an OpenSSH known_hosts line (rewritten only when it changes).
void write_known_hosts(const host_key_pin& pin, const std::string& type, ssh_key key) {
    char* b64 = nullptr;
    if (ssh_pki_export_pubkey_base64(key, &b64) != SSH_OK || !b64) {
        spdlog::warn("vm={}: cannot export its host key for OpenSSH", pin.vm_name);
        return;
    }
    const std::string line = pin.known_hosts_alias + " " + type + " " + b64 + "\n";
    ssh_string_free_char(b64);
    try {
        std::error_code ec;
        if (std::filesystem::exists(pin.known_hosts, ec) && paths::read_file(pin.known_hosts) == line) return;
        paths::write_file_atomic(pin.known_hosts, line, 0600);
    } catch (const error& e) {
        spdlog::warn("vm={}: {}", pin.vm_name, e.what());
    }
}

} // namespace

namespace detail {

// ------------------------------------------------------------------------------------------
// session_core: set-up

session_core::session_core(asio::any_io_executor ex, endpoint ep, host_key_pin pin)
    : ep_(std::move(ep)), pin_(std::move(pin)), socket_(ex), kick_(ex), progress_(ex), read_buffer_(64 * 1024) {
    // Every message about this connection names the VM (the user knows projects, not ports).
    desc_ = ep_.user + "@" + ep_.host + ":" + std::to_string(ep_.port);
    if (!pin_.vm_name.empty()) desc_ = "VM '" + pin_.vm_name + "' (" + desc_ + ")";
}

session_core::~session_core() { teardown(false); }

std::string session_core::libssh_error() const {
    if (!raw_) return "no session";
    const char* e = ssh_get_error(raw_);
    return e && *e ? std::string(e) : std::string("unknown libssh error");
}

awaitable<int> session_core::drive_socket(std::function<int()> step, int again) {
    for (;;) {
        const int rc = step();
        // libssh makes the descriptor blocking once it sees it connected; a blocking send() of
        // a large buffer would stall the whole loop, so put it back (it is shared with Asio's).
        if (libssh_fd_ >= 0 && ssh_get_fd(raw_) == libssh_fd_) set_nonblocking(libssh_fd_);
        if (rc != again) co_return rc;
        // Cancelled by connect()'s timeout or cancel_signal (operation_aborted), which ends the
        // handshake; any other error means the socket is unusable.
        const int flags = ssh_get_poll_flags(raw_);
        if (flags & SSH_WRITE_PENDING) {
            co_await socket_.async_wait(tcp::socket::wait_write, use_awaitable);
        } else {
            co_await socket_.async_wait(tcp::socket::wait_read, use_awaitable);
        }
    }
}

awaitable<void> session_core::handshake() {
    std::call_once(g_ssh_init, [] { ssh_init(); });

    // ---- TCP ----
    phase_ = "the TCP connection";
    asio::error_code ec;
    const auto address = asio::ip::make_address(ep_.host, ec);
    if (!ec) {
        const tcp::endpoint target(address, static_cast<unsigned short>(ep_.port));
        auto r = co_await socket_.async_connect(target, as_tuple(use_awaitable));
        if (const auto e = std::get<0>(r)) throw error("cannot connect to " + desc_ + ": " + e.message());
    } else {
        tcp::resolver resolver(socket_.get_executor());
        auto resolved = co_await resolver.async_resolve(ep_.host, std::to_string(ep_.port),
                                                        as_tuple(use_awaitable));
        if (const auto e = std::get<0>(resolved))
            throw error("cannot resolve " + ep_.host + ": " + e.message());
        auto r = co_await asio::async_connect(socket_, std::get<1>(resolved), as_tuple(use_awaitable));
        if (const auto e = std::get<0>(r)) throw error("cannot connect to " + desc_ + ": " + e.message());
    }
    // Asio 1.22 creates sockets without CLOEXEC (house style §3.9).
    ::fcntl(socket_.native_handle(), F_SETFD, FD_CLOEXEC);
    socket_.set_option(tcp::no_delay(true), ec);
    socket_.set_option(asio::socket_base::keep_alive(true), ec);

    spdlog::trace("ssh: vm={} TCP connected", pin_.vm_name);
    // ---- libssh session on a duplicate of the socket ----
    phase_ = "the SSH handshake";
    raw_ = ssh_new();
    if (!raw_) throw error("ssh_new failed");
    const int dup_fd = ::fcntl(socket_.native_handle(), F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) throw error(std::string("cannot duplicate the SSH socket: ") + std::strerror(errno));
    socket_t fd_option = dup_fd;
    if (ssh_options_set(raw_, SSH_OPTIONS_FD, &fd_option) != SSH_OK) {
        ::close(dup_fd);
        throw error("cannot configure libssh: " + libssh_error());
    }
    libssh_fd_ = dup_fd;  // libssh owns it from here on

    // Nothing from ~/.ssh or /etc/ssh: no config files, no known_hosts, no agent, no default
    // identities. The host key is checked against our own pin below.
    const bool process_config = false;
    const int yes = 1, no = 0, quiet = SSH_LOG_NOLOG;
    const unsigned int port = static_cast<unsigned int>(ep_.port);
    bool ok = ssh_options_set(raw_, SSH_OPTIONS_PROCESS_CONFIG, &process_config) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_HOST, ep_.host.c_str()) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_PORT, &port) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_USER, ep_.user.c_str()) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_SSH_DIR, "/dev/null") == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_STRICTHOSTKEYCHECK, &no) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_PUBKEY_AUTH, &yes) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_PASSWORD_AUTH, &no) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_KBDINT_AUTH, &no) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_GSSAPI_AUTH, &no) == SSH_OK &&
              ssh_options_set(raw_, SSH_OPTIONS_LOG_VERBOSITY, &quiet) == SSH_OK;
    if (!ok) throw error("cannot configure libssh: " + libssh_error());
    if (pinned_) {
        // Only a preference: an unsupported list must not stop the connection.
        const std::string algos = host_key_preference(pinned_->type);
        (void)ssh_options_set(raw_, SSH_OPTIONS_HOSTKEYS, algos.c_str());
    }
    ssh_set_blocking(raw_, 0);
    ssh_set_counters(raw_, &counters_, nullptr);

    ssh_session raw = raw_;
    std::function<int()> connect_step = [raw] { return ssh_connect(raw); };
    int rc = co_await drive_socket(connect_step, SSH_AGAIN);
    if (rc != SSH_OK) throw error("SSH handshake with " + desc_ + " failed: " + libssh_error());
    spdlog::trace("ssh: vm={} key exchange done", pin_.vm_name);

    // ---- host key ----
    ssh_key server_key = nullptr;
    if (ssh_get_server_publickey(raw_, &server_key) != SSH_OK)
        throw error("cannot read the host key of " + desc_ + ": " + libssh_error());
    key_ptr server_key_holder(server_key);
    unsigned char* hash = nullptr;
    size_t hash_len = 0;
    if (ssh_get_publickey_hash(server_key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hash_len) != 0)
        throw error("cannot hash the host key of " + desc_);
    fingerprint_ = fingerprint_sha256(std::string(reinterpret_cast<const char*>(hash), hash_len));
    ssh_clean_pubkey_hash(&hash);
    const char* type = ssh_key_type_to_char(ssh_key_type(server_key));
    key_type_ = type ? type : "unknown";
    if (pinned_) {
        if (pinned_->fingerprint != fingerprint_) {
            // Not one more byte to this server: the caller tears down without a disconnect.
            throw host_key_mismatch(pin_.vm_name, pinned_->fingerprint, fingerprint_, pin_.file);
        }
    } else if (!pin_.record_if_absent) {
        throw error("no pinned host key for VM '" + pin_.vm_name + "' (" + pin_.file.string() +
                    " does not exist): refusing to trust " + desc_ + " (" + fingerprint_ + ")");
    }

    // ---- authentication ----
    phase_ = "authentication";
    std::error_code fs_ec;
    if (ep_.identity_file.empty() || !std::filesystem::exists(ep_.identity_file, fs_ec))
        throw auth_error("SSH identity file " + ep_.identity_file.string() + " does not exist");
    ssh_key identity = nullptr;
    if (ssh_pki_import_privkey_file(ep_.identity_file.c_str(), nullptr, nullptr, nullptr,
                                    &identity) != SSH_OK) {
        throw auth_error("cannot load SSH identity " + ep_.identity_file.string() +
                         " (unreadable, passphrase-protected or of an unsupported type)");
    }
    key_ptr identity_holder(identity);
    std::function<int()> auth_step = [raw, identity] {
        return ssh_userauth_publickey(raw, nullptr, identity);
    };
    rc = co_await drive_socket(auth_step, SSH_AUTH_AGAIN);
    spdlog::trace("ssh: vm={} authentication done", pin_.vm_name);
    switch (rc) {
    case SSH_AUTH_SUCCESS:
        break;
    case SSH_AUTH_DENIED:
        throw auth_error(desc_ + " refused the SSH key " + ep_.identity_file.string() +
                         " (public-key authentication denied)");
    case SSH_AUTH_PARTIAL:
        throw auth_error(desc_ + " accepted the SSH key " + ep_.identity_file.string() +
                         " but asks for more authentication");
    default:
        throw error("SSH authentication to " + desc_ + " failed: " + libssh_error());
    }

    if (!pinned_) {
        write_pin(pin_.file, pinned_key{fingerprint_, key_type_});
        spdlog::debug("ssh: vm={} recorded host key {} in {}", pin_.vm_name, fingerprint_,
                      pin_.file.string());
    }
    if (!pin_.known_hosts.empty()) write_known_hosts(pin_, key_type_, server_key);
    phase_ = "connected";
}

// ------------------------------------------------------------------------------------------
// The pump

// The one reader of the socket once the session is up. Ends when the session is closed or found
// dead; what it throws ends it too (pump_ended() says so to every waiter).
awaitable<void> session_core::pump() {
    while (!gone()) {
        process();
        if (gone()) break;
        // Returns at once when something kicked the pump during process(): someone called
        // libssh meanwhile, look again first.
        co_await wait_io();
    }
}

void session_core::pump_ended(std::exception_ptr failure) {
    if (failure && !gone()) {
        try {
            std::rethrow_exception(failure);
        } catch (const std::exception& e) {
            mark_lost(std::string("internal error: ") + e.what());
        } catch (...) {
            mark_lost("internal error");
        }
    }
    pump_running_ = false;
    if (!closed_) teardown(false);  // lost: libssh cannot be used any more
    notify();
}

void session_core::start_pump() {
    event_ = ssh_event_new();
    if (!event_ || ssh_event_add_session(event_, raw_) != SSH_OK)
        throw error("cannot attach the SSH session to an event: " + libssh_error());
    pump_running_ = true;
    notified_in_ = counters_.in_bytes;
    notified_out_ = counters_.out_bytes;
    // The completion handler holds the session state until the pump has finished.
    auto on_end = [self = shared_from_this()](std::exception_ptr e) { self->pump_ended(e); };
    asio::co_spawn(socket_.get_executor(), pump(), asio::bind_cancellation_slot(pump_stop_.slot(), std::move(on_end)));
}

awaitable<void> session_core::closed() {
    while (pump_running_) {
        const bool woken = co_await progress_.wait();  // named: see async.hpp on g++ 12
        if (!woken) throw std::system_error(asio::error::operation_aborted);
    }
}

void session_core::kick() { kick_.notify_one(); }

void session_core::notify() { progress_.notify_all(); }

awaitable<void> session_core::wait_progress() {
    // Woken by notify(), or by the cancellation of this very wait (e.g. the losing side of a
    // race), which must end the caller's loop.
    const bool woken = co_await progress_.wait();  // named: see async.hpp on g++ 12
    if (!woken) throw std::system_error(asio::error::operation_aborted);
}

awaitable<int> session_core::drive(std::function<int()> step, int again) {
    for (;;) {
        throw_if_gone();
        const int rc = step();
        kick();
        if (rc != again) co_return rc;
        co_await wait_progress();
    }
}

void session_core::process() {
    ++wakeups_;
    // A few rounds while bytes keep arriving, then yield to the loop (other sessions).
    for (int round = 0; round < 32 && !gone(); ++round) {
        const auto in_before = counters_.in_bytes;
        // Reads what the socket has (libssh's poll with timeout 0), processes the packets -
        // keepalives and window adjusts included - and flushes pending output when writable.
        if (event_) ssh_event_dopoll(event_, 0);
        const std::vector<channel_core*> snapshot = channels_;
        for (channel_core* c : snapshot) drain(*c);
        check_alive();
        if (counters_.in_bytes == in_before) break;
    }
    if (changed_ || gone() || counters_.in_bytes != notified_in_ ||
        counters_.out_bytes != notified_out_) {
        changed_ = false;
        notified_in_ = counters_.in_bytes;
        notified_out_ = counters_.out_bytes;
        notify();
    }
}

bool session_core::drain_stream(channel_core& c, bool is_stderr) {
    const bool discard = is_stderr && c.discard_err_;
    std::string& buffer = is_stderr ? c.err_ : c.out_;
    bool& eof = is_stderr ? c.err_eof_ : c.out_eof_;
    while (!eof) {
        if (!discard && buffer.size() >= c.high_water_) return false;  // paused: nobody reads
        // Also processes packets already buffered inside libssh (poll before waiting).
        const int n = ssh_channel_read_nonblocking(c.ch_, read_buffer_.data(),
                                                   static_cast<uint32_t>(read_buffer_.size()),
                                                   is_stderr ? 1 : 0);
        if (n > 0) {
            if (discard) {
                c.discarded_err_ += static_cast<std::size_t>(n);
            } else {
                buffer.append(read_buffer_.data(), static_cast<std::size_t>(n));
                changed_ = true;
            }
            continue;
        }
        if (n == SSH_EOF) {
            eof = true;
            changed_ = true;
        }
        break;  // 0: nothing more now; SSH_ERROR: check_alive() decides
    }
    return true;
}

void session_core::drain(channel_core& c) {
    if (!c.ch_ || !c.open_ || c.local_closed_ || !c.failed_.empty() || gone()) return;
    // What libssh holds of a stream we leave there (0 when empty or at its end).
    const auto held_in_libssh = [&c](bool is_stderr) -> std::size_t {
        const int n = ssh_channel_poll(c.ch_, is_stderr ? 1 : 0);
        return n > 0 ? static_cast<std::size_t>(n) : 0;
    };
    // 1. A stream at its high-water mark whose backlog in libssh reached the mark too: reading
    //    the other stream would keep granting window, which this stream's sender may use, so
    //    read nothing until it is read (see the comment above default_high_water).
    c.stalled_ = false;
    for (const bool is_stderr : {false, true}) {
        if (is_stderr && c.discard_err_) continue;
        const std::string& buffer = is_stderr ? c.err_ : c.out_;
        if (c.stream_eof(is_stderr) || buffer.size() < c.high_water_) continue;
        if (held_in_libssh(is_stderr) >= c.high_water_) c.stalled_ = true;
    }
    // 2. Move what there is into the buffers (or nowhere, for a discarded stream).
    bool emptied[2] = {false, false};
    if (!c.stalled_) {
        for (const bool is_stderr : {false, true}) emptied[is_stderr] = drain_stream(c, is_stderr);
    }
    // 3. What stays in libssh is bounded by flow control only when the server honours it.
    c.held_out_ = emptied[0] ? 0 : held_in_libssh(false);
    c.held_err_ = emptied[1] ? 0 : held_in_libssh(true);
    for (const bool is_stderr : {false, true}) {
        const std::size_t held = is_stderr ? c.held_err_ : c.held_out_;
        if (held <= libssh_hold_limit) continue;
        c.fail("ssh: " + desc_ + " kept sending on the " +
               (is_stderr ? "stderr" : "stdout") + " of a channel while " + std::to_string(held) +
               " bytes of it were waiting unread (the limit is " +
               std::to_string(libssh_hold_limit) + "): channel dropped");
        changed_ = true;
        return;
    }
}

void session_core::check_alive() {
    if (gone() || !raw_) return;
    const int status = ssh_get_status(raw_);
    if ((status & (SSH_CLOSED | SSH_CLOSED_ERROR)) || !ssh_is_connected(raw_)) {
        mark_lost(libssh_error());
    }
}

namespace {
// Until the socket is ready for `what` (or closed: the error is the pump's next round's to see).
awaitable<void> wait_socket(tcp::socket& socket, tcp::socket::wait_type what) {
    co_await socket.async_wait(what, as_tuple(use_awaitable));
}
} // namespace

awaitable<void> session_core::wait_io() {
    const bool want_write = raw_ && (ssh_get_status(raw_) & SSH_WRITE_PENDING);
    // Completes on readability (data, keepalive or EOF), on writability while libssh holds
    // unsent output, or on kick(); close() closes the socket and cancels the pump, which ends
    // the waits too.
    if (want_write) {
        co_await first_of(wait_socket(socket_, tcp::socket::wait_read), wait_socket(socket_, tcp::socket::wait_write),
                          kick_.wait());
    } else {
        co_await first_of(wait_socket(socket_, tcp::socket::wait_read), kick_.wait());
    }
}

// ------------------------------------------------------------------------------------------
// Teardown

void session_core::throw_if_gone() const {
    if (!lost_.empty()) throw connection_lost("ssh connection to " + desc_ + " lost: " + lost_);
    if (closed_) throw connection_lost("ssh connection to " + desc_ + " was closed");
}

void session_core::mark_lost(const std::string& why) {
    if (gone()) return;
    lost_ = why.empty() ? std::string("connection closed") : why;
    spdlog::debug("ssh: connection to {} lost: {}", desc_, lost_);
    changed_ = true;
    notify();
}

void session_core::close() {
    if (closed_) return;
    const bool healthy = lost_.empty();
    closed_ = true;
    teardown(healthy);
    if (pump_running_) pump_stop_.emit(asio::cancellation_type::terminal);
    notify();
}

void session_core::teardown(bool send_disconnect) {
    for (channel_core* c : channels_) c->detach();  // libssh frees its channels below
    channels_.clear();
    if (raw_) {
        if (event_) {
            ssh_event_remove_session(event_, raw_);
            ssh_event_free(event_);
            event_ = nullptr;
        }
        const int fd = ssh_get_fd(raw_);
        if (send_disconnect && fd != -1 && ssh_is_connected(raw_)) {
            ssh_disconnect(raw_);
            // libssh 0.10.6 does not close a descriptor given with SSH_OPTIONS_FD in
            // ssh_disconnect (it forgets it); it is our duplicate, so close it here.
            if (ssh_get_fd(raw_) == -1 && ::fcntl(fd, F_GETFD) != -1) ::close(fd);
        }
        // Closes the descriptor itself when it still holds it (also when it already closed it
        // after a socket error, it knows).
        ssh_free(raw_);
        raw_ = nullptr;
        libssh_fd_ = -1;
    }
    std::error_code ec;
    socket_.close(ec);  // ends the pump's socket waits
}

void session_core::add_channel(channel_core* c) { channels_.push_back(c); }

void session_core::remove_channel(channel_core* c) {
    channels_.erase(std::remove(channels_.begin(), channels_.end(), c), channels_.end());
}

} // namespace detail

// ------------------------------------------------------------------------------------------
// session

namespace {

std::string seconds_text(std::chrono::milliseconds d) {
    const auto ms = d.count();
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
    return std::to_string(ms) + " ms";
}

} // namespace

session::session(std::shared_ptr<detail::session_core> core) : core_(std::move(core)) {}

// The pump ends at the loop's next turn (closed() is for a caller that must know it has).
session::~session() { core_->close(); }

awaitable<std::shared_ptr<session>> session::connect(endpoint ep, host_key_pin pin,
                                                     cancel_signal* cancel,
                                                     std::chrono::milliseconds timeout) {
    if (ep.user.empty()) throw error("ssh: no user given for " + ep.host);
    if (pin.file.empty()) throw error("ssh: no host key pin file given for VM '" + pin.vm_name + "'");
    if (cancel && cancel->current() != cancel_signal::none) throw interrupted_error();

    auto ex = co_await asio::this_coro::executor;
    auto core = std::make_shared<detail::session_core>(ex, std::move(ep), std::move(pin));
    core->pinned_ = detail::read_pin(core->pin_.file);  // a corrupt pin fails before connecting

    // One race either way: without a cancel_signal of the caller's, one that never fires.
    cancel_signal never(ex);
    cancel_signal& stop = cancel ? *cancel : never;
    std::size_t winner = 0;
    std::exception_ptr failure;
    // The handshake races the timeout and the cancel signal; the losers are cancelled and
    // awaited, which for the handshake means its socket wait ends with operation_aborted. Cancelling
    // connect() itself cancels all three: the first to end says operation_aborted.
    try {
        const auto r = co_await first_of(core->handshake(), sleep_for(timeout), stop.until_above(cancel_signal::none));
        winner = r.index();
        if ((winner == 1 && !std::get<1>(r)) || (winner == 2 && !std::get<2>(r)))
            failure = std::make_exception_ptr(std::system_error(asio::error::operation_aborted));
    } catch (...) {
        failure = std::current_exception();
    }
    if (failure) {
        core->teardown(false);  // in particular after a host key mismatch: send nothing more
        std::rethrow_exception(failure);
    }
    if (winner == 1) {
        const std::string phase = core->phase_;
        core->teardown(false);
        throw timeout_error("ssh: connecting to " + core->desc_ + " timed out after " +
                            seconds_text(timeout) + " (waiting for " + phase + ")");
    }
    if (winner == 2) {
        core->teardown(false);
        throw interrupted_error();
    }
    core->start_pump();
    spdlog::debug("ssh: vm={} connected to {} ({})", core->pin_.vm_name, core->desc_,
                  core->fingerprint_);
    co_return std::make_shared<session>(core);
}

void session::close() { core_->close(); }

awaitable<void> session::closed() {
    const auto core = core_;  // keeps the state alive even if *this goes first
    co_await core->closed();
}

bool session::pump_running() const { return core_->pump_running_; }

bool session::alive() const { return !core_->gone() && core_->raw_ != nullptr; }

std::string session::fingerprint() const { return core_->fingerprint_; }

std::string session::host_key_type() const { return core_->key_type_; }

std::string session::description() const { return core_->desc_; }

std::string session::vm_name() const { return core_->pin_.vm_name; }

std::uint64_t session::pump_wakeups() const { return core_->wakeups_; }

awaitable<std::shared_ptr<channel>> session::exec(std::string command) {
    return open_channel(std::move(command), channel_options());
}

awaitable<std::shared_ptr<channel>> session::exec(std::string command, channel_options options) {
    return open_channel(std::move(command), options);
}

} // namespace machine::ssh
