// The context every command gets, and the commands other than up, watch, secrets and the
// attaching ones. Each is a coroutine on the one event loop; errors are exceptions that app.cpp
// turns into a message and an exit code.
#include <set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

context::context(asio::io_context& io_, bool json_)
    : io(io_), cancel(io_.get_executor()), json(json_), agent(paths::env("MACHINE_AGENT") != "off") {
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
    if (!lima_) lima_ = std::make_unique<lima::client>(lima::find_limactl().path, &cancel, timeouts);
    return *lima_;
}

vm::context& context::vm() {
    if (!vm_) {
        vm_.emplace(cancel, bus, lima());
        vm_->agent = agent;
        vm_->raw_guest_events = json;
    }
    vm_->timeouts = timeouts;
    return *vm_;
}

std::string resolve_name(context& ctx, const std::optional<std::string>& name) {
    if (name) {
        text::require_valid_project_name(*name);
        return *name;
    }
    return ctx.cfg().ambient_project();
}

void unknown_project(const config::config& cfg, const std::string& name) {
    std::vector<std::string> names;
    for (const auto& [n, p] : cfg.projects) names.push_back(n);
    std::string msg = "no project '" + name + "' in " + cfg.projects_file.string();
    if (const auto near = text::closest_match(name, names); !near.empty())
        msg += " (did you mean '" + near + "'?)";
    msg += "; add a [" + name + "] table there, or run machine in a repository with a .machine.toml";
    throw usage_error(msg);
}

awaitable<int> cmd_down(context& ctx, std::optional<std::string> name_opt, bool hibernate) {
    const std::string name = resolve_name(ctx, name_opt);
    if (hibernate)
        co_await vm::hibernate(ctx.vm(), name);
    else
        co_await vm::down(ctx.vm(), name);
    co_return 0;
}

awaitable<int> cmd_destroy(context& ctx, std::optional<std::string> name_opt, bool yes) {
    const std::string name = resolve_name(ctx, name_opt);
    auto ask = [yes, name] { return yes || confirm("Destroy VM '" + name + "' and everything in it?"); };
    co_await vm::destroy(ctx.vm(), name, ask);
    co_return 0;
}

awaitable<int> cmd_bake(context& ctx, std::optional<std::string> project_name, bool force) {
    if (!ctx.agent) throw usage_error("bake needs the guest agent (MACHINE_AGENT=off)");
    const std::string name = resolve_name(ctx, project_name);
    const provision::catalog cat = vm::load_catalog();
    config::project project = ctx.cfg().resolve(name);
    std::vector<config::project> projects{project};
    const provision::host_values host = co_await vm::host_values_for(cat, projects);
    co_await vm::bake(ctx.vm(), vm::make_target(cat, host, std::move(project)), force);
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
        std::int64_t hibernated = 0;  // bytes of its saved state (machine down --hibernate)
    };
    std::vector<row> rows;
    for (const auto& i : instances) {
        seen.insert(i.name);
        // "Paused" comes from the VM's QEMU (one monitor query per running VM), Lima knows only Running.
        const std::string status = co_await vm::shown_status(ctx.vm(), i);
        rows.push_back({i.name, status,
                        i.cpus, i.memory_bytes, i.disk_bytes, i.ssh_local_port,
                        cfg.projects.count(i.name) > 0, i.name.rfind("machine-base-", 0) == 0,
                        vm::hibernated_bytes(i)});
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
                                     {"ssh_port", r.port}, {"cached_base", r.base},
                                     {"hibernated_bytes", r.hibernated}};
            out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
        }
    } else {
        char line[512];
        std::snprintf(line, sizeof line, "%-20s %-12s %4s %8s %8s  %s\n", "NAME", "STATUS", "CPUS", "MEMORY", "DISK", "SSH");
        out += line;
        for (const auto& r : rows) {
            const std::string ssh = r.base ? "- (cached base)"
                                    : r.hibernated ? "- (hibernated: " + human_bytes(r.hibernated) + " saved)"
                                    : r.port ? "127.0.0.1:" + std::to_string(r.port)
                                             : "-";
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
