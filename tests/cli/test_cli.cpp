// The real `machine` binary end to end against the fake limactl (tests/fixtures/fake-limactl),
// which reproduces Lima's CLI contract and can be scripted to fail, hang or be slow.
#include <boost/test/unit_test.hpp>

#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string_view>
#include <map>
#include <optional>
#include <set>
#include <random>
#include <sstream>

#include <asio/io_context.hpp>
#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "command_table.hpp"
#include "machine/cancel.hpp"
#include "machine/net.hpp"
#include "machine/platform.hpp"
#include "machine/proc.hpp"

extern char** environ;

namespace fs = std::filesystem;
namespace proc = machine::proc;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::string read(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// What a child of these tests keeps of this process's environment: where programs are, how text
// is read and written, where temporary files go, and the sanitizers' and coverage tools'
// settings. Nothing else of the caller's (HOME, XDG_*, SSH_AUTH_SOCK, SSH_AGENT_PID, MACHINE_*,
// LIMA_*, GIT_*...) reaches a child: what a child needs, the test gives it (world::env).
bool passed_through(std::string_view name) {
    static const std::set<std::string_view> names{"PATH", "TMPDIR", "LANG", "LANGUAGE", "TZ"};
    static const std::string_view prefixes[] = {"LC_",   "ASAN_", "UBSAN_", "LSAN_",
                                                "TSAN_", "MSAN_", "GCOV_",  "LLVM_PROFILE_"};
    if (names.count(name)) return true;
    for (const auto prefix : prefixes)
        if (name.substr(0, prefix.size()) == prefix) return true;
    return false;
}

// The variables of this process's environment a child must not inherit (for proc::command's
// env_unset; env_set then adds what the test gives it).
std::vector<std::string> callers_variables() {
    std::vector<std::string> out;
    for (char** e = environ; e && *e; ++e) {
        const std::string_view kv(*e);
        const std::string_view name = kv.substr(0, kv.find('='));
        if (!passed_through(name)) out.emplace_back(name);
    }
    return out;
}

// A helper program (ssh-agent, ssh-keygen, ssh-add, git), run to completion with `env` and
// nothing of the caller's but what passed_through() keeps.
// Runs `c` to completion on a loop of its own, stopped after `timeout`.
proc::result run_command(const proc::command& c, std::chrono::seconds timeout) {
    proc::run_options opt;
    opt.limit.timeout = timeout;
    asio::io_context io;
    proc::result r;
    auto task = [&]() -> asio::awaitable<void> { r = co_await proc::run(c, opt); };
    asio::co_spawn(io, std::move(task), [](std::exception_ptr e) { if (e) std::rethrow_exception(e); });
    io.run();
    return r;
}

proc::result run_sync(std::vector<std::string> argv, std::vector<std::pair<std::string, std::string>> env = {}) {
    proc::command c;
    c.argv = std::move(argv);
    c.env_unset = callers_variables();
    c.env_set = std::move(env);
    return run_command(c, 30s);
}

std::string read_proc_file(pid_t pid, const char* name) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/" + name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Stops the process listening on the Unix socket `path` when its command line holds
// `expected_args` (NUL-separated, as /proc/PID/cmdline): SIGTERM, then SIGKILL after 5 s. The pid
// is the listener's own (SO_PEERCRED of a connection to it), so only that process is touched;
// it is checked after a pidfd to it is open, so a later process given the same pid is never hit.
// True when it was stopped.
bool stop_listener(const fs::path& path, const std::string& expected_args) {
    sockaddr_un addr{};
    if (path.native().size() >= sizeof addr.sun_path) return false;
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.native().size());
    const int sock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return false;
    ucred peer{};
    socklen_t len = sizeof peer;
    const bool known = ::connect(sock, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
                       ::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 && peer.pid > 0;
    ::close(sock);
    if (!known) return false;
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, peer.pid, 0));
    if (pidfd < 0) return false;
    bool stopped = false;
    if (contains(read_proc_file(peer.pid, "cmdline"), expected_args)) {
        pollfd p{pidfd, POLLIN, 0};
        ::syscall(SYS_pidfd_send_signal, pidfd, SIGTERM, nullptr, 0);
        if (::poll(&p, 1, 5000) != 1) {
            ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
            ::poll(&p, 1, 5000);
        }
        stopped = true;
    }
    ::close(pidfd);
    return stopped;
}

// A real ssh-agent on `socket` for one test, killed at the end.
struct test_agent {
    fs::path socket;
    std::string pid;
    explicit test_agent(fs::path path) : socket(std::move(path)) {
        const proc::result r = run_sync({"ssh-agent", "-a", socket.string()});
        BOOST_REQUIRE(r.exit_code == 0);
        const auto at = r.out.find("SSH_AGENT_PID=") + 14;
        pid = r.out.substr(at, r.out.find(';', at) - at);
    }
    ~test_agent() { run_sync({"kill", pid}); }
    std::vector<std::pair<std::string, std::string>> env() const { return {{"SSH_AUTH_SOCK", socket.string()}}; }
};

// A private world per test, and the only way its `machine` runs: a home, XDG directories, LIMA_HOME,
// config and state dirs, a git config and the fake's invocation log, all under `root`. A child
// gets `env` and, of this process's environment, only what passed_through() keeps: no HOME,
// SSH agent, MACHINE_* or git config of the caller's reaches it (a test that wants one sets it).
struct world {
    fs::path root;
    std::vector<std::pair<std::string, std::string>> env;
    fs::path binary = MACHINE_BINARY;  // the machine under test (a copy elsewhere: see limactl_missing...)

    world() {
        std::random_device rd;
        root = fs::temp_directory_path() / ("machine-cli-" + std::to_string(rd()));
        for (const char* dir : {"cwd", "home", "xdg/config", "xdg/state", "xdg/data", "cache", "run"})
            fs::create_directories(root / dir);
        fs::permissions(root / "run", fs::perms::owner_all, fs::perm_options::replace);
        std::ofstream(root / "gitconfig").flush();
        env = {{"HOME", (root / "home").string()},
               {"XDG_CONFIG_HOME", (root / "xdg" / "config").string()},
               {"XDG_STATE_HOME", (root / "xdg" / "state").string()},
               {"XDG_DATA_HOME", (root / "xdg" / "data").string()},
               {"XDG_CACHE_HOME", (root / "cache").string()},
               {"XDG_RUNTIME_DIR", (root / "run").string()},
               {"GIT_CONFIG_GLOBAL", (root / "gitconfig").string()},
               {"GIT_CONFIG_NOSYSTEM", "1"},
               {"LIMA_HOME", (root / "lima").string()},
               {"MACHINE_CONFIG_DIR", (root / "config").string()},
               {"MACHINE_STATE_DIR", (root / "state").string()},
               {"MACHINE_LIMACTL", std::string(MACHINE_FIXTURES_DIR) + "/fake-limactl"},
               {"FAKE_LIMACTL_LOG", (root / "fake.log").string()},
               // The fake's VMs have no SSH: nothing to deploy the guest agent into.
               {"MACHINE_AGENT", "off"}};
    }
    ~world() {
        stop_agent_filters();  // before their sockets go with root
        stop_egress_proxies();
        std::error_code ec;
        fs::remove_all(root, ec);
    }
    world(const world&) = delete;
    world& operator=(const world&) = delete;

    // `machine ARGS` in this world (not started).
    proc::command command(std::vector<std::string> args) const {
        proc::command c;
        c.argv = {binary.string()};
        c.argv.insert(c.argv.end(), args.begin(), args.end());
        c.env_unset = callers_variables();
        c.env_set = env;
        c.cwd = root / "cwd";
        return c;
    }
    // A helper program (git...) with this world's environment.
    proc::result run(std::vector<std::string> argv) const { return run_sync(std::move(argv), env); }

    // The SSH agent filters (`machine agent-proxy`, detached from the machine that started
    // them) serving sockets in this world's state dir, stopped by pid; how many there were.
    std::size_t stop_agent_filters() const {
        std::size_t stopped = 0;
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(root / "state" / "agent", ec)) {
            if (e.path().extension() != ".sock") continue;
            const std::string args = std::string("agent-proxy") + '\0' + "--listen" + '\0' + e.path().string() + '\0';
            stopped += stop_listener(e.path(), args);
        }
        return stopped;
    }

    // The egress proxies (`machine net-proxy`, detached) serving sockets in this world's state
    // dir, stopped by pid; how many there were.
    std::size_t stop_egress_proxies() const {
        std::size_t stopped = 0;
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(root / "state" / "net", ec))
            if (e.path().extension() == ".sock") stopped += stop_listener(e.path(), std::string("net-proxy") + '\0');
        return stopped;
    }

    void set(const std::string& k, const std::string& v) { env.emplace_back(k, v); }
    void config(const std::string& toml) {
        fs::create_directories(root / "config");
        std::ofstream(root / "config" / "projects.toml") << toml;
    }

    proc::result machine(std::vector<std::string> args, std::string stdin_data = {},
                         proc::line_callback on_line = {}) {
        proc::command c = command(args);
        c.in = stdin_data.empty() ? proc::stdio::null : proc::stdio::pipe;
        c.stdin_data = std::move(stdin_data);
        proc::run_options opt;
        opt.limit.timeout = 60s;
        opt.on_stdout_line = std::move(on_line);
        asio::io_context io;
        proc::result r;
        auto task = [&]() -> asio::awaitable<void> { r = co_await proc::run(c, opt); };
        asio::co_spawn(io, std::move(task), [](std::exception_ptr e) { if (e) std::rethrow_exception(e); });
        io.run();
        BOOST_TEST_MESSAGE("machine " << (args.empty() ? "" : args[0]) << " -> " << r.status() << "\n" << r.out << r.err);
        return r;
    }

    // Runs several machine commands at the same time; results in the same order.
    std::vector<proc::result> machines_at_once(const std::vector<std::vector<std::string>>& commands) {
        asio::io_context io;
        std::vector<proc::result> results(commands.size());
        for (std::size_t i = 0; i < commands.size(); ++i) {
            proc::command c = command(commands[i]);
            auto task = [c, &results, i]() -> asio::awaitable<void> {
                proc::run_options opt;
                opt.limit.timeout = 60s;
                results[i] = co_await proc::run(c, opt);
            };
            asio::co_spawn(io, std::move(task), [](std::exception_ptr e) { if (e) std::rethrow_exception(e); });
        }
        io.run();
        return results;
    }

    std::vector<json> fake_log() const {
        std::vector<json> records;
        std::ifstream in(root / "fake.log");
        for (std::string line; std::getline(in, line);) records.push_back(json::parse(line));
        return records;
    }
    // argv (without argv[0]) of every limactl invocation, in order.
    std::vector<std::vector<std::string>> invocations() const {
        std::vector<std::vector<std::string>> out;
        for (const auto& r : fake_log()) {
            if (r.value("event", "") != "invoke") continue;
            auto argv = r["argv"].get<std::vector<std::string>>();
            if (!argv.empty() && argv[0].find("fake-limactl") != std::string::npos) argv.erase(argv.begin());
            out.push_back(argv);
        }
        return out;
    }
    // Whether any instance was created: `create`, `clone`, or a `start --name=N TEMPLATE`.
    bool created_any() const {
        for (const auto& argv : invocations())
            for (const auto& a : argv)
                if (a == "create" || a == "clone" || a.rfind("--name=", 0) == 0) return true;
        return false;
    }
    bool invoked(const std::string& verb) const {
        for (const auto& argv : invocations())
            for (const auto& a : argv)
                if (a == verb) return true;
        return false;
    }
    fs::path state(const std::string& name) const { return root / "state" / name; }
    fs::path instance(const std::string& name) const { return root / "lima" / name; }
};

} // namespace

BOOST_AUTO_TEST_SUITE(cli_end_to_end)

BOOST_AUTO_TEST_CASE(version_help_and_usage_errors) {
    world w;
    auto r = w.machine({"--version"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "machine 0."));
    r = w.machine({"--help"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "130  interrupted"));
    BOOST_TEST(contains(r.out, "MACHINE_LIMACTL"));
    BOOST_TEST(w.machine({}).exit_code == 2);
    BOOST_TEST(w.machine({"frobnicate"}).exit_code == 2);
    BOOST_TEST(w.machine({"up", "--bogus"}).exit_code == 2);
    BOOST_TEST(w.machine({"run", "default"}).exit_code == 2);
    BOOST_TEST(w.fake_log().empty());
}

// What world::command gives a `machine` run: the world's own home, XDG dirs and git config, and
// nothing of the caller's HOME, SSH agent, MACHINE_* or git settings (here set as a developer's
// shell would have them, for this test only). `env` stands in for machine, to print it all.
BOOST_AUTO_TEST_CASE(machine_runs_inherit_nothing_of_the_callers_environment) {
    struct callers_env {
        std::vector<std::pair<std::string, std::optional<std::string>>> saved;
        void set(const char* name, const char* value) {
            const char* old = std::getenv(name);
            saved.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
            ::setenv(name, value, 1);
        }
        ~callers_env() {
            for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
                if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
                else ::unsetenv(it->first.c_str());
            }
        }
    } caller;
    for (const char* name : {"HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME",
                             "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "MACHINE_LIMACTL",
                             "MACHINE_LIMACTL_TIMEOUT", "MACHINE_CONFIG_DIR", "MACHINE_STATE_DIR",
                             "MACHINE_SOMETHING_NEW", "LIMA_HOME", "GIT_CONFIG_GLOBAL", "GIT_DIR"})
        caller.set(name, "/callers-own");
    world w;
    w.env.erase(std::remove_if(w.env.begin(), w.env.end(), [](auto& kv) { return kv.first == "MACHINE_LIMACTL"; }), w.env.end());
    proc::command c = w.command({});
    c.argv = {"env"};
    proc::result r;
    asio::io_context io;
    auto task = [&]() -> asio::awaitable<void> { r = co_await proc::run(c); };
    asio::co_spawn(io, std::move(task), [](std::exception_ptr e) { if (e) std::rethrow_exception(e); });
    io.run();
    BOOST_REQUIRE(r.exit_code == 0);
    std::map<std::string, std::string> got;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) got[line.substr(0, line.find('='))] = line.substr(line.find('=') + 1);
    for (const auto& [name, value] : got) BOOST_TEST(!contains(value, "/callers-own"), name << " is the caller's");
    for (const char* name : {"SSH_AUTH_SOCK", "SSH_AGENT_PID", "MACHINE_LIMACTL", "MACHINE_LIMACTL_TIMEOUT",
                             "MACHINE_SOMETHING_NEW", "GIT_DIR"})
        BOOST_TEST(got.count(name) == 0u, name << " reached the child");
    BOOST_TEST(got["HOME"] == (w.root / "home").string());
    BOOST_TEST(got["XDG_RUNTIME_DIR"] == (w.root / "run").string());
    BOOST_TEST(got["GIT_CONFIG_GLOBAL"] == (w.root / "gitconfig").string());
    BOOST_TEST(got["MACHINE_STATE_DIR"] == (w.root / "state").string());
    BOOST_TEST(got["PATH"] == std::string(std::getenv("PATH")));
}

BOOST_AUTO_TEST_CASE(zero_config_up_creates_and_starts_default) {
    world w;
    auto r = w.machine({"up"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "[default] ready in"));
    const auto calls = w.invocations();
    // One call creates the instance from the rendered template and boots it.
    bool created_and_started = false;
    for (const auto& argv : calls) {
        BOOST_TEST((std::find(argv.begin(), argv.end(), "create") == argv.end()));
        if (std::find(argv.begin(), argv.end(), "start") != argv.end()) {
            created_and_started = true;
            BOOST_TEST(argv[0] == "--tty=false");
            BOOST_TEST((std::find(argv.begin(), argv.end(), "--name=default") != argv.end()));
            BOOST_TEST(argv.back() == (w.state("default") / "lima.yaml").string());
        }
    }
    BOOST_TEST(created_and_started);
    const std::string tmpl = read(w.state("default") / "lima.yaml");
    BOOST_TEST(contains(tmpl, "\nmounts: []\n"));
    BOOST_TEST(contains(tmpl, "forwardAgent: true"));
    struct stat st {};
    BOOST_REQUIRE(::stat((w.state("default") / "lima.yaml").c_str(), &st) == 0);
    BOOST_TEST((st.st_mode & 0777) == 0600u);

    r = w.machine({"list", "--json"});
    BOOST_TEST(r.exit_code == 0);
    const auto row = json::parse(r.out);
    BOOST_TEST(row["name"] == "default");
    BOOST_TEST(row["status"] == "Running");
}

BOOST_AUTO_TEST_CASE(up_on_a_running_vm_is_a_fast_no_op) {
    world w;
    BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
    const auto before = w.invocations().size();
    const auto r = w.machine({"up", "--json"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "\"state\":\"running\""));
    BOOST_TEST(contains(r.out, "already running"));
    const auto calls = w.invocations();
    BOOST_TEST(calls.size() == before + 1);  // a single `list`, no create or start
    BOOST_TEST((std::find(calls.back().begin(), calls.back().end(), "list") != calls.back().end()));
}

BOOST_AUTO_TEST_CASE(json_events_have_the_envelope) {
    world w;
    const auto r = w.machine({"up", "--json"});
    BOOST_TEST(r.exit_code == 0);
    std::uint64_t last_seq = 0;
    std::istringstream lines(r.out);
    int count = 0;
    std::string last_type;
    for (std::string line; std::getline(lines, line); ++count) {
        const auto e = json::parse(line);
        BOOST_TEST(e["v"] == 1);
        BOOST_TEST(e["seq"].get<std::uint64_t>() == last_seq + 1);
        last_seq = e["seq"];
        BOOST_TEST(e["vm"] == "default");
        BOOST_TEST(e["ts"].get<std::string>().size() == 24u);
        last_type = e["type"];
    }
    BOOST_TEST(count > 3);
    BOOST_TEST(last_type == "vm.done");
}

// Snapshots through `limactl snapshot` (the fake keeps tags), and what a Lima without a QEMU
// monitor or hibernation says: the commands' arguments, output and exit codes end to end.
BOOST_AUTO_TEST_CASE(snapshots_pause_and_hibernate_on_the_fake) {
    world w;
    BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
    auto r = w.machine({"snapshot", "default", "t1"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "'t1' (disk and memory)"), r.out);
    r = w.machine({"snapshot", "--list"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "default              t1\n"), r.out);
    r = w.machine({"snapshot", "default", "t1"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "already has a snapshot 't1'"), r.err);
    r = w.machine({"restore", "default", "nope"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "VM 'default' has no snapshot 'nope' (it has: t1); nothing was changed"), r.err);
    r = w.machine({"restore", "default", "t1"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "restored to 't1'"), r.out);
    r = w.machine({"snapshot", "--delete", "default", "t1"});
    BOOST_TEST(r.exit_code == 0, r.err);
    r = w.machine({"snapshot", "--list", "default", "--json"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out.empty(), r.out);
    r = w.machine({"snapshot", "--delete", "default"});
    BOOST_TEST(r.exit_code == 2);
    // The fake's qmp.sock is a plain file: no monitor to pause through.
    r = w.machine({"pause"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "is not a socket (no QEMU monitor)"), r.err);
    // No machineHibernate in the fake's `limactl info`: a warning and a normal stop.
    r = w.machine({"down", "--hibernate"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out + r.err, "this Lima cannot hibernate a VM"), r.out + r.err);
    r = w.machine({"list", "--json"});
    BOOST_TEST(contains(r.out, "\"status\":\"Stopped\""), r.out);
    BOOST_TEST(contains(r.out, "\"hibernated_bytes\":0"), r.out);
}

BOOST_AUTO_TEST_CASE(down_destroy_lifecycle) {
    world w;
    BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
    auto r = w.machine({"down"});
    BOOST_TEST(r.exit_code == 0);
    r = w.machine({"down"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "already stopped"));
    r = w.machine({"up"});  // restart keeps the instance
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(!contains(r.out, "[default] create"));

    // No confirmation (stdin at EOF): nothing happens.
    r = w.machine({"destroy"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "aborted"));
    BOOST_TEST(fs::exists(w.instance("default")));
    r = w.machine({"destroy"}, "n\n");
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(fs::exists(w.instance("default")));

    r = w.machine({"destroy"}, "y\n");
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(!fs::exists(w.instance("default")));
    BOOST_TEST(!fs::exists(w.state("default")));
    r = w.machine({"destroy", "-y"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "nothing to destroy"));
    r = w.machine({"down"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "VM 'default' does not exist"));
}

// The pid of VM `name`'s egress proxy while it runs (0 when none does): from its pid file, and
// only when that process is a net-proxy (a zombie or a reused pid is not).
int running_egress_proxy(const world& w, const std::string& name) {
    std::ifstream in(w.state(name) / "net-proxy.pid");
    int pid = 0;
    if (!(in >> pid) || pid <= 0) return 0;
    return contains(read_proc_file(pid, "cmdline"), std::string("net-proxy") + '\0') ? pid : 0;
}

BOOST_AUTO_TEST_CASE(the_egress_proxy_ends_with_down_and_with_destroy) {
    // Left running, a proxy waits 10 minutes for a VM that is stopped or gone.
    world w;
    w.set("FAKE_LIMACTL_MACHINE_EGRESS", "1");
    BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
    const int first = running_egress_proxy(w, "default");
    BOOST_REQUIRE_MESSAGE(first > 0, "up started no egress proxy");
    BOOST_TEST(w.machine({"down"}).exit_code == 0);
    BOOST_TEST(!contains(read_proc_file(first, "cmdline"), "net-proxy"), "the proxy outlived down");

    BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
    const int second = running_egress_proxy(w, "default");
    BOOST_REQUIRE_MESSAGE(second > 0, "up started no egress proxy after down");
    BOOST_TEST(w.machine({"destroy", "-y"}).exit_code == 0);
    BOOST_TEST(!contains(read_proc_file(second, "cmdline"), "net-proxy"), "the proxy outlived destroy");
    BOOST_TEST(w.stop_egress_proxies() == 0u);
}

BOOST_AUTO_TEST_CASE(bad_names_are_refused_before_anything_runs) {
    world w;
    for (const std::string bad : {"../x", "a;rm -rf ~", "UPPER", "-x", "a b"}) {
        for (const std::string cmd : {"up", "down", "destroy", "ssh"}) {
            std::vector<std::string> args{cmd};
            if (bad[0] == '-') args.push_back("--");
            args.push_back(bad);
            const auto r = w.machine(args);
            BOOST_TEST(r.exit_code == 2, cmd << " " << bad);
        }
        const auto r = w.machine({"run", bad, "--", "true"});
        BOOST_TEST(r.exit_code == 2, "run " << bad);
    }
    BOOST_TEST(w.fake_log().empty());
    const auto r = w.machine({"up", "a;rm -rf ~"});
    BOOST_TEST(r.err == "machine: invalid project name 'a;rm -rf ~' (use a-z, 0-9 and hyphens, starting "
                        "with a letter or digit, at most 63 characters)\n");
}

BOOST_AUTO_TEST_CASE(unknown_projects_get_a_suggestion) {
    world w;
    w.config("[web]\nrepos = []\n");
    const auto r = w.machine({"up", "wbe"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "no project 'wbe' in"));
    BOOST_TEST(contains(r.err, "(did you mean 'web'?)"));
    BOOST_TEST(!w.created_any());
}

BOOST_AUTO_TEST_CASE(config_errors_exit_2_with_position) {
    world w;
    w.config("[web]\ncpus = \"four\"\n");
    const auto r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "projects.toml:2:1: web.cpus: expected an integer, got \"four\""));
    BOOST_TEST(w.fake_log().empty());
}

BOOST_AUTO_TEST_CASE(configured_resources_reach_the_template) {
    world w;
    w.config("[web]\ncpus = 2\nmemory = 3\ndisk = \"12GiB\"\nforward_agent = false\nports = [3000]\nca_certs = []\n");
    BOOST_REQUIRE(w.machine({"up", "web"}).exit_code == 0);
    const std::string tmpl = read(w.state("web") / "lima.yaml");
    BOOST_TEST(contains(tmpl, "\ncpus: 2\n"));
    BOOST_TEST(contains(tmpl, "\nmemory: \"3GiB\"\n"));
    BOOST_TEST(contains(tmpl, "\ndisk: \"12GiB\"\n"));
    BOOST_TEST(contains(tmpl, "forwardAgent: false"));
    BOOST_TEST(contains(tmpl, "\"guestPort\":3000"));
    const auto r = w.machine({"list"});
    BOOST_TEST(contains(r.out, "web"));
}

// An agent that never answers, and a locked one: up says so, in bounded time, and goes on.
BOOST_AUTO_TEST_CASE(a_hung_or_locked_agent_is_a_warning_not_a_hang) {
    world w;
    w.config("[web]\n");
    // Listening, never accepting: connect and write succeed, the answer never comes.
    const fs::path hung = w.root / "hung.sock";
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, hung.c_str(), sizeof addr.sun_path - 1);
    BOOST_REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    BOOST_REQUIRE(::listen(fd, 4) == 0);
    w.set("SSH_AUTH_SOCK", hung.string());
    const auto t0 = std::chrono::steady_clock::now();
    auto r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(seconds_since(t0) < 15);
    BOOST_TEST(contains(r.out, "no usable SSH agent: the agent at " + hung.string() + " did not answer within"), r.out);
    ::close(fd);

    const test_agent locked(w.root / "locked.sock");
    const fs::path key = w.root / "key";
    BOOST_REQUIRE(run_sync({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key.string()}).exit_code == 0);
    const fs::path askpass = w.root / "askpass";
    std::ofstream(askpass) << "#!/bin/sh\necho lock-password\n";
    fs::permissions(askpass, fs::perms::owner_all);
    const std::vector<std::pair<std::string, std::string>> agent_env{
        {"SSH_AUTH_SOCK", locked.socket.string()}, {"SSH_ASKPASS", askpass.string()}, {"SSH_ASKPASS_REQUIRE", "force"}, {"DISPLAY", ":0"}};
    BOOST_REQUIRE(run_sync({"ssh-add", "-q", key.string()}, agent_env).exit_code == 0);
    BOOST_REQUIRE(run_sync({"ssh-add", "-x"}, agent_env).exit_code == 0);
    w.env.back() = {"SSH_AUTH_SOCK", locked.socket.string()};
    r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "holds no keys (or is locked)"), r.out);
}

// Lima fixes agent forwarding per instance: a changed forward_agent reaches a stopped VM's
// lima.yaml before its next start, and a running VM's user is told when it applies.
BOOST_AUTO_TEST_CASE(a_changed_forward_agent_reaches_the_instance_at_its_next_start) {
    world w;
    w.config("[web]\n");
    BOOST_REQUIRE(w.machine({"up", "web"}).exit_code == 0);
    w.config("[web]\nforward_agent = false\n");
    auto r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "the VM still forwards the SSH agent as when it started (the whole agent); the "
                               "project's forward_agent/agent_keys (no agent) apply when it restarts: machine down web "
                               "&& machine up web"), r.out);
    BOOST_TEST(!w.invoked("edit"));
    BOOST_REQUIRE(w.machine({"down", "web"}).exit_code == 0);
    BOOST_REQUIRE(w.machine({"up", "web"}).exit_code == 0);
    const auto calls = w.invocations();
    bool edited = false;
    for (const auto& argv : calls)
        edited |= argv == std::vector<std::string>{"--tty=false", "edit", "--set=.ssh.forwardAgent = false", "web"};
    BOOST_TEST(edited);
    BOOST_TEST(contains(read(w.instance("web") / "lima.yaml"), "forwardAgent: false"));
    // In place now: nothing more to say or do.
    r = w.machine({"up", "web"});
    BOOST_TEST(!contains(r.out, "apply when it restarts"));
}

BOOST_AUTO_TEST_CASE(session_names_are_checked_before_anything_runs) {
    world w;
    for (const std::string bad : {"a;rm -rf ~", "$(id)", "a b", "-x"}) {
        const auto r = w.machine({"claude", "default", "--session", bad});
        BOOST_TEST(r.exit_code == 2);
        BOOST_TEST(contains(r.err, "invalid session name"));
    }
    BOOST_TEST(w.invocations().empty());
}

// `machine secrets` needs the VM running, and reads no secret before it knows it is: a stopped
// or missing VM is a clear message (exit 1) without a single provider call.
BOOST_AUTO_TEST_CASE(secrets_need_a_running_vm_and_read_nothing_before) {
    world w;
    const fs::path secret_file = w.root / "web.env";
    {
        std::ofstream(secret_file) << "TOKEN=never-read-" << w.root.filename().string() << "\n";
    }
    w.config("[web]\n[[web.secrets]]\ndotenv_file = \"" + secret_file.string() +
             "\"\n[[web.secrets]]\ncommand = [\"touch\", \"" + (w.root / "command-ran").string() + "\"]\n");
    auto r = w.machine({"secrets", "web"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "VM 'web' does not exist (run 'machine up web')"), r.err);
    BOOST_REQUIRE(w.machine({"up", "web"}).exit_code == 0);
    BOOST_REQUIRE(w.machine({"down", "web"}).exit_code == 0);
    for (const bool clear : {false, true}) {
        std::vector<std::string> args{"secrets", "web"};
        if (clear) args.push_back("--clear");
        r = w.machine(args);
        BOOST_TEST(r.exit_code == 1);
        BOOST_TEST(contains(r.err, "VM 'web' is not running (run 'machine up web')"), r.err);
    }
    BOOST_TEST(!fs::exists(w.root / "command-ran"));
    r = w.machine({"secrets", "web", "--json"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.out, "\"type\":\"error\""), r.out);
    BOOST_TEST(contains(r.out, "is not running"), r.out);
}

// A malformed secrets entry is a configuration error (exit 2) before Lima is asked anything.
BOOST_AUTO_TEST_CASE(a_bad_secrets_entry_stops_before_anything_runs) {
    world w;
    w.config("[web]\n[[web.secrets]]\nop_reference = \"op://v/i/f\"\nvariable = \"9LIVES\"\n");
    const auto r = w.machine({"secrets", "web"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "projects.toml:4:1: web.secrets[0].variable: expected a variable name"), r.err);
    BOOST_TEST(w.invocations().empty());
}

// A computer on which every doctor check passes: an agent with a key, git's identity and signing
// key, `op` on PATH. Returns the `op` path.
fs::path doctor_ready(world& w, const test_agent& agent) {
    const fs::path key = w.root / "signing";
    BOOST_REQUIRE(run_sync({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key.string()}).exit_code == 0);
    BOOST_REQUIRE(run_sync({"ssh-add", "-q", key.string()}, agent.env()).exit_code == 0);
    const fs::path gitconfig = w.root / "gitconfig";
    std::ofstream(gitconfig) << "[user]\n\tname = Doc Tor\n\temail = doc@example.org\n\tsigningkey = " << key.string()
                             << ".pub\n[gpg]\n\tformat = ssh\n";
    const fs::path bin = w.root / "bin";
    fs::create_directories(bin);
    fs::create_symlink(fs::path(MACHINE_FIXTURES_DIR) / "fake-op", bin / "op");
    w.set("GIT_CONFIG_GLOBAL", gitconfig.string());
    w.set("PATH", bin.string() + ":" + std::getenv("PATH"));
    w.set("SSH_AUTH_SOCK", agent.socket.string());
    return bin / "op";
}

// doctor on a computer that has everything, then with two things broken: each failure named
// with its fix, exit 1, and the JSON form counts them.
BOOST_AUTO_TEST_CASE(doctor_checks_this_computer_and_names_each_fix) {
    world w;
    const test_agent agent(w.root / "a.sock");
    const fs::path bin = doctor_ready(w, agent).parent_path();
    w.config("[web]\n");
    auto r = w.machine({"doctor"});
    BOOST_TEST(r.exit_code == 0, r.out + r.err);
    BOOST_TEST(contains(r.out, "[ok  ] Lima >= 2.0: 2.2.0"), r.out);
    BOOST_TEST(contains(r.out, "[ok  ] SSH agent has keys: 1 key(s)"), r.out);
    BOOST_TEST(contains(r.out, "[ok  ] git user.name: Doc Tor"), r.out);
    BOOST_TEST(contains(r.out, "[ok  ] SSH signing key resolves: ssh-ed25519"), r.out);
    BOOST_TEST(contains(r.out, "[ok  ] 1Password CLI: " + (bin / "op").string()), r.out);
    // The fake limactl (the stand-in without VMs) isolates nothing: the rules in the VM are the
    // only line, said plainly, and no failure.
    BOOST_TEST(contains(r.out, "[note] VM network isolation: only inside the VM (nftables): root in the VM can remove it."),
               r.out);
    BOOST_TEST(contains(r.out, "\"machineEgress\": true"), r.out);
    BOOST_TEST(contains(r.out, "all checks passed"), r.out);

    w.config("[web]\ncpus = \"four\"\n");
    w.set("SSH_AUTH_SOCK", (w.root / "nobody.sock").string());
    r = w.machine({"doctor"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.out, "[FAIL] projects.toml: " + (w.root / "config" / "projects.toml").string() +
                                   ":2:1: web.cpus: expected an integer"), r.out);
    BOOST_TEST(contains(r.out, "[FAIL] SSH agent has keys"), r.out);
    BOOST_TEST(contains(r.out, "ssh-add"), r.out);
    BOOST_TEST(contains(r.out, "2 check(s) failed"), r.out);
    r = w.machine({"doctor", "--json"});
    BOOST_TEST(r.exit_code == 1);
    const json doc = json::parse(r.out);
    BOOST_TEST(doc["summary"]["fails"].get<int>() == 2);
    BOOST_TEST(doc["checks"].size() == doc["summary"]["checks"].get<std::size_t>());
}

// No environment variable needed: MACHINE_LIMACTL when set, else limactl in PATH, else the Lima
// stand-in next to machine (the build tree's lib/machine/limactl); doctor says which and why.
BOOST_AUTO_TEST_CASE(doctor_names_the_limactl_it_uses_and_why) {
    world w;
    const std::string fake = std::string(MACHINE_FIXTURES_DIR) + "/fake-limactl";
    auto r = w.machine({"doctor"});
    BOOST_TEST(contains(r.out, "[ok  ] limactl: " + fake + " (MACHINE_LIMACTL)"), r.out);

    const fs::path bin = w.root / "bin";
    fs::create_directories(bin);
    fs::create_symlink(fake, bin / "limactl");
    w.set("MACHINE_LIMACTL", "");
    w.set("PATH", bin.string() + ":/usr/bin:/bin");
    r = w.machine({"doctor"});
    BOOST_TEST(contains(r.out, "[ok  ] limactl: " + (bin / "limactl").string() + " (limactl in PATH)"), r.out);

    w.set("PATH", "/usr/bin:/bin");
    r = w.machine({"doctor", "--json"});
    const fs::path standin = fs::path(MACHINE_BINARY).parent_path() / "lib" / "machine" / "limactl";
    const json doc = json::parse(r.out);
    bool seen = false;
    for (const auto& c : doc["checks"])
        if (c["name"] == "limactl") {
            seen = true;
            BOOST_TEST(c["status"].get<std::string>() == "ok");
            BOOST_TEST(c["detail"].get<std::string>() ==
                       standin.lexically_normal().string() + " (no limactl in PATH: machine's Lima stand-in)");
        }
    BOOST_TEST(seen, r.out);
}

// doctor's residual risks (docs/threat-model.md): one note per risk that applies to this setup,
// naming the projects it applies to, and none that does not; notes never change the exit status.
BOOST_AUTO_TEST_CASE(doctor_names_the_residual_risks_of_this_setup) {
    world w;
    const test_agent agent(w.root / "a.sock");
    doctor_ready(w, agent);
    const std::string fp = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
    const auto notes = [](const json& doc) {
        std::map<std::string, std::string> out;
        for (const auto& c : doc["checks"])
            if (c["name"].get<std::string>().starts_with("residual risk: ")) {
                BOOST_TEST(c["status"] == "note");
                out[c["name"]] = c["detail"];
            }
        return out;
    };

    // The fake limactl isolates nothing (a real Lima): the in-VM policy is the only line. 'web'
    // forwards the whole agent, 'solo' has no allowlist, 'tight' has neither risk.
    w.config("[web]\negress = [\"github.com\"]\n[solo]\nforward_agent = false\n[tight]\nagent_keys = [\"" + fp +
             "\"]\negress = []\n");
    auto r = w.machine({"doctor"});
    BOOST_TEST(r.exit_code == 0, r.out + r.err);
    BOOST_TEST(contains(r.out, "[note] residual risk: whole SSH agent forwarded: web: while a session is connected, "
                               "the VM can sign and authenticate (push) with every key in your agent\n"),
               r.out);
    BOOST_TEST(contains(r.out, "[note] residual risk: open egress: solo: no egress allowlist"), r.out);
    BOOST_TEST(contains(r.out, "[note] residual risk: network policy inside the VM only: root in the VM can remove it"),
               r.out);
    BOOST_TEST(contains(r.out, "all checks passed"), r.out);
    r = w.machine({"doctor", "--json"});
    BOOST_TEST(r.exit_code == 0, r.out + r.err);
    auto found = notes(json::parse(r.out));
    BOOST_TEST(found.size() == 3u);
    BOOST_TEST(found["residual risk: whole SSH agent forwarded"].starts_with("web: "));
    BOOST_TEST(found["residual risk: open egress"].starts_with("solo: "));

    // Without projects.toml: the zero-config 'default' has both risks.
    fs::remove(w.root / "config" / "projects.toml");
    r = w.machine({"doctor"});
    BOOST_TEST(contains(r.out, "[note] residual risk: whole SSH agent forwarded: default: "), r.out);
    BOOST_TEST(contains(r.out, "[note] residual risk: open egress: default: "), r.out);

    // The stand-in's boundary outside the VM, every project limited: no residual-risk note.
    w.set("FAKE_LIMACTL_MACHINE_EGRESS", "1");
    w.config("[tight]\nagent_keys = [\"" + fp + "\"]\negress = [\"github.com\"]\n[closed]\nforward_agent = false\n"
             "egress = []\n");
    r = w.machine({"doctor"});
    BOOST_TEST(r.exit_code == 0, r.out + r.err);
    BOOST_TEST(!contains(r.out, "residual risk"), r.out);
    r = w.machine({"doctor", "--json"});
    BOOST_TEST(notes(json::parse(r.out)).empty(), r.out);

    // A failing check elsewhere still exits 1, notes or not; a config that does not load has no
    // project to speak of.
    w.set("FAKE_LIMACTL_MACHINE_EGRESS", "0");
    w.config("[web]\ncpus = \"four\"\n");
    r = w.machine({"doctor", "--json"});
    BOOST_TEST(r.exit_code == 1);
    found = notes(json::parse(r.out));
    BOOST_TEST(found.size() == 1u);
    BOOST_TEST(found.count("residual risk: network policy inside the VM only") == 1u);
}

// init writes the documented example, which machine then reads; it never replaces a file.
BOOST_AUTO_TEST_CASE(init_writes_the_example_once) {
    world w;
    const fs::path file = w.root / "config" / "projects.toml";
    auto r = w.machine({"init"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "wrote " + file.string()), r.out);
    std::ifstream in(file);
    const std::string written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    BOOST_TEST(contains(written, "# machine: your projects, one VM each."));
    BOOST_TEST(w.machine({"list"}).exit_code == 0);  // it parses
    std::ofstream(file) << "[mine]\n";
    r = w.machine({"init"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, file.string() + " already exists"), r.err);
    std::ifstream again(file);
    BOOST_TEST(std::string((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>()) == "[mine]\n");
    BOOST_TEST(std::distance(fs::directory_iterator(file.parent_path()), fs::directory_iterator{}) == 1);
}

// `machine create` for scripts (--yes and flags): a new projects.toml opens with init's
// documented header, later tables go after every byte already there, a project is never
// written over, and what was written is what `up` then uses.
BOOST_AUTO_TEST_CASE(create_adds_a_table_that_up_uses_and_never_writes_over_one) {
    world w;
    const fs::path file = w.root / "config" / "projects.toml";
    // Standard input is not a terminal: no question, and nothing written.
    auto r = w.machine({"create", "web"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "standard input is not one: pass --yes"), r.err);
    BOOST_TEST(!fs::exists(file));

    r = w.machine({"create", "web", "--yes", "--shell", "bash", "--cpus", "2", "--memory", "3", "--disk", "12GiB"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "[web]\nrepos = []\nshell = \"bash\"\ncpus = 2\nmemory = \"3GiB\"\ndisk = \"12GiB\"\n"), r.out);
    BOOST_TEST(contains(r.out, "created " + file.string() + " with [web]: run 'machine up web'"), r.out);
    const std::string first = read(file);
    BOOST_TEST(first.rfind("# machine: your projects, one VM each.", 0) == 0);
    BOOST_REQUIRE(w.machine({"up", "web"}).exit_code == 0);
    const std::string tmpl = read(w.state("web") / "lima.yaml");
    BOOST_TEST(contains(tmpl, "\ncpus: 2\n"));
    BOOST_TEST(contains(tmpl, "\nmemory: \"3GiB\"\n"));
    BOOST_TEST(contains(tmpl, "\ndisk: \"12GiB\"\n"));

    // A repo URL holding TOML's quotes and brackets is one string, read back as given.
    const std::string odd = "git@h:a/b\"c]d#e'f.git";
    r = w.machine({"create", "blog", "--yes", "--repo", odd, "--profile", "node", "--profile", "gh"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "wrote [blog] to " + file.string()), r.out);
    const std::string second = read(file);
    BOOST_TEST(second.substr(0, first.size()) == first);
    BOOST_TEST(second.substr(first.size()) ==
               "\n[blog]\nrepos = [ \"git@h:a/b\\\"c]d#e'f.git\" ]\nprofiles = [ \"node\", \"gh\" ]\n");
    BOOST_TEST(w.machine({"project-names"}).out == "blog\nweb\n");

    // Refused, each with exit 2 and the file as it was: a project of that name, a bad name,
    // values the loader would refuse (a URL whose newline would start a table), an unknown
    // profile, a shell there is no such thing as.
    const std::vector<std::pair<std::vector<std::string>, std::string>> refused{
        {{"create", "web", "--yes"}, file.string() + ": there is a project [web] already"},
        {{"create", "Web", "--yes"}, "invalid project name 'Web'"},
        {{"create", "--yes"}, "machine create --yes needs the project's NAME"},
        {{"create", "x", "--yes", "--repo", "https://h/x.git\n[evil]"}, "--repo: must not contain whitespace or control characters"},
        {{"create", "x", "--yes", "--repo", "ext::sh -c id"}, "--repo: "},
        {{"create", "x", "--yes", "--profile", "nope"}, "--profile: profile #1: unknown profile"},
        {{"create", "x", "--yes", "--cpus", "0"}, "--cpus: must be at least 1, got 0"},
        {{"create", "x", "--yes", "--memory", "8GB"}, "--memory: expected a size like 8"},
        {{"create", "x", "--yes", "--shell", "fish"}, "fish"},
    };
    for (const auto& [args, message] : refused) {
        BOOST_TEST_CONTEXT(args.back()) {
            r = w.machine(args);
            BOOST_TEST(r.exit_code == 2);
            BOOST_TEST(contains(r.err, message), r.err);
            BOOST_TEST(read(file) == second);
        }
    }
    // A projects.toml that does not load: its own error, before anything else; left alone.
    w.config("[blog\n");
    r = w.machine({"create", "x", "--yes"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, file.string() + ":1:"), r.err);
    BOOST_TEST(read(file) == "[blog\n");
    BOOST_TEST(std::distance(fs::directory_iterator(file.parent_path()), fs::directory_iterator{}) == 1);
}

// The wizard on a real terminal: util-linux `script` gives `machine create` a pseudo-terminal
// and types the answers into it; bad ones are asked again with the reason.
BOOST_AUTO_TEST_CASE(create_asks_on_a_terminal_and_asks_again_after_a_bad_answer) {
    world w;
    proc::command c = w.command({});
    c.argv = {"script", "-qec", std::string(MACHINE_BINARY) + " create", "/dev/null"};
    c.in = proc::stdio::pipe;
    c.stdin_data = "Bad_Name\nweb\n-x\nhttps://h/a.git\n\nnope\nnode\nfish\nbash\nfour\n2\n\n60\n";
    const proc::result r = run_command(c, 60s);
    BOOST_TEST(r.exit_code == 0, r.out + r.err);
    for (const char* said : {"invalid project name 'Bad_Name'", "Creating [web] in ", "must not start with \"-\", got \"-x\"",
                             "unknown profile \"nope\" (did you mean \"node\"?)", "expected \"zsh\" or \"bash\", got \"fish\"",
                             "expected a whole number, got \"four\"", "Disk (grows only) [30GiB]: "})
        BOOST_TEST(contains(r.out, said), said);
    const std::string text = read(w.root / "config" / "projects.toml");
    BOOST_TEST(contains(text, "\n[web]\nrepos = [ \"https://h/a.git\" ]\nprofiles = [ \"node\" ]\nshell = \"bash\"\ncpus = 2\n"
                              "disk = \"60GiB\"\n"),
               text);
}

BOOST_AUTO_TEST_CASE(limactl_missing_is_one_clear_line) {
    world w;
    // A machine with no Lima stand-in beside it (the build tree's is build/lib/machine/limactl).
    fs::create_directories(w.root / "alone");
    fs::copy_file(MACHINE_BINARY, w.root / "alone" / "machine");
    w.binary = w.root / "alone" / "machine";
    w.env.erase(std::remove_if(w.env.begin(), w.env.end(), [](auto& kv) { return kv.first == "MACHINE_LIMACTL"; }), w.env.end());
    w.set("PATH", "/nonexistent");
    auto r = w.machine({"up"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    BOOST_TEST(contains(r.err, "limactl not found: install Lima"));
    BOOST_TEST(contains(r.err, "MACHINE_LIMACTL"));
    w.set("MACHINE_LIMACTL", (w.root / "nope").string());
    r = w.machine({"list"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "is not an executable file"));
}

BOOST_AUTO_TEST_CASE(limactl_fatal_lines_become_errors_with_diagnostics) {
    world w;
    w.set("FAKE_LIMACTL_FAIL_START", "failed to start `default`: no space left on device");
    const auto r = w.machine({"up"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "machine: limactl start default: failed to start `default`: no space left on device"));
    BOOST_TEST(contains(r.err, "last lines of its output"));
}

BOOST_AUTO_TEST_CASE(malformed_json_from_limactl) {
    world w;
    BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
    w.set("FAKE_LIMACTL_MALFORMED_LIST", "1");
    const auto r = w.machine({"list"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "limactl list printed malformed JSON"));
}

BOOST_AUTO_TEST_CASE(a_hanging_limactl_times_out) {
    world w;
    w.set("FAKE_LIMACTL_HANG", "list");
    w.set("MACHINE_LIMACTL_TIMEOUT", "1");
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = w.machine({"list"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "limactl list did not finish within 1s and was stopped"));
    BOOST_TEST(seconds_since(t0) < 10.0);
    bool signalled = false;
    for (const auto& rec : w.fake_log()) signalled |= rec.value("event", "") == "signal" && rec["signal"] == "SIGINT";
    BOOST_TEST(signalled);
}

BOOST_AUTO_TEST_CASE(ctrl_c_during_a_long_start) {
    world w;
    w.set("FAKE_LIMACTL_DELAY_START", "60");
    int start_pid = 0;
    const auto t0 = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point interrupted_at;
    auto on_line = [&](std::string_view line) {
        if (line.find("booting") == std::string_view::npos || start_pid) return;
        for (const auto& rec : w.fake_log()) {
            if (rec.value("event", "") != "invoke") continue;
            const auto argv = rec["argv"].get<std::vector<std::string>>();
            if (std::find(argv.begin(), argv.end(), "start") == argv.end()) continue;
            start_pid = rec["pid"];
            interrupted_at = std::chrono::steady_clock::now();
            ::kill(rec["ppid"].get<int>(), SIGINT);  // the Ctrl-C, delivered to machine
        }
    };
    const auto r = w.machine({"up"}, {}, on_line);
    BOOST_REQUIRE(start_pid != 0);
    BOOST_TEST(r.exit_code == 130);
    BOOST_TEST(contains(r.err, "machine: interrupted"));
    BOOST_TEST(seconds_since(interrupted_at) < 5.0);
    BOOST_TEST(seconds_since(t0) < 30.0);
    bool signalled = false;
    for (const auto& rec : w.fake_log())
        signalled |= rec.value("event", "") == "signal" && rec["pid"] == start_pid && rec["signal"] == "SIGINT";
    BOOST_TEST(signalled);
    BOOST_TEST(::kill(start_pid, 0) == -1);  // reaped, gone
    // The state dir holds the complete template and nothing half-written (agent-mode: which SSH
    // agent the VM's connections were given, see agent_forwarding.cpp; host_key.pending: the VM
    // machine created is pinned at its first connection, also by the next `up`).
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(w.state("default")))
        if (e.path().filename() != "noted-whole-agent") files.push_back(e.path().filename());
    std::sort(files.begin(), files.end());
    BOOST_TEST(files == (std::vector<std::string>{".lock", "agent-mode", "host_key.pending", "lima.yaml"}),
               boost::test_tools::per_element());
    BOOST_TEST(contains(read(w.state("default") / "lima.yaml"), "display: \"none\""));
    // The next `up` picks up where it stopped.
    w.env.pop_back();
    BOOST_TEST(w.machine({"up"}).exit_code == 0);
}

BOOST_AUTO_TEST_CASE(two_ups_at_once_make_one_vm) {
    world w;
    w.set("FAKE_LIMACTL_DELAY_START", "1");
    const auto results = w.machines_at_once({{"up"}, {"up"}});
    BOOST_TEST(results[0].exit_code == 0);
    BOOST_TEST(results[1].exit_code == 0);
    BOOST_TEST((contains(results[0].out + results[1].out, "waiting for another machine command working on 'default'")));
    BOOST_TEST((contains(results[0].out + results[1].out, "already running")));
    int creates = 0, starts = 0;
    for (const auto& argv : w.invocations()) {
        creates += std::count(argv.begin(), argv.end(), "--name=default");
        starts += std::count(argv.begin(), argv.end(), "start");
    }
    BOOST_TEST(creates == 1);
    BOOST_TEST(starts == 1);
}

BOOST_AUTO_TEST_CASE(watch_follows_vms_appearing_changing_and_disappearing) {
    world w;
    w.set("MACHINE_WATCH_POLL_MS", "200");
    w.set("FAKE_LIMACTL_DELAY_START", "1");  // long enough for watch to see the boot events
    asio::io_context io;
    machine::cancel_signal stop_watch(io.get_executor());
    std::vector<json> seen;
    auto has = [&](const std::string& state) {
        for (const auto& e : seen)
            if (e.value("state", "") == state) return true;
        return false;
    };
    proc::result watch_result, up_result, destroy_result;
    auto command = [&](std::vector<std::string> args) { return w.command(std::move(args)); };
    auto watch_task = [&]() -> asio::awaitable<void> {
        proc::run_options opt;
        opt.cancel = &stop_watch;  // SIGINT to watch, as Ctrl-C would
        opt.limit.timeout = 60s;
        opt.on_stdout_line = [&](std::string_view line) { seen.push_back(json::parse(line)); };
        auto c = command({"watch", "--json"});
        watch_result = co_await proc::run(c, opt);
    };
    auto driver = [&]() -> asio::awaitable<void> {
        asio::steady_timer t(io);
        auto wait_for = [&](const std::string& state) -> asio::awaitable<bool> {
            for (int i = 0; i < 100 && !has(state); ++i) {
                t.expires_after(100ms);
                co_await t.async_wait(asio::use_awaitable);
            }
            co_return has(state);
        };
        t.expires_after(500ms);
        co_await t.async_wait(asio::use_awaitable);
        auto up = command({"up"});
        up_result = co_await proc::run(up);
        const bool ready = co_await wait_for("ready");
        BOOST_TEST(ready);
        auto destroy = command({"destroy", "-y"});
        destroy_result = co_await proc::run(destroy);
        const bool deleted = co_await wait_for("deleted");
        BOOST_TEST(deleted);
        stop_watch.trigger(machine::cancel_signal::graceful);
    };
    asio::co_spawn(io, std::move(watch_task), [](std::exception_ptr e) { if (e) std::rethrow_exception(e); });
    asio::co_spawn(io, std::move(driver), [](std::exception_ptr e) { if (e) std::rethrow_exception(e); });
    const auto t0 = std::chrono::steady_clock::now();
    io.run();
    BOOST_TEST(up_result.exit_code == 0);
    BOOST_TEST(destroy_result.exit_code == 0);
    BOOST_TEST(watch_result.exit_code == 130);
    BOOST_TEST(seconds_since(t0) < 30.0);
    BOOST_TEST(has("booting"));
    BOOST_TEST(has("ready"));
    for (std::size_t i = 0; i < seen.size(); ++i) {
        BOOST_TEST(seen[i]["seq"] == i + 1);
        BOOST_TEST((seen[i]["vm"] == "default" || seen[i]["type"] == "error"));
    }
    // Nothing left behind: no limactl still running for this world.
    bool stray = false;
    for (const auto& rec : w.fake_log())
        if (rec.value("event", "") == "invoke") stray |= ::kill(rec["pid"].get<int>(), 0) == 0;
    BOOST_TEST(!stray);
}

namespace {

// The most `limactl start` processes that ran at the same time, from the fake's log.
int max_concurrent_starts(const world& w) {
    std::map<int, double> started;
    std::vector<std::pair<double, int>> edges;
    for (const auto& rec : w.fake_log()) {
        const std::string ev = rec.value("event", "");
        if (ev == "invoke") {
            const auto argv = rec["argv"].get<std::vector<std::string>>();
            if (std::find(argv.begin(), argv.end(), "start") != argv.end()) {
                started[rec["pid"].get<int>()] = rec["time"].get<double>();
                edges.emplace_back(rec["time"].get<double>(), +1);
            }
        } else if ((ev == "exit" || ev == "signal") && started.count(rec["pid"].get<int>())) {
            edges.emplace_back(rec["time"].get<double>(), -1);
            started.erase(rec["pid"].get<int>());
        }
    }
    std::sort(edges.begin(), edges.end());
    int now = 0, most = 0;
    for (const auto& [t, d] : edges) most = std::max(most, now += d);
    return most;
}

std::map<std::string, std::vector<std::string>> outcomes_by_vm(const std::string& json_lines) {
    std::map<std::string, std::vector<std::string>> out;
    std::istringstream in(json_lines);
    for (std::string line; std::getline(in, line);) {
        const auto e = json::parse(line);
        if (e["type"] == "vm.done") out[e["vm"]].push_back(e["outcome"]);
    }
    return out;
}

const char* kFiveProjects = "[a]\n[b]\n[c]\n[d]\n[e]\n";

} // namespace

BOOST_AUTO_TEST_CASE(up_all_stays_within_the_window) {
    world w;
    w.config(kFiveProjects);
    w.set("FAKE_LIMACTL_DELAY_START", "1");
    const auto r = w.machine({"up", "--all", "--parallel", "2", "--json"});
    BOOST_TEST(r.exit_code == 0);
    const auto outcomes = outcomes_by_vm(r.out);
    BOOST_TEST(outcomes.size() == 5u);
    for (const auto& [vm, list] : outcomes) {
        BOOST_TEST_CONTEXT(vm) { BOOST_TEST(list == std::vector<std::string>{"ready"}); }
    }
    BOOST_TEST(max_concurrent_starts(w) == 2);
}

// `up` of several VMs lists them all in one call before taking their locks; a VM another
// command changed in between (here: created) is listed again, not created twice.
BOOST_AUTO_TEST_CASE(up_of_many_relists_a_vm_another_command_changed) {
    world w;
    w.config(kFiveProjects);
    w.set("FAKE_LIMACTL_DELAY_START", "1");
    const auto results = w.machines_at_once({{"up", "a"}, {"up", "a", "b"}});
    BOOST_TEST(results[0].exit_code == 0);
    BOOST_TEST(results[1].exit_code == 0, results[1].out + results[1].err);
    int lists = 0, creates_a = 0;
    for (const auto& argv : w.invocations()) {
        lists += std::count(argv.begin(), argv.end(), "list");
        creates_a += std::count(argv.begin(), argv.end(), "--name=a");
    }
    BOOST_TEST(creates_a == 1);
    // One list naming a and b, one for `up a`, and when `up a` took the lock first, a second
    // look at a by `up a b` (its first one is out of date).
    BOOST_TEST((lists == 2 || lists == 3));
}

BOOST_AUTO_TEST_CASE(up_several_names_and_one_failure) {
    world w;
    w.config(kFiveProjects);
    w.set("FAKE_LIMACTL_FAIL_START", "qemu-system-x86_64: cannot allocate memory");
    w.set("FAKE_LIMACTL_FAIL_START_ONLY", "b");
    const auto r = w.machine({"up", "a", "b", "c"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.out, "2 of 3 VMs ready"));
    BOOST_TEST(contains(r.out, "  b  failed"));
    BOOST_TEST(contains(r.out, "cannot allocate memory"));
    const auto list = w.machine({"list", "--json"});
    std::istringstream lines(list.out);
    std::map<std::string, std::string> status;
    for (std::string line; std::getline(lines, line);) {
        const auto j = json::parse(line);
        status[j["name"]] = j["status"];
    }
    BOOST_TEST(status["a"] == "Running");
    BOOST_TEST(status["c"] == "Running");
    BOOST_TEST(status["d"] == "NotCreated");
}

BOOST_AUTO_TEST_CASE(fail_fast_cancels_the_rest) {
    world w;
    w.config(kFiveProjects);
    w.set("FAKE_LIMACTL_FAIL_START", "boom");
    w.set("FAKE_LIMACTL_FAIL_START_ONLY", "a");
    const auto r = w.machine({"up", "--all", "--parallel", "1", "--fail-fast", "--json"});
    BOOST_TEST(r.exit_code == 1);
    const auto outcomes = outcomes_by_vm(r.out);
    BOOST_TEST(outcomes.at("a") == std::vector<std::string>{"failed"});
    int starts = 0;
    for (const auto& argv : w.invocations()) starts += std::count(argv.begin(), argv.end(), "start");
    BOOST_TEST(starts == 1);  // nobody else started
    // Exactly one final outcome per VM, even for the ones that never started.
    for (const char* vm : {"b", "c", "d", "e"}) BOOST_TEST(outcomes.count(vm) == 0u, vm);
    BOOST_TEST(contains(r.out, "\"type\":\"error\""));
}

BOOST_AUTO_TEST_CASE(ctrl_c_during_up_all_leaves_no_child_and_stopped_vms) {
    world w;
    w.config("[a]\n[b]\n[c]\n");
    w.set("FAKE_LIMACTL_DELAY_START", "60");
    int machine_pid = 0;
    std::set<std::string> booting;
    auto on_line = [&](std::string_view line) {
        const auto e = json::parse(line);
        if (e.value("state", "") == "booting") booting.insert(e["vm"]);
        if (booting.size() < 3 || machine_pid) return;
        for (const auto& rec : w.fake_log())
            if (rec.value("event", "") == "invoke") machine_pid = rec["ppid"];
        ::kill(machine_pid, SIGINT);
    };
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = w.machine({"up", "--all", "--parallel", "3", "--json"}, {}, on_line);
    BOOST_REQUIRE(machine_pid != 0);
    BOOST_TEST(r.exit_code == 130);
    BOOST_TEST(seconds_since(t0) < 30.0);
    std::set<int> start_pids, signalled;
    for (const auto& rec : w.fake_log()) {
        if (rec.value("event", "") == "invoke") {
            const auto argv = rec["argv"].get<std::vector<std::string>>();
            if (std::find(argv.begin(), argv.end(), "start") != argv.end()) start_pids.insert(rec["pid"].get<int>());
        }
        if (rec.value("event", "") == "signal") signalled.insert(rec["pid"].get<int>());
    }
    BOOST_TEST(start_pids.size() == 3u);
    for (int pid : start_pids) {
        BOOST_TEST(signalled.count(pid) == 1u, "start " << pid << " got SIGINT");
        BOOST_TEST(::kill(pid, 0) == -1, "start " << pid << " is gone");
    }
    // The half-booted VMs were stopped: nothing keeps running behind the user's back.
    w.env.erase(std::remove_if(w.env.begin(), w.env.end(), [](auto& kv) { return kv.first == "FAKE_LIMACTL_DELAY_START"; }), w.env.end());
    const auto list = w.machine({"list", "--json"});
    std::istringstream lines(list.out);
    int stopped = 0;
    for (std::string line; std::getline(lines, line);) stopped += json::parse(line)["status"] == "Stopped";
    BOOST_TEST(stopped == 3);
}

BOOST_AUTO_TEST_CASE(lima_2_1_quoting_and_versions) {
    world w;
    w.set("FAKE_LIMACTL_LIST_STYLE", "v2.1");
    BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
    w.set("FAKE_LIMACTL_FAIL_STOP", "expected status \"Running\", got \"Stopped\"");
    const auto r = w.machine({"down"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "limactl stop default: expected status \"Running\", got \"Stopped\""));
}

BOOST_AUTO_TEST_CASE(list_merges_configured_projects) {
    world w;
    w.config("[web]\n[api]\n");
    BOOST_REQUIRE(w.machine({"up", "web"}).exit_code == 0);
    const auto r = w.machine({"list", "--json"});
    BOOST_TEST(r.exit_code == 0);
    std::istringstream lines(r.out);
    std::vector<std::string> rows;
    for (std::string line; std::getline(lines, line);) {
        const auto j = json::parse(line);
        rows.push_back(j["name"].get<std::string>() + ":" + j["status"].get<std::string>());
    }
    BOOST_TEST(rows == (std::vector<std::string>{"api:NotCreated", "web:Running"}));
}

// ---- provisioning and repos: everything checked before a VM is created ----

BOOST_AUTO_TEST_CASE(an_unknown_profile_is_a_config_error_and_nothing_is_created) {
    world w;
    w.config("[web]\nprofiles = [\"base\", \"dokcer\"]\n");
    const auto r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "projects.toml:2:21: web.profiles[1]: unknown profile \"dokcer\" (did you mean \"docker\"?)"), r.err);
    BOOST_TEST(!w.created_any());
    // A default_profile typo points at default_profile, for every project that inherits it.
    w.config("default_profile = [\"nod\"]\n[web]\n");
    const auto d = w.machine({"up", "web"});
    BOOST_TEST(d.exit_code == 2);
    BOOST_TEST(contains(d.err, "projects.toml:1:20: default_profile[0]: unknown profile \"nod\" (did you mean \"node\"?)"), d.err);
}

BOOST_AUTO_TEST_CASE(a_user_profile_can_be_chosen_and_a_broken_one_is_reported_with_its_position) {
    world w;
    fs::create_directories(w.root / "config" / "profiles");
    std::ofstream(w.root / "config" / "profiles" / "cypress.toml") << "requires = [\"base\"]\n[[step]]\nname = \"deps\"\nrun = \"true\"\n";
    w.config("[web]\nprofiles = [\"cypress\"]\n");
    BOOST_TEST(w.machine({"up", "web"}).exit_code == 0);
    std::ofstream(w.root / "config" / "profiles" / "cypress.toml") << "[[step]]\nname = \"deps\"\nrun = \"true\"\nuser = \"admin\"\n";
    const auto r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "cypress.toml:4:1: step[0].user: expected \"root\" or \"user\""), r.err);
}

BOOST_AUTO_TEST_CASE(repo_urls_that_run_commands_or_look_like_options_are_refused) {
    world w;
    w.config("[web]\nrepos = [\"ext::sh -c touch% /tmp/pwned\"]\n");
    auto r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "web.repos[0]: the ext:: transport is refused"), r.err);
    w.config("[web]\nrepos = [\"--upload-pack=touch /tmp/pwned\"]\n");
    r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "web.repos[0]: must not start with \"-\""), r.err);
    BOOST_TEST(w.fake_log().empty());
}

BOOST_AUTO_TEST_CASE(an_unreachable_repo_stops_up_before_anything_is_created) {
    world w;
    // A reachable repo (a local one) and an unreachable one: only the latter is reported.
    const fs::path good = w.root / "good.git";
    BOOST_REQUIRE(w.run({"git", "init", "-q", "--bare", good.string()}).exit_code == 0);
    w.config("[web]\nrepos = [\"" + good.string() + "\", \"" + (w.root / "missing.git").string() + "\"]\n");
    const auto r = w.machine({"up", "web"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "cannot reach repo(s) of 'web'"), r.err);
    BOOST_TEST(contains(r.err, "missing.git: "), r.err);
    BOOST_TEST(!contains(r.err, "good.git: "), r.err);
    BOOST_TEST(!w.created_any());
    // Once every repo is reachable, up goes on.
    w.config("[web]\nrepos = [\"" + good.string() + "\"]\n");
    BOOST_TEST(w.machine({"up", "web"}).exit_code == 0);
    BOOST_TEST(w.created_any());
}

BOOST_AUTO_TEST_CASE(bake_needs_the_guest_agent) {
    world w;
    const auto r = w.machine({"bake"});
    BOOST_TEST(r.exit_code == 2);
    BOOST_TEST(contains(r.err, "bake needs the guest agent"), r.err);
}

BOOST_AUTO_TEST_SUITE_END()

// Host hygiene (issue 13): no core dump of a machine process while secrets may be in memory.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

namespace {

// An argv prefix running a program as this user without any capability. As root, an empty
// bounding set leaves nothing after exec, so only the uid and the target's dumpability decide
// whether one process may read another's /proc/PID/environ, exactly as for an ordinary user
// (a root with CAP_SYS_PTRACE could read it regardless and would see no difference).
std::vector<std::string> without_capabilities() {
    if (::geteuid() != 0) return {};
    return {"setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"};
}

// Starts `c` (world::command's environment and cwd) without waiting: its pid. Output goes to
// `log`, so the test sees what it said if something fails.
pid_t start(const proc::command& c, const fs::path& log) {
    std::vector<std::string> env;
    for (char** e = environ; e && *e; ++e) {
        const std::string_view kv(*e);
        if (passed_through(kv.substr(0, kv.find('=')))) env.emplace_back(kv);
    }
    for (const auto& [k, v] : c.env_set) env.push_back(k + "=" + v);
    std::vector<char*> envp, argv;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = c.argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (c.cwd) posix_spawn_file_actions_addchdir_np(&fa, c.cwd->c_str());
    pid_t pid = -1;
    const int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    BOOST_REQUIRE_MESSAGE(rc == 0, "cannot start " << args[0] << ": " << std::strerror(rc));
    return pid;
}

// Signals `pid` (our child) and reaps it: SIGKILL when it has not ended within 20 s.
int stop_and_reap(pid_t pid, int sig) {
    ::kill(pid, sig);
    int status = 0;
    for (int i = 0; i < 200; ++i) {
        if (::waitpid(pid, &status, WNOHANG) == pid) return status;
        ::usleep(100 * 1000);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return status;
}

// "SOFT HARD" of /proc/PID/limits' "Max core file size" line.
std::string core_limit(pid_t pid) {
    std::istringstream in(read_proc_file(pid, "limits"));
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("Max core file size", 0) != 0) continue;
        std::istringstream fields(line.substr(18));
        std::string soft, hard;
        fields >> soft >> hard;
        return soft + " " + hard;
    }
    return "?";
}

// Whether an unprivileged process of the same user may read /proc/PID/environ: the kernel
// allows it for a dumpable process and refuses it for one that made itself non-dumpable.
bool environ_readable_by_the_same_user(pid_t pid) {
    std::vector<std::string> argv = without_capabilities();
    argv.insert(argv.end(), {"cat", "/proc/" + std::to_string(pid) + "/environ"});
    return run_sync(argv).exit_code == 0;
}

} // namespace

BOOST_AUTO_TEST_SUITE(cli_host_hygiene)

BOOST_AUTO_TEST_CASE(a_machine_process_can_leave_no_core_dump_and_its_children_are_ordinary) {
    world w;
    // watch's first `limactl list` never ends: a child of machine's to look at while it runs.
    w.set("FAKE_LIMACTL_HANG", "list");
    const fs::path log = w.root / "processes.log";
    // The control: a process that changed nothing, started the same way, is readable.
    proc::command sleeper = w.command({});
    sleeper.argv = without_capabilities();
    sleeper.argv.insert(sleeper.argv.end(), {"sleep", "60"});
    const pid_t control = start(sleeper, log);

    proc::command c = w.command({"watch"});
    std::vector<std::string> argv = without_capabilities();
    argv.insert(argv.end(), c.argv.begin(), c.argv.end());
    c.argv = argv;
    const pid_t machine = start(c, log);
    // Once machine has run `limactl list`, it is well past its start.
    int child = 0;
    for (int i = 0; i < 200 && !child; ++i) {
        ::usleep(100 * 1000);
        if (fs::exists(w.root / "fake.log"))
            for (const auto& rec : w.fake_log())
                if (rec.value("event", "") == "invoke" && rec.value("ppid", 0) == machine && rec.contains("pid"))
                    child = rec["pid"].get<int>();
    }
    BOOST_TEST_REQUIRE(child > 0, "machine watch never ran limactl list: " << read(log));
    // Let the child's own start settle (python reading its script) before probing it.
    ::usleep(300 * 1000);

    BOOST_TEST(environ_readable_by_the_same_user(control));  // the probe sees a dumpable process
    BOOST_TEST(core_limit(machine) == "0 0");                 // RLIMIT_CORE 0, soft and hard
    // PR_SET_DUMPABLE 0, Linux's own: the POSIX build (as on macOS) has only the core limit.
    if (std::string_view(machine::platform::name()) == "linux") BOOST_TEST(!environ_readable_by_the_same_user(machine));
    // A child is an ordinary process again after its exec (dumpable), with the limit inherited.
    BOOST_TEST(environ_readable_by_the_same_user(child));
    BOOST_TEST(core_limit(child) == "0 0");

    const int status = stop_and_reap(machine, SIGINT);
    BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 130), "machine watch ended with status " << status << ": " << read(log));
    BOOST_TEST(::kill(child, 0) != 0);  // its limactl ended with it
    stop_and_reap(control, SIGKILL);
}

BOOST_AUTO_TEST_SUITE_END()

// The pinned host key on every path through OpenSSH (issue 13, item 3): `run`, `ssh`, `claude`
// and `codex` against a real sshd that the fake limactl's instances point at.
#include "../support/sshd.hpp"

namespace {

// A world whose fake VMs answer SSH: every instance's ssh.config (written by the fake at its
// start, like Lima's: ControlMaster auto, StrictHostKeyChecking no) points at a real sshd on
// 127.0.0.1, and Lima's identity is the key that sshd authorizes. Commands "in the VM" run on
// this host as this user.
struct ssh_world : world {
    machine::test::sshd_server sshd;
    ssh_world() {
        set("FAKE_LIMACTL_SSH_PORT", std::to_string(sshd.port()));
        const fs::path identity = root / "lima" / "_config" / "user";
        fs::create_directories(identity.parent_path());
        fs::copy_file(sshd.identity_file(), identity);
        fs::permissions(identity, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
    }
    fs::path ssh_config(const std::string& name) const { return instance(name) / "ssh.config"; }
    // `machine up ARGS`; then the user of every instance's ssh.config becomes sshd's (Lima logs
    // in as the template's user, who has no account on this host).
    proc::result up(std::vector<std::string> args) {
        args.insert(args.begin(), "up");
        proc::result r = machine(args);
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(root / "lima", ec)) {
            const fs::path config = e.path() / "ssh.config";
            if (!fs::exists(config)) continue;
            std::istringstream in(read(config));
            std::string out;
            for (std::string line; std::getline(in, line);)
                out += (line.rfind("  User ", 0) == 0 ? "  User " + sshd.user() : line) + "\n";
            std::ofstream(config) << out;
        }
        return r;
    }
    // The fingerprint of a public key file, as ssh-keygen prints it.
    static std::string fingerprint_of(const fs::path& pub) {
        const std::string line = run_sync({"ssh-keygen", "-l", "-E", "sha256", "-f", pub.string()}).out;
        const auto a = line.find(' ') + 1;
        return line.substr(a, line.find(' ', a) - a);
    }
    std::string host_fingerprint() const { return fingerprint_of(sshd.host_public_key()); }
};

// Lima's ControlMaster for an instance, opened as Lima's host agent opens it (the instance's
// ssh.config: ControlMaster auto, ControlPersist yes, StrictHostKeyChecking no); stopped by
// `ssh -O exit`, then by its pid.
struct lima_master {
    const ssh_world& w;
    std::string name;
    pid_t pid = 0;
    int pidfd = -1;
    lima_master(const ssh_world& world_, std::string name_) : w(world_), name(std::move(name_)) {
        const std::string config = w.ssh_config(name).string();
        const auto opened = run_sync({"ssh", "-F", config, "lima-" + name, "true"}, w.env);
        BOOST_REQUIRE_MESSAGE(opened.exit_code == 0, opened.err);
        const auto check = run_sync({"ssh", "-F", config, "-O", "check", "lima-" + name}, w.env);
        const auto at = check.err.find("pid=");
        BOOST_REQUIRE_MESSAGE(at != std::string::npos, check.err);
        pid = static_cast<pid_t>(std::stol(check.err.substr(at + 4)));
        pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
        BOOST_REQUIRE(pidfd >= 0);
    }
    ~lima_master() {
        run_sync({"ssh", "-F", w.ssh_config(name).string(), "-O", "exit", "lima-" + name}, w.env);
        ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
        pollfd p{pidfd, POLLIN, 0};
        ::poll(&p, 1, 5000);
        ::close(pidfd);
    }
    bool running() const {
        pollfd p{pidfd, POLLIN, 0};
        return ::poll(&p, 1, 0) == 0;
    }
};

} // namespace

BOOST_AUTO_TEST_SUITE(cli_pinned_ssh)

BOOST_AUTO_TEST_CASE(run_passes_the_exit_code_through) {
    ssh_world w;
    BOOST_REQUIRE(w.up({}).exit_code == 0);
    BOOST_REQUIRE(w.machine({"pin", "default"}).exit_code == 0);
    auto r = w.machine({"run", "default", "--", "sh", "-c", "echo out; echo err >&2; exit 42"});
    BOOST_TEST(r.exit_code == 42);
    BOOST_TEST(r.out == "out\n");
    BOOST_TEST(r.err == "err\n");
    // Options after NAME belong to the remote command, with or without `--`.
    r = w.machine({"run", "default", "ls", "-d", "/"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out == "/\n");
    // Every word reaches the VM as it was given, none interpreted by a shell on the way.
    r = w.machine({"run", "default", "--", "printf", "%s\\n", "a b", "$(id)", "it's", "*"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out == "a b\n$(id)\nit's\n*\n");
    // Through OpenSSH, not `limactl shell`.
    BOOST_TEST(!w.invoked("shell"));
    // A figure, not a check: what a `run` costs end to end (the pin's libssh check, then ssh).
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) w.machine({"run", "default", "--", "true"});
    std::printf("FIGURE run_true_mean_ms %.1f\n", seconds_since(t0) * 100.0);

    BOOST_REQUIRE(w.machine({"down"}).exit_code == 0);
    r = w.machine({"run", "default", "--", "true"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "VM 'default' is not running (run 'machine up default')"));
}

// `run` of a project whose primary repo is not cloned (the fake's VMs get no clones) runs in
// the home directory, saying nothing about it; with the repo there, in it (test_interactive).
BOOST_AUTO_TEST_CASE(run_without_its_primary_repo_runs_at_home_silently) {
    ssh_world w;
    const fs::path repo = w.root / ("not-cloned-" + std::to_string(std::random_device{}()) + ".git");
    BOOST_REQUIRE(w.run({"git", "init", "-q", "--bare", repo.string()}).exit_code == 0);
    w.config("[web]\nrepos = [\"" + repo.string() + "\"]\n");
    BOOST_REQUIRE(w.up({"web"}).exit_code == 0);
    BOOST_REQUIRE(w.machine({"pin", "web"}).exit_code == 0);
    const proc::result r = w.machine({"run", "web", "--", "pwd"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out == std::string(::getpwuid(::getuid())->pw_dir) + "\n");  // where sshd starts
    BOOST_TEST(r.err.empty());
}

// What a command in the VM sees of the agent is what `machine run` forwards: a real ssh-agent
// with two keys here, the VM a real sshd.
BOOST_AUTO_TEST_CASE(agent_keys_put_a_filter_between_the_vm_and_the_agent) {
    ssh_world w;
    const test_agent agent(w.root / "a.sock");
    const fs::path agent_sock = agent.socket;
    std::string fp[2];
    for (int i = 0; i < 2; ++i) {
        const fs::path key = w.root / ("key" + std::to_string(i));
        BOOST_REQUIRE(run_sync({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "key" + std::to_string(i), "-f", key.string()}).exit_code == 0);
        BOOST_REQUIRE(run_sync({"ssh-add", "-q", key.string()}, agent.env()).exit_code == 0);
        fp[i] = ssh_world::fingerprint_of(key.string() + ".pub");
    }
    w.set("SSH_AUTH_SOCK", agent_sock.string());
    w.config("[web]\nagent_keys = [\"" + fp[0] + "\"]\n[open]\n[closed]\nforward_agent = false\n");
    BOOST_REQUIRE(w.up({"web", "open", "closed"}).exit_code == 0);
    for (const char* name : {"web", "open", "closed"}) BOOST_REQUIRE(w.machine({"pin", name}).exit_code == 0);

    // agent_keys: the VM's side lists one key, and cannot remove keys from the real agent.
    auto r = w.machine({"run", "web", "--", "ssh-add", "-l"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, fp[0]));
    BOOST_TEST(!contains(r.out, fp[1]));
    r = w.machine({"run", "web", "--", "sh", "-c", "echo $SSH_AUTH_SOCK"});
    BOOST_TEST(!contains(r.out, agent_sock.string()));
    BOOST_TEST(w.machine({"run", "web", "--", "ssh-add", "-D"}).exit_code != 0);
    const auto all = run_sync({"ssh-add", "-l"}, agent.env());
    BOOST_TEST((contains(all.out, fp[0]) && contains(all.out, fp[1])));
    // The same filter serves the next command (not a second proxy).
    BOOST_TEST(w.machine({"run", "web", "--", "ssh-add", "-l"}).exit_code == 0);
    BOOST_TEST(std::distance(fs::directory_iterator(w.root / "state" / "agent"), fs::directory_iterator{}) == 1);

    // No agent_keys: the whole agent. forward_agent = false: no agent at all.
    r = w.machine({"run", "open", "--", "ssh-add", "-l"});
    BOOST_TEST((contains(r.out, fp[0]) && contains(r.out, fp[1])));
    r = w.machine({"run", "closed", "--", "sh", "-c", "echo ${SSH_AUTH_SOCK:-none}; ssh-add -l"});
    BOOST_TEST(r.exit_code == 2);  // ssh-add: "Could not open a connection to your authentication agent"
    BOOST_TEST(r.out == "none\n");

    // The filter would end with the VM (or its socket); the fake's VMs never end on their own.
    BOOST_TEST(w.stop_agent_filters() == 1u);
}

// machine pins a VM's key only when it creates the VM; one it did not create (here: `up` without
// the guest agent never connected) is refused until `machine pin` records its key explicitly.
BOOST_AUTO_TEST_CASE(a_vm_without_a_pin_is_refused_until_machine_pin) {
    ssh_world w;
    w.config("[web]\n");
    BOOST_REQUIRE(w.up({"web"}).exit_code == 0);
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"run", "web", "--", "echo", "hi"}, {"ssh", "web"}, {"claude", "web"}, {"codex", "web"}}) {
        const auto r = w.machine(args);
        BOOST_TEST(r.exit_code == 1, args[0]);
        BOOST_TEST(contains(r.err, "VM 'web' has no pinned host key"), args[0] << ": " << r.err);
        BOOST_TEST(contains(r.err, "run 'machine pin web'"), args[0]);
        BOOST_TEST(!contains(r.out, "hi"));
    }
    BOOST_TEST(!fs::exists(w.state("web") / "host_key"));

    auto r = w.machine({"pin", "web"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "VM 'web': pinned host key " + w.host_fingerprint()), r.out);
    BOOST_TEST(fs::exists(w.state("web") / "host_key"));
    r = w.machine({"run", "web", "--", "echo", "hi"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(r.out == "hi\n");
    r = w.machine({"pin", "web"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "presents its pinned host key " + w.host_fingerprint() + " (ssh-ed25519); nothing to do"), r.out);

    // `pin` is for a running VM, and documented.
    BOOST_TEST(contains(w.machine({"pin", "--help"}).out, "--replace"));
    BOOST_REQUIRE(w.machine({"down", "web"}).exit_code == 0);
    r = w.machine({"pin", "web"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "VM 'web' is not running"));
}

// The attack: Lima's master (opened without checking the key) is up, and the VM presents a key
// that is not the pinned one. Every command refuses with machine's own message naming the VM
// and both fingerprints, before OpenSSH runs (the old code rode the master, or went through
// `limactl shell` with no pin at all, and ran the command).
BOOST_AUTO_TEST_CASE(a_wrong_pin_is_refused_by_every_command_although_limas_master_is_open) {
    ssh_world w;
    w.config("[web]\n");
    BOOST_REQUIRE(w.up({"web"}).exit_code == 0);
    const lima_master master(w, "web");

    // The pin of another key, in both of machine's forms (as if the VM's key had changed; written
    // here rather than by `machine pin`, so the old code meets the same files).
    const fs::path other = w.sshd.make_key("other");
    const std::string wrong = ssh_world::fingerprint_of(other.string() + ".pub");
    const std::string right = w.host_fingerprint();
    BOOST_REQUIRE(wrong != right);
    std::ofstream(w.state("web") / "host_key") << wrong << " ssh-ed25519\n";
    std::ofstream(w.state("web") / "known_hosts") << "machine-web " << read(other.string() + ".pub");
    const fs::path ran = w.root / "ran";
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"run", "web", "--", "touch", ran.string()}, {"ssh", "web"}, {"claude", "web"}, {"codex", "web"}}) {
        const auto r = w.machine(args);
        BOOST_TEST(r.exit_code == 1, args[0]);
        BOOST_TEST(contains(r.err, "host key of VM 'web' changed: expected " + wrong + ", got " + right),
                   args[0] << ": " << r.err);
    }
    BOOST_TEST(!fs::exists(ran));
    BOOST_TEST(master.running());  // the master was there all along

    // pin refuses to trust the new key without --replace, and says both.
    auto r = w.machine({"pin", "web"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "expected " + wrong + ", got " + right));
    BOOST_TEST(contains(r.err, "machine pin web --replace"));
    r = w.machine({"pin", "web", "--replace"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "replaced pinned host key " + wrong + " with " + right), r.out);
    r = w.machine({"run", "web", "--", "echo", "hi"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(r.out == "hi\n");
}

// A VM created again under the same name outside machine leaves a stale pin behind; machine's
// own create removes it (and destroy removes everything of the VM's state).
BOOST_AUTO_TEST_CASE(a_create_forgets_the_pin_of_an_earlier_vm_of_that_name) {
    ssh_world w;
    w.config("[web]\n");
    BOOST_REQUIRE(w.up({"web"}).exit_code == 0);
    BOOST_REQUIRE(w.machine({"pin", "web"}).exit_code == 0);
    BOOST_REQUIRE(w.run({std::string(MACHINE_FIXTURES_DIR) + "/fake-limactl", "delete", "-f", "web"}).exit_code == 0);
    BOOST_REQUIRE(fs::exists(w.state("web") / "host_key"));
    BOOST_REQUIRE(w.up({"web"}).exit_code == 0);
    BOOST_TEST(!fs::exists(w.state("web") / "host_key"));
    BOOST_TEST(!fs::exists(w.state("web") / "known_hosts"));
    BOOST_TEST(fs::exists(w.state("web") / "host_key.pending"));  // the first connection pins
    BOOST_REQUIRE(w.machine({"pin", "web"}).exit_code == 0);
    BOOST_REQUIRE(w.machine({"destroy", "-y", "web"}).exit_code == 0);
    BOOST_TEST(!fs::exists(w.state("web")));
}

BOOST_AUTO_TEST_SUITE_END()

// The command table (src/cli/command_table.cpp): every row is in --help and runs, and the
// completion scripts made from it complete through the real bash, zsh and fish.
namespace {

namespace cli = machine::cli;

// How a test sees a row run: its arguments, its exit status and a piece of what it prints
// (stdout and stderr together), in a world with projects alpha and beta-2, run in table order.
// A row without a probe fails the table test: a new command comes with one.
struct probe {
    std::vector<std::string> args;
    int exit_code;
    std::string output;
};

const std::map<std::string, probe>& probes() {
    static const std::map<std::string, probe> all{
        {"up", {{"up"}, 0, "[default] ready in"}},
        {"bake", {{"bake"}, 2, "bake needs the guest agent"}},
        {"down", {{"down", "nosuch"}, 1, "VM 'nosuch' does not exist\n"}},
        {"destroy", {{"destroy", "nosuch", "-y"}, 0, "nothing to destroy"}},
        {"list", {{"list"}, 0, "beta-2 "}},
        {"run", {{"run", "nosuch", "--", "true"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"pin", {{"pin", "nosuch"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"watch", {{"watch", "Bad_Name"}, 2, "invalid project name 'Bad_Name'"}},
        {"ssh", {{"ssh", "nosuch"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"claude", {{"claude", "--session", "Bad!"}, 2, "invalid session name 'Bad!'"}},
        {"codex", {{"codex", "--session", "Bad!"}, 2, "invalid session name 'Bad!'"}},
        {"sessions", {{"sessions", "nosuch"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"secrets", {{"secrets", "nosuch"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"pause", {{"pause", "nosuch"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"resume", {{"resume", "nosuch"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"snapshot", {{"snapshot", "alpha", "bad/tag"}, 2, "snapshot tag 'bad/tag' is not valid"}},
        {"restore", {{"restore", "nosuch", "t1"}, 1, "VM 'nosuch' does not exist (run 'machine up nosuch')"}},
        {"net", {{"net", "nosuch"}, 0, "no connections recorded for 'nosuch' yet"}},
        {"login", {{"login", "--status"}, 0, "gh      not logged in"}},
        {"logout", {{"logout", "gh"}, 0, "gh: not logged in on this computer"}},
        {"create", {{"create", "new-one"}, 2, "pass --yes"}},
        {"init", {{"init"}, 1, "projects.toml already exists"}},
        {"doctor", {{"doctor", "--json"}, 1, "\"checks\""}},
        {"completion", {{"completion", "fish"}, 0, "complete -c machine"}},
        {"project-names", {{"project-names"}, 0, "alpha\nbeta-2\n"}},
        {"man-page", {{"man-page"}, 0, ".SS \"\\fBmachine\\fR \\fBup\\fR"}},
        {"agent-proxy", {{"agent-proxy", "--listen", "/nonexistent/s", "--upstream", "/nonexistent/u", "--vm-dir",
                          "/nonexistent", "--allow", "all"},
                         1, "agent proxy: cannot use directory /nonexistent"}},
        {"net-proxy", {{"net-proxy", "--vm", "x", "--listen", "/nonexistent/s", "--vm-dir", "/nonexistent", "--audit-log",
                        "/nonexistent/a", "--egress", "open", "--host-port", "5432"},
                       1, "net proxy: cannot use directory /nonexistent"}},
    };
    return all;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(line);
    return out;
}

std::set<std::string> set_of(std::vector<std::string> words) { return {words.begin(), words.end()}; }

// A world whose PATH starts with the directory of the `machine` under test (completion scripts
// run `machine project-names`), and optionally with `first` before it.
void put_machine_on_path(world& w, const std::string& first = {}) {
    const char* path = std::getenv("PATH");
    w.set("PATH", (first.empty() ? "" : first + ":") + fs::path(MACHINE_BINARY).parent_path().string() + ":" +
                      (path ? path : "/usr/bin:/bin"));
}

// What a shell offers for a command line, and what it printed on stderr meanwhile.
struct offered {
    std::set<std::string> words;
    std::string err;
    int exit_code;
};

// bash: the script from `source <(machine completion bash)`, then the completion function called
// as bash calls it on TAB; `words` are COMP_WORDS, the last one being completed.
offered bash_completes(world& w, std::vector<std::string> words) {
    const std::string script = "source <(machine completion bash) || exit 3\n"
                               "COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); COMPREPLY=()\n"
                               "_machine\n"
                               "printf '%s\\n' \"${COMPREPLY[@]}\"\n";
    std::vector<std::string> argv{"bash", "--norc", "--noprofile", "-c", script, "bash"};
    argv.insert(argv.end(), words.begin(), words.end());
    const proc::result r = w.run(argv);
    return {set_of(lines_of(r.out)), r.err, r.exit_code};
}

// zsh: compinit and the script in an interactive zsh on a pseudo-terminal, the line typed and
// TAB pressed (tests/cli/zsh_complete.zsh).
offered zsh_completes(world& w, const std::string& line) {
    const proc::result script = w.machine({"completion", "zsh"});
    std::ofstream(w.root / "_machine") << script.out;
    const proc::result r = w.run({"zsh", "-f", std::string(MACHINE_SOURCE_DIR) + "/tests/cli/zsh_complete.zsh",
                                  (w.root / "_machine").string(), line});
    return {set_of(lines_of(r.out)), r.err, r.exit_code};
}

// fish: the script sourced, then fish's own completion query for the line.
offered fish_completes(world& w, const std::string& line) {
    const proc::result r = w.run({"fish", "--no-config", "-c",
                                  "machine completion fish | source; or exit 3; complete -C $argv[1]", line});
    std::vector<std::string> words;
    for (const auto& l : lines_of(r.out)) words.push_back(l.substr(0, l.find('\t')));  // word<TAB>description
    return {set_of(words), r.err, r.exit_code};
}

// The `--` spellings of a row's options, and --help.
std::set<std::string> long_options_of(const std::string& name) {
    std::set<std::string> out{"--help"};
    for (const auto& row : cli::commands())
        if (row.name == name)
            for (const auto& o : row.options)
                for (const auto& s : o.spellings())
                    if (s.rfind("--", 0) == 0) out.insert(s);
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(cli_command_table)

BOOST_AUTO_TEST_CASE(every_row_is_in_help_and_runs) {
    world w;
    w.config("[alpha]\n[beta-2]\n");
    const proc::result help = w.machine({"--help"});
    BOOST_TEST(help.exit_code == 0);
    std::set<std::string> rows;
    for (const auto& row : cli::commands()) {
        BOOST_TEST_CONTEXT("row " << row.name) {
            rows.insert(row.name);
            // `--help` lists a command as "  name   help" or "  name, alias   help".
            const bool listed = contains(help.out, "\n  " + row.name + " ") || contains(help.out, "\n  " + row.name + ",");
            BOOST_TEST(listed == !row.hidden);
            if (!row.hidden) BOOST_TEST(contains(help.out, row.help));
            const proc::result own = w.machine({row.name, "--help"});
            BOOST_TEST(own.exit_code == 0);
            for (const auto& o : row.options) BOOST_TEST(contains(own.out, "  " + o.names + " "), o.names);
            for (const auto& alias : row.aliases) {
                BOOST_TEST(contains(help.out, alias));
                BOOST_TEST(contains(w.machine({alias, "--help"}).out, row.help));
            }
            const auto p = probes().find(row.name);
            BOOST_TEST_REQUIRE((p != probes().end()), "no probe for the row " << row.name);
            const proc::result r = w.machine(p->second.args);
            BOOST_TEST(r.exit_code == p->second.exit_code);
            BOOST_TEST(contains(r.out + r.err, p->second.output), "expected: " << p->second.output);
        }
    }
    BOOST_TEST(rows.size() == probes().size());  // no probe for a row that is gone
}

// The reference tool's `destroy --force` is `-y`: nothing is asked (stdin at EOF here, which
// a question would take as "no") and the VM is gone; help and completion offer it.
BOOST_AUTO_TEST_CASE(destroy_force_is_yes) {
    world w;
    put_machine_on_path(w);
    BOOST_TEST(contains(w.machine({"destroy", "--help"}).out, "-y,--yes,--force"));
    BOOST_TEST((bash_completes(w, {"machine", "destroy", "--f"}).words == std::set<std::string>{"--force"}));
    for (const char* flag : {"--force", "-y", "--yes"}) {
        BOOST_TEST_CONTEXT(flag) {
            BOOST_REQUIRE(w.machine({"up"}).exit_code == 0);
            const proc::result r = w.machine({"destroy", flag});
            BOOST_TEST(r.exit_code == 0, r.err);
            BOOST_TEST(!contains(r.err, "aborted"));
            BOOST_TEST(!fs::exists(w.instance("default")));
        }
    }
}

// The log level's value is not the command: `run`'s split still finds it (it stopped there,
// and `machine --log-level` alone read past argv).
BOOST_AUTO_TEST_CASE(options_before_run_keep_its_command_line_apart) {
    world w;
    const proc::result r = w.machine({"--log-level", "debug", "run", "nosuch", "--", "ls", "-l"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "VM 'nosuch' does not exist"));
    BOOST_TEST(w.machine({"--log-level"}).exit_code == 2);
}

BOOST_AUTO_TEST_CASE(project_names_come_from_projects_toml_alone_and_a_broken_one_prints_nothing) {
    world w;
    auto r = w.machine({"project-names"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out.empty());
    w.config("[beta-2]\n[alpha]\n");
    std::ofstream(w.root / "cwd" / ".machine.toml") << "name = \"local\"\n";
    r = w.machine({"project-names"});
    BOOST_TEST(r.out == "alpha\nbeta-2\n");
    BOOST_TEST(w.fake_log().empty());  // no limactl
    for (const char* broken : {"[alpha\n", "[Bad_Name]\n", "[alpha]\nbogus = 1\n"}) {
        w.config(broken);
        r = w.machine({"project-names"});
        BOOST_TEST(r.exit_code == 2);
        BOOST_TEST((r.out + r.err).empty(), broken);
    }
}

BOOST_AUTO_TEST_CASE(bash_completes_commands_projects_and_options) {
    world w;
    put_machine_on_path(w);
    w.config("[alpha]\n[beta-2]\n");
    BOOST_TEST((bash_completes(w, {"machine", "u"}).words == std::set<std::string>{"up"}));
    BOOST_TEST((bash_completes(w, {"machine", "l"}).words == std::set<std::string>{"list", "ls", "login", "logout"}));
    BOOST_TEST((bash_completes(w, {"machine", "logout", ""}).words == std::set<std::string>{"claude", "codex", "gh"}));
    BOOST_TEST((bash_completes(w, {"machine", "up", ""}).words == std::set<std::string>{"alpha", "beta-2"}));
    BOOST_TEST((bash_completes(w, {"machine", "up", "alpha", "b"}).words == std::set<std::string>{"beta-2"}));
    BOOST_TEST((bash_completes(w, {"machine", "--log-level", "info", "down", "a"}).words == std::set<std::string>{"alpha"}));
    BOOST_TEST(bash_completes(w, {"machine", "down", "alpha", ""}).words.empty());  // one NAME only
    BOOST_TEST(bash_completes(w, {"machine", "run", "alpha", ""}).words.empty());   // the VM's command line
    BOOST_TEST(bash_completes(w, {"machine", "up", "--timeout", ""}).words.empty());  // a number
    BOOST_TEST((bash_completes(w, {"machine", "secrets", "--"}).words == long_options_of("secrets")));
    BOOST_TEST((bash_completes(w, {"machine", "--log-level", "d"}).words == std::set<std::string>{"debug"}));
    BOOST_TEST((bash_completes(w, {"machine", "--log-level", "=", "d"}).words == std::set<std::string>{"debug"}));
    BOOST_TEST((bash_completes(w, {"machine", "completion", ""}).words == std::set<std::string>{"bash", "zsh", "fish"}));
    // Hidden commands are not offered.
    BOOST_TEST(bash_completes(w, {"machine", "a"}).words.empty());
    BOOST_TEST(bash_completes(w, {"machine", "pro"}).words.empty());
}

// `create` is completed from its row like every command: its options, and --shell's values.
BOOST_AUTO_TEST_CASE(create_is_completed_from_its_row) {
    world w;
    put_machine_on_path(w);
    BOOST_TEST((bash_completes(w, {"machine", "cr"}).words == std::set<std::string>{"create"}));
    BOOST_TEST((bash_completes(w, {"machine", "create", "--"}).words == long_options_of("create")));
    BOOST_TEST((bash_completes(w, {"machine", "create", "web", "--shell", ""}).words == std::set<std::string>{"zsh", "bash"}));
    BOOST_TEST((fish_completes(w, "machine cr").words == std::set<std::string>{"create"}));
}

BOOST_AUTO_TEST_CASE(zsh_completes_commands_projects_and_options) {
    world w;
    put_machine_on_path(w);
    w.config("[alpha]\n[beta-2]\n");
    auto o = zsh_completes(w, "machine u");
    BOOST_TEST(o.exit_code == 0, o.err);
    BOOST_TEST((o.words == std::set<std::string>{"up"}));
    BOOST_TEST((zsh_completes(w, "machine up ").words == std::set<std::string>{"alpha", "beta-2"}));
    BOOST_TEST((zsh_completes(w, "machine --log-level debug down a").words == std::set<std::string>{"alpha"}));
    BOOST_TEST((zsh_completes(w, "machine secrets --").words == long_options_of("secrets")));
    BOOST_TEST((zsh_completes(w, "machine completion ").words == std::set<std::string>{"bash", "zsh", "fish"}));
}

BOOST_AUTO_TEST_CASE(fish_completes_commands_projects_and_options) {
    world w;
    put_machine_on_path(w);
    w.config("[alpha]\n[beta-2]\n");
    auto o = fish_completes(w, "machine u");
    BOOST_TEST(o.exit_code == 0, o.err);
    BOOST_TEST((o.words == std::set<std::string>{"up"}));
    BOOST_TEST((fish_completes(w, "machine up ").words == std::set<std::string>{"alpha", "beta-2"}));
    BOOST_TEST((fish_completes(w, "machine --log-level debug down a").words == std::set<std::string>{"alpha"}));
    BOOST_TEST(fish_completes(w, "machine down alpha ").words.empty());  // one NAME only
    BOOST_TEST((fish_completes(w, "machine secrets --").words == long_options_of("secrets")));
    BOOST_TEST((fish_completes(w, "machine completion ").words == std::set<std::string>{"bash", "zsh", "fish"}));
}

// Names are checked by config, but a script must not trust that: a `machine project-names`
// printing shell syntax is offered word for word, and nothing in it runs or expands.
BOOST_AUTO_TEST_CASE(no_shell_evaluates_what_project_names_prints) {
    world w;
    const fs::path bin = w.root / "hostile-bin";
    fs::create_directories(bin);
    const std::string pwned = (w.root / "pwned").string();
    const std::vector<std::string> names{"$(touch " + pwned + ")", "`touch " + pwned + "`", "; touch " + pwned,
                                         "*", "a b", "{x,y}", "~", "'q'"};
    {
        std::ofstream script(bin / "machine");
        script << "#!/bin/sh\nif [ \"$1\" = project-names ]; then\n";
        for (const auto& n : names) {
            std::string quoted = "'";
            for (char c : n) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
            script << "  printf '%s\\n' " << quoted << "'\n";
        }
        script << "  exit 0\nfi\nexec " << MACHINE_BINARY << " \"$@\"\n";
    }
    fs::permissions(bin / "machine", fs::perms::owner_all);
    put_machine_on_path(w, bin.string());
    std::ofstream(w.root / "cwd" / "a-file").flush();  // what an expanded * would find
    const std::set<std::string> expected(names.begin(), names.end());
    BOOST_TEST((bash_completes(w, {"machine", "up", ""}).words == expected));
    BOOST_TEST((zsh_completes(w, "machine up ").words == expected));
    BOOST_TEST((fish_completes(w, "machine up ").words == expected));
    BOOST_TEST(!fs::exists(pwned));
}

// A broken projects.toml: no names, and nothing on the terminal.
BOOST_AUTO_TEST_CASE(a_broken_config_completes_nothing_and_prints_nothing) {
    world w;
    put_machine_on_path(w);
    w.config("[alpha\n");
    const offered bash = bash_completes(w, {"machine", "up", ""});
    BOOST_TEST(bash.words.empty());
    BOOST_TEST(bash.err.empty());
    const offered fish = fish_completes(w, "machine up ");
    BOOST_TEST(fish.words.empty());
    BOOST_TEST(fish.err.empty());
    // zsh offers the options instead, as it does whenever a positional has no candidates.
    for (const auto& word : zsh_completes(w, "machine up ").words) BOOST_TEST(word.rfind("--", 0) == 0, word);
}

BOOST_AUTO_TEST_SUITE_END()

// `machine net`: a VM's audit log (written by its egress proxy; here by hand) as a table and a
// summary, or as JSON. The records came from a VM: nothing in them reaches the terminal raw.
BOOST_AUTO_TEST_SUITE(cli_net)

namespace {

machine::net::audit_record record(bool allowed, std::string host, int port, std::int64_t up, std::int64_t down,
                                  std::string reason = {}, std::string kind = "tcp") {
    machine::net::audit_record r;
    r.ts = std::chrono::system_clock::time_point(std::chrono::seconds(1796000000));
    r.allowed = allowed;
    r.kind = std::move(kind);
    r.host = std::move(host);
    r.port = port;
    r.bytes_up = up;
    r.bytes_down = down;
    r.duration_ms = 42;
    r.reason = std::move(reason);
    return r;
}

void write_audit_log(world& w, const std::string& name, const std::vector<machine::net::audit_record>& records,
                     const std::string& tail = {}) {
    fs::create_directories(w.root / "state" / name);
    std::ofstream out(w.root / "state" / name / "net.jsonl", std::ios::binary);
    for (const auto& r : records) out << machine::net::to_json_line(r) << "\n";
    out << tail;
}

} // namespace

BOOST_AUTO_TEST_CASE(net_lists_the_last_connections_then_a_summary_by_destination) {
    world w;
    // What the proxy writes is escaped already; a line with a raw control byte is forged, and
    // skipped like a torn or foreign one.
    const std::string escaped_host = "\\x1b]0;pwned\\x07evil.example";
    write_audit_log(w, "web",
                    {record(true, "github.com", 443, 100, 2000), record(false, escaped_host, 443, 0, 0, "not in egress"),
                     record(true, "github.com", 443, 10, 20), record(false, "\x1b[2Jforged.example", 443, 0, 0),
                     record(false, "tracker.example", 53, 0, 0, "not in egress", "dns"),
                     record(true, "github.com", 443, 1, 2)},
                    "not a record\n{\"torn\": ");
    const proc::result r = w.machine({"net", "web"});
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "last 5 of 5 connections of 'web'"), r.out);
    BOOST_TEST(contains(r.out, "REFUSED"));
    BOOST_TEST(contains(r.out, "tracker.example (dns)"));
    BOOST_TEST(contains(r.out, "evil.example:443"));
    BOOST_TEST(!contains(r.out, "forged.example"));
    BOOST_TEST(r.out.find('\x1b') == std::string::npos, r.out);
    BOOST_TEST(r.out.find('\x07') == std::string::npos);
    // The summary: github.com first (3 connections), with its bytes added up.
    const auto summary = r.out.find("by destination:");
    BOOST_REQUIRE(summary != std::string::npos);
    const std::vector<std::string> rows = lines_of(r.out.substr(summary));
    BOOST_REQUIRE(rows.size() == 5u);  // heading, columns, three destinations
    BOOST_TEST(rows[2].rfind("github.com:443 ", 0) == 0u, rows[2]);
    BOOST_TEST(contains(rows[2], "       3        0"), rows[2]);

    const proc::result last = w.machine({"net", "web", "--last", "2"});
    BOOST_TEST(contains(last.out, "last 2 of 5 connections"));
    BOOST_TEST(!contains(last.out.substr(0, last.out.find("by destination:")), "evil.example"));

    const proc::result j = w.machine({"net", "web", "--json", "--last", "3"});
    BOOST_TEST(j.exit_code == 0);
    const json doc = json::parse(j.out);
    BOOST_TEST(doc["vm"] == "web");
    BOOST_REQUIRE(doc["records"].size() == 3u);
    BOOST_TEST(doc["records"][0]["allowed"] == true);
    BOOST_TEST(doc["records"][1]["kind"] == "dns");
    BOOST_TEST(doc["records"][1]["reason"] == "not in egress");
    BOOST_REQUIRE(doc["summary"].size() == 3u);
    BOOST_TEST(doc["summary"][0]["destination"] == "github.com:443");
    BOOST_TEST(doc["summary"][0]["allowed"] == 3);
    BOOST_TEST(doc["summary"][0]["bytes_down"] == 2022);
}

BOOST_AUTO_TEST_CASE(net_without_a_log_says_so_and_succeeds) {
    world w;
    const proc::result r = w.machine({"net", "web"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "no connections recorded for 'web' yet"), r.out);
    const proc::result j = w.machine({"net", "web", "--json"});
    BOOST_TEST(json::parse(j.out)["records"].empty());
    BOOST_TEST(w.machine({"net", "web", "--last", "0"}).exit_code == 2);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cli_login)

// `machine login`: what a test token looks like; any output or file but the value file holding
// this marker leaks it.
const std::string login_marker = "L0GINmarker5e2a";

// Every file under the world's state directory but credentials/*.token, with what it holds:
// none may hold a value.
std::string state_files_but_values(const world& w) {
    std::string all;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(w.root / "state", ec); it != fs::recursive_directory_iterator();
         ++it) {
        if (!it->is_regular_file() || it->path().extension() == ".token") continue;
        all += it->path().string() + "\n" + read(it->path()) + "\n";
    }
    return all;
}

// --with-token from stdin, --status (text and JSON), doctor, logout: the value only in its file.
BOOST_AUTO_TEST_CASE(login_with_token_status_and_logout_never_show_the_value) {
    world w;
    const std::string token = "ghp_" + login_marker;
    proc::result r = w.machine({"login", "gh", "--with-token"}, token + "\n");
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(contains(r.out, "gh: logged in (GH_TOKEN, stored in "), r.out);
    const fs::path dir = w.root / "state" / "credentials";
    BOOST_TEST(read(dir / "gh.token") == token);  // the newline trimmed
    BOOST_TEST(((fs::status(dir).permissions() & fs::perms::all) == fs::perms::owner_all));
    BOOST_TEST(((fs::status(dir / "gh.token").permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write)));
    std::string seen = r.out + r.err;
    r = w.machine({"login", "--status"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "gh      logged in      GH_TOKEN"), r.out);
    BOOST_TEST(contains(r.out, "claude  not logged in"), r.out);
    seen += r.out + r.err;
    r = w.machine({"login", "--status", "--json"});
    BOOST_TEST(r.exit_code == 0);
    const auto lines = lines_of(r.out);
    BOOST_REQUIRE(lines.size() == 4u);
    const json gh = json::parse(lines[2]);
    // Last, what the VM of the project here would receive (no projects.toml: "default", every tool).
    BOOST_TEST(json::parse(lines[3]) == json::parse(R"({"project":"default","receives":["gh"]})"), lines[3]);
    BOOST_TEST(gh["tool"] == "gh");
    BOOST_TEST(gh["logged_in"] == true);
    BOOST_TEST(gh["variable"] == "GH_TOKEN");
    BOOST_TEST(gh["source"] == "stored");
    BOOST_TEST(json::parse(lines[0])["logged_in"] == false);
    seen += r.out + r.err;
    r = w.machine({"doctor"});
    BOOST_TEST(contains(r.out, "[ok  ] gh login: GH_TOKEN from stored"), r.out);
    BOOST_TEST(contains(r.out, "[note] logins for project default: its VM receives gh (every tool logged in"), r.out);
    BOOST_TEST(contains(r.out, "[note] claude login: not logged in"), r.out);
    seen += r.out + r.err;
    BOOST_TEST(!contains(seen, login_marker), "the value was shown");
    BOOST_TEST(!contains(state_files_but_values(w), login_marker), "the value is in a state file");
    r = w.machine({"logout", "gh"});
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(contains(r.out, "gh: logged out"), r.out);
    BOOST_TEST(contains(r.out, "; no running VM"), r.out);
    BOOST_TEST(!fs::exists(dir / "gh.token"));
    BOOST_TEST(!fs::exists(dir / "gh.json"));
    BOOST_TEST(contains(w.machine({"login", "--status"}).out, "gh      not logged in"));
}

// A malformed or hostile token: exit 2 naming the tool and the rule, never the value (not even
// escaped), nothing stored, the previous login kept.
BOOST_AUTO_TEST_CASE(a_malformed_token_is_refused_and_nothing_is_stored) {
    world w;
    BOOST_REQUIRE(w.machine({"login", "gh", "--with-token"}, "ghp_" + login_marker + "\n").exit_code == 0);
    const fs::path dir = w.root / "state" / "credentials";
    const std::string json_before = read(dir / "gh.json");
    const std::pair<std::string, std::string> cases[] = {
        {"sk-" + login_marker + "\n", "gh: the token given (18 bytes) does not have the form of a GitHub token"},
        {"ghp_\x1b]0;pwned" + login_marker + "\x07\n", "contains a control character"},
        {"ghp_x\nEVIL " + login_marker + "\n", "contains whitespace"},
        {"ghp_" + std::string(5000, 'a'), "is longer than 4096 bytes"},
        {"\n", "gh: the token given is empty"},
    };
    for (const auto& [in, message] : cases) {
        BOOST_TEST_CONTEXT(message) {
            const proc::result r = w.machine({"login", "gh", "--with-token"}, in);
            BOOST_TEST(r.exit_code == 2);
            BOOST_TEST(contains(r.err, message), r.err);
            BOOST_TEST(contains(r.err, "nothing was stored"), r.err);
            for (const std::string& leak : {login_marker, std::string("pwned"), std::string("EVIL"), std::string("\x1b")})
                BOOST_TEST(!contains(r.out + r.err, leak), "leaked a part of the value (" << leak.size() << " bytes)");
            BOOST_TEST(read(dir / "gh.token") == "ghp_" + login_marker);
            BOOST_TEST(read(dir / "gh.json") == json_before);
        }
    }
    // A tool that was never logged in gets nothing at all.
    BOOST_TEST(w.machine({"login", "codex", "--with-token"}, "nope\n").exit_code == 2);
    BOOST_TEST(!fs::exists(dir / "codex.json"));
    BOOST_TEST(!fs::exists(dir / "codex.token"));
}

// --from-command keeps the argv (shown escaped), runs it once to check it; a failing one is
// refused (exit 1) and the previous login stays.
BOOST_AUTO_TEST_CASE(a_command_source_is_checked_once_and_a_failing_one_keeps_the_previous_login) {
    world w;
    const std::string hostile_arg = "\x1b[31mred\nline";
    { std::ofstream(w.root / "token") << "gho_" << login_marker << "\n"; }  // the source's secret, read by cat
    proc::result r = w.machine({"login", "gh", "--from-command", "--", "sh", "-c", "cat \"$1\"", hostile_arg,
                                (w.root / "token").string()});
    BOOST_TEST(r.exit_code == 0, r.err);
    const fs::path dir = w.root / "state" / "credentials";
    BOOST_TEST(!fs::exists(dir / "gh.token"));
    const std::string json_before = read(dir / "gh.json");
    r = w.machine({"login", "gh", "--from-command", "--", "sh", "-c", "echo 'vault locked' >&2; exit 1"});
    BOOST_TEST(r.exit_code == 1);
    BOOST_TEST(contains(r.err, "gh: `sh` failed (exit 1): vault locked; nothing was stored, the previous login is kept"), r.err);
    BOOST_TEST(read(dir / "gh.json") == json_before);
    r = w.machine({"login", "--status"});
    BOOST_TEST(contains(r.out, "the command `sh -c "), r.out);
    BOOST_TEST(contains(r.out, "\\x1b[31mred\\nline"), r.out);  // escaped, on its line
    BOOST_TEST(!contains(r.out, "\x1b"), r.out);
    BOOST_TEST(lines_of(r.out).size() == 5u);  // the header, a line per tool, what project default receives
    BOOST_TEST(contains(r.out, "project 'default': its VM receives gh at `machine up`"), r.out);
    BOOST_TEST(!contains(r.out + r.err, "gho_" + login_marker));
    // Without --from-command a command line is a usage error; --from-command needs one.
    BOOST_TEST(w.machine({"login", "gh", "pass", "show"}).exit_code == 2);
    BOOST_TEST(w.machine({"login", "gh", "--from-command"}).exit_code == 2);
}

// The hidden prompt on a real terminal (util-linux `script`): what is typed is not echoed, and
// the terminal is back to normal afterwards, after Enter as after Ctrl-C. The input comes after
// a pause, as typing does (before machine switches echo off, the terminal itself would echo it).
BOOST_AUTO_TEST_CASE(login_asks_at_a_hidden_prompt_and_restores_the_terminal) {
    const auto on_terminal = [](world& w, const std::string& typed) {
        proc::command c = w.command({});
        const std::string session = std::string(MACHINE_BINARY) + " login gh; echo \"rc=$?\"; stty -a";
        c.argv = {"sh", "-c", "(sleep 2; printf '%s' \"$1\") | script -qec \"$2\" /dev/null", "sh", typed, session};
        return run_command(c, 60s);
    };
    world w;
    proc::result r = on_terminal(w, "ghp_" + login_marker + "\r");
    BOOST_TEST(contains(r.out, "Paste a GitHub token for gh (input hidden): "), r.out);
    BOOST_TEST(contains(r.out, "rc=0"), r.out);
    BOOST_TEST(!contains(r.out, login_marker), "echoed: " << r.out);
    BOOST_TEST(contains(r.out, " echo "), r.out);  // stty: echo on again
    BOOST_TEST(!contains(r.out, "-echo "), r.out);
    BOOST_TEST(!contains(r.out, "-icanon"), r.out);
    BOOST_TEST(read(w.root / "state" / "credentials" / "gh.token") == "ghp_" + login_marker);
    // Ctrl-C halfway: interrupted (130), nothing changed, the terminal restored.
    r = on_terminal(w, "gho_half\x03");
    BOOST_TEST(contains(r.out, "rc=130"), r.out);
    BOOST_TEST(!contains(r.out, "gho_half"), r.out);
    BOOST_TEST(!contains(r.out, "-echo "), r.out);
    BOOST_TEST(!contains(r.out, "-isig"), r.out);
    BOOST_TEST(read(w.root / "state" / "credentials" / "gh.token") == "ghp_" + login_marker);
}

BOOST_AUTO_TEST_SUITE_END()
