// ssh::channel: exec channels over a session's pump.
//
// A standard header must come before the first Asio header in every file: Asio 1.22 decides
// between aligned_alloc and operator new for coroutine frames from a libstdc++ macro, so a file
// that starts with Asio frees recycled frames the other way (ASan: alloc-dealloc-mismatch).
#include "core.hpp"

#include <asio/this_coro.hpp>
#include <spdlog/spdlog.h>

namespace machine::ssh {

using asio::awaitable;

namespace detail {

namespace {

// libssh calls these while processing packets (inside the pump or any other libssh call):
// record only, never call back into libssh or resume anyone from here.
void on_exit_status(ssh_session, ssh_channel, int status, void* user) {
    auto* c = static_cast<channel_core*>(user);
    c->exited_ = true;
    c->exit_code_ = status;
    c->session_->changed_ = true;
}

void on_exit_signal(ssh_session, ssh_channel, const char* signal, int /*core*/,
                    const char* /*errmsg*/, const char* /*lang*/, void* user) {
    auto* c = static_cast<channel_core*>(user);
    c->exited_ = true;
    c->exit_signal_ = signal && *signal ? signal : "UNKNOWN";
    c->session_->changed_ = true;
}

void on_close(ssh_session, ssh_channel, void* user) {
    auto* c = static_cast<channel_core*>(user);
    c->close_seen_ = true;
    c->session_->changed_ = true;
}

// Takes every byte libssh offers and drops it. Registered on closed and failed channels only.
int drop_data(ssh_session, ssh_channel, void*, uint32_t len, int, void*) {
    return static_cast<int>(len);
}

ssh_channel_callbacks_struct* drop_all_callbacks() {
    static ssh_channel_callbacks_struct callbacks = [] {
        ssh_channel_callbacks_struct cb{};
        ssh_callbacks_init(&cb);
        cb.channel_data_function = drop_data;
        return cb;
    }();
    return &callbacks;
}

constexpr std::size_t write_chunk = 256 * 1024;

} // namespace

channel_core::channel_core(std::shared_ptr<session_core> s) : session_(std::move(s)) {
    ssh_callbacks_init(&callbacks_);
    callbacks_.userdata = this;
    callbacks_.channel_exit_status_function = on_exit_status;
    callbacks_.channel_exit_signal_function = on_exit_signal;
    callbacks_.channel_close_function = on_close;
}

channel_core::~channel_core() { close(); }

void channel_core::discard_arrivals() {
    if (!ch_ || discarding_) return;
    discarding_ = true;
    // libssh passes each arriving packet's stream buffer, old bytes included, to the data
    // callbacks; this one consumes all of it, so nothing accumulates (a hostile server may go on
    // sending: that costs CPU, not memory).
    ssh_add_channel_callbacks(ch_, drop_all_callbacks());
}

void channel_core::fail(const std::string& why) {
    if (!failed_.empty() || local_closed_) return;
    failed_ = why;
    spdlog::debug("{}", why);
    if (!ch_) return;
    discard_arrivals();
    // What libssh holds already goes too (reading it tops the window up, and what then arrives
    // is dropped by the callback). Called from the pump, outside libssh's callbacks.
    char scratch[16384];
    for (const int is_stderr : {0, 1}) {
        for (int guard = 0; guard < 4096; ++guard) {
            if (ssh_channel_read_nonblocking(ch_, scratch, sizeof scratch, is_stderr) <= 0) break;
        }
    }
    if (open_ && !session_->gone()) ssh_channel_close(ch_);  // EOF + CLOSE, non-blocking
    session_->kick();
}

void channel_core::throw_if_failed() const {
    if (!failed_.empty()) throw error(failed_);
}

void channel_core::close() {
    if (local_closed_) return;
    local_closed_ = true;
    session_->remove_channel(this);
    if (discarded_err_ > 0) {
        spdlog::debug("ssh: vm={} channel: {} bytes of stderr discarded (nobody reads it)",
                      session_->pin_.vm_name, discarded_err_);
    }
    if (ch_) {
        // Unhook first: libssh keeps a freed channel until the server confirms the close and
        // may still process packets for it - and buffer their data: drop that instead.
        ssh_remove_channel_callbacks(ch_, &callbacks_);
        discard_arrivals();
        // EOF + CLOSE, non-blocking; only for a channel the server knows (a channel whose open
        // failed or never finished has no remote number: libssh would send 0).
        if (open_ && !session_->gone()) ssh_channel_close(ch_);
        ssh_channel_free(ch_);
        ch_ = nullptr;
        session_->kick();
    }
    session_->notify();  // pending reads return nullopt
}

awaitable<std::optional<std::string>> channel_core::read(bool is_stderr) {
    for (;;) {
        if (local_closed_) co_return std::nullopt;
        std::string& buffer = is_stderr ? err_ : out_;
        if (!buffer.empty()) {
            // The pump stopped reading this stream at the mark (and maybe the other one with
            // it): make it look again.
            if (buffer.size() >= high_water_ || stalled_) session_->kick();
            co_return std::exchange(buffer, std::string());
        }
        throw_if_failed();
        if (is_stderr ? err_eof_ : out_eof_) co_return std::nullopt;
        session_->throw_if_gone();
        // Woken by the pump after every round that changed something; cancellable.
        co_await session_->wait_progress();
    }
}

awaitable<void> channel_core::write(std::string data) {
    co_await write_bytes(data.data(), data.size());
}

awaitable<void> channel_core::write_bytes(const char* data, std::size_t size) {
    std::size_t offset = 0;
    while (offset < size) {
        if (local_closed_) throw error("write on a closed SSH channel");
        throw_if_failed();
        session_->throw_if_gone();
        if (close_seen_) throw error("the SSH channel was closed by the remote side");
        const auto chunk = static_cast<uint32_t>(std::min(size - offset, write_chunk));
        // Non-blocking: queues at most the remote window (possibly nothing) and returns how
        // much it took.
        const int n = ssh_channel_write(ch_, data + offset, chunk);
        session_->kick();
        if (n < 0) {
            session_->check_alive();
            session_->throw_if_gone();
            if (close_seen_) throw error("the SSH channel was closed by the remote side");
            throw error("SSH write to " + session_->desc_ + " failed: " + session_->libssh_error());
        }
        offset += static_cast<std::size_t>(n);
        if (static_cast<uint32_t>(n) < chunk) {
            // The window is full: the pump reports when the server's window adjust arrives.
            co_await session_->wait_progress();
        }
    }
}

awaitable<void> channel_core::send_eof() {
    if (local_closed_) throw error("send_eof on a closed SSH channel");
    throw_if_failed();
    if (eof_sent_) co_return;  // a second EOF would be a protocol error
    session_->throw_if_gone();
    eof_sent_ = true;
    const int rc = ssh_channel_send_eof(ch_);  // SSH_AGAIN: queued, the pump flushes it
    session_->kick();
    if (rc == SSH_ERROR) {
        session_->check_alive();
        session_->throw_if_gone();
        if (close_seen_) co_return;  // the other side is gone already: nothing to tell it
        throw error("SSH send_eof to " + session_->desc_ + " failed: " + session_->libssh_error());
    }
    co_return;
}

awaitable<int> channel_core::exit_status() {
    for (;;) {
        if (exited_) {
            if (!exit_signal_.empty()) {
                const int n = signal_number(exit_signal_);
                co_return n ? 128 + n : -1;
            }
            co_return exit_code_;
        }
        throw_if_failed();
        if (close_seen_) throw error("the SSH channel closed without an exit status");
        if (local_closed_) throw error("the SSH channel was closed before the command exited");
        session_->throw_if_gone();
        co_await session_->wait_progress();
    }
}

void channel_core::send_signal(const std::string& name) {
    if (!ch_ || local_closed_ || session_->gone()) return;
    ssh_channel_request_send_signal(ch_, name.c_str());  // no reply requested
    session_->kick();
}

} // namespace detail

// ------------------------------------------------------------------------------------------
// session::open_channel

awaitable<std::shared_ptr<channel>> session::open_channel(std::string command, channel_options options) {
    auto self = shared_from_this();
    auto s = core_;
    s->throw_if_gone();
    auto c = std::make_shared<detail::channel_core>(s);
    c->high_water_ = std::max<std::size_t>(options.high_water, 1);
    c->discard_err_ = options.discard_stderr;
    c->ch_ = ssh_channel_new(s->raw_);
    if (!c->ch_) throw error("cannot create an SSH channel on " + s->desc_ + ": " + s->libssh_error());
    // Registered at once so that a teardown forgets the handle (libssh frees it); drained only
    // once open.
    s->add_channel(c.get());
    ssh_add_channel_callbacks(c->ch_, &c->callbacks_);

    const ssh_channel raw_channel = c->ch_;
    std::function<int()> open_step = [raw_channel] { return ssh_channel_open_session(raw_channel); };
    int rc = co_await s->drive(open_step, SSH_AGAIN);
    if (rc != SSH_OK) throw error("cannot open a session channel on " + s->desc_ + ": " + s->libssh_error());
    c->open_ = true;
    std::function<int()> exec_step = [raw_channel, command] {
        return ssh_channel_request_exec(raw_channel, command.c_str());
    };
    rc = co_await s->drive(exec_step, SSH_AGAIN);
    if (rc != SSH_OK) throw error("cannot run a command on " + s->desc_ + ": " + s->libssh_error());
    s->kick();  // output may already sit in libssh's buffers
    co_return std::make_shared<channel>(self, c);
}

// ------------------------------------------------------------------------------------------
// channel

channel::channel(std::shared_ptr<session> owner, std::shared_ptr<detail::channel_core> core)
    : owner_(std::move(owner)), core_(std::move(core)) {}

channel::~channel() { core_->close(); }

awaitable<std::optional<std::string>> channel::read() {
    const auto c = core_;  // keeps the state alive even if *this goes first
    co_return co_await c->read(false);
}

awaitable<std::optional<std::string>> channel::read_stderr() {
    const auto c = core_;
    co_return co_await c->read(true);
}

awaitable<void> channel::write(std::string data) {
    const auto c = core_;
    co_await c->write(std::move(data));
}

namespace {
// Wipes the caller's string however write_secret() ends: done, thrown, or destroyed while
// suspended (cancellation, a dying io_context).
struct wipe_on_exit {
    std::string& s;
    ~wipe_on_exit() { detail::wipe(s); }
};
} // namespace

awaitable<void> channel::write_secret(std::string& data) {
    const auto c = core_;
    wipe_on_exit guard{data};
    // Straight from the caller's buffer: no copy of the secret exists on our side.
    co_await c->write_bytes(data.data(), data.size());
}

awaitable<void> channel::send_eof() {
    const auto c = core_;
    co_await c->send_eof();
}

awaitable<int> channel::exit_status() {
    const auto c = core_;
    co_return co_await c->exit_status();
}

std::string channel::exit_signal() const { return core_->exit_signal_; }

void channel::send_signal(const std::string& name) { core_->send_signal(name); }

void channel::close() { core_->close(); }

channel::buffer_state channel::buffers() const {
    buffer_state b;
    b.out = core_->out_.size();
    b.err = core_->err_.size();
    b.out_in_libssh = core_->held_out_;
    b.err_in_libssh = core_->held_err_;
    b.err_discarded = core_->discarded_err_;
    b.stalled = core_->stalled_;
    return b;
}

bool channel::closed_by_remote() const {
    return core_->close_seen_ && core_->out_eof_ && core_->err_eof_ && core_->out_.empty() &&
           core_->err_.empty();
}

} // namespace machine::ssh
