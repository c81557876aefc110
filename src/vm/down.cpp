// Stopping and deleting a project's VM.
#include <filesystem>

#include "machine/async.hpp"
#include "machine/vm.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;

awaitable<void> down(context& ctx, const std::string& name) {
    auto& lima = ctx.lima;
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    const auto existing = co_await lima.find(name);
    if (!existing) throw error("VM '" + name + "' does not exist");
    if (existing->state == lima::status::stopped) {
        co_await stop_egress_proxy(name);
        ctx.emit(events::vm_state(name, "stopped", "already stopped; nothing to do"));
        co_return;
    }
    // A paused guest would not hear the power button: continue it, then stop it.
    if (existing->state == lima::status::running && runs_on_qemu(*existing)) co_await resume_if_paused(ctx, lima, name);
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "stop"));
    // A broken VM (one of its processes gone) cannot stop gracefully: force it.
    co_await stop_ssh_master(name);
    co_await lima.stop(name, existing->state != lima::status::running);
    co_await stop_egress_proxy(name);
    ctx.emit(events::step_finished(name, "stop", true, since(t0)));
    ctx.emit(events::vm_state(name, "stopped"));
}

awaitable<void> destroy(context& ctx, const std::string& name, std::function<bool()> confirm) {
    auto& lima = ctx.lima;
    const auto existing = co_await lima.find(name);
    if (!existing) {
        std::error_code ec;
        fs::remove_all(project_state_dir(name), ec);
        ctx.emit(events::vm_state(name, "deleted", "does not exist; nothing to destroy"));
        co_return;
    }
    if (!confirm()) throw error("aborted; VM '" + name + "' was not destroyed");
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "delete"));
    if (existing->is_protected) throw error("VM '" + name + "' is protected (limactl unprotect " + name + ")");
    co_await stop_ssh_master(name);
    co_await lima.remove(name, true);  // -f stops it first, whatever its state
    co_await stop_egress_proxy(name);
    std::error_code ec;
    fs::remove_all(project_state_dir(name), ec);
    ctx.emit(events::step_finished(name, "delete", true, since(t0)));
    ctx.emit(events::vm_state(name, "deleted"));
}

} // namespace machine::vm
