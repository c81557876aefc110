// Watching VMs (`machine watch`): a long-running stream of what every VM is doing, as events.
//
// Lima's view comes from polling `limactl list` (VMs appearing, disappearing, changing status)
// and from following each VM's `ha.stdout.log` (booting, ready, degraded, exiting). The guest
// agent's view comes from subscribing to its event journal while the VM runs, resuming after
// the last event seen whenever the connection drops or the VM restarts. Each follower is a task
// of its own, stopped when its VM stops or disappears; Ctrl-C stops them all and watch leaves
// nothing running behind it.
#include <map>

#include <asio/this_coro.hpp>
#include <spdlog/spdlog.h>

#include "audit_tail.hpp"
#include "guest_link.hpp"
#include "render_gate.hpp"
#include "tasks.hpp"
#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// Where a VM's agent stream stands, kept across reconnections and restarts of the VM.
struct agent_cursor {
    explicit agent_cursor(asio::any_io_executor ex) : retry(ex) {}
    std::string journal_id;
    std::uint64_t last_seq = 0;
    // At first contact the journal's recent past is replayed, but only events stamped after
    // watch started are shown: a VM that booted while watch could not reach it yet still
    // shows its readiness events, and older history stays out.
    std::uint64_t history_until_seq = 0;
    std::chrono::system_clock::time_point not_before = std::chrono::system_clock::now() - 2s;
    // Ends the agent follower's backoff (a kick) when Lima says the VM is ready, so the agent
    // is reached as soon as it can be rather than after the backoff.
    notifier retry;
    // Whether this VM's secrets are rendered again (a project with secrets_on_up: the tmpfs
    // they were in is gone after a boot). Lima's reports and the guest's user.ready feed it; the
    // poll loop renders when it says so. The guest's events alone never decide how often.
    render_gate gate;
};

// Feeds one report of a boot to the VM's gate. Not rendering is a debug line, not a warning:
// the guest decides how often its reports come.
void tell_gate(const std::string& name, const char* report, render_gate::outcome o) {
    if (o == render_gate::outcome::owed) spdlog::debug("vm={} secrets: {}: a render is due", name, report);
    else spdlog::debug("vm={} secrets: {}: no render now ({})", name, report, to_string(o));
}

struct watched_vm {
    std::string status;
    // Ends this VM's follower; shared with the follower task, which may outlive this entry.
    std::shared_ptr<cancel_signal> stop;
    // Ends the agent subscriber (running only while the VM runs).
    std::shared_ptr<cancel_signal> agent_stop;
    std::shared_ptr<agent_cursor> cursor;
    // QEMU's vCPUs stopped (machine pause): told as a state of its own, while Lima's status
    // (and so the agent follower and the secrets gate) stays "running".
    bool paused = false;
};

std::string lowercase(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

awaitable<void> follow_vm(context& ctx, std::string name, fs::path ha_log, std::shared_ptr<cancel_signal> stop,
                          std::chrono::system_clock::time_point since, std::shared_ptr<agent_cursor> cursor) {
    auto on_event = [&ctx, name, cursor](const lima::ha_event& e) {
        if (e.running && !e.forward) {
            cursor->retry.notify_all();  // the VM is up: try its agent now
            // Lima's requirements are met (ssh among them): the boot Lima reports.
            tell_gate(name, "Lima reports the VM running", cursor->gate.lima_booted(std::chrono::steady_clock::now()));
        }
        if (e.exiting) cursor->gate.lima_stopped();
        if (e.exiting) ctx.emit(events::vm_state(name, "exiting"));
        else if (e.forward && e.forward->type == "not-forwarding")
            return true;  // a listener the rules leave alone (sshd, the resolver): not news
        else if (e.running && e.forward)
            ctx.emit(events::message(name, "info", "port " + e.forward->type + " " + e.forward->guest_addr +
                                                       (e.forward->host_addr.empty() ? "" : " -> " + e.forward->host_addr)));
        else if (e.running)
            ctx.emit(events::vm_state(name, e.degraded ? "degraded" : "ready",
                                      e.degraded && !e.errors.empty() ? e.errors[0] : ""));
        else if (e.ssh_local_port && !e.forward)
            ctx.emit(events::vm_state(name, "booting", "ssh on 127.0.0.1:" + std::to_string(e.ssh_local_port)));
        return true;
    };
    try {
        co_await ctx.lima.follow_host_agent(ha_log, on_event, stop.get(), since);
    } catch (const interrupted_error&) {
        // stopped: the VM went away or watch is ending
    }
}


// Until `cancel` fires (or this wait loses its race).
awaitable<void> until_cancelled(cancel_signal& cancel) { co_await cancel.until_above(cancel_signal::none); }

events::connection connection_of(net::audit_record r) {
    events::connection c;
    c.allowed = r.allowed;
    c.kind = std::move(r.kind);
    c.host = std::move(r.host);
    c.port = r.port;
    c.bytes_up = r.bytes_up;
    c.bytes_down = r.bytes_down;
    c.duration_ms = r.duration_ms;
    c.reason = std::move(r.reason);
    c.suppressed = r.suppressed;
    return c;
}

// One connection's worth of agent events: connect, say hello, subscribe from the cursor.
awaitable<void> stream_agent_once(context& ctx, std::string name, fs::path ssh_config,
                                  std::shared_ptr<agent_cursor> cursor, bool& connected) {
    const ssh::endpoint ep = ssh::endpoint_from_lima_ssh_config(ssh_config);
    // watch never records a host key: only `machine up` pins it when it creates the VM.
    const ssh::host_key_pin pin = pin_of(name, false);
    auto session = co_await ssh::session::connect(ep, pin, nullptr, 10s);
    auto on_problem = [&ctx, name](const std::string& p) { ctx.emit(events::message(name, "warning", p)); };
    // An agent (or an sshd) that accepts but never answers must not stall this VM's stream
    // forever: opening the channel and the hello each get a deadline.
    auto opened = co_await first_of(guest::connect_agent(session, 5s, on_problem), sleep_for(15s));
    if (opened.index() != 0) throw error("no channel to the guest agent within 15 s");
    auto conn = std::get<0>(std::move(opened));
    spdlog::debug("vm={} agent channel open", name);
    auto greeted = co_await first_of(conn->hello("machine watch " MACHINE_VERSION), sleep_for(10s));
    if (greeted.index() != 0) throw error("the guest agent did not answer hello within 10 s");
    const protocol::hello_result hello = std::get<0>(std::move(greeted));
    spdlog::debug("vm={} agent hello: journal {} last seq {}; subscribing after {}", name, hello.journal.id,
                  hello.journal.last_seq, cursor->last_seq);
    if (cursor->journal_id != hello.journal.id) {
        // First contact: the recent past, filtered by time. A different journal is a different
        // VM: everything from its start.
        const bool first = cursor->journal_id.empty();
        cursor->last_seq = first && hello.journal.last_seq > 200 ? hello.journal.last_seq - 200 : 0;
        cursor->history_until_seq = first ? hello.journal.last_seq : 0;
        cursor->journal_id = hello.journal.id;
    }
    connected = true;
    auto on_event = [&ctx, name, cursor](const protocol::event_record& e) {
        cursor->last_seq = e.seq;
        if (e.seq <= cursor->history_until_seq) {
            const auto ts = lima::parse_rfc3339(e.ts);
            if (!ts || *ts < cursor->not_before) return true;  // from before watch started
        }
        if (e.event == "user.ready") {
            const auto id = e.fields.find("boot_id");
            const std::string boot_id = id != e.fields.end() && id->is_string() ? id->get<std::string>() : "";
            tell_gate(name, "the guest's user.ready", cursor->gate.guest_ready(boot_id, std::chrono::steady_clock::now()));
        }
        ctx.emit(from_guest(name, e));
        return true;
    };
    auto on_gap = [&ctx, name](const protocol::gap_notice& g) {
        ctx.emit(events::message(name, "warning", "agent events " + std::to_string(g.from_seq) + " to " +
                                                      std::to_string(g.to_seq) + " were dropped from its journal"));
    };
    co_await conn->subscribe(cursor->last_seq, on_event, on_gap);
}

// Follows a running VM's agent until `stop`: reconnects with backoff (1 s doubling to 30 s)
// whenever the VM restarts or the connection drops, resuming after the last event seen.
awaitable<void> follow_agent(context& ctx, std::string name, fs::path ssh_config, std::shared_ptr<cancel_signal> stop,
                             std::shared_ptr<agent_cursor> cursor) {
    auto backoff = 1000ms;
    std::string last_problem;
    while (stop->current() == cancel_signal::none) {
        bool connected = false;
        std::string problem = "the agent stream ended";
        try {
            auto attempt = co_await first_of(stream_agent_once(ctx, name, ssh_config, cursor, connected),
                                             until_cancelled(*stop));
            if (attempt.index() == 1) break;  // stopped
        } catch (const ssh::host_key_mismatch& e) {
            ctx.emit(events::error(name, e.what()));
            break;  // never retry against a changed key
        } catch (const std::exception& e) {
            problem = e.what();
        }
        if (connected) backoff = 1000ms;
        if (problem != last_problem)
            ctx.emit(events::message(name, "info", "agent: " + problem + "; reconnecting"));
        spdlog::debug("vm={} agent stream: {}; retrying in {} ms", name, problem, backoff.count());
        last_problem = problem;
        // The backoff, cut short by a kick or by `stop`.
        co_await first_of(cursor->retry.wait_until(steady_clock::now() + backoff), until_cancelled(*stop));
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, 30s);
    }
}

// After a boot, the agents' logins and the secrets of a project with secrets_on_up, unless an
// `up` (which renders them itself) got there first: the project lock waits for a running `up`,
// and only the sets the VM does not have are rendered. A failure is reported; watch goes on.
awaitable<void> rerender_secrets(context& ctx, config::project project, fs::path ssh_config) {
    const std::string name = project.name;
    try {
        const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
        const ssh::endpoint ep = ssh::endpoint_from_lima_ssh_config(ssh_config);
        auto session = co_await ssh::session::connect(ep, pin_of(name, false), &ctx.cancel, 10s);
        guest_link link = guest_link::over(ctx, name, std::move(session));
        auto agent = co_await link.connect(10s);
        credentials_sync_options logins;  // what the VM lacks: after a boot, everything
        const credentials_outcome o = co_await sync_credentials(project, *agent, std::move(logins));
        for (const auto& w : o.warnings) ctx.emit(events::message(name, "warning", w));
        if (const std::string said = describe(o); !said.empty()) ctx.say(name, said + " after the boot");
        if (project.secrets_on_up) {
            secrets_sync_options missing;
            missing.only_missing = true;
            co_await sync_secrets(ctx, project, *agent, missing);
        }
        agent.reset();
        link.close();
    } catch (const interrupted_error&) {
        throw;
    } catch (const std::exception& e) {
        ctx.emit(events::error(name, std::string("secrets after the boot: ") + e.what()));
    }
}

} // namespace

awaitable<void> follow_connections(context& ctx, std::string name, fs::path audit_log, std::shared_ptr<cancel_signal> stop,
                                   std::chrono::milliseconds poll) {
    // The log's past is not news; a log that appears later (a new VM's) is, from its start.
    line_tail tail(audit_log);
    std::uint64_t dropped = 0;
    while (stop->current() == cancel_signal::none) {
        // A torn or foreign line is skipped (parse_audit_line); the proxy caps how fast lines come.
        for (const auto& line : tail.poll())
            if (auto r = net::parse_audit_line(line)) ctx.emit(events::net_connection(name, connection_of(std::move(*r))));
        if (tail.dropped_lines() != dropped) {
            ctx.emit(events::message(name, "warning", "skipped " + std::to_string(tail.dropped_lines() - dropped) +
                                                          " overlong line(s) of its audit log"));
            dropped = tail.dropped_lines();
        }
        co_await first_of(sleep_for(poll), until_cancelled(*stop));
    }
}

awaitable<void> watch(context& ctx, watch_options opt) {
    const std::vector<std::string>& names = opt.names;
    auto& lima = ctx.lima;
    auto ex = co_await asio::this_coro::executor;
    task_group followers(ex, log_task_failure);
    std::map<std::string, watched_vm> vms;
    std::string last_error;
    const auto poll = opt.poll;

    // A VM that appears between two polls may have logged events before we saw it: follow it
    // from the previous poll on. VMs there from the start are followed from now.
    const bool agents_wanted = ctx.agent;
    auto previous_poll = std::chrono::system_clock::now();
    bool first_poll = true;
    while (ctx.cancel.current() == cancel_signal::none) {
        const auto this_poll = std::chrono::system_clock::now();
        const auto follow_since = first_poll ? this_poll : previous_poll;
        std::vector<lima::instance> instances;
        bool listed = false;
        try {
            instances = co_await lima.list();
            listed = true;
            last_error.clear();
        } catch (const interrupted_error&) {
            break;
        } catch (const error& e) {
            if (e.what() != last_error) ctx.emit(events::error("", e.what(), e.diagnostics()));
            last_error = e.what();
        }
        if (listed) {
            std::map<std::string, const lima::instance*> current;
            for (const auto& i : instances)
                if (names.empty() || std::find(names.begin(), names.end(), i.name) != names.end())
                    current[i.name] = &i;
            for (auto it = vms.begin(); it != vms.end();) {
                if (current.count(it->first)) {
                    ++it;
                    continue;
                }
                ctx.emit(events::vm_state(it->first, "deleted"));
                it->second.stop->trigger(cancel_signal::graceful);
                if (it->second.agent_stop) it->second.agent_stop->trigger(cancel_signal::graceful);
                it = vms.erase(it);
            }
            for (const auto& [name, inst] : current) {
                const std::string status = lowercase(inst->status_text.empty() ? std::string(lima::to_string(inst->state)) : inst->status_text);
                auto known = vms.find(name);
                if (known == vms.end()) {
                    watched_vm vm{status, std::make_shared<cancel_signal>(ex), nullptr,
                                  std::make_shared<agent_cursor>(ex)};
                    ctx.emit(events::vm_state(name, status, "watching"));
                    auto follow = [&ctx, name, log = fs::path(inst->dir) / "ha.stdout.log", stop = vm.stop,
                                   follow_since, cursor = vm.cursor]() {
                        return follow_vm(ctx, name, log, stop, follow_since, cursor);
                    };
                    followers.spawn(std::move(follow));
                    auto connections = [&ctx, name, stop = vm.stop, poll = opt.audit_poll]() {
                        return follow_connections(ctx, name, audit_log_of(name), stop, poll);
                    };
                    followers.spawn(std::move(connections));
                    known = vms.emplace(name, std::move(vm)).first;
                } else if (known->second.status != status) {
                    if (known->second.status == "running") known->second.cursor->gate.lima_stopped();
                    known->second.status = status;
                    ctx.emit(events::vm_state(name, status));
                }
                // The agent can only be reached while the VM runs.
                watched_vm& vm = known->second;
                bool paused = false;
                if (status == "running") {
                    const std::string shown = co_await shown_status(ctx, *inst);
                    paused = shown == "Paused";
                }
                if (paused != vm.paused) {
                    vm.paused = paused;
                    ctx.emit(events::vm_state(name, paused ? "paused" : "running", paused ? "" : "resumed"));
                }
                if (status == "running" && !vm.agent_stop && agents_wanted) {
                    vm.agent_stop = std::make_shared<cancel_signal>(ex);
                    const fs::path ssh_config = ssh_config_of(*inst);
                    auto agent = [&ctx, name, ssh_config, stop = vm.agent_stop, cursor = vm.cursor]() {
                        return follow_agent(ctx, name, ssh_config, stop, cursor);
                    };
                    followers.spawn(std::move(agent));
                }
                if (vm.cursor->gate.take(std::chrono::steady_clock::now())) {
                    spdlog::debug("vm={} secrets: rendering after a boot", name);
                    if (auto project = opt.after_boot ? opt.after_boot(name) : std::nullopt) {
                        auto rerender = [&ctx, p = std::move(*project), ssh_config = ssh_config_of(*inst)]() {
                            return rerender_secrets(ctx, p, ssh_config);
                        };
                        followers.spawn(std::move(rerender));
                    }
                }
                if (status != "running" && vm.agent_stop) {
                    vm.agent_stop->trigger(cancel_signal::graceful);
                    vm.agent_stop.reset();
                }
            }
        }
        if (listed) {
            previous_poll = this_poll;
            first_poll = false;
        }
        co_await first_of(sleep_for(poll), until_cancelled(ctx.cancel));
    }
    for (auto& [name, vm] : vms) {
        vm.stop->trigger(cancel_signal::graceful);
        if (vm.agent_stop) vm.agent_stop->trigger(cancel_signal::graceful);
    }
    co_await followers.join();
    throw interrupted_error();
}

} // namespace machine::vm
