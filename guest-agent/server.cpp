// The agent's event loop. Invariant: one io_context run by one thread (main's), so connection
// state, the journal and the counters below need no locks.
#include "server.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "files.hpp"
#include "machine/sha256.hpp"
#include "log.hpp"
#include "machine/events.hpp"
#include "machine/protocol.hpp"
#include "provision.hpp"
#include "discover.hpp"
#include "secrets.hpp"
#include "spawn.hpp"
#include "steps_state.hpp"
#include "tmux.hpp"
#include "users.hpp"

#ifndef MACHINE_AGENT_VERSION
#define MACHINE_AGENT_VERSION "0.0.0"
#endif

namespace machine::agent {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;
using asio::use_awaitable;
using asio::experimental::as_tuple;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;
using unix_socket = asio::local::stream_protocol::socket;
using descriptor = asio::posix::stream_descriptor;

constexpr auto use_nothrow = as_tuple(use_awaitable);

constexpr std::size_t read_chunk = 64u << 10;
constexpr std::size_t high_water = 1u << 20;        // queued output bytes per connection
constexpr std::size_t max_in_flight = 256;          // run + subscribe per connection
constexpr std::size_t replay_batch = 256u << 10;    // journal bytes per read_after
constexpr auto pipe_linger = 500ms;                 // output of leftovers after the child exits
constexpr auto close_linger = 5s;                   // to flush replies to a client that left
constexpr auto shutdown_linger = 300ms;
constexpr std::uint32_t default_grace_ms = 5000;
constexpr auto tmux_list_limit = 2000ms;            // one `tmux list-sessions`
constexpr auto session_list_budget = 3000ms;        // all of them, for one session.list
constexpr std::size_t tmux_output_cap = 64u << 10;
constexpr std::size_t max_list_users = 8;           // distinct users asked per session.list

// A broadcast wake-up: notify_all() wakes every current waiter. Waiters re-check their
// condition; nothing is lost because the loop is single-threaded and no waiter suspends
// between checking and waiting.
class notifier {
public:
    explicit notifier(asio::any_io_executor ex) : timer_(ex, asio::steady_timer::time_point::max()) {}
    awaitable<void> wait() { co_await timer_.async_wait(use_nothrow); }
    void notify_all() { timer_.cancel(); }

private:
    asio::steady_timer timer_;
};

enum class request_kind { run, subscribe, provision, session_list };

struct request_state {
    request_state(asio::any_io_executor ex, std::uint64_t id, request_kind k)
        : id(id), kind(k), kill_timer(ex) {}
    std::uint64_t id;
    request_kind kind;
    bool cancelled = false;    // cancel request, disconnection or shutdown
    bool abandoned = false;    // the client is gone: stop producing messages
    bool final_sent = false;   // the one final message has been queued
    pid_t pid = -1;            // run, session_list: the child (and its process group)
    bool reaped = false;
    std::uint32_t grace_ms = default_grace_ms;
    asio::steady_timer kill_timer;
    std::shared_ptr<provision_job> job;  // provision: cancel and kill go to it
};

std::string boot_id_from(const std::string& file) {
    if (auto text = read_file(file)) {
        auto id = trim(*text);
        if (!id.empty()) return id;
    }
    return "unknown";
}

std::uint64_t rss_kib() {
    const auto statm = read_file("/proc/self/statm");
    if (!statm) return 0;
    const auto space = statm->find(' ');
    if (space == std::string::npos) return 0;
    const std::uint64_t pages = std::strtoull(statm->c_str() + space + 1, nullptr, 10);
    return pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) / 1024;
}

std::uint64_t ms_since(std::chrono::steady_clock::time_point t0) {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
}

void sd_notify(const char* state) {
    const char* path = std::getenv("NOTIFY_SOCKET");
    if (!path || !*path) return;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::size_t len = std::strlen(path);
    if (len >= sizeof addr.sun_path) return;
    std::memcpy(addr.sun_path, path, len);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    ::sendto(fd, state, std::strlen(state), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
             static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
    ::close(fd);
}

// Waits for a child to exit and reaps it; returns the wait status.
awaitable<int> wait_exit(pid_t pid, int pidfd) {
    // Cancelled (the loop is going away): never block the loop on a live child.
    const bool exited = co_await wait_exited(pid, pidfd);
    co_return reap_child(pid, exited);
}

class server;
class connection;

// A live agent session (PROTOCOL.md §4 `session.*`): registered by its wrapper on `owner`, a
// connection the wrapper keeps open; the registration ends with session.end or that connection.
struct live_session {
    std::string name;
    std::string agent;
    std::string user;
    std::int64_t pid = 0;
    std::string tty;
    std::chrono::system_clock::time_point started_at;
    const connection* owner = nullptr;
};

class connection : public std::enable_shared_from_this<connection> {
public:
    connection(server& srv, unix_socket socket);

    awaitable<void> serve();

    // Queues a line without waiting (replies, errors). Dropped once the client is gone.
    void post(std::string line);
    // Queues a request's final message, at most once per request; its id is free from then on.
    void post_final(request_state& st, std::string line);
    // Queues a streaming line, first waiting while too much is queued. False when the client
    // is gone or the request was abandoned: the caller stops producing.
    awaitable<bool> send(std::string line, const request_state& st);

    void cancel(const std::shared_ptr<request_state>& st);
    void shutdown_requests();
    void kill_remaining();
    std::size_t in_flight() const { return in_flight_.size(); }

private:
    awaitable<void> read_loop();
    awaitable<void> write_loop();
    void handle(proto::decoded& item);
    void handle_message(proto::message& m);
    void handle_secrets(std::uint64_t id, proto::message& m);
    proto::secrets_discover_result discover_for_user() const;
    void mark_dead();
    void request_done(const std::shared_ptr<request_state>& st);
    std::shared_ptr<request_state> start_request(std::uint64_t id, request_kind kind);

    server& srv_;
    unix_socket socket_;
    proto::decoder decoder_;
    std::deque<std::string> out_;
    std::size_t queued_ = 0;
    bool dead_ = false;     // writing failed: the peer is gone
    bool closing_ = false;  // no more lines will be queued
    bool writer_done_ = false;
    notifier writer_wake_, space_, idle_;
    asio::steady_timer close_timer_;
    std::map<std::uint64_t, std::shared_ptr<request_state>> in_flight_;
    std::vector<std::shared_ptr<request_state>> running_at_shutdown_;
    std::string session_;  // the session registered on this connection, if any
};

class server {
public:
    server(asio::io_context& io, server_options options)
        : io_(io), options_(std::move(options)), journal_(options_.journal_path, options_.journal_limits),
          steps_(options_.steps_state_path),
          secrets_(io.get_executor(), secrets_setup_for_store()),
          acceptor_(io), signals_(io, SIGTERM, SIGINT), events_(io.get_executor()), sync_timer_(io),
          started_(std::chrono::steady_clock::now()) {}

    int start();

    asio::io_context& io() { return io_; }
    const server_options& options() const { return options_; }
    journal& events_journal() { return journal_; }
    notifier& new_events() { return events_; }
    const std::string& boot_id() const { return boot_id_; }
    bool stopping() const { return stopping_; }

    std::uint64_t append_event(std::string_view name, const proto::json& fields);
    provision_setup provision_setup_for_job();
    secrets_store& secrets() { return secrets_; }
    proto::hello_result hello() const;
    proto::health_result health() const;

    // Agent sessions. An error (code, message) when the registration is refused.
    std::optional<std::pair<proto::errc, std::string>> register_session(const connection* owner, uid_t uid,
                                                                        const proto::session_register_request& q);
    void end_session(const std::string& name, const proto::session_end_request& q);
    // The connection is gone: what it registered ends as `lost`.
    void session_owner_gone(const connection* owner);
    const live_session* find_session(const std::string& name) const;
    std::vector<live_session> sessions() const;

    std::size_t running = 0;
    std::size_t subscribers = 0;
    /// The one provision running (across all connections; a second one is `busy`), or null.
    std::shared_ptr<provision_job> provision;

private:
    void prepare_socket_directory(gid_t gid);
    secrets_setup secrets_setup_for_store();
    awaitable<void> accept_loop();
    awaitable<void> sync_later();
    awaitable<void> watch_boot();
    awaitable<void> watch_user();
    void stop(int signal_number);
    void spawn_task(awaitable<void> task, const char* what);

    asio::io_context& io_;
    server_options options_;
    journal journal_;
    steps_state steps_;
    secrets_store secrets_;
    asio::local::stream_protocol::acceptor acceptor_;
    asio::signal_set signals_;
    notifier events_;
    asio::steady_timer sync_timer_;
    bool sync_pending_ = false;
    bool stopping_ = false;
    std::string boot_id_;
    std::string binary_sha256_;
    std::chrono::steady_clock::time_point started_;
    std::set<std::shared_ptr<connection>> connections_;
    std::map<std::string, live_session> sessions_;  // by name
};

// --- requests ---------------------------------------------------------------------------------

struct run_io {
    run_io(asio::any_io_executor ex) : out(ex), err(ex), in(ex), linger(ex) {}
    descriptor out, err, in;
    asio::steady_timer linger;
    int open_streams = 0;
};

awaitable<void> pump(std::shared_ptr<connection> c, std::shared_ptr<request_state> st, run_io& io,
                     descriptor& d, std::string_view stream) {
    std::string buf(proto::output_chunk_bytes, '\0');
    while (d.is_open()) {
        auto [ec, n] = co_await d.async_read_some(asio::buffer(buf), use_nothrow);
        if (ec) break;  // EOF, or cancelled after the linger period
        auto line = proto::encode(proto::make_output(st->id, stream, std::string_view(buf.data(), n)));
        // Waiting here when the client reads slowly stops reading the pipe, which in turn
        // stops the child: back-pressure all the way.
        if (!co_await c->send(std::move(line), *st)) break;
    }
    if (d.is_open()) d.close();  // a child still writing gets SIGPIPE: its client is gone
    if (--io.open_streams == 0) io.linger.cancel();
}

awaitable<void> feed_stdin(descriptor& d, std::string data) {
    if (d.is_open() && !data.empty()) {
        // EPIPE when the child does not read its stdin is fine: its choice.
        co_await asio::async_write(d, asio::buffer(data), use_nothrow);
    }
    if (d.is_open()) d.close();
}

awaitable<void> reap(std::shared_ptr<request_state> st, run_io& io, int pidfd, int& status) {
    status = co_await wait_exit(st->pid, pidfd);
    st->reaped = true;
    st->kill_timer.cancel();
    if (io.open_streams > 0) {
        // Background processes the command left may keep its pipes open for ever.
        io.linger.expires_after(pipe_linger);
        co_await io.linger.async_wait(use_nothrow);
        // close, not cancel: a pump waiting on a slow client must not read again afterwards.
        if (io.out.is_open()) io.out.close();
        if (io.err.is_open()) io.err.close();
    }
}

awaitable<void> escalate(std::shared_ptr<request_state> st) {
    st->kill_timer.expires_after(std::chrono::milliseconds(st->grace_ms));
    co_await st->kill_timer.async_wait(use_nothrow);
    if (!st->reaped && st->pid > 0) ::kill(-st->pid, SIGKILL);
}

void signal_run(const std::shared_ptr<request_state>& st, asio::io_context& io) {
    if (st->pid <= 0 || st->reaped) return;
    ::kill(-st->pid, SIGTERM);
    asio::co_spawn(io, escalate(st), [](std::exception_ptr) {});
}

// `srv` by reference in a spawned coroutine (house style §4.4): the server lives on main's stack
// for the whole io_context::run(), so it outlives every task.
awaitable<void> run_command(server& srv, std::shared_ptr<connection> c, std::shared_ptr<request_state> st,
                            proto::run_request req) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto user = find_user(req.user);
    if (!user) {
        c->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::no_such_user,
                                                           "no user '" + req.user + "' in /etc/passwd")));
        co_return;
    }
    spawn_spec spec;
    spec.argv = req.argv;
    spec.env = child_environment(*user, srv.options().runtime_dir_root, req.env);
    spec.cwd = req.cwd ? *req.cwd : home_or_root(*user);
    spec.as_user = *user;
    spec.pipe_stdin = req.stdin_data.has_value();
    if (req.grace_ms) st->grace_ms = *req.grace_ms;

    child_process child;
    try {
        child = spawn(spec);
    } catch (const spawn_failure& e) {
        c->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::spawn_failed, e.what())));
        co_return;
    }
    st->pid = child.pid;
    ++srv.running;
    log::debug("run " + std::to_string(st->id) + ": pid " + std::to_string(child.pid) + " as " + user->name +
               ": " + req.argv[0]);
    if (st->cancelled) signal_run(st, srv.io());  // cancelled before it started

    auto ex = co_await asio::this_coro::executor;
    run_io io(ex);
    io.out.assign(child.stdout_fd);
    io.err.assign(child.stderr_fd);
    io.open_streams = 2;
    if (child.stdin_fd >= 0) io.in.assign(child.stdin_fd);
    int status = 0;
    std::string stdin_data = req.stdin_data.value_or(std::string());
    co_await (pump(c, st, io, io.out, "stdout") && pump(c, st, io, io.err, "stderr") &&
              feed_stdin(io.in, std::move(stdin_data)) && reap(st, io, child.pidfd, status));
    --srv.running;

    proto::run_result r;
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    else r.exit_code = WEXITSTATUS(status);
    r.cancelled = st->cancelled;
    r.duration_ms = ms_since(t0);
    c->post_final(*st, proto::encode(proto::make_run_result(st->id, r)));
}

// `srv` by reference: see run_command.
awaitable<void> subscription(server& srv, std::shared_ptr<connection> c, std::shared_ptr<request_state> st,
                             std::uint64_t from_seq) {
    ++srv.subscribers;
    std::uint64_t last = from_seq;
    bool live_sent = false;
    bool client_gone = false;
    while (!st->cancelled && !client_gone) {
        journal& jr = srv.events_journal();
        if (jr.events() > 0 && last + 1 < jr.first_seq()) {
            const proto::gap_notice gap{last + 1, jr.first_seq() - 1};
            if (!co_await c->send(proto::encode(proto::make_gap(st->id, gap)), *st)) break;
            last = gap.to_seq;
            continue;
        }
        auto batch = jr.read_after(last, replay_batch);
        if (batch.empty()) {
            if (!live_sent) {
                live_sent = true;
                if (!co_await c->send(proto::encode(proto::make_live(st->id, last)), *st)) break;
                continue;
            }
            co_await srv.new_events().wait();
            continue;
        }
        for (auto& e : batch) {
            if (st->cancelled) break;
            // The stored line already is the event; only the envelope is added.
            if (!co_await c->send(proto::event_message_from_journal_line(st->id, e.line), *st)) {
                client_gone = true;
                break;
            }
            last = e.seq;
        }
    }
    --srv.subscribers;
    proto::json fields = {{"last_seq", last}, {"cancelled", true}};
    c->post_final(*st, proto::encode(proto::make_result(st->id, fields)));
}

// The job stays the server's `provision` until this task ends (its completion handler resets it).
awaitable<void> provision_task(std::shared_ptr<connection> c, std::shared_ptr<request_state> st) {
    const auto job = st->job;
    const auto result = co_await job->run();
    // After shutting_down (already sent) this does nothing; the journal has the story.
    c->post_final(*st, proto::encode(proto::make_provision_result(st->id, result)));
}

// --- session.list -------------------------------------------------------------------------------

awaitable<void> read_capped(descriptor& d, std::string& text, std::size_t cap) {
    std::array<char, 4096> buf;
    for (;;) {
        auto [ec, n] = co_await d.async_read_some(asio::buffer(buf), use_nothrow);
        if (ec) break;
        if (text.size() < cap) text.append(buf.data(), std::min(n, cap - text.size()));  // the rest is drained
    }
}

awaitable<void> exit_status_into(pid_t pid, int pidfd, int& status) { status = co_await wait_exit(pid, pidfd); }

awaitable<void> expire(asio::steady_timer& timer) { co_await timer.async_wait(use_nothrow); }

// Attached clients per tmux session of one user: `tmux list-sessions` run as that user (its
// tmux server is the one `session attach` used), bounded in time and output. Empty when the
// user has no tmux server, or tmux fails or is too slow.
// `srv` by reference: see run_command.
awaitable<std::map<std::string, std::uint64_t>> tmux_sessions_of(server& srv, std::shared_ptr<request_state> st,
                                                                 std::string user_name,
                                                                 std::chrono::milliseconds limit) {
    std::map<std::string, std::uint64_t> none;
    const auto user = find_user(user_name);
    if (!user) co_return none;
    spawn_spec spec;
    spec.argv = {srv.options().tmux, "list-sessions", "-F", tmux::list_format};
    spec.env = child_environment(*user, srv.options().runtime_dir_root, {});
    spec.cwd = home_or_root(*user);
    spec.as_user = *user;
    spec.pipe_stderr = false;  // "no server running on ..." is an answer, not news
    child_process child;
    try {
        child = spawn(spec);
    } catch (const spawn_failure& e) {
        log::warning(std::string("session.list: tmux: ") + e.what());
        co_return none;
    }
    st->pid = child.pid;
    st->reaped = false;
    auto ex = co_await asio::this_coro::executor;
    descriptor out(ex, child.stdout_fd);
    std::string text;
    int status = 0;
    asio::steady_timer deadline(ex, limit);
    const auto first = co_await ((read_capped(out, text, tmux_output_cap) &&
                                  exit_status_into(child.pid, child.pidfd, status)) ||
                                 expire(deadline));
    if (first.index() == 1) {
        log::warning("session.list: tmux list-sessions as " + user->name + " took longer than " +
                     std::to_string(limit.count()) + " ms: killed");
        ::kill(-child.pid, SIGKILL);
        co_await wait_exited(child.pid, -1);
        reap_child(child.pid);
        st->reaped = true;
        co_return none;
    }
    st->reaped = true;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) co_return none;
    co_return tmux::parse_list(text);
}

// `srv` by reference: see run_command.
awaitable<void> session_listing(server& srv, std::shared_ptr<connection> c, std::shared_ptr<request_state> st) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto snapshot = srv.sessions();
    std::map<std::string, std::map<std::string, std::uint64_t>> attached;  // user -> tmux session -> clients
    for (const auto& s : snapshot) {
        if (attached.count(s.user) || attached.size() >= max_list_users) continue;
        const auto spent =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
        if (st->cancelled || spent >= session_list_budget) break;
        const auto limit = std::min(tmux_list_limit, session_list_budget - spent);
        attached[s.user] = co_await tmux_sessions_of(srv, st, s.user, limit);
    }
    proto::session_list_result r;
    for (const auto& s : snapshot) {
        const live_session* now = srv.find_session(s.name);
        if (!now || now->owner != s.owner) continue;  // ended while tmux was asked
        proto::session_info info;
        info.name = s.name;
        info.agent = s.agent;
        info.user = s.user;
        info.started_at = events::format_timestamp(s.started_at);
        info.pid = s.pid;
        if (const auto u = attached.find(s.user); u != attached.end()) {
            if (const auto n = u->second.find(s.name); n != u->second.end())
                info.attached = std::min(n->second, proto::max_session_attached);
        }
        r.sessions.push_back(std::move(info));
    }
    c->post_final(*st, proto::encode(proto::make_session_list_result(st->id, r)));
}

// --- connection ---------------------------------------------------------------------------------

connection::connection(server& srv, unix_socket socket)
    : srv_(srv), socket_(std::move(socket)), writer_wake_(socket_.get_executor()),
      space_(socket_.get_executor()), idle_(socket_.get_executor()), close_timer_(socket_.get_executor()) {}

awaitable<void> connection::serve() {
    co_await (read_loop() && write_loop());
}

void connection::post(std::string line) {
    if (dead_ || closing_) return;
    queued_ += line.size();
    out_.push_back(std::move(line));
    writer_wake_.notify_all();
}

void connection::post_final(request_state& st, std::string line) {
    if (st.final_sent) return;
    st.final_sent = true;
    post(std::move(line));
    // The id may be reused (and cancel says not_found) as soon as the final message is queued.
    const auto it = in_flight_.find(st.id);
    if (it != in_flight_.end() && it->second.get() == &st) {
        in_flight_.erase(it);
        idle_.notify_all();
    }
}

awaitable<bool> connection::send(std::string line, const request_state& st) {
    while (queued_ > high_water && !dead_ && !st.abandoned && !st.final_sent) co_await space_.wait();
    // After the final message (shutting_down) nothing more may be sent for the request.
    if (dead_ || st.abandoned || st.final_sent) co_return false;
    post(std::move(line));
    co_return true;
}

void connection::mark_dead() {
    if (dead_) return;
    dead_ = true;
    out_.clear();
    queued_ = 0;
    for (auto& [id, st] : in_flight_) {
        st->abandoned = true;
        cancel(st);
    }
    space_.notify_all();
    // Wake the reader too: it may be waiting for a line that will never come.
    asio::error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
}

void connection::cancel(const std::shared_ptr<request_state>& st) {
    if (st->cancelled) return;
    st->cancelled = true;
    if (st->kind == request_kind::run) {
        signal_run(st, srv_.io());
    } else if (st->kind == request_kind::provision) {
        st->job->cancel();
    } else if (st->kind == request_kind::session_list) {
        if (st->pid > 0 && !st->reaped) ::kill(-st->pid, SIGKILL);  // the listing then ends at once
    } else {
        srv_.new_events().notify_all();  // the subscription re-checks and ends
        space_.notify_all();
    }
}

void connection::shutdown_requests() {
    // A copy: post_final() removes entries.
    std::vector<std::shared_ptr<request_state>> all;
    for (const auto& [id, st] : in_flight_) all.push_back(st);
    for (const auto& st : all) {
        running_at_shutdown_.push_back(st);
        post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::shutting_down, "the agent is stopping")));
        cancel(st);
    }
}

void connection::kill_remaining() {
    // The agent exits now: nothing started for a client may outlive it (KillMode=process).
    for (const auto& st : running_at_shutdown_) {
        if ((st->kind == request_kind::run || st->kind == request_kind::session_list) && st->pid > 0 &&
            !st->reaped)
            ::kill(-st->pid, SIGKILL);
        if (st->kind == request_kind::provision) st->job->kill_now();
    }
}

void connection::request_done(const std::shared_ptr<request_state>& st) {
    const auto it = in_flight_.find(st->id);
    if (it != in_flight_.end() && it->second == st) {
        in_flight_.erase(it);
        idle_.notify_all();
    }
}

std::shared_ptr<request_state> connection::start_request(std::uint64_t id, request_kind kind) {
    auto st = std::make_shared<request_state>(socket_.get_executor(), id, kind);
    in_flight_.emplace(id, st);
    return st;
}

awaitable<void> connection::read_loop() {
    std::string buf(read_chunk, '\0');
    std::vector<proto::decoded> items;
    for (;;) {
        // A client that does not read its replies gets no more requests read either.
        while (queued_ > high_water && !dead_) co_await space_.wait();
        if (dead_) break;
        auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buf), use_nothrow);
        if (ec) break;  // EOF (the client is done) or an error: both end the conversation
        items.clear();
        decoder_.feed(std::string_view(buf.data(), n), items);
        for (auto& item : items) handle(item);
    }
    items.clear();
    decoder_.finish(items);  // an unfinished line: "truncated"
    for (auto& item : items) handle(item);
    // A session's wrapper that closes its connection without session.end has died (SIGKILL...).
    if (!session_.empty()) {
        srv_.session_owner_gone(this);
        session_.clear();
    }

    // The client has left: what it started stops, and each request still gets its final
    // message if the socket is writable (a half-closed client can read them).
    for (auto& [id, st] : in_flight_) {
        st->abandoned = true;
        cancel(st);
    }
    space_.notify_all();
    while (!in_flight_.empty()) co_await idle_.wait();
    closing_ = true;
    writer_wake_.notify_all();
    if (!writer_done_) {
        close_timer_.expires_after(close_linger);
        co_await close_timer_.async_wait(use_nothrow);
        if (!writer_done_) {
            asio::error_code ignored;
            socket_.close(ignored);  // a client that will not read what is left
        }
    }
}

awaitable<void> connection::write_loop() {
    std::vector<asio::const_buffer> buffers;
    for (;;) {
        if (out_.empty()) {
            if (closing_ || dead_) break;
            co_await writer_wake_.wait();
            continue;
        }
        const std::size_t count = std::min<std::size_t>(out_.size(), 64);
        buffers.clear();
        for (std::size_t i = 0; i < count; ++i) buffers.push_back(asio::buffer(out_[i]));
        auto [ec, n] = co_await asio::async_write(socket_, buffers, use_nothrow);
        if (ec) {
            mark_dead();
            if (closing_) break;
            continue;
        }
        for (std::size_t i = 0; i < count; ++i) {
            queued_ -= out_.front().size();
            out_.pop_front();
        }
        space_.notify_all();
    }
    writer_done_ = true;
    close_timer_.cancel();
}

void connection::handle(proto::decoded& item) {
    try {
        if (auto* e = std::get_if<proto::decode_error>(&item)) {
            log::debug(std::string("bad line from a client: ") + std::string(proto::to_string(e->code)) + ": " +
                       e->message);
            post(proto::encode(proto::make_error(*e)));
            return;
        }
        handle_message(std::get<proto::message>(item));
    } catch (const std::exception& ex) {
        // A bug or an I/O failure: the client hears about it, the agent goes on.
        std::optional<std::uint64_t> id;
        if (auto* m = std::get_if<proto::message>(&item)) id = m->id;
        log::error(std::string("internal error: ") + ex.what());
        post(proto::encode(proto::make_error(id, proto::errc::internal, ex.what())));
    }
}

void connection::handle_message(proto::message& m) {
    const std::uint64_t id = *m.id;  // require_id: the decoder guarantees it
    auto reply_error = [&](proto::errc code, const std::string& text) {
        post(proto::encode(proto::make_error(id, code, text)));
    };
    if (in_flight_.count(id)) return reply_error(proto::errc::duplicate_id, "request " + std::to_string(id) + " is still in flight");

    if (m.type == proto::type::hello) {
        auto q = proto::parse_hello_request(m.body);
        if (!q) return reply_error(q.code, q.error);
        if (!q->client.empty()) log::debug("hello from " + q->client);
        post(proto::encode(proto::make_hello_result(id, srv_.hello())));
    } else if (m.type == proto::type::health) {
        post(proto::encode(proto::make_health_result(id, srv_.health())));
    } else if (m.type == proto::type::emit) {
        auto q = proto::parse_emit_request(m.body);
        if (!q) return reply_error(q.code, q.error);
        const std::uint64_t seq = srv_.append_event(q->event, q->fields);
        post(proto::encode(proto::make_result(id, proto::json{{"seq", seq}})));
    } else if (m.type == proto::type::cancel) {
        auto q = proto::parse_cancel_request(m.body);
        if (!q) return reply_error(q.code, q.error);
        const auto it = in_flight_.find(q->target);
        if (it == in_flight_.end())
            return reply_error(proto::errc::not_found, "no request " + std::to_string(q->target) + " in flight");
        cancel(it->second);
        post(proto::encode(proto::make_result(id, proto::json{{"target", q->target}})));
    } else if (m.type == proto::type::provision) {
        if (srv_.stopping()) return reply_error(proto::errc::shutting_down, "the agent is stopping");
        if (in_flight_.size() >= max_in_flight)
            return reply_error(proto::errc::too_many_requests,
                               "more than " + std::to_string(max_in_flight) + " requests in flight");
        auto q = proto::parse_provision_request(m.body);
        if (!q) return reply_error(q.code, q.error);
        if (srv_.provision)
            return reply_error(proto::errc::busy, "provision '" + srv_.provision->plan() + "' is running");
        auto job = std::make_shared<provision_job>(srv_.provision_setup_for_job(), std::move(*q));
        // Every user first: a plan that cannot finish does not start.
        if (auto missing = job->resolve_users()) return reply_error(proto::errc::no_such_user, *missing);
        auto self = shared_from_this();
        auto st = start_request(id, request_kind::provision);
        st->job = job;
        srv_.provision = job;
        asio::co_spawn(socket_.get_executor(), provision_task(self, st), [this, self, st](std::exception_ptr e) {
            if (e) {
                std::string what = "provision failed";
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    what = ex.what();
                } catch (...) {
                }
                log::error("provision: " + what);
                self->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::internal, what)));
            }
            if (srv_.provision == st->job) srv_.provision.reset();
            self->request_done(st);
        });
    } else if (m.type == proto::type::session_register) {
        if (srv_.stopping()) return reply_error(proto::errc::shutting_down, "the agent is stopping");
        auto q = proto::parse_session_register_request(m.body);
        if (!q) return reply_error(q.code, q.error);
        if (!session_.empty())
            return reply_error(proto::errc::bad_request, "this connection has already registered session '" +
                                                             session_ + "'");
        // Whose session it is: the peer's credentials, not anything it says.
        ucred peer{};
        socklen_t len = sizeof peer;
        if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0)
            return reply_error(proto::errc::internal, "SO_PEERCRED: " + errno_text(errno));
        if (auto refused = srv_.register_session(this, peer.uid, *q))
            return reply_error(refused->first, refused->second);
        session_ = q->name;
        post(proto::encode(proto::make_result(id, proto::json{{"name", q->name}})));
    } else if (m.type == proto::type::session_end) {
        auto q = proto::parse_session_end_request(m.body);
        if (!q) return reply_error(q.code, q.error);
        if (session_.empty())
            return reply_error(proto::errc::not_found, "no session is registered on this connection");
        srv_.end_session(session_, *q);
        session_.clear();
        post(proto::encode(proto::make_result(id)));
    } else if (m.type == proto::type::session_list) {
        if (srv_.stopping()) return reply_error(proto::errc::shutting_down, "the agent is stopping");
        if (in_flight_.size() >= max_in_flight)
            return reply_error(proto::errc::too_many_requests,
                               "more than " + std::to_string(max_in_flight) + " requests in flight");
        auto self = shared_from_this();
        auto st = start_request(id, request_kind::session_list);
        asio::co_spawn(socket_.get_executor(), session_listing(srv_, self, st), [self, st](std::exception_ptr e) {
            if (e) {
                self->post_final(*st, proto::encode(proto::make_error(st->id, proto::errc::internal,
                                                                      "session listing failed")));
            }
            self->request_done(st);
        });
    } else if (m.type == proto::type::run || m.type == proto::type::subscribe) {
        if (srv_.stopping()) return reply_error(proto::errc::shutting_down, "the agent is stopping");
        if (in_flight_.size() >= max_in_flight)
            return reply_error(proto::errc::too_many_requests,
                               "more than " + std::to_string(max_in_flight) + " requests in flight");
        auto self = shared_from_this();
        if (m.type == proto::type::run) {
            auto q = proto::parse_run_request(m.body);
            if (!q) return reply_error(q.code, q.error);
            auto st = start_request(id, request_kind::run);
            asio::co_spawn(socket_.get_executor(), run_command(srv_, self, st, std::move(*q)),
                           [self, st](std::exception_ptr e) {
                               if (e) {
                                   std::string what = "unknown";
                                   try {
                                       std::rethrow_exception(e);
                                   } catch (const std::exception& ex) {
                                       what = ex.what();
                                   } catch (...) {
                                   }
                                   self->post_final(*st, proto::encode(proto::make_error(
                                                             st->id, proto::errc::internal, what)));
                               }
                               self->request_done(st);
                           });
        } else {
            auto q = proto::parse_subscribe_request(m.body);
            if (!q) return reply_error(q.code, q.error);
            const auto last = srv_.events_journal().last_seq();
            if (q->from_seq > last)
                return reply_error(proto::errc::bad_seq, "from_seq " + std::to_string(q->from_seq) +
                                                             " is beyond the journal's last seq " +
                                                             std::to_string(last) + " (journal " +
                                                             srv_.events_journal().id() + ")");
            auto st = start_request(id, request_kind::subscribe);
            asio::co_spawn(socket_.get_executor(), subscription(srv_, self, st, q->from_seq),
                           [self, st](std::exception_ptr e) {
                               if (e) {
                                   self->post_final(*st, proto::encode(proto::make_error(
                                                             st->id, proto::errc::internal, "subscription failed")));
                               }
                               self->request_done(st);
                           });
        }
    } else if (m.type == proto::type::secrets_render || m.type == proto::type::secrets_clear ||
               m.type == proto::type::secrets_list || m.type == proto::type::secrets_discover) {
        handle_secrets(id, m);
    } else {
        reply_error(proto::errc::unknown_type, "unknown request type '" + m.type + "'");
    }
}

// secrets.* (secrets.hpp): done at once, on the loop (a few small writes to a tmpfs).
void connection::handle_secrets(std::uint64_t id, proto::message& m) {
    try {
        if (m.type == proto::type::secrets_render) {
            auto q = proto::parse_secrets_render_request(m.body);
            proto::wipe_secrets(m.body);  // the encoded values; `q` holds them now (and wipes them)
            if (!q) return post(proto::encode(proto::make_error(id, q.code, q.error)));
            const auto r = srv_.secrets().render(*q);
            post(proto::encode(proto::make_secrets_render_result(id, r)));
        } else if (m.type == proto::type::secrets_clear) {
            auto q = proto::parse_secrets_clear_request(m.body);
            if (!q) return post(proto::encode(proto::make_error(id, q.code, q.error)));
            post(proto::encode(proto::make_secrets_clear_result(id, srv_.secrets().clear(q->set))));
        } else if (m.type == proto::type::secrets_list) {
            post(proto::encode(proto::make_secrets_list_result(id, srv_.secrets().list())));
        } else {
            post(proto::encode(proto::make_secrets_discover_result(id, discover_for_user())));
        }
    } catch (const secrets_error& e) {
        log::warning(m.type + ": " + e.what());
        post(proto::encode(proto::make_error(id, e.code(), e.what())));
    }
}

// secrets.discover: the VM user's ~/code (discover.hpp). Synchronous like the other secrets.*
// requests: the scan has a budget of directories and bytes.
proto::secrets_discover_result connection::discover_for_user() const {
    const std::string& name = srv_.options().user;
    if (name.empty()) throw secrets_error(proto::errc::bad_request, "the agent has no --user: whose ~/code is it?");
    const auto user = find_user(name);
    if (!user) throw secrets_error(proto::errc::no_such_user, "no user '" + name + "' in /etc/passwd");
    std::string home = user->home;
    while (home.size() > 1 && home.back() == '/') home.pop_back();
    // A home that is not an absolute path has no ~/code to speak of.
    if (home.empty() || home.front() != '/') return {};
    return discover_envrc_secrets(home == "/" ? "/code" : home + "/code");
}

// --- server -------------------------------------------------------------------------------------

std::optional<std::pair<proto::errc, std::string>> server::register_session(
    const connection* owner, uid_t uid, const proto::session_register_request& q) {
    if (const auto it = sessions_.find(q.name); it != sessions_.end())
        return std::pair{proto::errc::busy, "a session named '" + q.name + "' is already registered (pid " +
                                                std::to_string(it->second.pid) + ")"};
    if (sessions_.size() >= proto::max_sessions)
        return std::pair{proto::errc::busy, std::to_string(proto::max_sessions) + " sessions are registered already"};
    live_session s;
    s.name = q.name;
    s.agent = q.agent;
    const auto user = find_uid(uid);
    s.user = user ? user->name : std::to_string(uid);
    s.pid = q.pid;
    s.tty = q.tty;
    s.started_at = std::chrono::system_clock::now() - std::chrono::milliseconds(q.running_ms);
    s.owner = owner;
    log::info("session " + s.name + " (" + s.agent + ") " + (q.resumed ? "registered again" : "started") + " by " +
              s.user + ", pid " + std::to_string(s.pid));
    // Registered again after an agent restart: its session.started is already in the journal.
    if (!q.resumed) {
        proto::json fields = {{"name", s.name}, {"agent", s.agent}, {"user", s.user}, {"pid", s.pid}};
        if (!s.tty.empty()) fields["tty"] = s.tty;
        append_event("session.started", fields);
    }
    sessions_.emplace(s.name, std::move(s));
    return std::nullopt;
}

void server::end_session(const std::string& name, const proto::session_end_request& q) {
    const auto it = sessions_.find(name);
    if (it == sessions_.end()) return;
    const live_session s = std::move(it->second);
    sessions_.erase(it);
    proto::json fields = {{"name", s.name}, {"agent", s.agent}, {"user", s.user}, {"pid", s.pid}};
    if (q.signal) {
        fields["reason"] = "signal";
        fields["signal"] = *q.signal;
    } else {
        fields["reason"] = "exit";
        fields["exit_code"] = q.exit_code.value_or(-1);
    }
    fields["duration_ms"] = q.duration_ms;
    log::info("session " + s.name + " ended: " +
              (q.signal ? "signal " + std::to_string(*q.signal) : "exit " + std::to_string(q.exit_code.value_or(-1))));
    append_event("session.ended", fields);
}

void server::session_owner_gone(const connection* owner) {
    for (auto it = sessions_.begin(); it != sessions_.end();) {
        if (it->second.owner != owner) {
            ++it;
            continue;
        }
        const live_session s = std::move(it->second);
        it = sessions_.erase(it);
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now() -
                                                                              s.started_at);
        log::warning("session " + s.name + " lost: its wrapper (pid " + std::to_string(s.pid) +
                     ") closed its connection without reporting an end");
        try {
            append_event("session.ended", proto::json{{"name", s.name},
                                                      {"agent", s.agent},
                                                      {"user", s.user},
                                                      {"pid", s.pid},
                                                      {"reason", "lost"},
                                                      {"duration_ms", std::max<std::int64_t>(0, ms.count())}});
        } catch (const std::exception& e) {
            // Called as a connection ends: a full disk must not take the connection's cleanup with it.
            log::error(std::string("journal: ") + e.what());
        }
    }
}

const live_session* server::find_session(const std::string& name) const {
    const auto it = sessions_.find(name);
    return it == sessions_.end() ? nullptr : &it->second;
}

std::vector<live_session> server::sessions() const {
    std::vector<live_session> out;
    out.reserve(sessions_.size());
    for (const auto& [name, s] : sessions_) out.push_back(s);
    return out;
}

std::uint64_t server::append_event(std::string_view name, const proto::json& fields) {
    const std::uint64_t seq =
        journal_.append(name, fields, events::format_timestamp(std::chrono::system_clock::now()));
    events_.notify_all();
    if (!sync_pending_) {
        sync_pending_ = true;
        spawn_task(sync_later(), "journal sync");
    }
    return seq;
}

secrets_setup server::secrets_setup_for_store() {
    secrets_setup s;
    s.dir = options_.secrets_dir;
    s.default_user = options_.user;
    s.emit = [this](std::string_view event, const proto::json& fields) { append_event(event, fields); };
    return s;
}

provision_setup server::provision_setup_for_job() {
    provision_setup s;
    s.socket_path = options_.socket_path;
    s.runtime_dir_root = options_.runtime_dir_root;
    s.state = &steps_;
    s.emit = [this](std::string_view event, const proto::json& fields) { append_event(event, fields); };
    return s;
}

awaitable<void> server::sync_later() {
    sync_timer_.expires_after(options_.sync_interval);
    co_await sync_timer_.async_wait(use_nothrow);
    sync_pending_ = false;
    journal_.sync();
}

proto::hello_result server::hello() const {
    proto::hello_result h;
    h.agent_version = MACHINE_AGENT_VERSION;
    h.capabilities = {"run",       "cancel",           "health",      "subscribe",   "emit",
                      "provision", "session.register", "session.end", "session.list",
                      "secrets.render", "secrets.clear", "secrets.list", "secrets.discover"};
    h.boot_id = boot_id_;
    h.journal = {journal_.id(), journal_.first_seq(), journal_.last_seq()};
    h.deployment.binary_sha256 = binary_sha256_;
    try {
        h.deployment.unit_sha256 = sha256::hex_of_file(options_.unit_file);
    } catch (const std::exception&) {
        // not installed as a unit (tests, a manual run): the host reinstalls it
    }
    h.deployment.user = options_.user;
    return h;
}

proto::health_result server::health() const {
    proto::health_result h;
    h.uptime_ms = ms_since(started_);
    h.rss_kib = rss_kib();
    h.clients = connections_.size();
    h.running = running;
    h.subscribers = subscribers;
    h.journal_first_seq = journal_.first_seq();
    h.journal_last_seq = journal_.last_seq();
    h.journal_events = journal_.events();
    h.journal_bytes = journal_.bytes();
    return h;
}

void server::spawn_task(awaitable<void> task, const char* what) {
    asio::co_spawn(io_, std::move(task), [what](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log::error(std::string(what) + ": " + ex.what());
        } catch (...) {
            log::error(std::string(what) + " failed");
        }
    });
}

void server::prepare_socket_directory(gid_t gid) {
    const std::string dir = [&] {
        const auto slash = options_.socket_path.rfind('/');
        return slash == std::string::npos ? std::string(".") : options_.socket_path.substr(0, slash);
    }();
    if (dir.empty() || dir == "/") throw std::runtime_error("the socket needs a directory of its own, not /");
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
        const auto parent = dir.substr(0, dir.rfind('/'));
        if (!parent.empty()) {
            std::error_code ec;
            std::filesystem::create_directories(parent, ec);
        }
        if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
            throw std::runtime_error("mkdir " + dir + ": " + errno_text(errno));
        if (::lstat(dir.c_str(), &st) != 0) throw std::runtime_error("stat " + dir + ": " + errno_text(errno));
    }
    if (!S_ISDIR(st.st_mode)) throw std::runtime_error(dir + " is not a directory");
    // The directory is what keeps other users out: it must be ours alone.
    if (st.st_mode & (S_ISVTX | S_IWOTH))
        throw std::runtime_error(dir + " is shared (sticky or world-writable); give the socket its own directory");
    if (::chown(dir.c_str(), ::geteuid(), gid) != 0)
        throw std::runtime_error("chown " + dir + ": " + errno_text(errno));
    if (::chmod(dir.c_str(), 0750) != 0) throw std::runtime_error("chmod " + dir + ": " + errno_text(errno));
}

int server::start() {
    boot_id_ = boot_id_from(options_.boot_id_file);
    try {
        // Hashed once: the file may be replaced by an upgrade while this process still runs.
        binary_sha256_ = sha256::hex_of_file("/proc/self/exe");
    } catch (const std::exception& e) {
        log::warning(std::string("cannot hash my own executable: ") + e.what());
    }

    // Whose group may open the socket.
    gid_t gid = ::getegid();
    std::optional<user_info> vm_user;
    if (!options_.user.empty()) {
        vm_user = find_user(options_.user);
        if (vm_user) gid = vm_user->gid;
        else log::warning("no user '" + options_.user + "' yet; the socket's group stays " + std::to_string(gid));
    }
    if (!options_.group.empty()) {
        const auto g = find_group(options_.group);
        if (!g) {
            log::error("no group '" + options_.group + "'");
            return 1;
        }
        gid = *g;
    }

    try {
        const auto rec = journal_.open();
        log::info("journal " + options_.journal_path + ": " + std::to_string(rec.events) + " events, seq " +
                  std::to_string(journal_.first_seq()) + ".." + std::to_string(journal_.last_seq()) +
                  (rec.torn_bytes ? ", cut a torn last line of " + std::to_string(rec.torn_bytes) + " bytes" : "") +
                  (rec.bad_lines ? ", dropped " + std::to_string(rec.bad_lines) + " bad lines" : ""));
        append_event("agent.up", proto::json{{"version", MACHINE_AGENT_VERSION},
                                             {"boot_id", boot_id_},
                                             {"pid", static_cast<std::int64_t>(::getpid())}});
    } catch (const std::exception& e) {
        log::error(std::string("journal: ") + e.what());
        return 1;
    }

    try {
        prepare_socket_directory(gid);
        // A live agent on this socket wins; a stale socket file is replaced.
        asio::local::stream_protocol::endpoint endpoint(options_.socket_path);
        struct stat st {};
        if (::lstat(options_.socket_path.c_str(), &st) == 0) {
            unix_socket probe(io_);
            asio::error_code ec;
            probe.connect(endpoint, ec);
            if (!ec) throw std::runtime_error("another agent is listening on " + options_.socket_path);
            ::unlink(options_.socket_path.c_str());
        }
        acceptor_.open();
        ::fcntl(acceptor_.native_handle(), F_SETFD, FD_CLOEXEC);
        const mode_t old = ::umask(0117);  // the socket is born 0660
        asio::error_code ec;
        acceptor_.bind(endpoint, ec);
        ::umask(old);
        if (ec) throw std::runtime_error("bind " + options_.socket_path + ": " + ec.message());
        if (::chown(options_.socket_path.c_str(), ::geteuid(), gid) != 0 ||
            ::chmod(options_.socket_path.c_str(), 0660) != 0)
            throw std::runtime_error("chown/chmod " + options_.socket_path + ": " + errno_text(errno));
        acceptor_.listen(64);
    } catch (const std::exception& e) {
        log::error(e.what());
        return 1;
    }
    log::info("machine-agent " MACHINE_AGENT_VERSION " [" + std::to_string(::getpid()) + "] listening on " +
              options_.socket_path + " (boot " + boot_id_ + ")");

    signals_.async_wait([this](const asio::error_code& ec, int sig) {
        if (!ec) stop(sig);
    });
    spawn_task(accept_loop(), "accept loop");
    if (options_.systemd && !journal_.has_event_for_boot("boot.finished", boot_id_))
        spawn_task(watch_boot(), "boot watch");
    else if (options_.systemd)
        log::info("boot.finished of this boot is in the journal: not watching the boot");
    if (!options_.user.empty() && !journal_.has_event_for_boot("user.ready", boot_id_))
        spawn_task(watch_user(), "user watch");
    else if (!options_.user.empty())
        log::info("user.ready of this boot is in the journal: not watching for the user");
    if (options_.systemd) sd_notify("READY=1");
    return 0;
}

void server::stop(int signal_number) {
    if (stopping_) return;
    stopping_ = true;
    log::info("signal " + std::to_string(signal_number) + ": stopping");
    if (options_.systemd) sd_notify("STOPPING=1");
    asio::error_code ignored;
    acceptor_.close(ignored);
    for (const auto& c : connections_) c->shutdown_requests();
    journal_.sync();
    // A moment for the writers to deliver the last messages, then out.
    auto timer = std::make_shared<asio::steady_timer>(io_, shutdown_linger);
    timer->async_wait([this, timer](const asio::error_code&) {
        for (const auto& c : connections_) c->kill_remaining();
        journal_.sync();
        io_.stop();
    });
}

awaitable<void> server::accept_loop() {
    asio::steady_timer backoff(io_);
    while (!stopping_) {
        auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow);
        if (stopping_) break;
        if (ec) {
            // Out of fds, for instance: wait a little rather than spin.
            log::warning("accept: " + ec.message());
            backoff.expires_after(100ms);
            co_await backoff.async_wait(use_nothrow);
            continue;
        }
        ::fcntl(socket.native_handle(), F_SETFD, FD_CLOEXEC);
        // A session's wrapper holds its connection for the session's life: those do not count
        // against the clients limit (sessions have their own, max_sessions).
        const std::size_t holders = std::min(sessions_.size(), connections_.size());
        if (connections_.size() - holders >= options_.max_clients) {
            asio::error_code wec;
            asio::write(socket,
                        asio::buffer(proto::encode(proto::make_error(std::nullopt, proto::errc::too_many_clients,
                                                                     "the agent serves at most " +
                                                                         std::to_string(options_.max_clients) +
                                                                         " clients"))),
                        wec);
            socket.close(wec);
            continue;
        }
        auto c = std::make_shared<connection>(*this, std::move(socket));
        connections_.insert(c);
        asio::co_spawn(io_, c->serve(), [this, c](std::exception_ptr e) {
            if (e) log::error("a connection failed");
            session_owner_gone(c.get());  // normally done when its reading ended
            connections_.erase(c);
        });
    }
}

awaitable<void> server::watch_boot() {
    // `systemctl is-system-running --wait` returns once the boot transaction has finished and
    // prints the state. argv only; its stderr is not ours to show.
    spawn_spec spec;
    spec.argv = {options_.systemctl, "is-system-running", "--wait"};
    spec.env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"};
    spec.pipe_stderr = false;
    child_process child;
    try {
        child = spawn(spec);
    } catch (const spawn_failure& e) {
        log::warning(std::string("cannot watch the boot: ") + e.what());
        co_return;
    }
    auto ex = co_await asio::this_coro::executor;
    descriptor out(ex, child.stdout_fd);
    std::string text;
    std::array<char, 512> buf;
    for (;;) {
        auto [ec, n] = co_await out.async_read_some(asio::buffer(buf), use_nothrow);
        if (ec) break;
        if (text.size() < 4096) text.append(buf.data(), n);
    }
    out.close();
    co_await wait_exit(child.pid, child.pidfd);
    const std::string state = trim(text);
    if (state != "running" && state != "degraded" && state != "maintenance") {
        log::warning("systemctl is-system-running says '" + state + "': no boot.finished");
        co_return;
    }
    if (journal_.has_event_for_boot("boot.finished", boot_id_)) co_return;
    append_event("boot.finished", proto::json{{"boot_id", boot_id_}, {"state", state}});
    log::info("boot finished: " + state);
}

awaitable<void> server::watch_user() {
    asio::steady_timer poll(io_);
    while (!stopping_) {
        if (const auto user = find_user(options_.user)) {
            const std::string dir = options_.runtime_dir_root + "/" + std::to_string(user->uid);
            struct stat st {};
            if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == user->uid) {
                if (!journal_.has_event_for_boot("user.ready", boot_id_)) {
                    append_event("user.ready", proto::json{{"boot_id", boot_id_},
                                                           {"user", user->name},
                                                           {"uid", static_cast<std::uint64_t>(user->uid)}});
                    log::info("user " + user->name + " ready");
                }
                co_return;
            }
        }
        poll.expires_after(options_.user_poll);
        co_await poll.async_wait(use_nothrow);
    }
}

} // namespace

int serve(const server_options& options) {
    // Writing to a client that has gone must give EPIPE, not kill the agent.
    ::signal(SIGPIPE, SIG_IGN);
    ::umask(077);
    asio::io_context io(1);
    server srv(io, options);
    if (const int rc = srv.start(); rc != 0) return rc;
    io.run();
    srv.events_journal().sync();
    log::info("stopped");
    return 0;
}

} // namespace machine::agent
