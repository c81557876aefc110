// The commands. Each is a coroutine on the one event loop; errors are exceptions that app.cpp
// turns into a message and an exit code.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "machine/paths.hpp"
#include "machine/render.hpp"
#include "machine/text.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

context::context(asio::io_context& io_, bool json_) : io(io_), cancel(io_.get_executor()), json(json_) {}

const config::config& context::cfg() {
    if (!cfg_) cfg_ = config::load_default();
    return *cfg_;
}

lima::client& context::lima() {
    if (!lima_) {
        lima::timeouts t;
        if (const auto v = paths::env("MACHINE_LIMACTL_TIMEOUT"); !v.empty()) {
            // A debugging knob: how long list/create/stop/delete may take.
            t.query = t.change = std::chrono::seconds(std::max(1, std::atoi(v.c_str())));
        }
        lima_ = std::make_unique<lima::client>(lima::find_limactl(), &cancel, t);
    }
    return *lima_;
}

namespace {

std::chrono::milliseconds since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}

fs::path project_state_dir(const std::string& name) { return paths::state_dir() / name; }

// One machine command at a time per project: two `up`s racing on one VM would each call
// `limactl create` or `start`. A second command waits for the first, then sees its result.
// The lock is released when the process exits, however it exits.
class project_lock {
public:
    explicit project_lock(const std::string& name) {
        const fs::path dir = project_state_dir(name);
        fs::create_directories(dir);
        fd_ = ::open((dir / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd_ < 0) throw error("cannot open " + (dir / ".lock").string() + ": " + std::strerror(errno));
    }
    ~project_lock() { ::close(fd_); }
    project_lock(const project_lock&) = delete;
    project_lock& operator=(const project_lock&) = delete;
    bool try_lock() { return ::flock(fd_, LOCK_EX | LOCK_NB) == 0; }

private:
    int fd_ = -1;
};

awaitable<std::unique_ptr<project_lock>> lock_project(context& ctx, std::string name) {
    auto lock = std::make_unique<project_lock>(name);
    if (lock->try_lock()) co_return lock;
    ctx.say(name, "waiting for another machine command working on '" + name + "'");
    asio::steady_timer retry(co_await asio::this_coro::executor);
    while (!lock->try_lock()) {
        if (ctx.cancel.current() != cancel_signal::none) throw interrupted_error();
        retry.expires_after(100ms);
        co_await retry.async_wait(asio::use_awaitable);
    }
    co_return lock;
}

std::vector<std::string> configured_names(const config::config& cfg) {
    std::vector<std::string> names;
    for (const auto& [n, p] : cfg.projects) names.push_back(n);
    return names;
}

[[noreturn]] void unknown_project(const config::config& cfg, const std::string& name) {
    std::string msg = "no project '" + name + "' in " + cfg.projects_file.string();
    if (const auto near = text::closest_match(name, configured_names(cfg)); !near.empty())
        msg += " (did you mean '" + near + "'?)";
    msg += "; add a [" + name + "] table there, or run machine in a repository with a .machine.toml";
    throw usage_error(msg);
}

std::string resolve_name(context& ctx, const std::optional<std::string>& name) {
    if (name) {
        text::require_valid_project_name(*name);
        return *name;
    }
    return ctx.cfg().ambient_project();
}

awaitable<std::exception_ptr> capture(awaitable<void> task) {
    try {
        co_await std::move(task);
    } catch (...) {
        co_return std::current_exception();
    }
    co_return nullptr;
}

// Runs `limactl start` while following the host agent's events, which become vm.state events.
awaitable<void> boot(context& ctx, std::string name, fs::path ha_log) {
    using namespace asio::experimental::awaitable_operators;
    bool saw_running = false;
    auto on_event = [&ctx, &saw_running, name](const lima::ha_event& e) {
        if (e.exiting) {
            ctx.emit(events::vm_state(name, "stopped", "the VM exited"));
        } else if (e.running) {
            saw_running = true;
            ctx.emit(events::vm_state(name, e.degraded ? "degraded" : "running",
                                      e.degraded ? text::sanitize_for_terminal(e.errors.empty() ? "" : e.errors[0]) : ""));
        } else if (e.ssh_local_port && !e.forward) {
            ctx.emit(events::vm_state(name, "booting", "ssh on 127.0.0.1:" + std::to_string(e.ssh_local_port)));
        }
        return true;  // keep following until `limactl start` is done
    };
    auto on_log = [&ctx, name](const lima::log_line& l) {
        if (l.level == "info" && l.msg.rfind("Terminal is not available", 0) != 0)
            ctx.emit(events::message(name, "info", l.msg));
        else if (l.level == "warning" || l.level == "error")
            ctx.emit(events::message(name, l.level, l.msg));
    };
    // limactl truncates ha.stdout.log at every start, but we may read the previous boot's
    // events before it does: anything stamped before now is old news (same host, same clock).
    const auto started_at = std::chrono::system_clock::now();
    // `||` ends with the first *successful* side, so a failing start must not throw: capture()
    // turns it into a value. The follower never succeeds on its own; it is cancelled.
    auto outcome = co_await (capture(ctx.lima().start(name, on_log)) ||
                             lima::follow_events(ha_log, on_event, &ctx.cancel, started_at));
    if (outcome.index() == 0) {
        if (auto failure = std::get<0>(outcome)) std::rethrow_exception(failure);
    }
    // `limactl start` succeeded: the VM is running even if we were too quick to see the event.
    if (!saw_running) ctx.emit(events::vm_state(name, "running"));
}

} // namespace

awaitable<int> cmd_up(context& ctx, up_options opt) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string name = resolve_name(ctx, opt.name);
    const config::config& cfg = ctx.cfg();
    const config::project project = cfg.resolve(name);
    if (!project.agent_keys.empty() && project.forward_agent) {
        // Fail closed: forwarding the whole agent when the user asked for a subset would grant
        // more than they meant.
        throw config::config_error(project.source.string() + ": " + name +
                                   ".agent_keys: limiting the forwarded agent to some keys is not "
                                   "available yet; remove agent_keys or set forward_agent = false");
    }
    auto& lima = ctx.lima();
    const auto lock = co_await lock_project(ctx, name);
    auto existing = co_await lima.find(name);
    if (!existing && !project.configured && name != "default") unknown_project(cfg, name);
    if (cfg.local_project == name && cfg.local_shadows_table)
        ctx.say(name, ".machine.toml shadows [" + name + "] in " + cfg.projects_file.string() + "; using the local file");
    if (!project.profiles.empty()) {
        std::string list;
        for (const auto& prof : project.profiles) list += (list.empty() ? "" : ", ") + prof;
        ctx.emit(events::message(name, "warning", "profiles are not applied yet (" + list + "): provisioning comes with the guest agent"));
    }

    if (existing && existing->state == lima::status::running) {
        ctx.emit(events::vm_state(name, "running", "already running; nothing to do"));
        ctx.emit(events::vm_done(name, "ready", since(t0)));
        co_return 0;
    }

    if (!existing) {
        const fs::path tmpl = project_state_dir(name) / "lima.yaml";
        paths::write_file_atomic(tmpl, render::lima_yaml(project, render::detect_host()), 0600);
        spdlog::debug("vm={} rendered {}", name, tmpl.string());
        ctx.emit(events::step_started(name, "create"));
        const auto tc = std::chrono::steady_clock::now();
        co_await lima.create(name, tmpl, {});
        ctx.emit(events::step_finished(name, "create", true, since(tc)));
        existing = co_await lima.find(name);
        if (!existing) throw error("limactl create succeeded but instance '" + name + "' is not listed");
    } else if (existing->state == lima::status::broken) {
        std::string why = existing->errors.empty() ? "" : " (" + text::sanitize_for_terminal(existing->errors[0]) + ")";
        ctx.emit(events::message(name, "warning", "the VM is broken" + why + "; stopping it forcibly before starting"));
        co_await lima.stop(name, true);
    }

    ctx.emit(events::step_started(name, "boot"));
    const auto tb = std::chrono::steady_clock::now();
    co_await boot(ctx, name, fs::path(existing->dir) / "ha.stdout.log");
    ctx.emit(events::step_finished(name, "boot", true, since(tb)));
    ctx.emit(events::vm_done(name, "ready", since(t0)));
    co_return 0;
}

awaitable<int> cmd_down(context& ctx, std::optional<std::string> name_opt) {
    const std::string name = resolve_name(ctx, name_opt);
    auto& lima = ctx.lima();
    const auto lock = co_await lock_project(ctx, name);
    const auto existing = co_await lima.find(name);
    if (!existing) throw error("VM '" + name + "' does not exist");
    if (existing->state == lima::status::stopped) {
        ctx.emit(events::vm_state(name, "stopped", "already stopped; nothing to do"));
        co_return 0;
    }
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "stop"));
    // A broken VM (one of its processes gone) cannot stop gracefully: force it.
    co_await lima.stop(name, existing->state != lima::status::running);
    ctx.emit(events::step_finished(name, "stop", true, since(t0)));
    ctx.emit(events::vm_state(name, "stopped"));
    co_return 0;
}

awaitable<int> cmd_destroy(context& ctx, std::optional<std::string> name_opt, bool yes) {
    const std::string name = resolve_name(ctx, name_opt);
    auto& lima = ctx.lima();
    const auto existing = co_await lima.find(name);
    if (!existing) {
        std::error_code ec;
        fs::remove_all(project_state_dir(name), ec);
        ctx.emit(events::vm_state(name, "deleted", "does not exist; nothing to destroy"));
        co_return 0;
    }
    if (!yes && !confirm("Destroy VM '" + name + "' and everything in it?")) {
        throw error("aborted; VM '" + name + "' was not destroyed");
    }
    const auto lock = co_await lock_project(ctx, name);
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "delete"));
    if (existing->is_protected) throw error("VM '" + name + "' is protected (limactl unprotect " + name + ")");
    co_await lima.remove(name, true);  // -f stops it first, whatever its state
    std::error_code ec;
    fs::remove_all(project_state_dir(name), ec);
    ctx.emit(events::step_finished(name, "delete", true, since(t0)));
    ctx.emit(events::vm_state(name, "deleted"));
    co_return 0;
}

awaitable<int> cmd_list(context& ctx) {
    const config::config& cfg = ctx.cfg();
    const auto instances = co_await ctx.lima().list();
    std::set<std::string> seen;
    struct row {
        std::string name, status;
        int cpus;
        std::int64_t memory, disk;
        int port;
        bool configured;
    };
    std::vector<row> rows;
    for (const auto& i : instances) {
        seen.insert(i.name);
        rows.push_back({i.name, std::string(i.status_text.empty() ? lima::to_string(i.state) : i.status_text),
                        i.cpus, i.memory_bytes, i.disk_bytes, i.ssh_local_port,
                        cfg.projects.count(i.name) > 0});
    }
    for (const auto& [name, p] : cfg.projects) {
        if (seen.count(name)) continue;
        rows.push_back({name, "NotCreated", p.cpus, config::size_bytes(p.memory), config::size_bytes(p.disk), 0, true});
    }
    std::sort(rows.begin(), rows.end(), [](const row& a, const row& b) { return a.name < b.name; });

    std::string out;
    if (ctx.json) {
        for (const auto& r : rows) {
            nlohmann::ordered_json j{{"name", r.name},         {"status", r.status},
                                     {"configured", r.configured}, {"cpus", r.cpus},
                                     {"memory_bytes", r.memory}, {"disk_bytes", r.disk},
                                     {"ssh_port", r.port}};
            out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
        }
    } else {
        char line[512];
        std::snprintf(line, sizeof line, "%-20s %-12s %4s %8s %8s  %s\n", "NAME", "STATUS", "CPUS", "MEMORY", "DISK", "SSH");
        out += line;
        for (const auto& r : rows) {
            const std::string ssh = r.port ? "127.0.0.1:" + std::to_string(r.port) : "-";
            std::snprintf(line, sizeof line, "%-20s %-12s %4s %8s %8s  %s\n",
                          text::sanitize_for_terminal(r.name).c_str(), text::sanitize_for_terminal(r.status).c_str(),
                          r.cpus ? std::to_string(r.cpus).c_str() : "-", human_bytes(r.memory).c_str(),
                          human_bytes(r.disk).c_str(), ssh.c_str());
            out += line;
        }
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    co_return 0;
}

namespace {

awaitable<void> require_running(context& ctx, const std::string& name) {
    const auto existing = co_await ctx.lima().find(name);
    if (!existing) throw error("VM '" + name + "' does not exist (run 'machine up " + name + "')");
    if (existing->state != lima::status::running)
        throw error("VM '" + name + "' is not running (run 'machine up " + name + "')");
}

[[noreturn]] void exec(const std::vector<std::string>& argv) {
    std::fflush(stdout);
    std::fflush(stderr);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    spdlog::debug("exec {}", argv[0]);
    ::execv(args[0], args.data());
    throw error("cannot run " + argv[0] + ": " + std::strerror(errno));
}

} // namespace

awaitable<int> cmd_run(context& ctx, std::string name, std::vector<std::string> command) {
    text::require_valid_project_name(name);
    if (command.empty()) throw usage_error("usage: machine run NAME -- COMMAND [ARGS...]");
    co_await require_running(ctx, name);
    exec(ctx.lima().argv().shell(name, command, ""));
}

awaitable<int> cmd_ssh(context& ctx, std::optional<std::string> name_opt) {
    const std::string name = resolve_name(ctx, name_opt);
    co_await require_running(ctx, name);
    exec(ctx.lima().argv().shell(name, {}, ""));
}

} // namespace machine::cli
