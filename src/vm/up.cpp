// Bringing VMs up: one (up_one), or several at once within a bounded window (up_many).
#include <algorithm>
#include <fstream>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>
#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/platform.hpp"
#include "machine/render.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"
#include "guest_network.hpp"
#include "instance_edits.hpp"
#include "guest_link.hpp"
#include "lifecycle.hpp"
#include "provisioning.hpp"
#include "tasks.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;

namespace {

// The agents' logins the project may receive, read again and rendered (PROTOCOL.md §8):
// "credentials: claude, gh delivered". A failure is a warning: the VM is up all the same.
awaitable<void> deliver_credentials(context& ctx, const config::project& project, guest::connection& agent) {
    try {
        credentials_sync_options options;
        options.reread = true;
        const credentials_outcome o = co_await sync_credentials(project, agent, options);
        for (const auto& w : o.warnings) ctx.emit(events::message(project.name, "warning", w));
        if (const std::string said = describe(o); !said.empty()) ctx.say(project.name, said);
    } catch (const interrupted_error&) {
        throw;
    } catch (const std::exception& e) {
        ctx.emit(events::message(project.name, "warning", text::sanitize_for_terminal(std::string("credentials not delivered: ") + e.what())));
    }
}


// Lists every project's VM in one call, for `up` of many (one limactl process instead of one
// per project). Empty when that list fails: each project then lists its own VM after its lock.
awaitable<std::vector<prelisted>> list_before_locking(context& ctx, std::vector<std::string> names) {
    std::vector<prelisted> seen(names.size());
    for (std::size_t i = 0; i < names.size(); ++i) seen[i].generation = project_lock::generation_of(names[i]);
    std::vector<lima::instance> found;
    try {
        found = co_await ctx.lima.find_all(names);
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

} // namespace

bool starts_from_base(const up_target& t, bool agent) {
    return agent && !t.base.steps.empty() && config::size_bytes(t.project.disk) >= config::size_bytes(base_disk);
}

awaitable<void> up_one(context& ctx, up_target target, cancel_signal* cancel, const prelisted* seen,
                       std::string* started) {
    const auto t0 = std::chrono::steady_clock::now();
    const config::project& project = target.project;
    const std::string name = project.name;
    const auto driver = ctx.lima.fork(cancel, ctx.timeouts);
    lima::driver& lima = *driver;
    const auto lock = co_await lock_project(ctx, name, cancel);
    std::optional<lima::instance> existing;
    // A running VM's agent is asked through its master while Lima lists it (open_guest then
    // checks that it is the instance listed): a re-up of a ready VM waits for one, not both.
    master_hello asked;
    if (seen && lock->generation() == seen->generation && since(seen->at) < 5s) {
        existing = seen->instance;
    } else if (ctx.agent) {
        auto listing = lima.find(name);  // named first: house style §4
        auto asking = hello_over_master(ctx, name, lima);
        auto both = co_await (std::move(listing) && std::move(asking));
        existing = std::move(std::get<0>(both));
        asked = std::move(std::get<1>(both));
    } else {
        existing = co_await lima.find(name);
    }
    const bool was_running = existing && existing->state == lima::status::running;
    // Not running, or another instance than the one asked: its relay, if any, ends now.
    if (!was_running || !asked.master.serves(*existing)) asked = master_hello{};
    // A paused VM answers nothing: continue it first (its SSH and tmux sessions are as they were).
    // One whose agent just answered is not paused.
    if (was_running && runs_on_qemu(*existing) && !asked.agent) co_await resume_if_paused(ctx, lima, name);
    // cpus, memory and disk change only when the VM starts, and a disk only grows: a smaller one
    // is refused here, before anything runs.
    if (existing) {
        const std::vector<setting_change> resources = resource_changes(project, *existing);
        if (was_running && !resources.empty())
            ctx.emit(events::message(name, "warning",
                                     describe_changes(resources) + " apply when the VM restarts: " + restart_hint(name)));
        if (const std::string arch = arch_change_warning(project, *existing); !arch.empty())
            ctx.emit(events::message(name, "warning", arch));
    }
    agent_environment agent;
    {
        // Every limactl call from here on (the start, whose SSH master outlives it) and every
        // clone reaches only the agent the project may use.
        const lima::instance* inst = existing ? &*existing : nullptr;
        agent = co_await prepare_agent_forwarding(ctx, project, inst, true);
        lima.set_environment(agent.env);
    }
    if (was_running && !ctx.agent) {
        ctx.emit(events::vm_state(name, "running", "already running; nothing to do"));
        ctx.emit(events::vm_done(name, "ready", since(t0)));
        co_return;
    }
    // The VM's network before it starts: with a Lima that isolates VMs, its egress proxy serves
    // the project's policy (a running VM's too, so a changed policy applies at once). An
    // allowlist this Lima cannot enforce fails here, before anything is created.
    const lima::instance* listed = existing ? &*existing : nullptr;
    const std::optional<fs::path> egress = co_await prepare_network(ctx, name, target.network, listed);
    if (const std::string said = describe_egress(target.network, target.allowed); !said.empty()) ctx.say(name, said);
    const fs::path egress_socket_path = egress.value_or(fs::path());
    // A VM made before its Lima isolated VMs (or whose socket moved) gets its egress at its next
    // start; a running one is told it is not isolated until then.
    if (was_running && egress && existing->egress_socket != egress_socket_path.string()) {
        ctx.emit(events::message(name, "warning",
                                 "the VM runs without machine's network isolation (it was started before it "
                                 "existed); it applies when the VM restarts: " + restart_hint(name)));
    }
    // What the stopped VM's lima.yaml must change to match the project (edited before its boot).
    std::vector<setting_change> before_start;
    if (existing && !was_running) before_start = changes_before_start(project, *existing, egress_socket_path.string());
    // A hibernated VM resumes where it was, unless what QEMU runs it with changes now (or
    // changed since): then it boots, saying why.
    bool hibernated = existing && !was_running && existing->state == lima::status::stopped && hibernated_bytes(*existing) > 0;
    if (hibernated && !before_start.empty()) {
        forget_hibernation(name, existing->dir);
        ctx.emit(events::message(name, "warning", "its hibernated state is dropped: " + describe_changes(before_start) +
                                                      " change what the VM runs with; booting it instead"));
        hibernated = false;
    }
    if (started) *started = was_running ? "" : existing ? "booted" : "created";
    bool resumed = false;
    std::string resumed_in;   // "resumed from hibernation in 2.1 s", said once the guest is checked
    std::string boot_saved;   // the boot it was hibernated in, as its agent said it
    fs::path create_from;  // set when the start creates the VM from the project's template
    if (!existing) {
        // Nothing is created for a project whose code cannot be fetched.
        co_await check_repos_reachable(ctx, project, cancel);
        // This up creates the VM: its key is pinned at the first connection, and a pin left by
        // an earlier VM of the same name (deleted outside machine) goes now.
        expect_new_vm_key(name);
        const bool from_base = starts_from_base(target, ctx.agent);
        // The project's template, also for a clone (whose settings match it): what the VM is
        // meant to be, for people and tools to read.
        const render::host_facts host = render::detect_host();
        const fs::path tmpl = project_state_dir(name) / "lima.yaml";
        paths::write_file_atomic(tmpl, render::lima_yaml(project, host, egress_socket_path), 0600);
        spdlog::debug("vm={} rendered {}", name, tmpl.string());
        if (from_base) {
            const std::string base = co_await ensure_base(ctx, target, false, cancel);
            ctx.emit(events::step_started(name, "create"));
            const auto tc = std::chrono::steady_clock::now();
            std::vector<std::string> sets{render::clone_settings(project, host, egress_socket_path)};
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
        // Again just before the boot: a base baked meanwhile can take longer than a proxy waits for
        // its VM's host agent to appear (it ends without one), and the guest must find it serving.
        if (egress) co_await prepare_network(ctx, name, target.network, listed);
        co_await edit_before_start(ctx, lima, name, before_start);
        const fs::path dir = existing ? fs::path(existing->dir) : lima.instance_dir(name);
        if (hibernated) {
            if (const std::string why = hibernation_obstacle(name, dir); !why.empty()) {
                forget_hibernation(name, dir);
                ctx.emit(events::message(name, "warning", "its hibernated state is dropped (" + why + "); booting it instead"));
                hibernated = false;
            } else {
                ctx.say(name, "resuming from hibernation");
            }
        }
        co_await boot_instance(ctx, lima, name, dir / "ha.stdout.log", cancel, create_from);
        if (hibernated) {
            const auto outcome = lima::read_hibernate_outcome(dir);
            boot_saved = hibernated_boot(name);
            forget_hibernation(name, dir);  // the state was used or dropped by the start; the record goes too
            if (outcome && outcome->resumed) {
                resumed = true;
                if (started) *started = "resumed";
                char took[32];
                std::snprintf(took, sizeof took, "%.1f s", outcome->took_seconds);
                resumed_in = std::string("resumed from hibernation in ") + took;
                if (!ctx.agent) ctx.say(name, resumed_in);
            } else {
                ctx.emit(events::message(name, "warning",
                                         "the hibernated state could not be resumed (" +
                                             (outcome ? outcome->reason : std::string("Lima said nothing about it")) +
                                             "); the VM booted instead"));
            }
        }
    }
    if (ctx.agent) {
        if (!existing) existing = co_await lima.find(name);  // created by the start: its SSH settings
        if (!existing) throw error("limactl start succeeded but instance '" + name + "' is not listed");
        reached_guest guest = co_await open_guest(ctx, name, *existing, cancel, &asked);
        // QEMU resumed the saved state, but a guest that crashed right after (and restarted:
        // panic=1) is in another boot: it lost what it ran, and is ready only when that boot is.
        if (resumed && !boot_saved.empty() && guest.boot_id != boot_saved) {
            resumed = false;
            if (started) *started = "booted";
            ctx.emit(events::message(name, "warning",
                                     "VM '" + name + "' restarted right after resuming from hibernation: its "
                                     "processes and /tmp did not survive"));
        } else if (resumed) {
            ctx.say(name, resumed_in);
        }
        // A resumed VM is in the boot it was hibernated in, ready then: its readiness events may
        // be far back in the agent's journal.
        if (!was_running && !resumed) co_await wait_until_ready(ctx, name, guest.link);
        if (resumed) co_await sync_guest_clock(ctx, *guest.agent, name);
        // The network rules go in before provisioning runs anything; a VM without nft yet gets
        // them once the base profile has installed it.
        guest_rules_options rules_opt;
        rules_opt.nft_may_come = true;
        rules_opt.isolated_outside = egress.has_value();
        rules_opt.host_addresses = host_interface_addresses();
        const net::policy& rules_policy = target.network;
        const guest_rules_state rules = co_await install_guest_rules(ctx, name, *guest.agent, rules_policy, rules_opt);
        std::size_t ran = co_await apply_plan(ctx, name, guest.link, *guest.agent, target.plan, cancel);
        if (rules == guest_rules_state::waiting_for_nft) {
            rules_opt.nft_may_come = false;
            co_await install_guest_rules(ctx, name, *guest.agent, rules_policy, rules_opt);
        }
        co_await clone_repos(ctx, *existing, agent, project, *guest.agent, render::vm_user, cancel);
        ran += co_await apply_plan(ctx, name, guest.link, *guest.agent, target.after_clone, cancel);
        if (project.secrets_on_up) {
            secrets_sync_options every_set;
            every_set.required = false;
            co_await sync_secrets(ctx, project, *guest.agent, every_set);
        }
        co_await deliver_credentials(ctx, project, *guest.agent);
        guest.agent.reset();
        guest.link.close();
        if (ran > 0) co_await close_ssh_masters_after_provisioning(*existing, name);
        // The master the short commands after this one ride (sessions, secrets, run, attaches):
        // opened now, with the project's forwarding, so that none of them pays for a handshake.
        try {
            co_await ssh_target(ctx, name, *existing, agent);
        } catch (const interrupted_error&) {
            throw;
        } catch (const error& e) {
            spdlog::debug("vm={} no SSH master after up: {}", name, e.what());
        }
    }
    ctx.emit(events::vm_done(name, "ready", since(t0)));
}

int default_parallelism(const std::vector<config::project>& projects) {
    const long long available = platform::available_memory();
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

namespace {

// A counting semaphore on the loop: at most `n` holders.
class window {
public:
    window(asio::any_io_executor ex, int n) : free_(n), freed_(ex) {}
    awaitable<void> acquire() {
        while (free_ == 0) co_await freed_.wait();
        --free_;
    }
    void release() {
        ++free_;
        freed_.notify_all();  // every waiter re-checks
    }

private:
    int free_;
    notifier freed_;
};

awaitable<void> up_in_window(context& ctx, up_target target, const prelisted* seen, window& slots,
                             std::shared_ptr<cancel_signal> cancel, up_outcome& result,
                             std::function<void()> on_failure) {
    co_await slots.acquire();
    const auto t0 = std::chrono::steady_clock::now();
    if (cancel->current() == cancel_signal::none) {
        const std::string name = target.project.name;
        std::exception_ptr failure;
        try {
            co_await up_one(ctx, std::move(target), cancel.get(), seen, &result.started);
        } catch (...) {
            failure = std::current_exception();
        }
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

// Forwards the CLI's Ctrl-C to every VM's own signal until it loses its race.
awaitable<void> forward_cancel(cancel_signal& from, std::vector<std::shared_ptr<cancel_signal>> to) {
    cancel_signal::level seen = cancel_signal::none;
    for (;;) {
        const std::optional<cancel_signal::level> next = co_await from.until_above(seen);
        if (!next) co_return;
        seen = *next;
        for (auto& s : to) s->trigger(seen);
    }
}

} // namespace

awaitable<std::vector<up_outcome>> up_many(context& ctx, std::vector<up_target> targets, int parallel, bool fail_fast) {
    auto ex = co_await asio::this_coro::executor;
    std::vector<std::string> names;
    for (const auto& t : targets) names.push_back(t.project.name);
    const std::vector<prelisted> seen = co_await list_before_locking(ctx, names);
    window slots(ex, parallel);
    std::vector<std::shared_ptr<cancel_signal>> cancels;
    for (std::size_t i = 0; i < targets.size(); ++i) cancels.push_back(std::make_shared<cancel_signal>(ex));
    std::vector<up_outcome> results(targets.size());
    auto cancel_all = [&cancels] {
        for (auto& c : cancels) c->trigger(cancel_signal::graceful);
    };
    auto on_failure = [&] {
        if (fail_fast) cancel_all();
    };
    // Hibernated VMs take the first places in the window: they are back in seconds (after a host
    // reboot, they are where the user's work was). Outcomes stay in the targets' order.
    std::vector<std::size_t> order(targets.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto is_hibernated = [&](std::size_t i) {
        lima::instance inst;
        if (!seen.empty() && seen[i].instance) inst = *seen[i].instance;
        else inst.dir = ctx.lima.instance_dir(targets[i].project.name).string();
        return hibernated_bytes(inst) > 0;
    };
    std::stable_partition(order.begin(), order.end(), is_hibernated);
    task_group tasks(ex, log_task_failure);
    for (const std::size_t i : order) {
        const prelisted* listed = seen.empty() ? nullptr : &seen[i];
        auto task = [&ctx, target = targets[i], listed, &slots, cancel = cancels[i], &result = results[i], on_failure]() {
            return up_in_window(ctx, target, listed, slots, cancel, result, on_failure);
        };
        tasks.spawn(std::move(task));
    }
    co_await first_of(tasks.join(), forward_cancel(ctx.cancel, cancels));
    co_return results;
}

} // namespace machine::vm
