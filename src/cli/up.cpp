// `machine up`: one VM, or several at once (`up A B C`, `up --all`) within a bounded window.
#include <fstream>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "common.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/render.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "progress.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// Runs `limactl start` while following the host agent's events, which become vm.state events.
awaitable<void> boot(context& ctx, lima::client& lima, std::string name, fs::path ha_log,
                     cancel_signal* cancel) {
    using namespace asio::experimental::awaitable_operators;
    bool saw_running = false;
    auto on_event = [&ctx, &saw_running, name](const lima::ha_event& e) {
        if (e.exiting) {
            ctx.emit(events::vm_state(name, "stopped", "the VM exited"));
        } else if (e.running) {
            saw_running = true;
            ctx.emit(events::vm_state(name, e.degraded ? "degraded" : "running",
                                      e.degraded && !e.errors.empty() ? e.errors[0] : ""));
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
    // The follower never succeeds on its own; it is cancelled when the start is done.
    auto outcome = co_await (capture(lima.start(name, on_log)) ||
                             lima::follow_events(ha_log, on_event, cancel, started_at));
    if (outcome.index() == 0) {
        if (auto failure = std::get<0>(outcome)) std::rethrow_exception(failure);
    }
    // `limactl start` succeeded: the VM is running even if we were too quick to see the event.
    if (!saw_running) ctx.emit(events::vm_state(name, "running"));
}

// A `limactl start` we interrupted leaves Lima's host agent and QEMU running (they are not
// our children): stop them, so nothing half-booted stays behind.
awaitable<void> stop_after_interrupt(context& ctx, std::string name) {
    ctx.emit(events::message(name, "warning", "interrupted while booting; stopping the VM"));
    lima::client cleanup(ctx.lima().limactl(), nullptr, ctx.timeouts);
    try {
        co_await cleanup.stop(name, true);
    } catch (const error& e) {
        ctx.emit(events::error(name, std::string("could not stop the VM: ") + e.what(), e.diagnostics()));
    }
}


awaitable<void> subscribe_until(guest::connection& conn, std::uint64_t from,
                                std::function<bool(const protocol::event_record&)> on_event) {
    co_await conn.subscribe(from, std::move(on_event));
}

// After boot: the VM runs exactly our agent, and the agent says the VM is ready (systemd
// reached its default target, the user's session exists), instead of us polling for it.
awaitable<void> agent_ready(context& ctx, std::string name, lima::instance inst, cancel_signal* cancel) {
    using namespace asio::experimental::awaitable_operators;
    if (paths::env("MACHINE_AGENT") == "off") co_return;  // documented escape hatch
    const guest::agent_files files = guest::find_agent();
    const fs::path ssh_config = ssh_config_of(inst);
    const ssh::endpoint ep = ssh::endpoint_from_lima_ssh_config(ssh_config);
    // The host key is recorded at the first connection after the VM was created, and must match
    // on every later one.
    const ssh::host_key_pin pin{project_state_dir(name) / "host_key", name, true};

    ctx.emit(events::step_started(name, "agent"));
    auto t0 = std::chrono::steady_clock::now();
    auto session = co_await ssh::session::connect(ep, pin, cancel);
    const guest::deployment deployed = co_await guest::ensure_agent(session, files, ep.user);
    ctx.emit(events::step_finished(name, "agent", true, since(t0),
                                   deployed == guest::deployment::installed  ? "installed"
                                   : deployed == guest::deployment::upgraded ? "upgraded"
                                                                             : "up to date"));

    ctx.emit(events::step_started(name, "ready"));
    t0 = std::chrono::steady_clock::now();
    auto on_problem = [&ctx, name](const std::string& p) { ctx.emit(events::message(name, "warning", p)); };
    auto conn = co_await guest::connect_agent(session, 20s, on_problem);
    const protocol::hello_result hello = co_await conn->hello("machine " MACHINE_VERSION);
    bool booted = false, user_ready = false;
    auto on_event = [&](const protocol::event_record& e) {
        // Earlier boots' events are history: show this boot's, and anything new.
        const auto boot = e.fields.find("boot_id");
        const bool this_boot = boot != e.fields.end() && boot->is_string() && boot->get<std::string>() == hello.boot_id;
        if (this_boot || e.seq > hello.journal.last_seq) ctx.emit(from_guest(name, e));
        if (this_boot) {
            booted |= e.event == "boot.finished";
            user_ready |= e.event == "user.ready";
        }
        return !(booted && user_ready);
    };
    // This boot's readiness events are among the newest; no need to replay a long journal.
    const std::uint64_t from = hello.journal.last_seq > 200 ? hello.journal.last_seq - 200 : 0;
    asio::steady_timer patience(co_await asio::this_coro::executor);
    auto outcome = co_await (capture(subscribe_until(*conn, from, on_event)) ||
                             sleep_for(patience, std::chrono::seconds(180)));
    session->close();
    if (outcome.index() == 0 && std::get<0>(outcome) && !(booted && user_ready))
        std::rethrow_exception(std::get<0>(outcome));  // the connection failed
    if (!booted || !user_ready) {
        std::string missing = !booted ? "boot.finished" : "";
        if (!user_ready) missing += std::string(missing.empty() ? "" : " and ") + "user.ready";
        ctx.emit(events::step_finished(name, "ready", false, since(t0), "no " + missing + " from the guest agent"));
        throw error("VM '" + name + "' booted, but its guest agent did not report " + missing + " within 180s");
    }
    ctx.emit(events::step_finished(name, "ready", true, since(t0)));
}

// Brings one VM up. Throws on failure; `cancel` interrupts it.
awaitable<void> up_one(context& ctx, config::project project, cancel_signal* cancel) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string name = project.name;
    lima::client lima(ctx.lima().limactl(), cancel, ctx.timeouts);
    const auto lock = co_await lock_project(ctx, name, cancel);
    auto existing = co_await lima.find(name);
    if (existing && existing->state == lima::status::running) {
        ctx.emit(events::vm_state(name, "running", "already running; nothing to do"));
        ctx.emit(events::vm_done(name, "ready", since(t0)));
        co_return;
    }
    if (!existing) {
        const fs::path tmpl = project_state_dir(name) / "lima.yaml";
        paths::write_file_atomic(tmpl, render::lima_yaml(project, render::detect_host()), 0600);
        spdlog::debug("vm={} rendered {}", name, tmpl.string());
        ctx.emit(events::step_started(name, "create"));
        const auto tc = std::chrono::steady_clock::now();
        const std::vector<std::string> no_sets;
        co_await lima.create(name, tmpl, no_sets);
        ctx.emit(events::step_finished(name, "create", true, since(tc)));
        existing = co_await lima.find(name);
        if (!existing) throw error("limactl create succeeded but instance '" + name + "' is not listed");
    } else if (existing->state == lima::status::broken) {
        std::string why = existing->errors.empty() ? "" : " (" + existing->errors[0] + ")";
        ctx.emit(events::message(name, "warning", "the VM is broken" + why + "; stopping it forcibly before starting"));
        co_await lima.stop(name, true);
    }

    ctx.emit(events::step_started(name, "boot"));
    const auto tb = std::chrono::steady_clock::now();
    std::exception_ptr failure = co_await capture(boot(ctx, lima, name, fs::path(existing->dir) / "ha.stdout.log", cancel));
    if (failure) {
        if (cancel && cancel->current() != cancel_signal::none) co_await stop_after_interrupt(ctx, name);
        std::rethrow_exception(failure);
    }
    ctx.emit(events::step_finished(name, "boot", true, since(tb)));
    co_await agent_ready(ctx, name, *existing, cancel);
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
        if (!p.agent_keys.empty() && p.forward_agent) {
            // Fail closed: forwarding the whole agent when the user asked for a subset would
            // grant more than they meant.
            throw config::config_error(p.source.string() + ": " + n +
                                       ".agent_keys: limiting the forwarded agent to some keys is not "
                                       "available yet; remove agent_keys or set forward_agent = false");
        }
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
    if (!p.profiles.empty()) {
        std::string list;
        for (const auto& prof : p.profiles) list += (list.empty() ? "" : ", ") + prof;
        ctx.emit(events::message(p.name, "warning", "profiles are not applied yet (" + list + "): provisioning comes with the guest agent"));
    }
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

awaitable<void> up_in_window(context& ctx, config::project project, window& slots,
                             std::shared_ptr<cancel_signal> cancel, outcome& result,
                             std::function<void()> on_failure) {
    co_await slots.acquire();
    const auto t0 = std::chrono::steady_clock::now();
    if (cancel->current() == cancel_signal::none) {
        const std::string name = project.name;
        std::exception_ptr failure = co_await capture(up_one(ctx, std::move(project), cancel.get()));
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

    if (projects.size() == 1 && !opt.all) {
        co_await up_one(ctx, projects.front(), &ctx.cancel);
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
        auto task = [&ctx, project = projects[i], &slots, cancel = cancels[i], &result = results[i], on_failure]() {
            return up_in_window(ctx, project, slots, cancel, result, on_failure);
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
