#include "lifecycle.hpp"

#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/protocol.hpp"
#include "machine/ssh.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// Runs `limactl start` while following the host agent's events, which become vm.state events.
awaitable<void> boot(context& ctx, lima::driver& lima, std::string name, fs::path ha_log,
                     cancel_signal* cancel, fs::path create_from) {
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
    auto on_log = lima_log_to_events(ctx, name);
    // limactl truncates ha.stdout.log at every start, but we may read the previous boot's
    // events before it does: anything stamped before now is old news (same host, same clock).
    const auto started_at = std::chrono::system_clock::now();
    // The follower never succeeds on its own; it is cancelled when the start is done.
    auto starting = create_from.empty() ? lima.start(name, on_log) : lima.start_new(name, create_from, on_log);
    // A failed start ends the race with its error.
    co_await first_of(std::move(starting), lima.follow_host_agent(ha_log, on_event, cancel, started_at));
    // `limactl start` succeeded: the VM is running even if we were too quick to see the event.
    if (!saw_running) ctx.emit(events::vm_state(name, "running"));
}

// A `limactl start` we interrupted leaves Lima's host agent and QEMU running (they are not
// our children): stop them, so nothing half-booted stays behind.
awaitable<void> stop_after_interrupt(context& ctx, std::string name) {
    ctx.emit(events::message(name, "warning", "interrupted while booting; stopping the VM"));
    const auto cleanup = ctx.lima.fork(nullptr, ctx.timeouts);
    try {
        co_await cleanup->stop(name, true);
    } catch (const error& e) {
        ctx.emit(events::error(name, std::string("could not stop the VM: ") + e.what(), e.diagnostics()));
    }
}

} // namespace

lima::log_handler lima_log_to_events(context& ctx, std::string name) {
    return [&ctx, name = std::move(name)](const lima::log_line& l) {
        // Lima's hints to its own user (a create's "Run `limactl start NAME`...") are not machine's.
        const bool limas_hint = l.msg.rfind("Terminal is not available", 0) == 0 || l.msg.rfind("Run `limactl ", 0) == 0;
        if (l.level == "info" && !limas_hint)
            ctx.emit(events::message(name, "info", l.msg));
        else if (l.level == "warning" || l.level == "error")
            ctx.emit(events::message(name, l.level, l.msg));
    };
}

awaitable<void> boot_instance(context& ctx, lima::driver& lima, std::string name, fs::path ha_log,
                              cancel_signal* cancel, fs::path create_from) {
    ctx.emit(events::step_started(name, create_from.empty() ? "boot" : "create+boot"));
    const auto tb = std::chrono::steady_clock::now();
    std::exception_ptr failure;
    try {
        co_await boot(ctx, lima, name, ha_log, cancel, create_from);
    } catch (...) {
        failure = std::current_exception();  // cleaned up below: no co_await in a handler
    }
    if (failure) {
        if (cancel && cancel->current() != cancel_signal::none) co_await stop_after_interrupt(ctx, name);
        std::rethrow_exception(failure);
    }
    ctx.emit(events::step_finished(name, create_from.empty() ? "boot" : "create+boot", true, since(tb)));
}

namespace {

// A connection to the agent through `link`, and its hello; nullopt when no agent answers.
awaitable<std::optional<greeted_agent>> greet(const std::string& name, const guest_link& link) {
    try {
        auto conn = co_await link.connect(0s);
        protocol::hello_result hello = co_await conn->hello("machine " MACHINE_VERSION);
        co_return greeted_agent{std::move(conn), std::move(hello)};
    } catch (const interrupted_error&) {
        throw;
    } catch (const error& e) {
        spdlog::debug("vm={} no agent {}: {}", name, link.rides_master() ? "through the SSH master" : "yet", e.what());
    }
    co_return std::nullopt;
}

// `greeted`, when that agent is exactly this machine's (guest::is_current: nothing to deploy).
std::optional<greeted_agent> if_current(const std::string& name, std::optional<greeted_agent> greeted,
                                        const guest::agent_files& files, const std::string& user) {
    if (greeted && guest::is_current(greeted->hello.deployment, files, user)) return greeted;
    if (greeted) spdlog::debug("vm={} its agent is not this machine's: deploying", name);
    return std::nullopt;
}

} // namespace

awaitable<master_hello> hello_over_master(context& ctx, std::string name, lima::driver& lima) {
    master_hello out{find_master_before_listing(ctx, lima, name), std::nullopt};
    if (!out.master.link) co_return out;
    try {
        // A paused VM answers nothing: `up` resumes it first and asks then.
        if (cpus_stopped(co_await lima.run_state(name))) {
            out.master.link.reset();
            co_return out;
        }
    } catch (const error& e) {
        spdlog::debug("vm={} QEMU's run state unknown ({}): asking its agent", name, e.what());
    }
    out.agent = co_await greet(name, *out.master.link);
    co_return out;
}

awaitable<reached_guest> open_guest(context& ctx, std::string name, lima::instance inst, cancel_signal* cancel,
                                    master_hello* asked) {
    const guest::agent_files files = guest::find_agent(inst.arch, name);
    const ssh::endpoint ep = ssh::endpoint_from_lima_ssh_config(ssh_config_of(inst));
    ctx.emit(events::step_started(name, "agent"));
    const auto t0 = std::chrono::steady_clock::now();
    // A VM that ran since an earlier up: its master leads to a current agent without a handshake.
    std::optional<guest_link> master;
    std::optional<greeted_agent> agent;
    if (asked && asked->master.serves(inst)) {
        master = std::move(asked->master.link);
        agent = std::move(asked->agent);
    } else if ((master = guest_link::over_master(ctx, name, inst))) {
        agent = co_await greet(name, *master);
    }
    if (master && (agent = if_current(name, std::move(agent), files, ep.user))) {
        ctx.emit(events::step_finished(name, "agent", true, since(t0), "up to date"));
        co_return reached_guest{std::move(*master), std::move(agent->conn), agent->hello.boot_id};
    }
    agent.reset();  // its relay ends here
    // The host key is recorded at the first connection after machine created the VM, and must
    // match on every later one; a VM without a pin otherwise is refused (machine pin NAME).
    const bool first = new_vm_key_expected(name);
    const ssh::host_key_pin pin = pin_of(name, first);
    auto session = co_await ssh::session::connect(ep, pin, cancel);
    if (first) new_vm_key_pinned(name);
    guest_link link = guest_link::over(ctx, name, session);
    agent = if_current(name, co_await greet(name, link), files, ep.user);
    guest::deployment deployed = guest::deployment::already_current;
    if (!agent) {
        deployed = co_await guest::ensure_agent(session, files, ep.user);
        auto conn = co_await link.connect(20s);  // an agent just (re)started may take a moment
        protocol::hello_result hello = co_await conn->hello("machine " MACHINE_VERSION);
        agent = greeted_agent{std::move(conn), std::move(hello)};
    }
    ctx.emit(events::step_finished(name, "agent", true, since(t0),
                                   deployed == guest::deployment::installed  ? "installed"
                                   : deployed == guest::deployment::upgraded ? "upgraded"
                                                                             : "up to date"));
    co_return reached_guest{std::move(link), std::move(agent->conn), agent->hello.boot_id};
}

// After boot: the agent says the VM is ready (systemd reached its default target, the user's
// session exists), instead of us polling for it.
std::string restart_hint(const std::string& name) { return "machine down " + name + " && machine up " + name; }

awaitable<void> wait_until_ready(context& ctx, std::string name, const guest_link& link) {
    ctx.emit(events::step_started(name, "ready"));
    const auto t0 = std::chrono::steady_clock::now();
    auto conn = co_await link.connect(20s);
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
    try {
        co_await first_of(conn->subscribe(from, on_event), sleep_for(std::chrono::seconds(180)));
    } catch (...) {
        if (!(booted && user_ready)) throw;  // the connection failed before the VM was ready
    }
    if (!booted || !user_ready) {
        std::string missing = !booted ? "boot.finished" : "";
        if (!user_ready) missing += std::string(missing.empty() ? "" : " and ") + "user.ready";
        ctx.emit(events::step_finished(name, "ready", false, since(t0), "no " + missing + " from the guest agent"));
        throw error("VM '" + name + "' booted, but its guest agent did not report " + missing + " within 180s");
    }
    ctx.emit(events::step_finished(name, "ready", true, since(t0)));
}

events::event from_guest(const std::string& vm, const protocol::event_record& e) {
    constexpr std::size_t max_fields = 32, max_value = 1024;
    std::vector<std::pair<std::string, events::value>> fields;
    for (const auto& [key, v] : e.fields.items()) {
        if (fields.size() == max_fields) break;
        if (v.is_string()) fields.emplace_back(key, v.get<std::string>().substr(0, max_value));
        else if (v.is_boolean()) fields.emplace_back(key, v.get<bool>());
        else if (v.is_number_integer()) fields.emplace_back(key, v.get<std::int64_t>());
        else fields.emplace_back(key, v.dump(-1, ' ', false, protocol::json::error_handler_t::replace).substr(0, max_value));
    }
    return events::guest_event(vm, e.event, e.seq, std::move(fields));
}

} // namespace machine::vm
