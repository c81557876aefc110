// The host's side of the guest agent, with real parts: a real OpenSSH sshd on 127.0.0.1 with
// throwaway keys (tests/support/sshd.hpp) and the real machine-agent running on this host
// behind it, reached through an SSH direct-streamlocal channel as `machine` reaches a VM's.
#include <boost/test/unit_test.hpp>

#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/redirect_error.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/ssh.hpp"
#include "../support/sshd.hpp"
#include "test_support.hpp"

using namespace machine;
namespace fs = std::filesystem;
namespace pr = machine::protocol;
using namespace std::chrono_literals;

namespace {

// A directory on a tmpfs for the agent's secrets (--secrets-dir), never /run/machine-secrets:
// under /dev/shm, so that an agent that is not root finds a tmpfs there; as root it mounts its
// own on top, which goes again at the end.
struct secrets_place {
    fs::path parent, dir;
    secrets_place() {
        std::random_device rd;
        parent = fs::path("/dev/shm") / ("machine-test-secrets-" + std::to_string(rd()));
        fs::create_directories(parent);
        dir = parent / "secrets";
    }
    ~secrets_place() {
        ::umount2(dir.c_str(), MNT_DETACH);  // EINVAL when nothing is mounted there: fine
        std::error_code ec;
        fs::remove_all(parent, ec);
    }
    secrets_place(const secrets_place&) = delete;
    secrets_place& operator=(const secrets_place&) = delete;
};

// The real agent, on a private socket and journal, as the current user. With `user_home`, the
// agent sees that directory as the --user's home: it reads homes from /etc/passwd only, so it
// runs in a mount namespace of its own where /etc/passwd is a copy saying so (root only; the
// agent's secrets tmpfs is then in that namespace too, out of the test's sight).
struct host_agent {
    machine::test::temp_dir dir;
    secrets_place secrets;
    pid_t pid = -1;
    std::optional<fs::path> user_home;
    fs::path socket() const { return dir.path / "agent.sock"; }

    host_agent() { start(); }
    explicit host_agent(fs::path home) : user_home(std::move(home)) { start(); }
    ~host_agent() { stop(); }
    host_agent(const host_agent&) = delete;
    host_agent& operator=(const host_agent&) = delete;

    void start() {
        std::string user = machine::test::run_sync({"id", "-un"});
        user = user.substr(0, user.find('\n'));
        std::string group = machine::test::run_sync({"id", "-gn"});
        group = group.substr(0, group.find('\n'));
        const std::string passwd = (dir.path / "passwd").string();
        if (user_home) write_passwd_with_home(passwd, user, *user_home);
        pid = ::fork();
        if (pid == 0) {
            for (int fd = 3; fd < 1024; ++fd) ::close(fd);
            if (user_home && (::unshare(CLONE_NEWNS) != 0 ||
                              ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
                              ::mount(passwd.c_str(), "/etc/passwd", nullptr, MS_BIND, nullptr) != 0)) {
                static const char msg[] = "host_agent: no mount namespace with a copy of /etc/passwd\n";
                (void)!::write(2, msg, sizeof msg - 1);
                ::_exit(126);
            }
            ::execl(MACHINE_AGENT_BINARY, "machine-agent", "--socket", socket().c_str(), "--journal",
                    (dir.path / "journal.jsonl").c_str(), "--user", user.c_str(), "--group", group.c_str(),
                    "--secrets-dir", secrets.dir.c_str(), "--no-systemd", nullptr);
            ::_exit(127);
        }
        for (int i = 0; i < 200 && !fs::exists(socket()); ++i) ::usleep(10000);
        if (!fs::exists(socket())) stop();  // no destructor runs after a failure in the constructor
        BOOST_REQUIRE_MESSAGE(pid > 0, "the agent did not create its socket");
    }
    void stop() {
        if (pid <= 0) return;
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        pid = -1;
    }

private:
    // /etc/passwd with `user`'s home (the 6th field) replaced by `home`, into `file`.
    static void write_passwd_with_home(const std::string& file, const std::string& user, const fs::path& home) {
        std::ifstream in("/etc/passwd");
        std::ofstream out(file);
        bool found = false;
        for (std::string line; std::getline(in, line);) {
            std::vector<std::string> fields;
            for (std::size_t at = 0;;) {
                const auto colon = line.find(':', at);
                fields.push_back(line.substr(at, colon == std::string::npos ? colon : colon - at));
                if (colon == std::string::npos) break;
                at = colon + 1;
            }
            if (fields.size() == 7 && fields[0] == user) {
                fields[5] = home.string();
                found = true;
                line.clear();
                for (std::size_t k = 0; k < fields.size(); ++k) line += (k ? ":" : "") + fields[k];
            }
            out << line << '\n';
        }
        out.close();
        BOOST_REQUIRE_MESSAGE(found && out, "no /etc/passwd entry for " << user << " to copy into " << file);
        fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                  fs::perms::others_read);
    }
};

// Emits events through the agent's socket directly (no SSH), one request at a time.
class local_emitter {
public:
    explicit local_emitter(const fs::path& socket) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket.c_str());
        BOOST_REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    }
    ~local_emitter() { ::close(fd_); }
    void emit(std::int64_t i) {
        pr::emit_request r;
        r.event = "test.n";
        r.fields = pr::json::object({{"i", i}});
        const std::string line = pr::encode(pr::make_emit_request(static_cast<std::uint64_t>(i) + 1, r));
        BOOST_REQUIRE(::write(fd_, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
        for (char c = 0; c != '\n';) BOOST_REQUIRE(::read(fd_, &c, 1) == 1);  // its result
    }

private:
    int fd_ = -1;
};

struct fixture {
    machine::test::sshd_server sshd;
    host_agent agent;
    asio::io_context io;
    std::vector<std::string> problems;

    std::function<void(const std::string&)> on_problem() {
        return [this](const std::string& p) { problems.push_back(p); };
    }
};

asio::awaitable<std::shared_ptr<ssh::session>> connect(const machine::test::sshd_server& sshd) {
    auto s = co_await ssh::session::connect(sshd.endpoint(), sshd.pin("vm", true));
    co_return s;
}

} // namespace

BOOST_AUTO_TEST_SUITE(guest_over_ssh)

BOOST_FIXTURE_TEST_CASE(hello_and_run_through_the_channel, fixture) {
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string());
        const auto hello = co_await conn->hello("machine tests");
        BOOST_TEST(hello.protocol == pr::version);
        BOOST_TEST(!hello.boot_id.empty());
        pr::run_request run;
        run.argv = {"sh", "-c", "printf '%s' \"$1\"; echo err >&2; exit 3", "sh", "a;b $(c) 'd'"};
        run.user = sshd.user();
        std::string out, err;
        auto on_output = [&](const pr::output_chunk& c) { (c.stream == "stdout" ? out : err) += c.data; };
        const auto result = co_await conn->run(run, on_output);
        BOOST_TEST(result.exit_code.value_or(-1) == 3);
        BOOST_TEST(out == "a;b $(c) 'd'");
        BOOST_TEST(err == "err\n");
        session->close();
    };
    machine::test::co_run(io, task());
    BOOST_TEST(problems.empty());
}

BOOST_FIXTURE_TEST_CASE(ten_thousand_events_arrive_in_order, fixture) {
    constexpr std::int64_t count = 10000;
    std::vector<std::uint64_t> seqs;
    std::vector<std::int64_t> payloads;
    bool done = false;
    auto on_event = [&](const pr::event_record& e) {
        if (e.event == "test.n") {
            seqs.push_back(e.seq);
            payloads.push_back(e.fields.value("i", -1));
        }
        return payloads.size() < static_cast<std::size_t>(count);
    };
    auto subscriber = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string());
        const auto hello = co_await conn->hello("subscriber");
        co_await conn->subscribe(hello.journal.last_seq, on_event);
        session->close();
        done = true;
    };
    asio::co_spawn(io, std::move(subscriber), asio::detached);
    io.run_for(3s);  // subscribed, live
    local_emitter emitter(agent.socket());
    const auto t0 = std::chrono::steady_clock::now();
    for (std::int64_t i = 0; i < count; ++i) {
        emitter.emit(i);
        if (i % 500 == 0) io.poll();  // the subscriber reads while events keep coming
    }
    for (int i = 0; i < 600 && !done; ++i) io.run_for(100ms);
    BOOST_TEST_MESSAGE("10,000 events emitted and received over ssh in " << machine::test::seconds_since(t0) << " s");
    BOOST_REQUIRE(done);
    BOOST_REQUIRE(payloads.size() == static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) {
        if (payloads[i] != i || (i > 0 && seqs[i] != seqs[i - 1] + 1))
            BOOST_FAIL("event " << i << " out of order: payload " << payloads[i] << " seq " << seqs[i]);
    }
    BOOST_TEST(problems.empty());
}

BOOST_FIXTURE_TEST_CASE(a_killed_connection_resumes_without_loss_or_duplicates, fixture) {
    // Events keep coming (from a local client, as provisioning scripts in a VM emit them) while
    // the SSH connection of the subscriber dies and comes back.
    std::vector<std::int64_t> seen;
    std::uint64_t last_seq = 0;
    local_emitter emitter(agent.socket());
    bool lost = false, first_done = false;
    auto on_event = [&](const pr::event_record& e) {
        last_seq = e.seq;
        if (e.event == "test.n") seen.push_back(e.fields.value("i", -1));
        if (seen.size() == 1000 && !lost) sshd.stop();  // the connection dies mid-stream
        return seen.size() < 3000;
    };
    auto first = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string());
        last_seq = (co_await conn->hello("first")).journal.last_seq;
        try {
            co_await conn->subscribe(last_seq, on_event);
        } catch (const ssh::connection_lost&) {
            lost = true;
        }
        first_done = true;
    };
    asio::co_spawn(io, std::move(first), asio::detached);
    io.run_for(3s);  // connected and subscribed
    for (std::int64_t i = 0; i < 1000; ++i) emitter.emit(i);
    for (int i = 0; i < 100 && !first_done; ++i) io.run_for(100ms);
    BOOST_REQUIRE(first_done);
    BOOST_TEST(lost);
    BOOST_TEST(seen.size() == 1000u);
    for (std::int64_t i = 1000; i < 3000; ++i) emitter.emit(i);  // while the connection is down
    sshd.start();
    io.restart();
    auto resume = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string());
        co_await conn->subscribe(last_seq, on_event);
        session->close();
    };
    machine::test::co_run(io, resume());
    BOOST_REQUIRE(seen.size() == 3000u);
    for (std::int64_t i = 0; i < 3000; ++i) BOOST_REQUIRE_EQUAL(seen[i], i);
}

BOOST_FIXTURE_TEST_CASE(a_changed_host_key_is_refused, fixture) {
    auto first = [&]() -> asio::awaitable<void> { (co_await connect(sshd))->close(); };
    machine::test::co_run(io, first());
    const std::string old_fp = sshd.host_fingerprint();
    sshd.restart_with_new_host_key();
    auto second = [&]() -> asio::awaitable<void> {
        co_await ssh::session::connect(sshd.endpoint(), sshd.pin("vm", false));
    };
    try {
        machine::test::co_run(io, second());
        BOOST_FAIL("connected despite a changed host key");
    } catch (const ssh::host_key_mismatch& e) {
        const std::string msg = e.what();
        BOOST_TEST(msg.find("'vm'") != std::string::npos);
        BOOST_TEST(msg.find(old_fp) != std::string::npos);
        BOOST_TEST(msg.find(sshd.host_fingerprint()) != std::string::npos);
    }
}

// A hostile or broken "agent": a Unix socket server on this host, reached through sshd like
// the real one, that answers hello with garbage around a valid result, then cuts a line.
BOOST_FIXTURE_TEST_CASE(garbage_from_the_guest_is_reported_and_skipped, fixture) {
    const fs::path evil = agent.dir.path / "evil.sock";
    asio::local::stream_protocol::acceptor acceptor(io, asio::local::stream_protocol::endpoint(evil.string()));
    auto serve = [&]() -> asio::awaitable<void> {
        auto peer = co_await acceptor.async_accept(asio::use_awaitable);
        std::string request(4096, '\0');
        co_await peer.async_read_some(asio::buffer(request), asio::use_awaitable);  // the hello
        std::string reply = std::string(pr::max_line_bytes + 10, 'x') + "\n";  // oversized
        reply += "{not json\n";
        reply += R"({"v":1,"id":1,"type":"surprise"})" "\n";                 // unknown type
        reply += R"({"v":1,"id":99,"type":"result"})" "\n";                  // not ours
        reply += pr::encode(pr::make_hello_result(1, pr::hello_result{}));
        co_await asio::async_write(peer, asio::buffer(reply), asio::use_awaitable);
        co_await peer.async_read_some(asio::buffer(request), asio::use_awaitable);  // subscribe
        const std::string cut = R"({"v":1,"id":2,"type":"event","seq":1,"ts":"2026-)";
        co_await asio::async_write(peer, asio::buffer(cut), asio::use_awaitable);
        peer.close();  // abrupt EOF in the middle of a line
    };
    asio::co_spawn(io, std::move(serve), asio::detached);
    bool lost = false;
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), evil.string());
        const auto hello = co_await conn->hello("victim");
        BOOST_TEST(hello.protocol == pr::version);
        auto on_event = [](const pr::event_record&) { return true; };
        try {
            co_await conn->subscribe(0, on_event);
        } catch (const ssh::connection_lost&) {
            lost = true;
        }
        session->close();
    };
    machine::test::co_run(io, task());
    BOOST_TEST(lost);
    BOOST_REQUIRE(problems.size() == 5u);
    BOOST_TEST(problems[0].find("line_too_long") != std::string::npos);
    BOOST_TEST(problems[1].find("invalid_json") != std::string::npos);
    BOOST_TEST(problems[2].find("unexpected 'surprise'") != std::string::npos);
    BOOST_TEST(problems[3].find("unexpected 'result'") != std::string::npos);
    BOOST_TEST(problems[4].find("cut off") != std::string::npos);
}

// Between sshd and the agent: passes on what the agent sends, and the first `limit` bytes of
// what the host sends; then kills sshd (the host's SSH connection dies with it, as when a VM
// stops or the network goes) and closes the agent's end. The agent is left with part of a line.
struct cutting_relay {
    asio::local::stream_protocol::acceptor acceptor;
    std::string upstream_path;
    machine::test::sshd_server& sshd;
    std::size_t limit;
    std::size_t passed = 0;
    bool cut = false, done = false;

    cutting_relay(asio::io_context& io, const fs::path& path, const fs::path& upstream, machine::test::sshd_server& s,
                  std::size_t cut_after)
        : acceptor(io, asio::local::stream_protocol::endpoint(path.string())), upstream_path(upstream.string()),
          sshd(s), limit(cut_after) {}
};

using unix_socket = asio::local::stream_protocol::socket;

asio::awaitable<void> relay_back(std::shared_ptr<unix_socket> from, std::shared_ptr<unix_socket> to) {
    std::array<char, 16384> buf{};
    asio::error_code ec;
    for (;;) {
        const std::size_t n = co_await from->async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;
        co_await asio::async_write(*to, asio::buffer(buf.data(), n), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;
    }
}

asio::awaitable<void> relay_once(cutting_relay& r) {
    auto ex = co_await asio::this_coro::executor;
    auto peer = std::make_shared<unix_socket>(co_await r.acceptor.async_accept(asio::use_awaitable));
    auto upstream = std::make_shared<unix_socket>(ex);
    const asio::local::stream_protocol::endpoint agent_end(r.upstream_path);
    co_await upstream->async_connect(agent_end, asio::use_awaitable);
    asio::co_spawn(ex, relay_back(upstream, peer), asio::detached);
    std::array<char, 16384> buf{};
    asio::error_code ec;
    while (r.passed < r.limit) {
        const std::size_t n = co_await peer->async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        const std::size_t take = std::min(n, r.limit - r.passed);
        co_await asio::async_write(*upstream, asio::buffer(buf.data(), take), asio::use_awaitable);
        r.passed += take;
        r.cut = take < n || r.passed == r.limit;
    }
    r.sshd.stop();  // the SSH connection is gone before the agent sees its end of the stream
    upstream->close();
    peer->close();
    r.done = true;
}

std::string read_whole(const fs::path& p) { return paths::read_file(p); }

std::set<std::string> names_in(const fs::path& dir) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
    return out;
}

BOOST_FIXTURE_TEST_CASE(a_render_cut_by_a_dying_connection_leaves_the_set_as_it_was, fixture) {
    const std::string marker = "MARKER-4c1d-must-not-leak";
    const fs::path file = agent.secrets.dir / "web.env";

    // DATABASE_URL=<url> as the set web, through a healthy connection.
    auto render_url = [&](std::string url) -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string());
        pr::secrets_render_request q;
        q.set = "web";
        q.variables.push_back({"DATABASE_URL", std::move(url)});
        const auto r = co_await conn->render_secrets(std::move(q));
        BOOST_TEST(r.count == 1u);
        BOOST_TEST(r.path == file.string());
        session->close();
    };
    // An earlier version of the set.
    machine::test::co_run(io, render_url("postgres://before"));
    const std::string before = read_whole(file);
    BOOST_TEST(before.find("export DATABASE_URL='postgres://before'") != std::string::npos);

    // A large new version (about 875 KiB on the wire), cut after 256 KiB by sshd dying.
    pr::secrets_render_request big;
    big.set = "web";
    for (int i = 0; i < 10; ++i)
        big.variables.push_back({"BIG_" + std::to_string(i), marker + std::string(60000, static_cast<char>('a' + i))});
    const std::size_t line_size = pr::encode(pr::make_secrets_render_request(1, big)).size();
    constexpr std::size_t cut_after = 256 << 10;
    BOOST_REQUIRE(line_size > 3 * cut_after);
    cutting_relay relay(io, agent.dir.path / "relay.sock", agent.socket(), sshd, cut_after);
    asio::co_spawn(io, relay_once(relay), asio::detached);

    std::string failure;
    bool finished = false;
    auto second = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), (agent.dir.path / "relay.sock").string());
        try {
            co_await conn->render_secrets(std::move(big));
            failure = "(no failure)";
        } catch (const std::exception& e) {
            failure = e.what();
        }
        finished = true;
    };
    asio::co_spawn(io, std::move(second), asio::detached);
    for (int i = 0; i < 300 && !(finished && relay.done); ++i) io.run_for(100ms);
    BOOST_REQUIRE(finished);
    BOOST_REQUIRE(relay.done);
    BOOST_TEST(relay.cut);
    BOOST_TEST(relay.passed == cut_after);  // the agent got part of the line, never its end
    BOOST_TEST_MESSAGE("the host saw: " << failure);
    BOOST_TEST(failure != "(no failure)");
    BOOST_TEST(failure.find(marker) == std::string::npos);
    for (const auto& p : problems) BOOST_TEST(p.find(marker) == std::string::npos);

    // The agent has seen the end of its stream: nothing was decoded, so nothing was written.
    // Polled for a while: a write after the cut would show up here.
    for (int i = 0; i < 10; ++i) {
        ::usleep(50000);
        BOOST_TEST((names_in(agent.secrets.dir) == std::set<std::string>{"web.env"}));  // no set file, no temporary
    }
    BOOST_TEST(read_whole(file) == before);
    BOOST_TEST(::kill(agent.pid, 0) == 0);  // and the agent is fine

    // Once the VM is reachable again, the same render goes through whole.
    sshd.start();
    io.restart();
    machine::test::co_run(io, render_url("postgres://after"));
    BOOST_TEST(read_whole(file).find("export DATABASE_URL='postgres://after'") != std::string::npos);
    BOOST_TEST((names_in(agent.secrets.dir) == std::set<std::string>{"web.env"}));
}

// Whether the test may run an agent in a mount namespace of its own (host_agent(home)).
boost::test_tools::assertion_result running_as_root(boost::unit_test::test_unit_id) {
    boost::test_tools::assertion_result r(::geteuid() == 0);
    r.message() << "needs root: the agent is given a home of the test's through a private mount namespace";
    return r;
}

// secrets.discover through the channel, over a home the test made: ~/code/web says
// `use op_env abc123`, ~/code/api has no .envrc. The result is parsed on the host, exactly that.
BOOST_AUTO_TEST_CASE(discover_secrets_through_the_channel, *boost::unit_test::precondition(running_as_root)) {
    machine::test::temp_dir home;
    const fs::path code = home.path / "code";
    fs::create_directories(code / "web");
    std::ofstream(code / "web" / ".envrc") << "dotenv_if_exists\nuse op_env abc123\n";
    fs::create_directories(code / "api" / ".git");
    std::ofstream(code / "api" / "README") << "use op_env not-an-envrc\n";
    machine::test::sshd_server sshd;
    host_agent agent(home.path);
    asio::io_context io;
    std::vector<std::string> problems;
    std::vector<pr::envrc_secrets> repos;
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto on_problem = [&](const std::string& p) { problems.push_back(p); };
        auto conn = co_await guest::connection::open(session, on_problem, agent.socket().string());
        repos = co_await conn->discover_secrets();
        session->close();
    };
    machine::test::co_run(io, task());
    BOOST_REQUIRE_EQUAL(repos.size(), 1u);
    BOOST_TEST(repos[0].dir == "web");
    BOOST_TEST(repos[0].path == (code / "web" / ".envrc").string());
    BOOST_REQUIRE_EQUAL(repos[0].uses.size(), 1u);
    BOOST_TEST(repos[0].uses[0].set == "abc123");
    BOOST_TEST(repos[0].uses[0].line == 2u);
    BOOST_TEST(problems.empty());  // `truncated` would be one
}

// A hostile "agent" answering secrets.discover with a result that breaks the caps.
BOOST_FIXTURE_TEST_CASE(a_hostile_discover_result_is_refused, fixture) {
    const fs::path evil = agent.dir.path / "evil-discover.sock";
    asio::local::stream_protocol::acceptor acceptor(io, asio::local::stream_protocol::endpoint(evil.string()));
    auto serve = [&]() -> asio::awaitable<void> {
        auto peer = co_await acceptor.async_accept(asio::use_awaitable);
        std::string request(4096, '\0');
        co_await peer.async_read_some(asio::buffer(request), asio::use_awaitable);
        pr::json reply = pr::make_envelope(1, pr::type::result);
        pr::json repo = {{"dir", "../../etc"}, {"path", "/etc/passwd"}, {"uses", pr::json::array()}};
        reply["repos"] = pr::json::array({repo});
        const std::string line = pr::encode(reply);
        co_await asio::async_write(peer, asio::buffer(line), asio::use_awaitable);
        co_await peer.async_read_some(asio::buffer(request), asio::use_awaitable);  // until the host goes
    };
    asio::co_spawn(io, std::move(serve), asio::detached);
    std::string what;
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), evil.string());
        try {
            co_await conn->discover_secrets();
        } catch (const machine::error& e) {
            what = e.what();
        }
        session->close();
    };
    try {
        machine::test::co_run(io, task());
    } catch (const std::exception&) {
        // the evil server's last read ends with the connection
    }
    BOOST_TEST(what.find("malformed secrets.discover result") != std::string::npos, what);
    BOOST_TEST(what.find("'dir'") != std::string::npos, what);
    BOOST_TEST(what.find("../../etc") == std::string::npos, what);  // the VM's text is not repeated
}

BOOST_AUTO_TEST_SUITE_END()
