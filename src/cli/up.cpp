// `machine up`: one VM, or several at once (`up A B C`, `up --all`) within a bounded window.
#include <fstream>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include "agent_forwarding.hpp"
#include "cli.hpp"
#include "common.hpp"
#include "secrets_sync.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/render.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "lifecycle.hpp"
#include "progress.hpp"
#include "provisioning.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// What one `limactl list` for many projects said about one of them, and the project's lock
// generation read just before: still true if nobody has held the lock since (and it is recent).
struct prelisted {
    std::uint64_t generation = 0;
    std::chrono::steady_clock::time_point at;
    std::optional<lima::instance> instance;
};

// Lists every project's VM in one call, for `up` of many (one limactl process instead of one
// per project). Empty when that list fails: each project then lists its own VM after its lock.
awaitable<std::vector<prelisted>> list_before_locking(context& ctx, std::vector<std::string> names) {
    std::vector<prelisted> seen(names.size());
    for (std::size_t i = 0; i < names.size(); ++i) seen[i].generation = project_lock::generation_of(names[i]);
    std::vector<lima::instance> found;
    try {
        found = co_await ctx.lima().find_all(names);
    } catch (const error& e) {
        // Lima <= 2.1 fails a list naming a VM another command is creating right now.
        spdlog::debug("listing {} VMs at once failed ({}); each lists its own", names.size(), e.what());
        co_return std::vector<prelisted>{};
    }
    const auto now = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < names.size(); ++i) {
        seen[i].at = now;
        for (auto& inst : found)
            if (inst.name == names[i]) seen[i].instance = inst;
    }
    co_return seen;
}

// Brings one VM up: created (from the cached base when its profiles allow), booted, its
// agent current, provisioned, its repos cloned. On a running VM only what changed is
// re-applied. Throws on failure; `cancel` interrupts it.
// `seen` (may be null) is what a list of many VMs said before the lock was taken.
awaitable<void> up_one(context& ctx, up_target target, cancel_signal* cancel, const prelisted* seen) {
    const auto t0 = std::chrono::steady_clock::now();
    const config::project& project = target.project;
    const std::string name = project.name;
    lima::client lima(ctx.lima().limactl(), cancel, ctx.timeouts);
    const auto lock = co_await lock_project(ctx, name, cancel);
    std::optional<lima::instance> existing;
    if (seen && lock->generation() == seen->generation && since(seen->at) < 5s)
        existing = seen->instance;
    else
        existing = co_await lima.find(name);
    const bool was_running = existing && existing->state == lima::status::running;
    agent_environment agent;
    {
        // Every limactl call from here on (the start, whose SSH master outlives it) and every
        // clone reaches only the agent the project may use.
        const lima::instance* inst = existing ? &*existing : nullptr;
        agent = co_await prepare_agent_forwarding(ctx, project, inst, true);
        lima.set_environment(agent.env);
    }
    // Lima forwards the agent (or not) by the instance's ssh.forwardAgent, from its creation; a
    // project that changed forward_agent since gets it at the VM's next start (a running VM's
    // user was told by prepare_agent_forwarding).
    if (existing && !was_running && existing->forward_agent && *existing->forward_agent != project.forward_agent) {
        std::vector<std::string> sets{std::string(".ssh.forwardAgent = ") + (project.forward_agent ? "true" : "false")};
        co_await lima.edit(name, sets);
    }
    if (was_running && !agent_enabled()) {
        ctx.emit(events::vm_state(name, "running", "already running; nothing to do"));
        ctx.emit(events::vm_done(name, "ready", since(t0)));
        co_return;
    }
    fs::path create_from;  // set when the start creates the VM from the project's template
    if (!existing) {
        // Nothing is created for a project whose code cannot be fetched.
        co_await check_repos_reachable(ctx, project, cancel);
        // This up creates the VM: its key is pinned at the first connection, and a pin left by
        // an earlier VM of the same name (deleted outside machine) goes now.
        expect_new_vm_key(name);
        const bool from_base = agent_enabled() && !target.base.steps.empty() &&
                               config::size_bytes(project.disk) >= config::size_bytes(base_disk);
        // The project's template, also for a clone (whose settings match it): what the VM is
        // meant to be, for people and tools to read.
        const render::host_facts host = render::detect_host();
        const fs::path tmpl = project_state_dir(name) / "lima.yaml";
        paths::write_file_atomic(tmpl, render::lima_yaml(project, host), 0600);
        spdlog::debug("vm={} rendered {}", name, tmpl.string());
        if (from_base) {
            const std::string base = co_await ensure_base(ctx, target, false, cancel);
            ctx.emit(events::step_started(name, "create"));
            const auto tc = std::chrono::steady_clock::now();
            std::vector<std::string> sets{render::clone_settings(project, host)};
            co_await lima.clone(base, name, sets);
            ctx.emit(events::step_finished(name, "create", true, since(tc), "copy-on-write clone of " + base));
            existing = co_await lima.find(name);
            if (!existing) throw error("limactl clone succeeded but instance '" + name + "' is not listed");
        } else {
            create_from = tmpl;
        }
    } else if (existing->state == lima::status::broken) {
        std::string why = existing->errors.empty() ? "" : " (" + existing->errors[0] + ")";
        ctx.emit(events::message(name, "warning", "the VM is broken" + why + "; stopping it forcibly before starting"));
        co_await lima.stop(name, true);
    }

    if (!was_running) {
        const fs::path dir = existing ? fs::path(existing->dir) : lima::instance_dir(name);
        co_await boot_instance(ctx, lima, name, dir / "ha.stdout.log", cancel, create_from);
    }
    if (agent_enabled()) {
        if (!existing) existing = co_await lima.find(name);  // created by the start: its SSH settings
        if (!existing) throw error("limactl start succeeded but instance '" + name + "' is not listed");
        auto session = co_await open_guest(ctx, name, *existing, cancel);
        if (!was_running) co_await wait_until_ready(ctx, name, session);
        std::size_t ran = co_await apply_plan(ctx, name, session, target.plan, cancel);
        co_await clone_repos(ctx, *existing, agent, project, session, render::vm_user, cancel);
        ran += co_await apply_plan(ctx, name, session, target.after_clone, cancel);
        if (project.secrets_on_up) {
            secrets_sync_options every_set;
            every_set.required = false;
            co_await sync_secrets(ctx, project, session, every_set);
        }
        session->close();
        if (ran > 0) co_await close_lima_ssh_master(*existing, name);
    }
    ctx.emit(events::vm_done(name, "ready", since(t0)));
}

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

// How many VMs may boot at once: as many as fit their configured memory into the host's
// available memory (at least one).
int default_parallelism(const std::vector<config::project>& projects) {
    long long available = 0;
    std::ifstream meminfo("/proc/meminfo");
    for (std::string key; meminfo >> key;) {
        long long kib = 0;
        meminfo >> kib;
        if (key == "MemAvailable:") available = kib * 1024;
        meminfo.ignore(64, '\n');
    }
    if (available <= 0) return 2;
    std::vector<long long> sizes;
    for (const auto& p : projects) sizes.push_back(std::max(1LL, config::size_bytes(p.memory)));
    std::sort(sizes.begin(), sizes.end());
    int fit = 0;
    long long used = 0;
    for (long long s : sizes) {
        if (used + s > available) break;
        used += s;
        ++fit;
    }
    return std::max(1, fit);
}

// A counting semaphore on the loop: at most `n` holders.
class window {
public:
    window(asio::any_io_executor ex, int n) : free_(n), freed_(ex, asio::steady_timer::time_point::max()) {}
    awaitable<void> acquire() {
        while (free_ == 0) co_await freed_.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
        --free_;
    }
    void release() {
        ++free_;
        freed_.cancel();  // every waiter re-checks
    }

private:
    int free_;
    asio::steady_timer freed_;
};

struct outcome {
    std::string state = "cancelled";  // ready | failed | cancelled
    std::string message;
    std::chrono::milliseconds took{0};
};

awaitable<void> up_in_window(context& ctx, up_target target, const prelisted* seen, window& slots,
                             std::shared_ptr<cancel_signal> cancel, outcome& result,
                             std::function<void()> on_failure) {
    co_await slots.acquire();
    const auto t0 = std::chrono::steady_clock::now();
    if (cancel->current() == cancel_signal::none) {
        const std::string name = target.project.name;
        std::exception_ptr failure = co_await capture(up_one(ctx, std::move(target), cancel.get(), seen));
        result.took = since(t0);
        if (!failure) {
            result.state = "ready";
        } else {
            try {
                std::rethrow_exception(failure);
            } catch (const interrupted_error&) {
                result.state = "cancelled";
            } catch (const error& e) {
                result.state = "failed";
                result.message = e.what();
                ctx.emit(events::error(name, e.what(), e.diagnostics()));
            } catch (const std::exception& e) {
                result.state = "failed";
                result.message = e.what();
                ctx.emit(events::error(name, e.what()));
            }
            if (result.state != "ready") ctx.emit(events::vm_done(name, result.state, result.took));
            if (result.state == "failed") on_failure();
        }
    }
    slots.release();
}

// Forwards the CLI's Ctrl-C to every VM's own signal until `done` is cancelled.
awaitable<void> forward_cancel(cancel_signal& from, std::vector<std::shared_ptr<cancel_signal>> to) {
    cancel_signal::level seen = cancel_signal::none;
    for (;;) {
        seen = co_await from.wait_above(seen);
        for (auto& s : to) s->trigger(seen);
    }
}

awaitable<void> tick(progress_view& view, asio::steady_timer& timer) {
    for (;;) {
        timer.expires_after(1s);
        co_await timer.async_wait(asio::use_awaitable);
        view.redraw();
    }
}

} // namespace

awaitable<int> cmd_up(context& ctx, up_options opt) {
    using namespace asio::experimental::awaitable_operators;
    ctx.timeouts.start = opt.start_timeout;
    const auto projects = resolve_targets(ctx, opt);
    co_await refuse_unknown(ctx, projects);
    for (const auto& p : projects) notes_before_up(ctx, p);
    // Every project's plan before any VM work: an unknown profile stops everything (exit 2).
    const provision::catalog catalog = load_catalog();
    const provision::host_values host = co_await host_values_for(catalog, projects);
    std::vector<up_target> targets;
    for (const auto& p : projects) targets.push_back(make_target(catalog, host, p));

    if (targets.size() == 1 && !opt.all) {
        co_await up_one(ctx, targets.front(), &ctx.cancel, nullptr);
        co_return 0;
    }

    auto ex = co_await asio::this_coro::executor;
    const int parallel = opt.parallel > 0 ? opt.parallel : default_parallelism(projects);
    std::vector<std::string> names;
    for (const auto& p : projects) names.push_back(p.name);
    ctx.emit(events::message("", "info", "bringing up " + std::to_string(projects.size()) + " VMs, " +
                                             std::to_string(parallel) + " at a time"));
    std::shared_ptr<progress_view> view;
    if (!ctx.json && stdout_is_terminal()) {
        view = std::make_shared<progress_view>(stdout, names);
        ctx.bus.replace_sinks(view);
    }

    const std::vector<prelisted> seen = co_await list_before_locking(ctx, names);
    window slots(ex, parallel);
    std::vector<std::shared_ptr<cancel_signal>> cancels;
    for (std::size_t i = 0; i < projects.size(); ++i) cancels.push_back(std::make_shared<cancel_signal>(ex));
    std::vector<outcome> results(projects.size());
    auto cancel_all = [&cancels] {
        for (auto& c : cancels) c->trigger(cancel_signal::graceful);
    };
    auto on_failure = [&] {
        if (opt.fail_fast) cancel_all();
    };
    task_group tasks(ex);
    for (std::size_t i = 0; i < projects.size(); ++i) {
        const prelisted* listed = seen.empty() ? nullptr : &seen[i];
        auto task = [&ctx, target = targets[i], listed, &slots, cancel = cancels[i], &result = results[i], on_failure]() {
            return up_in_window(ctx, target, listed, slots, cancel, result, on_failure);
        };
        tasks.spawn(std::move(task));
    }
    asio::steady_timer ticker(ex);
    if (view) {
        co_await (tasks.join() || forward_cancel(ctx.cancel, cancels) || tick(*view, ticker));
        view->redraw();
    } else {
        co_await (tasks.join() || forward_cancel(ctx.cancel, cancels));
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
