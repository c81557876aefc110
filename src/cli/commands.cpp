// The commands other than up and watch. Each is a coroutine on the one event loop; errors are exceptions that app.cpp
// turns into a message and an exit code.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "agent_forwarding.hpp"
#include "cli.hpp"
#include "common.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

context::context(asio::io_context& io_, bool json_) : io(io_), cancel(io_.get_executor()), json(json_) {
    if (const auto v = paths::env("MACHINE_LIMACTL_TIMEOUT"); !v.empty()) {
        // A debugging knob: how long list/create/stop/delete may take.
        timeouts.query = timeouts.change = std::chrono::seconds(std::max(1, std::atoi(v.c_str())));
    }
}

const config::config& context::cfg() {
    if (!cfg_) cfg_ = config::load_default();
    return *cfg_;
}

lima::client& context::lima() {
    if (!lima_) lima_ = std::make_unique<lima::client>(lima::find_limactl(), &cancel, timeouts);
    return *lima_;
}

awaitable<int> cmd_down(context& ctx, std::optional<std::string> name_opt) {
    const std::string name = resolve_name(ctx, name_opt);
    auto& lima = ctx.lima();
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
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
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
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
        bool base;  // a cached base new projects are cloned from (machine bake)
    };
    std::vector<row> rows;
    for (const auto& i : instances) {
        seen.insert(i.name);
        rows.push_back({i.name, std::string(i.status_text.empty() ? lima::to_string(i.state) : i.status_text),
                        i.cpus, i.memory_bytes, i.disk_bytes, i.ssh_local_port,
                        cfg.projects.count(i.name) > 0, i.name.rfind("machine-base-", 0) == 0});
    }
    for (const auto& [name, p] : cfg.projects) {
        if (seen.count(name)) continue;
        rows.push_back({name, "NotCreated", p.cpus, config::size_bytes(p.memory), config::size_bytes(p.disk), 0, true, false});
    }
    std::sort(rows.begin(), rows.end(), [](const row& a, const row& b) { return a.name < b.name; });

    std::string out;
    if (ctx.json) {
        for (const auto& r : rows) {
            nlohmann::ordered_json j{{"name", r.name},         {"status", r.status},
                                     {"configured", r.configured}, {"cpus", r.cpus},
                                     {"memory_bytes", r.memory}, {"disk_bytes", r.disk},
                                     {"ssh_port", r.port}, {"cached_base", r.base}};
            out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
        }
    } else {
        char line[512];
        std::snprintf(line, sizeof line, "%-20s %-12s %4s %8s %8s  %s\n", "NAME", "STATUS", "CPUS", "MEMORY", "DISK", "SSH");
        out += line;
        for (const auto& r : rows) {
            const std::string ssh = r.base ? "- (cached base)" : r.port ? "127.0.0.1:" + std::to_string(r.port) : "-";
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

} // namespace machine::cli
