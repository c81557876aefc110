// `machine up`: one VM, or several at once (`up A B C`, `up --all`; vm::up_many) with a progress
// view on a terminal and a summary line per VM.
#include <cstdio>

#include <asio/this_coro.hpp>

#include "cli.hpp"
#include "machine/async.hpp"
#include "machine/text.hpp"
#include "progress.hpp"

namespace machine::cli {

using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// What `up` works on: validated names and resolved projects, before anything runs.
std::vector<config::project> resolve_targets(context& ctx, const up_options& opt) {
    const config::config& cfg = ctx.cfg();
    std::vector<std::string> names = opt.names;
    if (opt.all) {
        for (const auto& [n, p] : cfg.projects) names.push_back(n);
        if (names.empty()) throw usage_error("--all: no projects configured in " + cfg.projects_file.string());
    }
    if (names.empty()) names.push_back(cfg.ambient_project());
    std::vector<config::project> projects;
    for (const auto& n : names) {
        text::require_valid_project_name(n);
        bool duplicate = false;
        for (const auto& p : projects) duplicate |= p.name == n;
        if (duplicate) continue;
        config::project p = cfg.resolve(n);
        projects.push_back(std::move(p));
    }
    return projects;
}

// Unknown names are refused, unless a VM of that name exists already (made elsewhere).
awaitable<void> refuse_unknown(context& ctx, const std::vector<config::project>& projects) {
    bool any_unconfigured = false;
    for (const auto& p : projects) any_unconfigured |= !p.configured && p.name != "default";
    if (!any_unconfigured) co_return;
    const auto instances = co_await ctx.lima().list();
    for (const auto& p : projects) {
        if (p.configured || p.name == "default") continue;
        bool exists = false;
        for (const auto& i : instances) exists |= i.name == p.name;
        if (!exists) unknown_project(ctx.cfg(), p.name);
    }
}

void notes_before_up(context& ctx, const config::project& p) {
    const config::config& cfg = ctx.cfg();
    if (cfg.local_project == p.name && cfg.local_shadows_table)
        ctx.say(p.name, ".machine.toml shadows [" + p.name + "] in " + cfg.projects_file.string() + "; using the local file");
}

// Redraws the view every second until it loses its race.
awaitable<void> tick(progress_view& view) {
    for (;;) {
        const bool slept = co_await sleep_for(1s);
        if (!slept) co_return;
        view.redraw();
    }
}

} // namespace

awaitable<int> cmd_up(context& ctx, up_options opt) {
    ctx.timeouts.start = opt.start_timeout;
    const auto projects = resolve_targets(ctx, opt);
    co_await refuse_unknown(ctx, projects);
    for (const auto& p : projects) notes_before_up(ctx, p);
    // Every project's plan before any VM work: an unknown profile stops everything (exit 2).
    const provision::catalog catalog = vm::load_catalog();
    const provision::host_values host = co_await vm::host_values_for(catalog, projects);
    std::vector<vm::up_target> targets;
    for (const auto& p : projects) targets.push_back(vm::make_target(catalog, host, p));

    if (targets.size() == 1 && !opt.all) {
        co_await vm::up_one(ctx.vm(), targets.front(), &ctx.cancel, nullptr);
        co_return 0;
    }

    auto ex = co_await asio::this_coro::executor;
    const int parallel = opt.parallel > 0 ? opt.parallel : vm::default_parallelism(projects);
    std::vector<std::string> names;
    for (const auto& p : projects) names.push_back(p.name);
    ctx.emit(events::message("", "info", "bringing up " + std::to_string(projects.size()) + " VMs, " +
                                             std::to_string(parallel) + " at a time"));
    std::shared_ptr<progress_view> view;
    if (!ctx.json && stdout_is_terminal()) {
        view = std::make_shared<progress_view>(stdout, names);
        ctx.bus.replace_sinks(view);
    }

    std::vector<vm::up_outcome> results;
    if (view) {
        auto outcome = co_await first_of(vm::up_many(ctx.vm(), targets, parallel, opt.fail_fast), tick(*view));
        results = std::get<0>(std::move(outcome));
        view->redraw();
    } else {
        results = co_await vm::up_many(ctx.vm(), targets, parallel, opt.fail_fast);
    }

    // The summary: one line per VM, for people; programs have the vm.done events.
    int ready = 0;
    for (const auto& r : results) ready += r.state == "ready";
    if (!ctx.json) {
        std::string out = "\n";
        std::size_t width = 0;
        for (const auto& n : names) width = std::max(width, n.size());
        for (std::size_t i = 0; i < results.size(); ++i) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "%-9s %7.1fs", results[i].state.c_str(),
                          static_cast<double>(results[i].took.count()) / 1000.0);
            out += "  " + names[i] + std::string(width - names[i].size() + 2, ' ') + buf;
            if (results[i].state == "ready" && !results[i].started.empty()) out += "  " + results[i].started;
            if (!results[i].message.empty()) out += "  " + text::sanitize_for_terminal(results[i].message);
            out += "\n";
        }
        out += std::to_string(ready) + " of " + std::to_string(results.size()) + " VMs ready\n";
        std::fwrite(out.data(), 1, out.size(), stdout);
    }
    if (ctx.cancel.current() != cancel_signal::none) throw interrupted_error();
    co_return ready == static_cast<int>(results.size()) ? 0 : 1;
}

} // namespace machine::cli
