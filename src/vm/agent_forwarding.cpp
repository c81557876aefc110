// Which SSH agent a project's VM may reach: none (forward_agent = false), the user's whole
// agent, or, with `agent_keys`, a filtering proxy (src/agent_proxy) that offers only those keys.
#include "machine/platform.hpp"
#include "machine/vm.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include <spdlog/spdlog.h>

#include "detached.hpp"
#include "lifecycle.hpp"
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

// Where a filter started by hand (tests, benchmarks) logs; machine's own spawn_detached names
// the log in detached_log_variable.
constexpr const char* filter_log_variable = "MACHINE_AGENT_FILTER_LOG";

// One filter per project, upstream agent and key list: a change of any of them is a new socket
// (and a new proxy); the old one ends with its VM. Short, so the path fits sockaddr_un.
fs::path filter_socket(const config::project& p, const std::string& upstream) {
    std::string key = p.name + '\0' + upstream;
    for (const auto& fp : p.agent_keys) key += '\0' + fp;
    return paths::state_dir() / "agent" / (sha256::hex(key).substr(0, 16) + ".sock");
}

// Starts the project's filter unless it already serves; true when it had to be started.
awaitable<bool> ensure_filter(const config::project& p, const fs::path& socket_path, const std::string& upstream) {
    if (paths::socket_accepts(socket_path)) co_return false;
    const fs::path dir = socket_path.parent_path();
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
    if (socket_path.native().size() >= sizeof(sockaddr_un{}.sun_path))
        throw error("the agent filter's socket path is too long: " + socket_path.string() +
                    " (set MACHINE_STATE_DIR to a shorter directory)");
    std::vector<std::string> argv{platform::self_executable().string(), "agent-proxy",
                                  "--listen", socket_path.string(), "--upstream", upstream,
                                  "--vm-dir", lima::instance_dir(p.name).string()};
    for (const auto& fp : p.agent_keys) {
        argv.push_back("--allow");
        argv.push_back(fp);
    }
    spawn_detached(argv, project_state_dir(p.name) / "agent-filter.log");
    for (int i = 0; i < 100 && !paths::socket_accepts(socket_path); ++i) co_await sleep_for(20ms);
    if (!paths::socket_accepts(socket_path))
        throw error("the SSH agent filter for '" + p.name + "' did not start; see " +
                    (project_state_dir(p.name) / "agent-filter.log").string());
    co_return true;
}

std::string key_list(const std::vector<std::string>& fps) {
    std::string out;
    for (const auto& fp : fps) out += (out.empty() ? "" : ", ") + fp;
    return out;
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
                                     ") apply when it restarts: " + restart_hint(p.name)));
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
    return detached_logger("agent-filter", file);
}

int run_agent_proxy(const std::string& listen, const std::string& upstream, const std::string& vm_dir,
                    const std::vector<std::string>& allowed) {
    // Started by hand (no log named), the filter logs to stderr.
    std::string log = paths::env(filter_log_variable);
    if (log.empty()) log = paths::env(detached_log_variable);
    if (!log.empty() && !log_only_to("agent-filter", log)) return 1;
    agent_proxy::options opt;
    opt.listen = listen;
    opt.upstream = upstream;
    opt.allowed = allowed;
    opt.idle_check = 5s;
    opt.still_wanted = while_vm_lives(vm_dir, listen);
    spdlog::info("agent filter on {} for {} key(s)", listen, allowed.size());
    return agent_proxy::run(opt);
}

} // namespace machine::vm
