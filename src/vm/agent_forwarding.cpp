// Which SSH agent a project's VM may reach: none (forward_agent = false), the user's whole
// agent, or, with `agent_keys`, a filtering proxy (src/agent_proxy) that offers only those keys.
#include "machine/vm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "machine/agent_proxy.hpp"
#include "machine/paths.hpp"
#include "machine/sha256.hpp"
#include "machine/text.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// How machine tells the filter where its log is (agent-proxy's options are parsed elsewhere).
constexpr const char* filter_log_variable = "MACHINE_AGENT_FILTER_LOG";
constexpr std::size_t filter_log_max_bytes = 1024 * 1024;

// One filter per project, upstream agent and key list: a change of any of them is a new socket
// (and a new proxy); the old one ends with its VM. Short, so the path fits sockaddr_un.
fs::path filter_socket(const config::project& p, const std::string& upstream) {
    std::string key = p.name + '\0' + upstream;
    for (const auto& fp : p.agent_keys) key += '\0' + fp;
    return paths::state_dir() / "agent" / (sha256::hex(key).substr(0, 16) + ".sock");
}

bool accepts(const fs::path& socket_path) {
    sockaddr_un addr{};
    if (socket_path.native().size() >= sizeof addr.sun_path) return false;
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.native().size());
    const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
}

// Starts `argv` in its own session, detached from machine (double fork: nobody has to reap
// it), stdin from /dev/null, stdout and stderr appended to `log`, with `log` in the
// environment as filter_log_variable.
void spawn_detached(const std::vector<std::string>& argv, const fs::path& log) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    // Built before fork(): the child may only make async-signal-safe calls.
    const std::string log_var = std::string(filter_log_variable) + "=";
    std::vector<std::string> env_strings{log_var + log.string()};
    for (char** e = environ; *e; ++e)
        if (!std::string_view(*e).starts_with(log_var)) env_strings.emplace_back(*e);
    std::vector<char*> env;
    for (auto& e : env_strings) env.push_back(e.data());
    env.push_back(nullptr);
    const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) throw error("cannot open " + log.string() + ": " + std::strerror(errno));
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const pid_t child = ::fork();
    if (child < 0) {
        ::close(log_fd);
        if (null_fd >= 0) ::close(null_fd);
        throw error(std::string("cannot start the agent filter: fork: ") + std::strerror(errno));
    }
    if (child == 0) {
        // Only async-signal-safe calls from here on.
        ::setsid();
        if (::fork() != 0) ::_exit(0);
        if (null_fd >= 0) ::dup2(null_fd, 0);
        ::dup2(log_fd, 1);
        ::dup2(log_fd, 2);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::execve(args[0], args.data(), env.data());
        ::_exit(127);
    }
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
}

// Makes the capped `log` the filter's only output; false (said on stderr) when it cannot be
// opened.
bool log_only_to(const fs::path& log) {
    // The files spdlog creates when it rotates stay as private as the one machine opened.
    ::umask(077);
    try {
        spdlog::set_default_logger(agent_filter_logger(log));
    } catch (const spdlog::spdlog_ex& e) {
        spdlog::error("agent filter: cannot log to {}: {}", log.string(), e.what());
        return false;
    }
    // stdout and stderr are that same file, opened by machine for what goes wrong before this
    // point. Left open they would keep its first version on disk after it rotates away, and
    // grow it unseen with whatever reached them.
    const int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd >= 0) {
        ::dup2(null_fd, 1);
        ::dup2(null_fd, 2);
        ::close(null_fd);
    }
    return true;
}

// Starts the project's filter unless it already serves; true when it had to be started.
awaitable<bool> ensure_filter(const config::project& p, const fs::path& socket_path, const std::string& upstream) {
    if (accepts(socket_path)) co_return false;
    const fs::path dir = socket_path.parent_path();
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
    if (socket_path.native().size() >= sizeof(sockaddr_un{}.sun_path))
        throw error("the agent filter's socket path is too long: " + socket_path.string() +
                    " (set MACHINE_STATE_DIR to a shorter directory)");
    std::vector<std::string> argv{fs::read_symlink("/proc/self/exe").string(), "agent-proxy",
                                  "--listen", socket_path.string(), "--upstream", upstream,
                                  "--vm-dir", lima::instance_dir(p.name).string()};
    for (const auto& fp : p.agent_keys) {
        argv.push_back("--allow");
        argv.push_back(fp);
    }
    spawn_detached(argv, project_state_dir(p.name) / "agent-filter.log");
    for (int i = 0; i < 100 && !accepts(socket_path); ++i) co_await sleep_for(20ms);
    if (!accepts(socket_path))
        throw error("the SSH agent filter for '" + p.name + "' did not start; see " +
                    (project_state_dir(p.name) / "agent-filter.log").string());
    co_return true;
}

std::string key_list(const std::vector<std::string>& fps) {
    std::string out;
    for (const auto& fp : fps) out += (out.empty() ? "" : ", ") + fp;
    return out;
}

// Once per project (a marker in its state directory), not on every command.
bool first_time(const std::string& name, const std::string& what) {
    const fs::path marker = project_state_dir(name) / ("noted-" + what);
    std::error_code ec;
    if (fs::exists(marker, ec)) return false;
    fs::create_directories(marker.parent_path(), ec);
    std::ofstream(marker) << "\n";
    return true;
}

// The agent a VM's SSH connections get is fixed when the VM starts: Lima's host agent keeps the
// environment of `limactl start` and (re)opens the SSH master with it. `<state>/<name>/agent-mode`
// records the choice the VM was started with; a different choice for a running VM is said, and
// applies at its next start.
void record_or_compare_mode(context& ctx, const config::project& p, const lima::instance* inst,
                            const std::string& mode, bool speak) {
    const fs::path file = project_state_dir(p.name) / "agent-mode";
    const bool running = inst && inst->state == lima::status::running;
    if (!running) {
        std::error_code ec;
        fs::create_directories(file.parent_path(), ec);
        paths::write_file_atomic(file, mode + "\n", 0600);
        return;
    }
    std::string started_with;
    try {
        started_with = text::trim(paths::read_file(file));
    } catch (const error&) {
        return;  // started before machine recorded it: nothing to compare with
    }
    if (speak && started_with != mode)
        ctx.emit(events::message(p.name, "warning",
                                 "the VM still forwards the SSH agent as when it started (" + started_with +
                                     "); the project's forward_agent/agent_keys (" + mode +
                                     ") apply when it restarts: machine down " + p.name + "; machine up " + p.name));
}

} // namespace

awaitable<agent_environment> prepare_agent_forwarding(context& ctx, const config::project& p,
                                                      const lima::instance* inst, bool speak) {
    agent_environment out;
    if (!p.forward_agent) {
        // No agent for anything that connects to this VM, whatever the user's shell has.
        out.env.unset = {"SSH_AUTH_SOCK"};
        record_or_compare_mode(ctx, p, inst, "no agent", speak);
        co_return out;
    }
    out.forward = true;
    const std::string upstream = paths::env("SSH_AUTH_SOCK");
    if (!ctx.agent_probe) ctx.agent_probe = agent_proxy::probe(upstream, 2s);
    const agent_proxy::agent_probe& probe = *ctx.agent_probe;
    using state = agent_proxy::agent_probe::state;
    if (speak && probe.result != state::ok) {
        ctx.emit(events::message(p.name, "warning",
                                 "no usable SSH agent: " + text::sanitize_for_terminal(probe.detail) +
                                     "; git over SSH and commit signing in the VM will fail (start or unlock "
                                     "one: eval \"$(ssh-agent)\"; ssh-add; or set forward_agent = false)"));
    }
    if (p.agent_keys.empty()) {
        record_or_compare_mode(ctx, p, inst, "the whole agent", speak);
        if (speak && probe.result == state::ok && first_time(p.name, "whole-agent"))
            ctx.emit(events::message(p.name, "info",
                                     "the VM may use every key in your SSH agent (" + std::to_string(probe.fingerprints.size()) +
                                         "); agent_keys = [\"SHA256:...\"] in its config limits it to some"));
        co_return out;
    }
    if (probe.result == state::ok) {
        std::vector<std::string> missing;
        for (const auto& fp : p.agent_keys)
            if (std::find(probe.fingerprints.begin(), probe.fingerprints.end(), fp) == probe.fingerprints.end())
                missing.push_back(fp);
        if (speak && !missing.empty())
            ctx.emit(events::message(p.name, "warning", "agent_keys names keys your SSH agent does not hold: " +
                                                            key_list(missing)));
    }
    const fs::path socket_path = filter_socket(p, upstream);
    if (co_await ensure_filter(p, socket_path, upstream))
        spdlog::debug("vm={} started the agent filter on {}", p.name, socket_path.string());
    record_or_compare_mode(ctx, p, inst, "only " + key_list(p.agent_keys) + " through agent " + upstream, speak);
    out.env.set = {{"SSH_AUTH_SOCK", socket_path.string()}};
    co_return out;
}

std::shared_ptr<spdlog::logger> agent_filter_logger(const fs::path& file) {
    // spdlog rotates before a line would take the file past the cap: agent-filter.log becomes
    // agent-filter.1.log (the older one is removed) and a new agent-filter.log starts.
    auto sink = std::make_shared<spdlog::sinks::rotating_file_sink_mt>(file.string(), filter_log_max_bytes, 1);
    auto logger = std::make_shared<spdlog::logger>("agent-filter", std::move(sink));
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %l: %v");
    logger->set_level(spdlog::level::info);
    // Each line reaches the file at once, as it did on stderr: someone may be watching it.
    logger->flush_on(spdlog::level::info);
    return logger;
}

int run_agent_proxy(const std::string& listen, const std::string& upstream, const std::string& vm_dir,
                    const std::vector<std::string>& allowed) {
    // Started by hand (no log named), the filter logs to stderr.
    if (const std::string log = paths::env(filter_log_variable); !log.empty() && !log_only_to(log)) return 1;
    agent_proxy::options opt;
    opt.listen = listen;
    opt.upstream = upstream;
    opt.allowed = allowed;
    const auto started = std::chrono::steady_clock::now();
    // Serves while the VM's Lima host agent lives (with time to boot first), and while its
    // socket is there (the state directory may be removed).
    opt.idle_check = 5s;
    opt.still_wanted = [vm_dir, listen, started] {
        std::error_code ec;
        if (!fs::exists(listen, ec)) return false;
        if (std::chrono::steady_clock::now() - started < 10min) return true;
        std::ifstream pid_file(fs::path(vm_dir) / "ha.pid");
        long pid = 0;
        return static_cast<bool>(pid_file >> pid) && pid > 0 && ::kill(static_cast<pid_t>(pid), 0) == 0;
    };
    spdlog::info("agent filter on {} for {} key(s)", listen, allowed.size());
    return agent_proxy::run(opt);
}

} // namespace machine::vm
