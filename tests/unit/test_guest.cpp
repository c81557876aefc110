// The host's side of the guest agent, with real parts: a real OpenSSH sshd on 127.0.0.1 with
// throwaway keys (tests/support/sshd.hpp) and the real machine-agent running on this host
// behind it, reached through `machine-agent relay` over an SSH session channel, as `machine`
// reaches a VM's.
#include <boost/test/unit_test.hpp>

#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <array>
#include <atomic>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/net.hpp"
#include "machine/paths.hpp"
#include "machine/proc.hpp"
#include "machine/ssh.hpp"
#include "machine/vm.hpp"
#include "machine/text.hpp"
#include "../support/sshd.hpp"
#include "fake_lima_driver.hpp"
#include "guest_network.hpp"
#include "pinned_vm.hpp"
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
    fs::path network_rules() const { return dir.path / "etc-machine" / "network.nft"; }

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
        // Installed as a deployment of this machine's would be: its hello says the unit's hash.
        const std::string unit = (dir.path / "machine-agent.service").string();
        const std::string steps = (dir.path / "steps.json").string();  // never the host's /var/lib
        std::ofstream(unit) << guest::agent_unit();
        write_fake_nft();
        const std::string rules = network_rules().string(), nft = (dir.path / "nft").string();
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
                    "--secrets-dir", secrets.dir.c_str(), "--no-systemd", "--network-rules", rules.c_str(), "--nft",
                    nft.c_str(), "--unit-file", unit.c_str(), "--steps-state", steps.c_str(), nullptr);
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
    // The agent's nft (network.apply): records its arguments (nft-args) and the file it was given
    // (nft-applied); fails with an escape sequence in its complaint when nft-fails exists.
    void write_fake_nft() {
        const fs::path nft = dir.path / "nft";
        std::ofstream(nft) << "#!/bin/sh\nd=" << machine::text::shell_quote(dir.path.string())
                           << "\necho \"$*\" > \"$d/nft-args\"\ncp \"$2\" \"$d/nft-applied\"\n"
                              "if [ -e \"$d/nft-fails\" ]; then printf 'Error: \\033[31mred\\033[0m syntax error\\n' >&2; "
                              "exit 1; fi\n";
        fs::permissions(nft, fs::perms::owner_all);
    }

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

// Lima's ssh.config for instance "web" of a fake VM whose sshd is `sshd`, listening on `port`.
void write_ssh_config(const fs::path& file, const machine::test::sshd_server& sshd, int port) {
    std::ofstream(file) << "Host lima-web\n  IdentityFile \"" << sshd.identity_file().string()
                        << "\"\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
                        << "  IdentitiesOnly yes\n  User " << sshd.user() << "\n  Hostname 127.0.0.1\n  Port " << port
                        << "\n";
}

asio::awaitable<std::shared_ptr<ssh::session>> connect(const machine::test::sshd_server& sshd) {
    auto s = co_await ssh::session::connect(sshd.endpoint(), sshd.pin("vm", true));
    co_return s;
}

} // namespace

BOOST_AUTO_TEST_SUITE(guest_over_ssh)

BOOST_FIXTURE_TEST_CASE(hello_and_run_through_the_channel, fixture) {
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string(), MACHINE_AGENT_BINARY);
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

// `up`'s firewall step: the project's ruleset reaches the agent, which keeps it and runs nft on it.
struct firewall_fixture : fixture {
    machine::test::fake_vm_context f;
    std::optional<vm::guest_rules_state> state;
    std::string failure;

    void install(const net::policy& p, vm::guest_rules_options opt) {
        auto task = [&]() -> asio::awaitable<void> {
            auto session = co_await connect(sshd);
            auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string(), MACHINE_AGENT_BINARY);
            try {
                state = co_await vm::install_guest_rules(f.ctx, "web", *conn, p, opt);
            } catch (const machine::error& e) {
                failure = std::string(e.what()) + " | " + e.diagnostics();
            }
            session->close();
        };
        machine::test::co_run(io, task());
    }
    std::string firewall_detail() const {
        for (const auto& e : f.events->seen)
            if (e.type == events::type::step_finished && e.text("step") == "firewall") return e.text("detail");
        return "(no firewall step)";
    }
};

BOOST_FIXTURE_TEST_CASE(up_sends_the_projects_ruleset_to_the_agent, firewall_fixture) {
    net::policy p;
    p.host_ports = {5432, 6379};
    install(p, {});
    BOOST_TEST(failure == "");
    BOOST_TEST((state == vm::guest_rules_state::applied));
    // The agent kept exactly the project's ruleset, and nft applied that file.
    BOOST_TEST(paths::read_file(agent.network_rules()) == net::guest_ruleset(p));
    BOOST_TEST(paths::read_file(agent.dir.path / "nft-applied") == net::guest_ruleset(p));
    BOOST_TEST(paths::read_file(agent.dir.path / "nft-args") == "-f " + agent.network_rules().string() + "\n");
    // up says which line it is: on Lima's own network, the only one.
    BOOST_TEST(firewall_detail() ==
               "nftables in the VM, host ports 5432, 6379 open (the only line on Lima's network: root in the VM can "
               "remove it)");
}

BOOST_FIXTURE_TEST_CASE(rules_nft_refuses_fail_up_loudly_and_escaped, firewall_fixture) {
    std::ofstream(agent.dir.path / "nft-fails") << "";
    install({}, {});
    BOOST_TEST(!state.has_value());
    BOOST_TEST(failure.find("VM 'web': machine's network rules are NOT in place inside the VM") == 0, failure);
    BOOST_TEST(failure.find("syntax error") != std::string::npos, failure);
    BOOST_TEST(failure.find("the VM can reach the host's services") != std::string::npos, failure);
    // The VM's bytes never reach a terminal raw.
    BOOST_TEST(failure.find('\033') == std::string::npos, failure);
    BOOST_TEST(firewall_detail().find('\033') == std::string::npos);
}

BOOST_FIXTURE_TEST_CASE(rules_wait_for_nft_only_while_provisioning_may_install_it, firewall_fixture) {
    fs::remove(agent.dir.path / "nft");  // nft is not installed
    vm::guest_rules_options opt;
    opt.nft_may_come = true;
    install({}, opt);
    BOOST_TEST(failure == "");
    BOOST_TEST((state == vm::guest_rules_state::waiting_for_nft));
    BOOST_TEST(firewall_detail() == "kept in the VM, applied once provisioning installs nftables");
    BOOST_TEST(fs::exists(agent.network_rules()));
    // After provisioning, still no nft: an error that says how to fix it.
    state.reset();
    install({}, {});
    BOOST_TEST(!state.has_value());
    BOOST_TEST(failure.find("install nftables in the VM") != std::string::npos, failure);
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
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string(), MACHINE_AGENT_BINARY);
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
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string(), MACHINE_AGENT_BINARY);
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
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string(), MACHINE_AGENT_BINARY);
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
        auto conn = co_await guest::connection::open(session, on_problem(), evil.string(), MACHINE_AGENT_BINARY);
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
    // The first bad line as it is; the three after it within the second are counted and said
    // once, when the hello ends (at most a line a second: a flood costs one line a second).
    BOOST_REQUIRE_MESSAGE(problems.size() == 3u, problems.size());
    BOOST_TEST(problems[0].find("line_too_long") != std::string::npos, problems[0]);
    BOOST_TEST(problems[1].find("the guest agent sent 3 bad or unexpected lines") != std::string::npos, problems[1]);
    BOOST_TEST(problems[1].find("invalid_json x1") != std::string::npos, problems[1]);
    BOOST_TEST(problems[1].find("unexpected 'surprise' x1") != std::string::npos, problems[1]);
    BOOST_TEST(problems[1].find("unexpected 'result' x1") != std::string::npos, problems[1]);
    BOOST_TEST(problems[2].find("cut off") != std::string::npos, problems[2]);
}

// The relay (`machine-agent relay`, which the host runs over an SSH session channel to reach the
// agent's socket) carries bytes both ways, a megabyte included, passes the host's EOF on as a half
// close, and is gone once either side hangs up.
namespace {
std::string pattern_bytes(std::size_t n) {
    std::string s(n, '\0');
    std::mt19937 gen(7);
    for (auto& c : s) c = static_cast<char>(gen());
    return s;
}

struct echo_socket {
    asio::local::stream_protocol::acceptor acceptor;
    std::size_t served = 0;
    bool saw_eof = false;
    echo_socket(asio::io_context& io, const fs::path& path)
        : acceptor(io, asio::local::stream_protocol::endpoint(path.string())) {}
};

// Echoes one connection until its EOF, then closes it.
asio::awaitable<void> echo_once(echo_socket& e) {
    auto peer = co_await e.acceptor.async_accept(asio::use_awaitable);
    std::array<char, 16384> buf{};
    asio::error_code ec;
    for (;;) {
        const std::size_t n = co_await peer.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        e.served += n;
        co_await asio::async_write(peer, asio::buffer(buf.data(), n), asio::use_awaitable);
    }
    e.saw_eof = true;
}

std::string relay_command(const fs::path& socket) {
    return text::shell_quote(MACHINE_AGENT_BINARY) + " relay --socket " + text::shell_quote(socket.string());
}

asio::awaitable<std::string> read_exactly(ssh::channel& ch, std::size_t n) {
    std::string got;
    while (got.size() < n) {
        auto chunk = co_await ch.read();
        if (!chunk) break;
        got += *chunk;
    }
    co_return got;
}
} // namespace

BOOST_FIXTURE_TEST_CASE(the_relay_carries_bytes_both_ways_and_passes_on_the_hosts_eof, fixture) {
    const fs::path path = agent.dir.path / "echo.sock";
    echo_socket echo(io, path);
    asio::co_spawn(io, echo_once(echo), asio::detached);
    const std::string big = pattern_bytes(1 << 20);
    int status = -1;
    bool ended = false;
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto ch = co_await session->exec(relay_command(path));
        co_await ch->write("ping\n");
        BOOST_TEST(co_await read_exactly(*ch, 5) == "ping\n");
        co_await ch->write(big);
        const std::string back = co_await read_exactly(*ch, big.size());
        BOOST_TEST((back == big));
        co_await ch->send_eof();  // the echo server sees EOF, closes, and the relay ends
        auto rest = co_await ch->read();
        ended = !rest;
        status = co_await ch->exit_status();
        session->close();
    };
    machine::test::co_run(io, task());
    BOOST_TEST(echo.served == 5u + (1u << 20));
    BOOST_TEST(echo.saw_eof);
    BOOST_TEST(ended);
    BOOST_TEST(status == 0);
}

// An agent in the middle of a subscription sends nothing for a while and keeps its end open:
// the relay must still end when the host drops the channel, or every closed `watch` would leave
// a process in the VM.
namespace {
asio::awaitable<void> hold_open(echo_socket& e, pid_t& relay_pid, asio::steady_timer& until) {
    auto peer = co_await e.acceptor.async_accept(asio::use_awaitable);
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(peer.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) relay_pid = cred.pid;
    std::array<char, 1> buf{};
    co_await asio::async_read(peer, asio::buffer(buf), asio::use_awaitable);
    co_await asio::async_write(peer, asio::buffer(buf), asio::use_awaitable);
    asio::error_code ec;
    co_await until.async_wait(asio::redirect_error(asio::use_awaitable, ec));  // never reads again
}

bool process_gone(pid_t pid) {
    if (::kill(pid, 0) != 0) return errno == ESRCH;
    std::string stat = paths::read_file("/proc/" + std::to_string(pid) + "/stat");
    const auto paren = stat.rfind(')');
    return paren != std::string::npos && stat.size() > paren + 2 && stat[paren + 2] == 'Z';
}
} // namespace

BOOST_FIXTURE_TEST_CASE(the_relay_ends_when_the_host_drops_its_channel_while_the_agent_is_silent, fixture) {
    const fs::path path = agent.dir.path / "silent.sock";
    echo_socket silent(io, path);
    pid_t relay_pid = 0;
    asio::steady_timer until_the_end(io, std::chrono::hours(1));
    asio::co_spawn(io, hold_open(silent, relay_pid, until_the_end), asio::detached);
    bool gone = false;
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        auto ch = co_await session->exec(relay_command(path));
        co_await ch->write("x");
        BOOST_TEST(co_await read_exactly(*ch, 1) == "x");
        BOOST_REQUIRE(relay_pid > 0);
        BOOST_TEST(!process_gone(relay_pid));
        ch->close();  // no EOF first: the host just drops the channel
        for (int i = 0; i < 100 && !gone; ++i) {
            co_await sleep_for(50ms);
            gone = process_gone(relay_pid);
        }
        until_the_end.cancel();
        session->close();
    };
    machine::test::co_run(io, task());
    BOOST_TEST(gone);
    if (!gone && relay_pid > 0) ::kill(relay_pid, SIGKILL);  // ours: started by this test's channel
}

// No agent: nothing listens on the socket (a stopped agent), or there is no relay to run (a VM
// where machine has not installed the agent yet, or an older agent without `relay`). The
// connection says so, names the VM, and is not taken for a lost connection (deploy then looks
// at the VM's files instead of giving the VM up); the session stays usable.
BOOST_FIXTURE_TEST_CASE(no_agent_behind_the_relay_is_agent_unavailable_not_a_lost_vm, fixture) {
    std::vector<std::string> messages;
    std::vector<int> statuses;
    auto attempt = [&](std::shared_ptr<ssh::session> session, std::string socket, std::string relay,
                       std::chrono::milliseconds before_hello) -> asio::awaitable<void> {
        auto conn = co_await guest::connection::open(session, on_problem(), std::move(socket), std::move(relay));
        // A relay that found nothing exits at once: with a pause, its channel is closed before
        // the request is written (the write fails, not a read).
        co_await machine::sleep_for(before_hello);
        try {
            co_await conn->hello("nobody there");
            messages.push_back("(answered)");
        } catch (const guest::agent_unavailable& e) {
            messages.push_back(e.what());
            statuses.push_back(e.relay_status());
        } catch (const std::exception& e) {
            messages.push_back(std::string("wrong error: ") + e.what());
        }
    };
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        for (const auto pause : {0ms, 1000ms}) {
            co_await attempt(session, (agent.dir.path / "absent.sock").string(), MACHINE_AGENT_BINARY, pause);
            co_await attempt(session, agent.socket().string(), (agent.dir.path / "no-such-agent").string(), pause);
        }
        const auto r = co_await session->run("echo still-here");
        BOOST_TEST(r.out == "still-here\n");
        session->close();
    };
    machine::test::co_run(io, task());
    BOOST_REQUIRE(messages.size() == 4u);
    for (std::size_t i : {0u, 2u})
        BOOST_TEST(messages[i].find("VM 'vm': no guest agent is listening") != std::string::npos, messages[i]);
    for (std::size_t i : {1u, 3u})
        BOOST_TEST(messages[i].find("VM 'vm': the guest agent is not installed") != std::string::npos, messages[i]);
    BOOST_TEST((statuses == std::vector<int>{69, 127, 69, 127}));
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
        auto conn = co_await guest::connection::open(session, on_problem(), agent.socket().string(), MACHINE_AGENT_BINARY);
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
        auto conn = co_await guest::connection::open(session, on_problem(), (agent.dir.path / "relay.sock").string(), MACHINE_AGENT_BINARY);
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
        auto conn = co_await guest::connection::open(session, on_problem, agent.socket().string(), MACHINE_AGENT_BINARY);
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
        auto conn = co_await guest::connection::open(session, on_problem(), evil.string(), MACHINE_AGENT_BINARY);
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

// ---------------------------------------------------------------------------------------------
// Deadlines and rate-limited warnings (issue 13): a scripted "agent" that hangs, floods, or is
// slow but alive.

namespace {

// A scripted agent on a Unix socket, served by threads of its own with blocking sockets (so it
// floods or stays silent whatever the test's io_context does), reached through sshd like the
// real agent. Every connection gets the same script.
class fake_agent {
public:
    enum class script {
        hang,               // reads and discards, never answers
        event_then_hang,    // a subscribe gets one event, then nothing (not even for a cancel)
        flood,              // garbage and unrelated messages, as fast as the socket takes them
        slow_but_alive,     // answers run with output every 300 ms, subscribe with live then silence
    };

    fake_agent(fs::path path, script s) : path_(std::move(path)), script_(s) {
        listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
        BOOST_REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        BOOST_REQUIRE(::listen(listen_fd_, 64) == 0);
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~fake_agent() { stop(); }
    fake_agent(const fake_agent&) = delete;
    fake_agent& operator=(const fake_agent&) = delete;

    // Ends every connection and joins every thread.
    void stop() {
        if (stopping_.exchange(true)) return;
        ::shutdown(listen_fd_, SHUT_RDWR);  // accept() returns
        acceptor_.join();
        std::vector<std::thread> threads;
        {
            std::lock_guard lock(mutex_);
            for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);  // blocked reads and writes return
            threads = std::move(threads_);
        }
        for (auto& t : threads) t.join();
        for (int fd : fds_) ::close(fd);
        ::close(listen_fd_);
    }

    std::string socket() const { return path_.string(); }
    std::uint64_t lines_sent() const { return lines_sent_; }

private:
    void accept_loop() {
        for (;;) {
            const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) return;
            std::lock_guard lock(mutex_);
            if (stopping_) {
                ::close(fd);
                return;
            }
            fds_.push_back(fd);
            threads_.emplace_back([this, fd] { serve(fd); });
        }
    }

    bool send_all(int fd, const std::string& data) {
        for (std::size_t at = 0; at < data.size();) {
            const ssize_t n = ::send(fd, data.data() + at, data.size() - at, MSG_NOSIGNAL);
            if (n <= 0) return false;
            at += static_cast<std::size_t>(n);
        }
        return true;
    }

    // The next request line as JSON (a null json when the connection ends).
    static pr::json next_request(int fd, std::string& buffer) {
        for (;;) {
            const auto nl = buffer.find('\n');
            if (nl != std::string::npos) {
                pr::json j = pr::json::parse(buffer.substr(0, nl), nullptr, false);
                buffer.erase(0, nl + 1);
                if (j.is_object()) return j;
                continue;
            }
            char chunk[65536];
            const ssize_t n = ::read(fd, chunk, sizeof chunk);
            if (n <= 0) return nullptr;
            buffer.append(chunk, static_cast<std::size_t>(n));
        }
    }

    void serve(int fd) {
        std::string buffer;
        switch (script_) {
        case script::hang:
            while (!next_request(fd, buffer).is_null()) {}
            return;
        case script::event_then_hang:
            for (pr::json q; !(q = next_request(fd, buffer)).is_null();) {
                if (q.value("type", "") != "subscribe") continue;
                pr::event_record e;
                e.seq = 1;
                e.ts = "2026-01-01T00:00:00.000Z";
                e.event = "test.one";
                send_all(fd, pr::encode(pr::make_event(q.value("id", 0ull), e)));
            }
            return;
        case script::flood: {
            // Garbage and messages for requests that do not exist, never an answer.
            std::string lines;
            pr::event_record e;
            e.seq = 5;
            e.ts = "2026-01-01T00:00:00.000Z";
            e.event = "flood";
            int count = 0;
            while (lines.size() < 60000) {
                lines += "{not json\n";
                lines += R"({"v":1,"id":424242,"type":"result"})" "\n";
                lines += pr::encode(pr::make_event(777777, e));
                lines += R"({"v":1,"id":31337,"type":"surprise"})" "\n";
                count += 4;
            }
            while (!stopping_ && send_all(fd, lines)) lines_sent_ += static_cast<std::uint64_t>(count);
            return;
        }
        case script::slow_but_alive:
            for (pr::json q; !(q = next_request(fd, buffer)).is_null();) {
                const std::uint64_t id = q.value("id", 0ull);
                const std::string type = q.value("type", "");
                if (type == "hello") {
                    send_all(fd, pr::encode(pr::make_hello_result(id, pr::hello_result{})));
                } else if (type == "run") {
                    // 8 chunks 300 ms apart: 2.4 s in all, never 300 ms without a word.
                    for (int i = 0; i < 8 && !stopping_; ++i) {
                        ::usleep(300000);
                        if (!send_all(fd, pr::encode(pr::make_output(id, "stdout", "tick " + std::to_string(i) + "\n")))) return;
                    }
                    pr::run_result r;
                    r.exit_code = 0;
                    send_all(fd, pr::encode(pr::make_run_result(id, r)));
                } else if (type == "subscribe") {
                    // Live at once, then 1.5 s of quiet, then an event.
                    send_all(fd, pr::encode(pr::make_live(id, 0)));
                    ::usleep(1500000);
                    pr::event_record e;
                    e.seq = 1;
                    e.ts = "2026-01-01T00:00:00.000Z";
                    e.event = "test.late";
                    send_all(fd, pr::encode(pr::make_event(id, e)));
                    subscription_ = id;
                } else if (type == "cancel") {
                    send_all(fd, pr::encode(pr::make_result(id)));
                    send_all(fd, pr::encode(pr::make_result(subscription_)));
                }
            }
            return;
        }
    }

    fs::path path_;
    script script_;
    int listen_fd_ = -1;
    std::thread acceptor_;
    std::mutex mutex_;
    std::vector<int> fds_;
    std::vector<std::thread> threads_;
    std::atomic<bool> stopping_{false};
    std::atomic<std::uint64_t> lines_sent_{0};
    std::uint64_t subscription_ = 0;  // slow_but_alive: one request at a time per connection
};

// Every deadline of `d` set to `t`.
guest::request_deadlines all_deadlines(std::chrono::milliseconds t) {
    guest::request_deadlines d;
    d.hello = d.emit = d.cancel = d.session_list = d.secrets_render = d.secrets_clear = d.secrets_list =
        d.secrets_discover = d.subscribe_replay = d.run_silence = d.provision_margin = t;
    return d;
}

// What one request did against a scripted agent.
struct attempt {
    std::string request;
    bool done = false;
    bool timed_out = false;       // a guest::request_timeout
    bool flooded = false;         // a guest::agent_flood
    std::string what;             // its message, or another failure's
    std::string reuse;            // what a second request on the same connection said
    double seconds = 0;           // from sending to the error
    std::vector<std::string> problems;
};

// Sends request type `a->request` on a connection of its own (its own SSH connection too:
// sshd allows 10 channels per connection) with deadlines `d`. `sshd` and `sessions` are the
// test's, alive until after run_until_done().
asio::awaitable<void> try_request(const machine::test::sshd_server& sshd, std::string socket,
                                  guest::request_deadlines d, std::shared_ptr<attempt> a,
                                  std::vector<std::shared_ptr<ssh::session>>& sessions) {
    auto session = co_await connect(sshd);
    sessions.push_back(session);
    auto on_problem = [a](const std::string& p) { a->problems.push_back(p); };
    auto conn = co_await guest::connection::open(session, on_problem, socket, MACHINE_AGENT_BINARY);
    conn->set_deadlines(d);
    const auto t0 = std::chrono::steady_clock::now();
    try {
        const std::string& r = a->request;
        if (r == "hello") {
            co_await conn->hello("deadline test");
        } else if (r == "run") {
            pr::run_request q;
            q.argv = {"true"};
            q.user = "nobody";
            std::function<void(const pr::output_chunk&)> ignore_output;  // named: no braces in a co_await
            co_await conn->run(std::move(q), ignore_output);
        } else if (r == "subscribe" || r == "cancel") {
            // "cancel": the scripted agent sends one event, we cancel, it never ends the subscription.
            auto stop_at_first = [](const pr::event_record&) { return false; };
            co_await conn->subscribe(0, stop_at_first);
        } else if (r == "emit") {
            pr::emit_request q;
            q.event = "test.emit";
            co_await conn->emit(std::move(q));
        } else if (r == "provision") {
            pr::provision_request q;
            q.plan = "p";
            pr::provision_step step;
            step.name = "s";
            step.user = "nobody";
            step.run = {"true"};
            step.timeout_ms = 1;
            step.hash = "ab";
            q.steps.push_back(std::move(step));
            co_await conn->provision(std::move(q));
        } else if (r == "session.list") {
            co_await conn->list_sessions();
        } else if (r == "secrets.render") {
            pr::secrets_render_request q;
            q.set = "web";
            q.variables.push_back({"TOKEN", "not-a-real-secret"});
            co_await conn->render_secrets(std::move(q));
        } else if (r == "secrets.clear") {
            co_await conn->clear_secrets(std::nullopt);
        } else if (r == "secrets.list") {
            co_await conn->list_secrets();
        } else if (r == "secrets.discover") {
            co_await conn->discover_secrets();
        } else {
            a->what = "unknown request in the test: " + r;
        }
        a->what = "(answered)";
    } catch (const guest::request_timeout& e) {
        a->timed_out = true;
        a->what = e.what();
    } catch (const guest::agent_flood& e) {
        a->flooded = true;
        a->what = e.what();
    } catch (const std::exception& e) {
        a->what = e.what();
    }
    a->seconds = machine::test::seconds_since(t0);
    if (a->timed_out || a->flooded) {
        try {
            co_await conn->hello("after the timeout");
            a->reuse = "(answered)";
        } catch (const std::exception& e) {
            a->reuse = e.what();
        }
    }
    a->done = true;
}

// Runs `io` until every attempt is done or `limit` passes (the test's own watchdog: code
// without deadlines never finishes); then closes every SSH session so nothing is left waiting.
bool run_until_done(asio::io_context& io, const std::vector<std::shared_ptr<attempt>>& attempts,
                    std::vector<std::shared_ptr<ssh::session>>& sessions, std::chrono::seconds limit) {
    const auto t0 = std::chrono::steady_clock::now();
    auto all_done = [&] {
        return std::all_of(attempts.begin(), attempts.end(), [](const auto& a) { return a->done; });
    };
    while (!all_done() && std::chrono::steady_clock::now() - t0 < limit) io.run_for(50ms);
    const bool done = all_done();
    for (auto& s : sessions) s->close();
    for (int i = 0; i < 100 && !all_done(); ++i) io.run_for(50ms);
    return done;
}

} // namespace

BOOST_FIXTURE_TEST_CASE(a_hung_agent_fails_every_request_at_its_deadline, fixture) {
    fake_agent hung(agent.dir.path / "hung.sock", fake_agent::script::hang);
    fake_agent hangs_after_event(agent.dir.path / "event-then-hang.sock", fake_agent::script::event_then_hang);
    constexpr auto short_deadline = 500ms;
    const auto d = all_deadlines(short_deadline);
    std::vector<std::shared_ptr<attempt>> attempts;
    std::vector<std::shared_ptr<ssh::session>> sessions;
    for (const char* r : {"hello", "run", "subscribe", "cancel", "emit", "provision", "session.list", "secrets.render",
                          "secrets.clear", "secrets.list", "secrets.discover"}) {
        auto a = std::make_shared<attempt>();
        a->request = r;
        attempts.push_back(a);
        const std::string socket = a->request == "cancel" ? hangs_after_event.socket() : hung.socket();
        asio::co_spawn(io, try_request(sshd, socket, d, a, sessions), asio::detached);
    }
    // provision's deadline is its plan's: 1 ms + 5 s (SIGTERM..SIGKILL) + 1 s + the margin (0.5 s).
    const bool done = run_until_done(io, attempts, sessions, 30s);
    for (const auto& a : attempts) {
        BOOST_TEST_CONTEXT(a->request) {
            BOOST_TEST(a->done);
            BOOST_TEST(a->timed_out, a->what);
            BOOST_TEST(a->what.find("VM 'vm'") != std::string::npos, a->what);
            const bool names_request = a->what.find(" " + a->request + ":") != std::string::npos ||
                                       a->what.find(" " + a->request + " within") != std::string::npos;
            BOOST_TEST(names_request, a->what);
            const double expected = a->request == "provision" ? 6.501 : 0.5;
            BOOST_TEST(a->seconds >= expected - 0.01, a->seconds << " s");
            BOOST_TEST(a->seconds < expected + 5, a->seconds << " s");  // the watchdog's margin, not a benchmark
            BOOST_TEST(a->reuse.find("closed after a request timed out or was flooded") != std::string::npos, a->reuse);
            BOOST_TEST_MESSAGE(a->request << ": " << a->what << " (after " << a->seconds << " s)");
        }
    }
    BOOST_REQUIRE_MESSAGE(done, "a request to a hung agent never ended");
}

BOOST_FIXTURE_TEST_CASE(a_flooding_agent_cannot_hold_a_request_or_flood_the_warnings, fixture) {
    fake_agent flood(agent.dir.path / "flood.sock", fake_agent::script::flood);
    constexpr auto deadline = 2s;
    auto d = all_deadlines(deadline);
    d.max_bad_lines = ~std::uint64_t(0);  // here the deadline must end it (see the next test)
    std::vector<std::shared_ptr<attempt>> attempts;
    std::vector<std::shared_ptr<ssh::session>> sessions;
    for (const char* r : {"hello", "run", "subscribe", "secrets.discover"}) {
        auto a = std::make_shared<attempt>();
        a->request = r;
        attempts.push_back(a);
        asio::co_spawn(io, try_request(sshd, flood.socket(), d, a, sessions), asio::detached);
    }
    const bool done = run_until_done(io, attempts, sessions, 30s);
    flood.stop();
    BOOST_TEST_MESSAGE("the scripted agent wrote " << flood.lines_sent() << " lines");
    for (const auto& a : attempts) {
        BOOST_TEST_CONTEXT(a->request) {
            BOOST_TEST(a->done);
            BOOST_TEST(a->timed_out, a->what);
            BOOST_TEST(a->what.find("VM 'vm'") != std::string::npos, a->what);
            BOOST_TEST(a->seconds < 2 + 5.0, a->seconds << " s");
            // One line a second at most, plus the first and the summary at the end.
            BOOST_TEST(a->problems.size() <= 2u + 3u, a->problems.size() << " warnings");
            BOOST_TEST(!a->problems.empty());
            bool counted = false;
            for (const auto& p : a->problems) {
                counted |= p.find("bad or unexpected lines in the last") != std::string::npos;
                BOOST_TEST(p.size() < 600u, p.substr(0, 600));
            }
            BOOST_TEST(counted, "no summary with a count");
            BOOST_TEST_MESSAGE(a->request << ": " << a->what << " after " << a->seconds << " s, "
                                          << a->problems.size() << " warnings, last: "
                                          << (a->problems.empty() ? "" : a->problems.back()));
        }
    }
    BOOST_REQUIRE_MESSAGE(done, "a request to a flooding agent never ended");
}

// A request whose deadline is far away (a provision's is its plan's, a live subscription has
// none) still ends under a flood: past max_bad_lines bad lines.
BOOST_FIXTURE_TEST_CASE(a_flood_ends_a_request_long_before_its_deadline, fixture) {
    fake_agent flood(agent.dir.path / "flood.sock", fake_agent::script::flood);
    const auto d = all_deadlines(600s);
    BOOST_REQUIRE(d.max_bad_lines == 10'000u);  // the default
    std::vector<std::shared_ptr<attempt>> attempts;
    std::vector<std::shared_ptr<ssh::session>> sessions;
    for (const char* r : {"hello", "subscribe", "provision"}) {
        auto a = std::make_shared<attempt>();
        a->request = r;
        attempts.push_back(a);
        asio::co_spawn(io, try_request(sshd, flood.socket(), d, a, sessions), asio::detached);
    }
    const bool done = run_until_done(io, attempts, sessions, 60s);
    flood.stop();
    for (const auto& a : attempts) {
        BOOST_TEST_CONTEXT(a->request) {
            BOOST_TEST(a->done);
            BOOST_TEST(a->flooded, a->what);
            BOOST_TEST(a->what == "VM 'vm': the guest agent sent 10001 bad or unexpected lines during " + a->request +
                                      "; gave up on it");
            // The first bad line; the error says how many there were.
            BOOST_TEST(a->problems.size() == 1u, a->problems.size() << " warnings");
            BOOST_TEST(a->reuse.find("closed after a request timed out or was flooded") != std::string::npos, a->reuse);
            BOOST_TEST_MESSAGE(a->request << ": " << a->what << " after " << a->seconds << " s");
        }
    }
    BOOST_REQUIRE_MESSAGE(done, "a request to a flooding agent never ended");
}

BOOST_FIXTURE_TEST_CASE(a_slow_but_alive_agent_is_not_cut_off, fixture) {
    fake_agent slow(agent.dir.path / "slow.sock", fake_agent::script::slow_but_alive);
    // Every silence here is under 1 s; the run takes 2.4 s, the subscription waits 1.5 s after live.
    const auto d = all_deadlines(1000ms);
    std::string out, what;
    bool done = false;
    std::uint64_t last_seq = 0;
    std::vector<std::shared_ptr<ssh::session>> sessions;
    auto task = [&]() -> asio::awaitable<void> {
        auto session = co_await connect(sshd);
        sessions.push_back(session);
        auto conn = co_await guest::connection::open(session, on_problem(), slow.socket(), MACHINE_AGENT_BINARY);
        conn->set_deadlines(d);
        try {
            pr::run_request q;
            q.argv = {"slow"};
            q.user = "nobody";
            auto on_output = [&](const pr::output_chunk& c) { out += c.data; };
            const auto r = co_await conn->run(std::move(q), on_output);
            BOOST_TEST(r.exit_code.value_or(-1) == 0);
            auto on_event = [](const pr::event_record&) { return false; };
            last_seq = co_await conn->subscribe(0, on_event);
            what = "(answered)";
        } catch (const std::exception& e) {
            what = e.what();
        }
        done = true;
    };
    asio::co_spawn(io, std::move(task), asio::detached);
    for (int i = 0; i < 300 && !done; ++i) io.run_for(50ms);
    for (auto& s : sessions) s->close();
    for (int i = 0; i < 100 && !done; ++i) io.run_for(50ms);
    BOOST_REQUIRE(done);
    BOOST_TEST(what == "(answered)");
    BOOST_TEST(out == "tick 0\ntick 1\ntick 2\ntick 3\ntick 4\ntick 5\ntick 6\ntick 7\n");
    BOOST_TEST(last_seq == 1u);
    BOOST_TEST(problems.empty());
}

// The figure for issue 13 ("time from a hung agent to the error"), with the production
// deadlines: what `machine secrets` does first (connect_agent, then secrets.discover) against an
// agent that accepts and never answers. About 20 s, so not run by default:
//   machine_tests --run_test=guest_over_ssh/hung_agent_to_secrets_error_with_default_deadlines
BOOST_FIXTURE_TEST_CASE(hung_agent_to_secrets_error_with_default_deadlines, fixture,
                        *boost::unit_test::disabled()) {
    fake_agent hung(agent.dir.path / "hung.sock", fake_agent::script::hang);
    std::string what;
    double seconds = 0;
    bool done = false;
    auto task = [&]() -> asio::awaitable<void> {
        const auto t0 = std::chrono::steady_clock::now();
        auto session = co_await connect(sshd);
        try {
            auto conn = co_await guest::connection::open(session, on_problem(), hung.socket(), MACHINE_AGENT_BINARY);
            co_await conn->discover_secrets();
            what = "(answered)";
        } catch (const std::exception& e) {
            what = e.what();
        }
        seconds = machine::test::seconds_since(t0);
        session->close();
        done = true;
    };
    asio::co_spawn(io, std::move(task), asio::detached);
    for (int i = 0; i < 600 && !done; ++i) io.run_for(100ms);
    BOOST_REQUIRE(done);
    BOOST_TEST(what == "VM 'vm': the guest agent did not answer secrets.discover within 20 s");
    BOOST_TEST_MESSAGE("FIGURE hung agent -> secrets error (SSH connect to error, default deadlines): " << seconds << " s");
}

BOOST_AUTO_TEST_SUITE_END()

// The other way to the relay (guest::process_stream): the pipes of a process that runs it, as
// an `ssh` client riding the VM's OpenSSH master does. Here the relay runs on this host.
BOOST_AUTO_TEST_SUITE(guest_over_a_relay_process)

std::unique_ptr<proc::child> start_relay(asio::any_io_executor ex, std::vector<std::string> argv) {
    proc::command relay;
    relay.argv = std::move(argv);
    relay.err = proc::stdio::null;
    return proc::child::start(std::move(ex), std::move(relay));
}

BOOST_FIXTURE_TEST_CASE(hello_and_run_through_a_relay_process, fixture) {
    auto task = [&]() -> asio::awaitable<void> {
        std::vector<std::string> argv{MACHINE_AGENT_BINARY, "relay", "--socket", agent.socket().string()};
        guest::connection conn(guest::process_stream(start_relay(co_await asio::this_coro::executor, argv)),
                               on_problem(), "vm");
        const auto hello = co_await conn.hello("machine tests");
        BOOST_TEST(hello.protocol == pr::version);
        pr::run_request run;
        run.argv = {"sh", "-c", "printf '%s' \"$1\"; exit 3", "sh", "a;b $(c) 'd'"};
        run.user = sshd.user();
        std::string out;
        auto on_output = [&](const pr::output_chunk& c) { out += c.data; };
        const auto result = co_await conn.run(run, on_output);
        BOOST_TEST(result.exit_code.value_or(-1) == 3);
        BOOST_TEST(out == "a;b $(c) 'd'");
    };
    machine::test::co_run(io, task());
    BOOST_TEST(problems.empty());
    BOOST_TEST(proc::live_children() == 0u);  // the relay was stopped and reaped with the connection
}

// As over a channel (no_agent_behind_the_relay_is_agent_unavailable_not_a_lost_vm): the relay's
// exit status says why, and ssh's own failure (255: the master or the connection is gone) is a
// lost connection, not a missing agent.
BOOST_FIXTURE_TEST_CASE(a_relay_process_that_ends_says_why, fixture) {
    std::vector<std::string> messages;
    auto attempt = [&](std::vector<std::string> argv, std::chrono::milliseconds before_hello) -> asio::awaitable<void> {
        guest::connection conn(guest::process_stream(start_relay(co_await asio::this_coro::executor, argv)),
                               on_problem(), "vm");
        co_await machine::sleep_for(before_hello);  // with a pause, the write fails, not a read
        try {
            co_await conn.hello("nobody there");
            messages.push_back("(answered)");
        } catch (const guest::agent_unavailable& e) {
            messages.push_back(std::string(e.what()) + " [" + std::to_string(e.relay_status()) + "]");
        } catch (const ssh::connection_lost& e) {
            messages.push_back(std::string("lost: ") + e.what());
        } catch (const std::exception& e) {
            messages.push_back(std::string("wrong error: ") + e.what());
        }
    };
    auto task = [&]() -> asio::awaitable<void> {
        // Named first: a braced list inside co_await does not compile with g++ 12 (house style §4).
        const std::vector<std::string> no_agent{MACHINE_AGENT_BINARY, "relay", "--socket",
                                                (agent.dir.path / "absent.sock").string()};
        const std::vector<std::string> no_relay{"sh", "-c", "exec /nonexistent/machine-agent relay"};
        const std::vector<std::string> ssh_failed{"sh", "-c", "exit 255"};
        for (const auto pause : {0ms, 1000ms}) {
            co_await attempt(no_agent, pause);
            co_await attempt(no_relay, pause);
            co_await attempt(ssh_failed, pause);
        }
    };
    machine::test::co_run(io, task());
    BOOST_REQUIRE(messages.size() == 6u);
    for (std::size_t i : {0u, 3u}) {
        BOOST_TEST(messages[i].find("VM 'vm': no guest agent is listening") != std::string::npos, messages[i]);
        BOOST_TEST(messages[i].find("[69]") != std::string::npos, messages[i]);
    }
    for (std::size_t i : {1u, 4u})
        BOOST_TEST(messages[i].find("VM 'vm': the guest agent is not installed") != std::string::npos, messages[i]);
    for (std::size_t i : {2u, 5u}) BOOST_TEST(messages[i].rfind("lost: ", 0) == 0u, messages[i]);
    BOOST_TEST(proc::live_children() == 0u);
}

// vm::connect_to_agent rides machine's master for the VM: with the VM's SSH port closed after
// the master opened, the agent still answers through it; a VM re-pinned since is not reached
// through that master (a connection of its own is tried, and finds the port closed); and with
// the master gone, neither is it.
BOOST_FIXTURE_TEST_CASE(connect_to_agent_rides_the_vms_master, fixture) {
    machine::test::state_dir state;
    machine::test::fake_vm_context fake;
    fake.ctx.agent_relay = MACHINE_AGENT_BINARY;
    fake.ctx.agent_socket = agent.socket().string();
    auto write_config = [&](int port) { write_ssh_config(state.dir.path / "ssh.config", sshd, port); };
    write_config(sshd.port());
    const machine::test::pinned_vm web(fake.io, state, "web", state.dir.path / "ssh.config");
    const lima::instance& inst = web.inst;
    BOOST_REQUIRE(!machine::test::co_run(fake.io, vm::ssh_target(fake.ctx, "web", inst, web.no_agent()))
                       .control_path.empty());

    write_config(machine::test::closed_port());
    auto hello = [&]() -> std::string {
        try {
            return machine::test::co_run(fake.io, [&]() -> asio::awaitable<std::string> {
                auto conn = co_await vm::connect_to_agent(fake.ctx, "web", inst, 1s);
                const auto h = co_await conn->hello("machine tests");
                co_return "protocol " + std::to_string(h.protocol);
            }());
        } catch (const std::exception& e) {
            return std::string("failed: ") + e.what();
        }
    };
    BOOST_TEST(hello() == "protocol " + std::to_string(pr::version));
    BOOST_TEST(hello() == "protocol " + std::to_string(pr::version));

    const fs::path pin = vm::pin_of("web", false).file;
    const std::string recorded = machine::paths::read_file(pin);
    std::ofstream(pin) << "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA ssh-ed25519\n";
    BOOST_TEST(hello().rfind("failed: ", 0) == 0u);
    std::ofstream(pin) << recorded;
    BOOST_TEST(hello() == "protocol " + std::to_string(pr::version));

    // Restoring the running VM's memory takes the guest's TCP state back in time: restore ends
    // the master (riding it would wait for its keepalive: a 5.8 s restore took 20 s).
    fake.lima.add("web", lima::status::running);
    machine::test::co_run(fake.io, vm::snapshot_create(fake.ctx, "web", "clean"));
    BOOST_REQUIRE(machine::paths::socket_accepts(vm::ssh_master_socket("web")));
    machine::test::co_run(fake.io, vm::restore(fake.ctx, "web", "clean", nullptr));
    BOOST_TEST(!machine::paths::socket_accepts(vm::ssh_master_socket("web")));
    BOOST_TEST(hello().rfind("failed: ", 0) == 0u);  // the port is closed: only the master led there

    machine::test::co_run(fake.io, vm::stop_ssh_master("web"));
    BOOST_TEST(hello().rfind("failed: ", 0) == 0u);
    BOOST_TEST(problems.empty());
    BOOST_TEST(proc::live_children() == 0u);
}

// A re-up of a running VM rides machine's master: with the VM's SSH port closed once the first
// up has provisioned (and reopened the master its step's new groups need), the second up still
// finds the agent current, installs the rules, asks which steps are pending and, none pending,
// provisions nothing. A VM listed with an egress socket says that Lima isolates VMs: `limactl
// info` is not asked.
BOOST_FIXTURE_TEST_CASE(a_re_up_rides_the_vms_master_and_provisions_only_what_is_pending, fixture) {
    machine::test::state_dir state;
    machine::test::temp_dir lima_home;
    machine::test::fake_vm_context fake;
    fake.ctx.agent = true;
    fake.ctx.agent_relay = MACHINE_AGENT_BINARY;
    fake.ctx.agent_socket = agent.socket().string();
    fake.ctx.egress_proxy = [](std::string, net::policy) -> asio::awaitable<void> { co_return; };
    ::setenv("MACHINE_AGENT", MACHINE_AGENT_BINARY, 1);  // the deployment the agent's hello must match
    // Where Lima keeps an instance: its directory under LIMA_HOME, its ssh.config in it.
    fake.lima.state().lima_home = lima_home.path;
    const fs::path dir = lima_home.path / "web";
    fs::create_directories(dir);
    auto write_config = [&](int port) { write_ssh_config(dir / "ssh.config", sshd, port); };
    write_config(sshd.port());
    const machine::test::pinned_vm web(fake.io, state, "web", dir / "ssh.config");
    lima::instance& listed = fake.lima.add("web", lima::status::running);
    listed.dir = dir.string();
    listed.ssh_config_file = web.inst.ssh_config_file;
    listed.egress_socket = vm::egress_socket("web").string();
    fake.lima.state().isolates_network = true;
    vm::up_target t;
    t.project.name = "web";
    t.project.configured = true;
    t.project.forward_agent = false;
    machine::provision::planned_step mark;
    mark.name = "web.mark";
    mark.user = sshd.user();
    mark.run = {"sh", "-c", "echo ran >> \"$1\"", "sh", (state.dir.path / "ran").string()};
    mark.timeout_ms = 10000;
    mark.hash = "ab12";
    t.plan.steps = {mark};
    auto finished = [&](const std::string& what) {
        const auto lines = fake.events->lines();
        return std::count_if(lines.begin(), lines.end(), [&](const std::string& l) {
            return l.rfind("step.finished web " + what, 0) == 0;
        });
    };
    machine::test::co_run(fake.io, vm::up_one(fake.ctx, t, &fake.cancel, nullptr));
    BOOST_TEST(finished("agent ok up to date") == 1);
    BOOST_TEST(finished("firewall ok") == 1);
    BOOST_TEST(finished("provision ok applied web.mark") == 1);
    BOOST_REQUIRE(machine::paths::socket_accepts(vm::ssh_master_socket("web")));
    write_config(machine::test::closed_port());
    // The agent is asked through the master while Lima lists the VM: its relay runs before the
    // list answers (this list waits up to 10 s for one).
    bool relay_while_listing = false;
    fake.lima.state().while_listing = [&]() -> asio::awaitable<void> {
        for (int i = 0; i < 1000 && !relay_while_listing; ++i) {
            relay_while_listing = machine::proc::live_children() > 0;
            if (!relay_while_listing) co_await machine::sleep_for(10ms);
        }
    };
    machine::test::co_run(fake.io, vm::up_one(fake.ctx, t, &fake.cancel, nullptr));
    fake.lima.state().while_listing = nullptr;
    BOOST_TEST(relay_while_listing);
    BOOST_TEST(finished("agent ok up to date") == 2);
    BOOST_TEST(finished("provision ok its 1 step in place") == 1);
    BOOST_TEST(machine::paths::read_file(state.dir.path / "ran") == "ran\n");  // once
    // The second up sent no provision at all (one would journal its start, and skip the step).
    const std::string journal = machine::paths::read_file(agent.dir.path / "journal.jsonl");
    std::size_t provisions = 0;
    for (auto at = journal.find("\"provision.started\""); at != std::string::npos;
         at = journal.find("\"provision.started\"", at + 1))
        ++provisions;
    BOOST_TEST(provisions == 1u);
    BOOST_TEST(fake.lima.state().info_asked == 0);
    // A paused VM is continued before its agent is asked (a paused guest would not answer).
    fake.lima.state().run_states["web"] = "paused";
    machine::test::co_run(fake.io, vm::up_one(fake.ctx, t, &fake.cancel, nullptr));
    const auto& calls = fake.lima.state().calls;
    BOOST_TEST(std::count(calls.begin(), calls.end(), "qmp cont web") == 1);
    BOOST_TEST(fake.lima.state().run_states["web"] == "running");
    BOOST_TEST(finished("agent ok up to date") == 3);
    // `sessions` and `secrets` start their relay over the master while Lima lists the VM too.
    relay_while_listing = false;
    fake.lima.state().while_listing = [&]() -> asio::awaitable<void> {
        for (int i = 0; i < 1000 && !relay_while_listing; ++i) {
            relay_while_listing = machine::proc::live_children() > 0;
            if (!relay_while_listing) co_await machine::sleep_for(10ms);
        }
    };
    const auto sessions = machine::test::co_run(fake.io, [&]() -> asio::awaitable<std::size_t> {
        auto conn = co_await vm::connect_to_running_agent(fake.ctx, "web", 1s);
        co_return (co_await conn->list_sessions()).size();
    }());
    fake.lima.state().while_listing = nullptr;
    BOOST_TEST(relay_while_listing);
    BOOST_TEST(sessions == 0u);
    // Another instance listed under the name than the one the relay assumed (its ssh.config
    // elsewhere): not that relay, nor the master opened for the other; the listed instance is
    // reached as its ssh.config says, and here its port is closed.
    const fs::path elsewhere = lima_home.path / "elsewhere";
    fs::create_directories(elsewhere);
    fs::copy_file(dir / "ssh.config", elsewhere / "ssh.config");
    listed.dir = elsewhere.string();
    listed.ssh_config_file = (elsewhere / "ssh.config").string();
    BOOST_CHECK_THROW(machine::test::co_run(fake.io, [&]() -> asio::awaitable<void> {
                          auto conn = co_await vm::connect_to_running_agent(fake.ctx, "web", 1s);
                          co_await conn->list_sessions();
                      }()),
                      machine::error);
    ::unsetenv("MACHINE_AGENT");
    BOOST_TEST(problems.empty());
}

// `up` of a hibernated VM believes its agent about the boot: the same boot as at the hibernation
// is a resume; another one (the guest crashed right after resuming and restarted) is said plainly,
// reported as a boot, and waited for like one.
BOOST_FIXTURE_TEST_CASE(a_resumed_guest_in_another_boot_is_said_to_have_restarted, fixture) {
    machine::test::state_dir state;
    machine::test::temp_dir lima_home;
    machine::test::fake_vm_context fake;
    fake.ctx.agent = true;
    fake.ctx.agent_relay = MACHINE_AGENT_BINARY;
    fake.ctx.agent_socket = agent.socket().string();
    ::setenv("MACHINE_AGENT", MACHINE_AGENT_BINARY, 1);
    write_ssh_config(state.dir.path / "ssh.config", sshd, sshd.port());
    const machine::test::pinned_vm web(fake.io, state, "web", state.dir.path / "ssh.config");
    fake.lima.state().lima_home = lima_home.path;
    fake.lima.state().can_hibernate = true;
    fake.lima.add("web", lima::status::running).ssh_config_file = web.inst.ssh_config_file;
    fs::create_directories(lima_home.path / "web");
    std::ofstream(lima_home.path / "web" / "lima.yaml") << "cpus: 2\n";

    // This boot's readiness, as a booted guest's agent would have journaled it.
    const std::array<const char*, 2> readiness{"boot.finished", "user.ready"};
    const std::string boot = machine::test::co_run(fake.io, [&]() -> asio::awaitable<std::string> {
        auto conn = co_await vm::connect_to_agent(fake.ctx, "web", web.inst, 1s);
        const auto h = co_await conn->hello("machine tests");
        for (const char* event : readiness) {
            pr::emit_request e;
            e.event = event;
            e.fields = pr::json{{"boot_id", h.boot_id}};
            co_await conn->emit(std::move(e));
        }
        co_return h.boot_id;
    }());
    vm::up_target t;
    t.project.name = "web";
    t.project.configured = true;
    t.project.forward_agent = false;
    auto said = [&](const std::string& text) {
        const auto lines = fake.events->lines();
        return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(text) != std::string::npos; });
    };

    machine::test::co_run(fake.io, vm::hibernate(fake.ctx, "web"));
    BOOST_TEST(vm::hibernated_boot("web") == boot);
    std::string started;
    machine::test::co_run(fake.io, vm::up_one(fake.ctx, t, &fake.cancel, nullptr, &started));
    BOOST_TEST(started == "resumed");
    BOOST_TEST(said("resumed from hibernation in"));
    BOOST_TEST(!said("restarted right after resuming"));

    machine::test::co_run(fake.io, vm::hibernate(fake.ctx, "web"));
    const fs::path record = state.of("web") / "hibernate.digest";
    const std::string digest = machine::paths::read_file(record).substr(0, 64);
    std::ofstream(record) << digest << "\n0b5e55ed-0000-4000-8000-000000000000\n";  // saved in another boot
    fake.events->seen.clear();
    machine::test::co_run(fake.io, vm::up_one(fake.ctx, t, &fake.cancel, nullptr, &started));
    BOOST_TEST(started == "booted");
    BOOST_TEST(said("VM 'web' restarted right after resuming from hibernation: its processes and /tmp did not survive"));
    BOOST_TEST(!said("resumed from hibernation in"));
    BOOST_TEST(said("step.finished web ready ok"));  // waited for, as after a boot

    // What the VM says its boot is goes to the host's disk only when it looks like one.
    std::ofstream(record) << digest << "\nevil\nsecond line\n";
    BOOST_TEST(vm::hibernated_boot("web") == "evil");
    std::ofstream(record) << digest << "\n../../etc/passwd\n";
    BOOST_TEST(vm::hibernated_boot("web").empty());
    ::unsetenv("MACHINE_AGENT");
    BOOST_TEST(problems.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(guest_limits)

BOOST_AUTO_TEST_CASE(a_timeout_names_the_vm_and_the_request) {
    const guest::request_timeout total("web", "secrets.discover", 30s, false);
    BOOST_TEST(std::string(total.what()) == "VM 'web': the guest agent did not answer secrets.discover within 30 s");
    const guest::request_timeout silence("web", "run", 1500ms, true);
    BOOST_TEST(std::string(silence.what()) == "VM 'web': the guest agent went silent during run: nothing for 1.5 s");
    BOOST_TEST(silence.request() == "run");
    BOOST_TEST(static_cast<int>(silence.code()) == 1);  // exit 1, like every machine::error
}

BOOST_AUTO_TEST_CASE(a_provision_may_take_what_its_plan_allows) {
    pr::provision_request q;
    BOOST_TEST(guest::provision_deadline(q, 60s).count() == 60000);
    pr::provision_step quick;
    quick.timeout_ms = 1000;  // no check
    q.steps.push_back(quick);
    pr::provision_step checked;
    checked.timeout_ms = 600000;
    checked.check = {"true"};  // twice, each at most 60 s
    q.steps.push_back(checked);
    BOOST_TEST(guest::provision_deadline(q, 60s).count() == 60000 + (1000 + 5000 + 1000) + (600000 + 5000 + 120000 + 1000));
}

// The guest connection's warnings: a million bad lines over three seconds make a handful of
// lines, and together they count every one.
BOOST_AUTO_TEST_CASE(a_flood_of_bad_lines_is_said_once_a_second_with_a_count) {
    const text::log_limiter::clock::time_point t0{};
    text::log_limiter l("the guest agent sent", "bad or unexpected line");
    std::vector<std::string> lines;
    constexpr int n = 1'000'000;
    for (int i = 0; i < n; ++i) {
        const auto now = t0 + std::chrono::microseconds(3 * i);  // 3 s in all
        if (auto line = l.note(i % 3 ? "invalid_json" : "unexpected 'event'", "bad line " + std::to_string(i), now))
            lines.push_back(*line);
    }
    if (auto line = l.flush(t0 + 3s)) lines.push_back(*line);
    BOOST_TEST(lines.size() <= 5u);
    BOOST_TEST(lines.front() == "bad line 0");
    std::uint64_t counted = 1;
    for (std::size_t k = 1; k < lines.size(); ++k) {
        const std::string prefix = "the guest agent sent ";
        BOOST_REQUIRE(lines[k].rfind(prefix, 0) == 0);
        counted += std::stoull(lines[k].substr(prefix.size()));
    }
    BOOST_TEST(counted == static_cast<std::uint64_t>(n));
    BOOST_TEST(lines[1].find("bad or unexpected lines in the last 1.0 s (") != std::string::npos, lines[1]);
}

BOOST_AUTO_TEST_SUITE_END()
