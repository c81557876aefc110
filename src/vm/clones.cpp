// A project's repos cloned into its VM (through OpenSSH pinned to the VM's key, forwarding the
// project's agent), then their dependencies installed through the guest agent.
#include "provisioning.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "machine/async.hpp"
#include "machine/forge_keys.hpp"
#include "machine/guest.hpp"
#include "machine/proc.hpp"
#include "machine/protocol.hpp"
#include "machine/text.hpp"

namespace machine::vm {

namespace pr = protocol;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

struct clone_target {
    std::string url;
    std::string dir;
};

// Runs argv in the VM as `user` through the agent; output lines become step.output events.
awaitable<pr::run_result> run_in_vm(context& ctx, guest::connection& conn, const std::string& vm,
                                    const std::string& step, std::vector<std::string> argv, std::string user,
                                    std::string cwd, std::string* captured = nullptr,
                                    std::vector<std::pair<std::string, std::string>> env = {}) {
    pr::run_request request;
    request.argv = std::move(argv);
    request.env = std::move(env);
    request.user = std::move(user);
    if (!cwd.empty()) request.cwd = std::move(cwd);  // else the user's home
    std::string pending;
    auto on_output = [&](const pr::output_chunk& c) {
        if (captured && c.stream == "stdout" && captured->size() < (1u << 20)) captured->append(c.data);
        pending += c.data;
        for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
            ctx.emit(events::step_output(vm, step, c.stream, pending.substr(0, std::min<std::size_t>(nl, 2000))));
            pending.erase(0, nl + 1);
        }
        if (pending.size() > 2000) pending.clear();
    };
    co_return co_await conn.run(std::move(request), on_output);
}

}  // namespace

deps_install deps_install_command(const std::string& package_json, bool has_pnpm_lock, bool has_yarn_lock) {
    // The guest agent's processes get no login-shell environment, so corepack's settings from
    // the node profile's /etc/profile.d/machine-node.sh are passed here too: no download prompt
    // (nobody would answer it), and package managers from the npm registry (yarn 2+ would
    // otherwise come from repo.yarnpkg.com, which the egress policy does not allow). Node's
    // fetch (corepack's, pnpm's, yarn 4's) trusts only the CAs built into Node unless told:
    // NODE_EXTRA_CA_CERTS adds the system bundle with the CAs the template adds (a
    // TLS-inspecting proxy's); without such a proxy it adds nothing Node lacks.
    deps_install out;
    out.env = {{"COREPACK_ENABLE_DOWNLOAD_PROMPT", "0"},
               {"COREPACK_NPM_REGISTRY", "https://registry.npmjs.org"},
               {"NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt"}};
    const auto doc = nlohmann::json::parse(package_json, nullptr, false);
    if (doc.is_object()) {
        const auto it = doc.find("packageManager");
        if (it != doc.end() && it->is_string()) {
            const std::string pm = it->get<std::string>();
            for (const char* name : {"pnpm", "yarn", "npm"})
                if (pm.rfind(std::string(name) + "@", 0) == 0) {
                    // corepack reads the version (and hash) from package.json itself
                    out.manager = name;
                    out.argv = {"corepack", name, "install"};
                    return out;
                }
        }
    }
    out.manager = has_pnpm_lock ? "pnpm" : has_yarn_lock ? "yarn" : "npm";
    out.argv = {out.manager, "install"};
    return out;
}

std::vector<std::string> clone_command(const std::string& url, const std::string& path) {
    std::vector<std::string> argv{"env"};
    for (const auto& [k, v] : git_env()) argv.push_back(k + "=" + v);
    for (const char* a : {"git", "-c", "protocol.ext.allow=never", "clone", "--progress", "--recurse-submodules", "--"})
        argv.emplace_back(a);
    argv.push_back(url);
    argv.push_back(path);
    return argv;
}

clone_progress::clone_progress(std::chrono::milliseconds interval, std::size_t max_bytes)
    : interval_(interval), max_bytes_(max_bytes) {}

std::optional<std::string> clone_progress::feed(std::string_view line, std::chrono::steady_clock::time_point now) {
    std::string text = text::trim(line.substr(0, max_bytes_ * 4));
    if (text.size() > max_bytes_) {
        std::size_t cut = max_bytes_;
        // Not inside a UTF-8 sequence (the sinks escape what is not well-formed anyway).
        while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
        text = text.substr(0, cut) + "...";
    }
    if (text.empty()) return std::nullopt;
    tail_.push_back(text);
    if (tail_.size() > 20) tail_.pop_front();
    if (last_shown_ && now - *last_shown_ < interval_) {
        pending_ = std::move(text);
        return std::nullopt;
    }
    last_shown_ = now;
    pending_.reset();
    return text;
}

std::optional<std::string> clone_progress::finish() {
    std::optional<std::string> last = std::move(pending_);
    pending_.reset();
    return last;
}

std::string clone_progress::tail() const {
    std::string out;
    for (const auto& l : tail_) out += l + "\n";
    return out;
}

std::string format_duration(std::chrono::seconds d) {
    long long s = d.count();
    std::string out;
    if (s >= 3600) out += std::to_string(s / 3600) + "h", s %= 3600;
    if (s >= 60) out += std::to_string(s / 60) + "m", s %= 60;
    if (s > 0 || out.empty()) out += std::to_string(s) + "s";
    return out;
}

awaitable<bool> run_clone(context& ctx, clone_run run, cancel_signal* cancel) {
    const std::string vm = run.vm, step = run.step;
    ctx.emit(events::step_started(vm, step));
    const auto t0 = std::chrono::steady_clock::now();
    proc::command cmd;
    cmd.argv = std::move(run.argv);
    cmd.env_set = run.env.set;
    cmd.env_unset = run.env.unset;
    clone_progress progress;
    proc::run_options opt;
    opt.limit.timeout = run.timeout;
    opt.limit.max_output = 64 << 10;  // what matters is in progress.tail()
    opt.cancel = cancel;
    opt.lines_end_at_cr = true;
    opt.on_stderr_line = [&ctx, &progress, vm, step](std::string_view line) {
        if (auto shown = progress.feed(line, std::chrono::steady_clock::now()))
            ctx.emit(events::step_output(vm, step, "stderr", *shown));
    };
    const proc::result r = co_await proc::run(std::move(cmd), std::move(opt));
    if (auto last = progress.finish()) ctx.emit(events::step_output(vm, step, "stderr", *last));
    if (r.cancelled) {
        ctx.emit(events::step_finished(vm, step, false, since(t0), "interrupted"));
        throw interrupted_error();
    }
    if (r.timed_out) {
        const std::string limit = format_duration(run.timeout);
        ctx.emit(events::step_finished(vm, step, false, since(t0), "timed out after " + limit));
        throw error(text::sanitize_for_terminal("git clone " + run.url + " in VM '" + vm + "' timed out after " + limit +
                                                " (raise clone_timeout for project " + vm + ")"),
                    exit_code::failure, progress.tail());
    }
    if (r.ok()) {
        ctx.emit(events::step_finished(vm, step, true, since(t0)));
        co_return true;
    }
    std::string why = text::last_line(progress.tail());
    if (why.empty()) why = "ssh exited with status " + std::to_string(r.status());
    // git's ssh in the VM refused the forge's host key (not 255: that is the host's ssh to the VM,
    // whose own key is checked against the VM's pin). Never the deploy key's fault: always fatal.
    std::string host_key;
    if (r.exit_code != 255) host_key = forge::host_key_problem(progress.tail(), forge::ssh_host_of(run.url));
    if (!host_key.empty()) why = host_key;
    ctx.emit(events::step_finished(vm, step, false, since(t0), why));
    // 255: ssh itself failed (the connection, the host key), never the deploy key's fault.
    if (!run.failure_is_fatal && r.exit_code != 255 && host_key.empty()) co_return false;
    throw error(text::sanitize_for_terminal("git clone " + run.url + " failed in VM '" + vm + "': " + why),
                exit_code::failure, progress.tail());
}

awaitable<void> clone_repos(context& ctx, lima::instance inst, agent_environment agent, config::project p,
                            guest::connection& guest, std::string vm_user, cancel_signal* cancel) {
    if (p.repos.empty()) co_return;
    const std::string vm = p.name;
    std::vector<clone_target> targets;
    for (const auto& url : p.repos) {
        const std::string dir = repo_dir_name(url);
        if (dir.empty()) throw error(text::sanitize_for_terminal("cannot tell which directory " + url + " clones into"));
        targets.push_back({url, dir});
    }
    // One process in the VM says where the clones go (~/code, made when missing) and which are
    // there: $HOME, then each directory of the argument list that holds a repository. The
    // directories are its arguments, never part of the script.
    std::vector<std::string> argv_look{
        "sh", "-c",
        "mkdir -p -- \"$HOME/code\" || exit 1; printf '%s\\n' \"$HOME\"; "
        "for d; do [ -d \"$HOME/code/$d/.git\" ] && printf '%s\\n' \"$d\"; done; exit 0",
        "sh"};
    for (const auto& t : targets) argv_look.push_back(t.dir);
    std::string looked;
    const pr::run_result look = co_await run_in_vm(ctx, guest, vm, "clone", argv_look, vm_user, "", &looked);
    const std::vector<std::string> lines = text::split_lines(looked);
    const std::string home = lines.empty() ? std::string() : lines.front();
    if (!look.exit_code || *look.exit_code != 0 || home.empty() || home.front() != '/')
        throw error("cannot find the home directory of " + vm_user + " in VM '" + vm + "'");
    const std::string code = home + "/code";

    for (const auto& t : targets) {
        const std::string path = code + "/" + t.dir;
        if (std::find(lines.begin() + 1, lines.end(), t.dir) != lines.end()) {
            ctx.say(vm, "clone " + t.dir + ": already present");
            continue;
        }
        const std::string step = "clone " + t.dir;
        // Through OpenSSH on a connection of its own, pinned to the VM's key: its session
        // carries the forwarded agent git needs.
        const openssh_target target{vm, ssh_config_of(inst), pin_of(vm, false).known_hosts, agent.forward};
        clone_run run;
        run.vm = vm;
        run.step = step;
        run.url = t.url;
        run.argv = openssh_argv(target, false, clone_command(t.url, path));
        run.env = agent.env;
        run.timeout = p.clone_timeout;
        run.failure_is_fatal = p.forward_agent;
        if (!co_await run_clone(ctx, std::move(run), cancel)) {
            ctx.emit(events::message(vm, "warning",
                                     "clone failed for " + t.dir + ": agent forwarding is off for this project; install a "
                                     "deploy key in the VM, then run 'machine up " + vm + "' again"));
            continue;
        }

        // Dependencies, after a fresh clone only (a present clone is the user's to manage).
        std::string package_json;
        std::vector<std::string> argv_cat{"cat", "package.json"};
        const pr::run_result has_package = co_await run_in_vm(ctx, guest, vm, step, argv_cat, vm_user, path, &package_json);
        if (!has_package.exit_code || *has_package.exit_code != 0) continue;
        std::vector<std::string> argv_pnpm{"test", "-f", "pnpm-lock.yaml"}, argv_yarn{"test", "-f", "yarn.lock"};
        const pr::run_result pnpm_lock = co_await run_in_vm(ctx, guest, vm, step, argv_pnpm, vm_user, path);
        const pr::run_result yarn_lock = co_await run_in_vm(ctx, guest, vm, step, argv_yarn, vm_user, path);
        const deps_install install =
            deps_install_command(package_json, pnpm_lock.exit_code == 0, yarn_lock.exit_code == 0);
        const std::string& pm = install.manager;
        const std::string deps_step = "deps " + t.dir;
        ctx.emit(events::step_started(vm, deps_step));
        const auto td = std::chrono::steady_clock::now();
        std::string why;
        try {
            const pr::run_result installed =
                co_await run_in_vm(ctx, guest, vm, deps_step, install.argv, vm_user, path, nullptr, install.env);
            if (!installed.exit_code || *installed.exit_code != 0) why = pm + " install failed";
        } catch (const guest::agent_error& e) {
            if (e.code() != "spawn_failed") throw;
            why = install.argv.front() + " is not installed in the VM (the node profile provides it)";
        }
        ctx.emit(events::step_finished(vm, deps_step, why.empty(), since(td), pm + " install"));
        if (!why.empty())
            ctx.emit(events::message(vm, "warning", "dependencies of " + t.dir + " were not installed: " + why +
                                                        "; install them in the VM"));
    }
}

} // namespace machine::vm
