// The agent's server (server_core.hpp): start-up (journal, socket), the accept loop, the boot
// and user watches, sd_notify, shutdown, and what every request shares (journal events, hello,
// health). Connections are connection.cpp; requests are the table in dispatch.cpp.
#include "server_core.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "connection.hpp"
#include "files.hpp"
#include "log.hpp"
#include "machine/events.hpp"
#include "machine/sha256.hpp"
#include "machine/supervise.hpp"
#include "network.hpp"
#include "requests.hpp"
#include "spawn.hpp"
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
using namespace std::chrono_literals;
using unix_socket = asio::local::stream_protocol::socket;

constexpr auto use_nothrow = as_tuple(use_awaitable);

constexpr auto shutdown_linger = 300ms;

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

} // namespace

std::uint64_t ms_since(std::chrono::steady_clock::time_point t0) {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
}

server::server(asio::io_context& io, server_options options)
    : io_(io), options_(std::move(options)), journal_(options_.journal_path, options_.journal_limits),
      steps_(options_.steps_state_path), secrets_(io.get_executor(), secrets_setup_for_store()),
      network_(options_.nft, options_.network_rules),
      sessions_([this](std::string_view event, const proto::json& fields) { append_event(event, fields); }),
      acceptor_(io), signals_(io, SIGTERM, SIGINT), events_(io.get_executor()), sync_timer_(io),
      started_(std::chrono::steady_clock::now()) {}

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
    h.capabilities = capabilities();  // the request table (dispatch.cpp)
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
    // machine's network rules go in before systemd hears we are ready: the unit is ordered
    // before network-pre.target, so the VM's network comes up with them in place.
    struct stat rules {};
    if (::stat(options_.network_rules.c_str(), &rules) == 0) spawn_task(apply_network_then_notify(), "network rules");
    else if (options_.systemd) sd_notify("READY=1");
    return 0;
}

void server::report_network(const network_outcome& outcome, std::string_view trigger) {
    if (outcome.applied) {
        log::info("network rules " + options_.network_rules + " applied (" + std::string(trigger) + ")");
        append_event("network.applied", proto::json{{"path", options_.network_rules},
                                                    {"trigger", std::string(trigger)},
                                                    {"boot_id", boot_id_}});
        return;
    }
    // Loud: without them, a VM on Lima's own network reaches the host.
    log::error("network rules " + options_.network_rules + " NOT applied (" + std::string(trigger) +
               "): " + outcome.error);
    append_event("network.failed", proto::json{{"path", options_.network_rules},
                                               {"trigger", std::string(trigger)},
                                               {"boot_id", boot_id_},
                                               {"nft_found", outcome.nft_found},
                                               {"error", outcome.error}});
}

awaitable<void> server::apply_network_then_notify() {
    const network_outcome outcome = co_await network_.apply_file(std::chrono::seconds(20));
    report_network(outcome, "start");
    if (options_.systemd) sd_notify("READY=1");
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
            sessions_.owner_gone(c.get());  // normally done when its reading ended
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
    std::string text;
    proc::child_watch watch;
    watch.pid = child.pid;
    watch.pidfd = child.pidfd;
    watch.out = proc::output_pipe::collected(child.stdout_fd, text, 4096, 512);
    auto draining = proc::drain_and_reap(std::move(watch));  // named first: house style §4
    co_await std::move(draining);
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
