// `machine watch`: a long-running stream of what every VM is doing.
//
// Lima's view comes from polling `limactl list` (VMs appearing, disappearing, changing status)
// and from following each VM's `ha.stdout.log` (booting, ready, degraded, exiting). Each VM's
// follower is a task of its own, stopped when the VM disappears; Ctrl-C stops them all and
// watch leaves nothing running behind it.
#include <map>

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "common.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

struct watched_vm {
    std::string status;
    // Ends this VM's follower; shared with the follower task, which may outlive this entry.
    std::shared_ptr<cancel_signal> stop;
};

std::string lowercase(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

awaitable<void> follow_vm(context& ctx, std::string name, fs::path ha_log, std::shared_ptr<cancel_signal> stop,
                          std::chrono::system_clock::time_point since) {
    auto on_event = [&ctx, name](const lima::ha_event& e) {
        if (e.exiting) ctx.emit(events::vm_state(name, "exiting"));
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
        co_await lima::follow_events(ha_log, on_event, stop.get(), since);
    } catch (const interrupted_error&) {
        // stopped: the VM went away or watch is ending
    }
}

awaitable<void> sleep_for(asio::steady_timer& timer, std::chrono::milliseconds d) {
    timer.expires_after(d);
    co_await timer.async_wait(asio::use_awaitable);
}

awaitable<void> until_cancelled(cancel_signal& cancel) { co_await cancel.wait_above(cancel_signal::none); }

// How often `limactl list` is polled; a debugging and testing knob.
std::string poll_ms_setting() {
    const std::string v = paths::env("MACHINE_WATCH_POLL_MS");
    return v.empty() ? "2000" : v;
}

} // namespace

awaitable<int> cmd_watch(context& ctx, std::vector<std::string> names) {
    using namespace asio::experimental::awaitable_operators;
    for (const auto& n : names) text::require_valid_project_name(n);
    auto& lima = ctx.lima();
    auto ex = co_await asio::this_coro::executor;
    task_group followers(ex);
    std::map<std::string, watched_vm> vms;
    asio::steady_timer tick(ex);
    std::string last_error;
    const auto poll = std::chrono::milliseconds(std::max(100, std::atoi(poll_ms_setting().c_str())));

    // A VM that appears between two polls may have logged events before we saw it: follow it
    // from the previous poll on. VMs there from the start are followed from now.
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
                it = vms.erase(it);
            }
            for (const auto& [name, inst] : current) {
                const std::string status = lowercase(inst->status_text.empty() ? std::string(lima::to_string(inst->state)) : inst->status_text);
                auto known = vms.find(name);
                if (known == vms.end()) {
                    watched_vm vm{status, std::make_shared<cancel_signal>(ex)};
                    ctx.emit(events::vm_state(name, status, "watching"));
                    auto follow = [&ctx, name, log = fs::path(inst->dir) / "ha.stdout.log", stop = vm.stop,
                                   follow_since]() { return follow_vm(ctx, name, log, stop, follow_since); };
                    followers.spawn(std::move(follow));
                    vms.emplace(name, std::move(vm));
                } else if (known->second.status != status) {
                    known->second.status = status;
                    ctx.emit(events::vm_state(name, status));
                }
            }
        }
        if (listed) {
            previous_poll = this_poll;
            first_poll = false;
        }
        co_await (sleep_for(tick, poll) || until_cancelled(ctx.cancel));
    }
    for (auto& [name, vm] : vms) vm.stop->trigger(cancel_signal::graceful);
    co_await followers.join();
    throw interrupted_error();
}

} // namespace machine::cli
