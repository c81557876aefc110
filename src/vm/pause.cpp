// Pause and resume (QEMU's monitor, through lima::driver), and snapshots (`limactl snapshot`).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <fstream>

#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/sha256.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"
#include "lifecycle.hpp"

namespace machine::vm {

using asio::awaitable;
using namespace std::chrono_literals;

namespace {

std::string seconds_text(std::chrono::milliseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f s", static_cast<double>(d.count()) / 1000.0);
    return buf;
}

// The VM, running under QEMU; otherwise a clear error for `what` ("pause", "resume").
awaitable<lima::instance> running_qemu_vm(context& ctx, const std::string& name, const std::string& what) {
    auto inst = co_await ctx.lima.find(name);
    if (!inst) throw error("VM '" + name + "' does not exist (run 'machine up " + name + "')");
    if (!runs_on_qemu(*inst))
        throw error("VM '" + name + "' runs on Lima's " + text::escape_for_terminal(inst->vm_type) +
                    " driver, which cannot " + what + " (only QEMU VMs can)");
    if (inst->state != lima::status::running)
        throw error("VM '" + name + "' is not running (" + std::string(lima::to_string(inst->state)) + "): nothing to " +
                    what);
    co_return std::move(*inst);
}

// Until the VM's guest agent answers (through machine's master for the VM: a pause keeps its
// TCP connection, and it needs no handshake; else over a connection checked against the pin);
// then the guest's clock is set from the host's (it stood still while the VM was paused or saved).
awaitable<void> wait_for_agent(context& ctx, const lima::instance& inst) {
    const std::string& name = inst.name;
    auto conn = co_await connect_to_agent(ctx, name, inst, 20s);
    co_await sync_guest_clock(ctx, *conn, name);
}

// HMP's errors arrive as limactl warnings "output: ..." with exit status 0.
std::string hmp_failure(const std::vector<std::string>& warnings) {
    for (const auto& w : warnings)
        if (w.rfind("output:", 0) == 0) return text::escape_for_terminal(text::trim(w.substr(7)));
    return {};
}

std::string tags_text(const std::vector<std::string>& tags) {
    if (tags.empty()) return "it has none";
    std::string out = "it has: ";
    for (std::size_t i = 0; i < tags.size(); ++i) out += (i ? ", " : "") + text::escape_for_terminal(tags[i]);
    return out;
}

void require_tag(const std::string& tag) {
    if (!is_valid_snapshot_tag(tag))
        throw usage_error("snapshot tag '" + text::escape_for_terminal(tag) +
                          "' is not valid: letters, digits, '.', '_' and '-', starting with a letter or digit, at most "
                          "64 characters, not only digits");
}

awaitable<lima::instance> existing_vm(context& ctx, const std::string& name) {
    auto inst = co_await ctx.lima.find(name);
    if (!inst) throw error("VM '" + name + "' does not exist (run 'machine up " + name + "')");
    co_return std::move(*inst);
}

// The VM whose disk `what` ("snapshot", "restore") works on: it exists and is not broken.
awaitable<lima::instance> vm_with_disk(context& ctx, const std::string& name, const std::string& what) {
    lima::instance inst = co_await existing_vm(ctx, name);
    if (inst.state == lima::status::broken)
        throw error("VM '" + name + "' is broken: 'machine down " + name + "' first, then " + what + " its disk");
    co_return inst;
}

// Secrets never reach a disk: the tmpfs is memory, which hibernation writes to the host's disk
// and a running VM's snapshot into its disk image. They are cleared (zero-filled) first; `up`
// (secrets_on_up), `restore` or `machine secrets` renders them again. A VM whose agent cannot
// be asked is not saved.
awaitable<void> clear_secrets_before_saving(context& ctx, const std::string& name, const std::string& what) {
    if (!ctx.agent) co_return;
    config::project p;
    p.name = name;
    std::vector<std::string> cleared;
    try {
        cleared = co_await clear_secrets(ctx, p, std::nullopt);
    } catch (const interrupted_error&) {
        throw;
    } catch (const error& e) {
        throw error("VM '" + name + "': its secrets could not be cleared before its memory is saved (" + e.what() +
                    "); no " + what + " was made");
    }
    if (!cleared.empty())
        ctx.say(name, "cleared " + std::to_string(cleared.size()) + " secret set(s) from the VM's memory before the " +
                          what + " (saved memory must not hold them); 'machine secrets " + name +
                          "' renders them again");
}

// machine's record of a hibernation, `<state>/<name>/hibernate.digest`: the digest of the
// instance's lima.yaml when it was saved, then the guest's boot as its agent said it.
std::filesystem::path hibernation_record_file(const std::string& name) {
    return project_state_dir(name) / "hibernate.digest";
}

struct hibernation_record {
    std::string digest, boot;  // "" when missing
};

hibernation_record read_hibernation_record(const std::string& name) {
    hibernation_record r;
    std::ifstream in(hibernation_record_file(name));
    std::getline(in, r.digest);
    std::getline(in, r.boot);
    return r;
}

// The boot the VM is in, as its agent says it; "" without an agent or when it cannot be asked
// (only a record: a hibernation does not need it).
awaitable<std::string> boot_of(context& ctx, const lima::instance& inst) {
    if (!ctx.agent) co_return std::string();
    try {
        auto conn = co_await connect_to_agent(ctx, inst.name, inst, 10s);
        const protocol::hello_result hello = co_await conn->hello("machine " MACHINE_VERSION);
        if (protocol::is_boot_id(hello.boot_id)) co_return hello.boot_id;
    } catch (const interrupted_error&) {
        throw;
    } catch (const error& e) {
        spdlog::debug("vm={} its boot is unknown: {}", inst.name, e.what());
    }
    co_return std::string();
}

} // namespace

awaitable<void> sync_guest_clock(context& ctx, guest::connection& agent, const std::string& name) {
    const double host = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    char stamp[64];
    std::snprintf(stamp, sizeof stamp, "@%.3f", host);
    protocol::run_request request;
    // A constant script; the time is its argument.
    request.argv = {"sh", "-c", "date +%s; date -u -s \"$1\" >/dev/null", "sh", stamp};
    request.user = "root";
    std::string out;
    auto on_output = [&out](const protocol::output_chunk& c) {
        if (c.stream == "stdout" && out.size() < 256) out += c.data.substr(0, 256);
    };
    const protocol::run_result r = co_await agent.run(request, on_output, 30s);
    if (!r.exit_code || *r.exit_code != 0) {
        ctx.emit(events::message(name, "warning", "the VM's clock could not be set from this computer's"));
        co_return;
    }
    const double guest = std::strtod(out.c_str(), nullptr);
    if (guest > 0 && std::abs(host - guest) >= 2)
        ctx.say(name, "the VM's clock was " + std::to_string(static_cast<long long>(host - guest)) +
                          " s behind; set from this computer's");
}

bool cpus_stopped(std::string_view qemu_state) { return qemu_state == "paused" || qemu_state == "restore-vm"; }

bool runs_on_qemu(const lima::instance& inst) { return inst.vm_type.empty() || inst.vm_type == "qemu"; }

awaitable<std::string> shown_status(context& ctx, const lima::instance& inst) {
    std::string status = inst.status_text.empty() ? std::string(lima::to_string(inst.state)) : inst.status_text;
    if (inst.state == lima::status::stopped && hibernated_bytes(inst) > 0) co_return std::string("Hibernated");
    if (inst.state != lima::status::running || !runs_on_qemu(inst)) co_return status;
    try {
        const std::string qemu = co_await ctx.lima.run_state(inst.name);
        if (cpus_stopped(qemu)) co_return std::string("Paused");
    } catch (const error&) {
        // No monitor to ask (another client holds it, or this Lima keeps none): Lima's word.
    }
    co_return status;
}

awaitable<void> pause(context& ctx, const std::string& name) {
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    const lima::instance inst = co_await running_qemu_vm(ctx, name, "pause");
    const std::string state = co_await ctx.lima.run_state(name);
    if (cpus_stopped(state)) {
        ctx.emit(events::vm_state(name, "paused", "already paused; nothing to do"));
        co_return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    co_await ctx.lima.pause(name);
    ctx.emit(events::vm_state(name, "paused", "in " + seconds_text(since(t0)) + "; 'machine resume " + name +
                                                  "' continues it"));
}

awaitable<void> resume(context& ctx, const std::string& name) {
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    const lima::instance inst = co_await running_qemu_vm(ctx, name, "resume");
    const std::string state = co_await ctx.lima.run_state(name);
    if (!cpus_stopped(state)) {
        ctx.emit(events::vm_state(name, "running", "not paused (" + text::escape_for_terminal(state) + "); nothing to do"));
        co_return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "resume"));
    co_await ctx.lima.resume(name);
    if (ctx.agent) co_await wait_for_agent(ctx, inst);
    ctx.emit(events::step_finished(name, "resume", true, since(t0), ctx.agent ? "agent answers" : ""));
    ctx.emit(events::vm_state(name, "running", "resumed in " + seconds_text(since(t0))));
}

awaitable<void> resume_if_paused(context& ctx, lima::driver& lima, const std::string& name) {
    std::string state;
    try {
        state = co_await lima.run_state(name);
    } catch (const error& e) {
        spdlog::debug("vm={} QEMU's run state unknown: {}", name, e.what());
        co_return;
    }
    if (!cpus_stopped(state)) co_return;
    co_await lima.resume(name);
    ctx.emit(events::message(name, "info", "the VM was paused; resumed it"));
}

std::int64_t hibernated_bytes(const lima::instance& inst) {
    if (inst.dir.empty()) return 0;
    std::error_code ec;
    const auto size = std::filesystem::file_size(lima::hibernate_state(inst.dir), ec);
    return ec ? 0 : static_cast<std::int64_t>(size);
}

awaitable<void> hibernate(context& ctx, const std::string& name) {
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    auto inst = co_await ctx.lima.find(name);
    if (!inst) throw error("VM '" + name + "' does not exist");
    if (inst->state != lima::status::running)
        throw error("VM '" + name + "' is not running (" + std::string(lima::to_string(inst->state)) +
                    "): nothing to hibernate");
    const bool able = runs_on_qemu(*inst) && co_await ctx.lima.can_hibernate();
    if (!able) {
        ctx.emit(events::message(name, "warning",
                                 runs_on_qemu(*inst)
                                     ? "this Lima cannot hibernate a VM (only machine's Lima stand-in can): stopping it instead"
                                     : "Lima's " + text::escape_for_terminal(inst->vm_type) +
                                           " driver cannot hibernate a VM: stopping it instead"));
        const auto t0 = std::chrono::steady_clock::now();
        ctx.emit(events::step_started(name, "stop"));
        co_await resume_if_paused(ctx, ctx.lima, name);
        co_await ctx.lima.stop(name, false);
        co_await stop_egress_proxy(name);
        ctx.emit(events::step_finished(name, "stop", true, since(t0)));
        ctx.emit(events::vm_state(name, "stopped"));
        co_return;
    }
    co_await resume_if_paused(ctx, ctx.lima, name);  // its agent must answer
    co_await clear_secrets_before_saving(ctx, name, "hibernation");
    const std::string boot = co_await boot_of(ctx, *inst);
    // What QEMU will be started with again: resuming needs the same.
    const std::filesystem::path yaml = std::filesystem::path(inst->dir) / "lima.yaml";
    const std::string digest = sha256::hex_of_file(yaml);
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "hibernate"));
    co_await ctx.lima.hibernate(name);
    paths::write_file_atomic(hibernation_record_file(name), digest + "\n" + boot + "\n", 0600);
    co_await stop_egress_proxy(name);
    const std::int64_t bytes = hibernated_bytes(*inst);
    char detail[160];
    std::snprintf(detail, sizeof detail, "%.1f MiB saved (memory %.1f MiB)", static_cast<double>(bytes) / (1 << 20),
                  static_cast<double>(inst->memory_bytes) / (1 << 20));
    ctx.emit(events::step_finished(name, "hibernate", true, since(t0), detail));
    ctx.emit(events::vm_state(name, "hibernated", "'machine up " + name + "' resumes it"));
}

std::string hibernation_obstacle(const std::string& name, const std::filesystem::path& instance_dir) {
    const std::string recorded = read_hibernation_record(name).digest;
    if (recorded.empty()) return "machine has no record of what it was saved with";
    std::string now;
    try {
        now = sha256::hex_of_file(instance_dir / "lima.yaml");
    } catch (const error& e) {
        return e.what();
    }
    if (now != recorded) return "its lima.yaml changed since it was hibernated";
    return {};
}

std::string hibernated_boot(const std::string& name) {
    std::string boot = read_hibernation_record(name).boot;
    return protocol::is_boot_id(boot) ? boot : std::string();
}

void forget_hibernation(const std::string& name, const std::filesystem::path& instance_dir) {
    lima::discard_hibernate_state(instance_dir);
    std::error_code ec;
    std::filesystem::remove(hibernation_record_file(name), ec);
}

bool is_valid_snapshot_tag(std::string_view tag) {
    if (tag.empty() || tag.size() > 64 || !std::isalnum(static_cast<unsigned char>(tag.front()))) return false;
    bool digits_only = true;
    for (const char c : tag) {
        const auto u = static_cast<unsigned char>(c);
        if (!std::isalnum(u) && c != '.' && c != '_' && c != '-') return false;
        digits_only &= std::isdigit(u) != 0;
    }
    return !digits_only;
}

std::string default_snapshot_tag(std::chrono::system_clock::time_point now) {
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "snap-%Y%m%d-%H%M%S", &tm);
    return buf;
}

awaitable<void> snapshot_create(context& ctx, const std::string& name, const std::string& tag) {
    require_tag(tag);
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    const lima::instance inst = co_await vm_with_disk(ctx, name, "snapshot");
    const auto tags = co_await ctx.lima.snapshots(name);
    if (std::find(tags.begin(), tags.end(), tag) != tags.end())
        throw error("VM '" + name + "' already has a snapshot '" + tag + "' (machine snapshot --delete " + name + " " +
                    tag + " first)");
    const bool running = inst.state == lima::status::running;
    if (running) {
        co_await resume_if_paused(ctx, ctx.lima, name);  // its agent must answer
        co_await clear_secrets_before_saving(ctx, name, "snapshot");
    }
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "snapshot"));
    const auto warnings = co_await ctx.lima.snapshot("create", name, tag);
    const std::string failure = hmp_failure(warnings);
    const auto after = co_await ctx.lima.snapshots(name);
    if (!failure.empty() || std::find(after.begin(), after.end(), tag) == after.end()) {
        ctx.emit(events::step_finished(name, "snapshot", false, since(t0)));
        throw error("VM '" + name + "': snapshot '" + tag + "' was not taken" +
                    (failure.empty() ? std::string() : ": " + failure));
    }
    ctx.emit(events::step_finished(name, "snapshot", true, since(t0),
                                   "'" + tag + "' (" + (running ? "disk and memory" : "disk") + ")"));
}

awaitable<std::vector<std::string>> snapshot_list(context& ctx, const std::string& name) {
    (void)co_await existing_vm(ctx, name);
    co_return co_await ctx.lima.snapshots(name);
}

awaitable<void> snapshot_delete(context& ctx, const std::string& name, const std::string& tag) {
    require_tag(tag);
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    (void)co_await existing_vm(ctx, name);
    const auto tags = co_await ctx.lima.snapshots(name);
    if (std::find(tags.begin(), tags.end(), tag) == tags.end())
        throw error("VM '" + name + "' has no snapshot '" + tag + "' (" + tags_text(tags) + ")");
    const auto t0 = std::chrono::steady_clock::now();
    const auto warnings = co_await ctx.lima.snapshot("delete", name, tag);
    if (const std::string failure = hmp_failure(warnings); !failure.empty())
        throw error("VM '" + name + "': snapshot '" + tag + "' was not deleted: " + failure);
    ctx.emit(events::message(name, "info", "snapshot '" + tag + "' deleted in " + seconds_text(since(t0))));
}

awaitable<void> restore(context& ctx, const std::string& name, const std::string& tag, const config::project* project) {
    require_tag(tag);
    const auto lock = co_await lock_project(ctx, name, &ctx.cancel);
    const lima::instance inst = co_await vm_with_disk(ctx, name, "restore");
    const auto tags = co_await ctx.lima.snapshots(name);
    if (std::find(tags.begin(), tags.end(), tag) == tags.end())
        throw error("VM '" + name + "' has no snapshot '" + tag + "' (" + tags_text(tags) + "); nothing was changed");
    const bool running = inst.state == lima::status::running;
    if (!running && hibernated_bytes(inst) > 0) {
        // Its saved memory belongs to the disk as it is now, not as it will be.
        forget_hibernation(name, inst.dir);
        ctx.emit(events::message(name, "warning", "the VM's hibernated state is dropped: it belongs to the disk "
                                                  "being replaced (the next up boots the restored disk)"));
    }
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "restore"));
    const auto warnings = co_await ctx.lima.snapshot("apply", name, tag);
    if (const std::string failure = hmp_failure(warnings); !failure.empty()) {
        ctx.emit(events::step_finished(name, "restore", false, since(t0)));
        // QEMU stops the guest for loadvm and leaves it stopped when loading fails: it goes on
        // as it was.
        if (running) co_await resume_if_paused(ctx, ctx.lima, name);
        const bool disk_only = failure.find("disk-only") != std::string::npos;
        throw error("VM '" + name + "' was not restored to '" + tag + "': " + failure +
                    (disk_only ? " (that snapshot holds only the disk, taken while the VM was stopped: 'machine down " +
                                     name + "', then 'machine restore " + name + " " + tag + "')"
                               : std::string()));
    }
    if (!running) {
        ctx.emit(events::step_finished(name, "restore", true, since(t0), "disk"));
        ctx.emit(events::vm_state(name, "stopped", "restored to '" + tag + "'; 'machine up " + name + "' boots it"));
        co_return;
    }
    // The guest's clocks and TCP state went back with its memory: machine's SSH master is left
    // on a connection the guest no longer knows (what rode it would wait for its keepalive to
    // give up), so it goes; a new connection, then the secrets as they are now (the tmpfs holds
    // what it held when the snapshot was taken). The next up opens a master again.
    co_await stop_ssh_master(name);
    if (ctx.agent) co_await wait_for_agent(ctx, inst);
    ctx.emit(events::step_finished(name, "restore", true, since(t0), "disk and memory"));
    if (ctx.agent && project && project->secrets_on_up) {
        secrets_sync_options every_set;
        every_set.required = false;
        co_await sync_secrets(ctx, *project, every_set);
    }
    ctx.emit(events::vm_state(name, "running", "restored to '" + tag + "' in " + seconds_text(since(t0))));
}

} // namespace machine::vm
