// The cached base: a stopped VM that has applied the bake profiles once, which new projects
// start from as copy-on-write clones (`limactl clone`), each with its own identity.
//
// A base is keyed by a hash of everything that shaped its disk: the rendered template (image,
// CA certificates, resources) and the hash of every step it applied. Its instance is named
// `machine-base-<first 12 hex>`; `<state dir>/machine-base-<...>/baked` marks it complete.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "bake.hpp"
#include "lifecycle.hpp"
#include "machine/paths.hpp"
#include "machine/render.hpp"
#include "machine/sha256.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "provisioning.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;

namespace {

constexpr std::string_view base_prefix = "machine-base-";

// The project a base is made as: no repos, no host mounts or agent, no ports; the host's CAs
// (the npm registry is reached through them); small, since clones grow their disk.
config::project base_project(const up_target& t) {
    config::project p;
    p.name = "machine-base";  // replaced by the keyed name; the key cannot depend on it
    p.cpus = std::clamp(t.project.cpus, 1, 4);
    p.memory = "4GiB";
    p.disk = base_disk;
    p.arch = t.project.arch;  // a clone keeps its base's arch: an aarch64 project needs an aarch64 base
    p.forward_agent = false;
    p.ports.mode = config::port_forwarding::policy::none;
    p.ca_certs = {"host"};
    return p;
}

std::string base_key(const up_target& t, const render::host_facts& host) {
    sha256 h;
    h.update(render::lima_yaml(base_project(t), host));
    for (const auto& s : t.base.steps) h.update("\n" + s.hash);
    return h.hex_digest();
}

std::string profile_list(const std::vector<std::string>& profiles) {
    std::string out;
    for (const auto& p : profiles) out += (out.empty() ? "" : ", ") + p;
    return out;
}

// The journal of the base's agent would become every clone's history (and its journal id): the
// base leaves without one, and each clone's agent starts its own.
awaitable<void> forget_journal(std::shared_ptr<ssh::session> session) {
    const std::string command = "sudo -n sh -c " +
                                text::shell_quote("systemctl stop machine-agent && rm -f /var/lib/machine-agent/journal.jsonl");
    const auto r = co_await session->run(command);
    if (r.exit_code != 0) throw error("could not clear the base's agent journal: " + r.err.substr(0, 512));
}

// Older bases of the same profiles are stale once a new one is complete.
awaitable<void> prune_stale_bases(context& ctx, const std::string& keep, const std::vector<std::string>& profiles) {
    for (const auto& inst : co_await ctx.lima.list()) {
        if (inst.name == keep || inst.name.rfind(base_prefix, 0) != 0) continue;
        const fs::path marker = project_state_dir(inst.name) / "baked";
        std::error_code ec;
        if (fs::exists(marker, ec)) {
            const auto doc = nlohmann::json::parse(paths::read_file(marker), nullptr, false);
            if (!doc.is_object() || doc.value("profiles", std::vector<std::string>{}) != profiles) continue;
        }
        ctx.say(inst.name, "removing stale base");
        co_await ctx.lima.remove(inst.name, true);
        co_await stop_egress_proxy(inst.name);
        fs::remove_all(project_state_dir(inst.name), ec);
    }
}

// A bake that failed or was interrupted after the base VM was created: the VM (QEMU, Lima's host
// agent), its egress proxy and its state go, so nothing half-provisioned keeps running or is
// mistaken for a base; the next `up` bakes again. Not cancellable: it is the cleanup of a cancel.
awaitable<void> discard_half_baked(context& ctx, std::string name) {
    const auto cleanup = ctx.lima.fork(nullptr, ctx.timeouts);
    try {
        co_await cleanup->remove(name, true);
        ctx.say(name, "removed the unfinished cached base; the next up bakes it again");
    } catch (const error& e) {
        ctx.emit(events::error(name, std::string("could not remove the unfinished cached base: ") + e.what(),
                               e.diagnostics()));
    }
    co_await stop_egress_proxy(name);
    std::error_code ec;
    fs::remove_all(project_state_dir(name), ec);
}

} // namespace

std::string base_name(const up_target& t) {
    return std::string(base_prefix) + base_key(t, render::detect_host()).substr(0, 12);
}

awaitable<std::string> ensure_base(context& ctx, const up_target& t, bool force, cancel_signal* cancel) {
    const render::host_facts host = render::detect_host();
    const config::project proto = base_project(t);
    const std::string key = base_key(t, host);
    const std::string name = std::string(base_prefix) + key.substr(0, 12);
    const auto lock = co_await lock_project(ctx, name, cancel);
    const fs::path marker = project_state_dir(name) / "baked";
    const auto driver = ctx.lima.fork(cancel, ctx.timeouts);
    lima::driver& lima = *driver;
    auto existing = co_await lima.find(name);
    std::error_code ec;
    if (!force && existing && fs::exists(marker, ec)) co_return name;

    const std::string profiles = profile_list(t.base.profiles);
    ctx.say(t.project.name, (force ? "rebuilding the cached base (" : "no fresh cached base for ") + profiles +
                                (force ? ")" : ": baking it first (once per template or profile change)"));
    fs::remove(marker, ec);
    if (existing) co_await lima.remove(name, true);
    fs::remove_all(project_state_dir(name), ec);

    config::project p = proto;
    p.name = name;
    // The base fetches what its profiles install: the open internet (a base is shared by every
    // project; each clone gets its own project's policy), never the host.
    const std::optional<fs::path> egress = co_await prepare_network(ctx, name, net::policy{});
    const fs::path tmpl = project_state_dir(name) / "lima.yaml";
    paths::write_file_atomic(tmpl, render::lima_yaml(p, host, egress.value_or(fs::path())), 0600);
    const auto t0 = std::chrono::steady_clock::now();
    ctx.emit(events::step_started(name, "create"));
    expect_new_vm_key(name);  // the throwaway VM's key is pinned at its first connection
    const std::vector<std::string> no_sets;
    co_await lima.create(name, tmpl, no_sets, lima_log_to_events(ctx, name));
    ctx.emit(events::step_finished(name, "create", true, since(t0)));
    existing = co_await lima.find(name);
    if (!existing) throw error("limactl create succeeded but instance '" + name + "' is not listed");
    std::exception_ptr failure;
    try {
        const fs::path no_template;
        co_await boot_instance(ctx, lima, name, fs::path(existing->dir) / "ha.stdout.log", cancel, no_template);
        reached_guest guest = co_await open_guest(ctx, name, *existing, cancel);
        co_await wait_until_ready(ctx, name, guest.link);
        co_await apply_plan(ctx, name, guest.link, *guest.agent, t.base, cancel);
        guest.agent.reset();
        // A VM just created has no master: the link is a session of machine's own.
        if (!guest.link.session()) throw error("the base VM '" + name + "' was reached without an SSH session of its own");
        co_await forget_journal(guest.link.session());
        guest.link.close();
    } catch (...) {
        failure = std::current_exception();  // cleaned up below: no co_await in a handler
    }
    if (failure) {
        co_await discard_half_baked(ctx, name);
        std::rethrow_exception(failure);
    }
    co_await lima.stop(name, false);
    co_await stop_egress_proxy(name);
    nlohmann::json doc{{"key", key}, {"profiles", t.base.profiles}, {"baked_at", events::format_timestamp(std::chrono::system_clock::now())}};
    paths::write_file_atomic(marker, doc.dump() + "\n", 0600);
    ctx.emit(events::step_finished(name, "bake", true, since(t0), "base " + key.substr(0, 12) + " for " + profiles));
    co_await prune_stale_bases(ctx, name, t.base.profiles);
    co_return name;
}

awaitable<void> bake(context& ctx, const up_target& t, bool force) {
    const std::string& name = t.project.name;
    if (t.base.steps.empty()) {
        ctx.say(name, "nothing to bake: none of its profiles goes into a cached base");
        co_return;
    }
    const std::string base = co_await ensure_base(ctx, t, force, &ctx.cancel);
    ctx.say(name, "cached base " + base + " is fresh (" + profile_list(t.base.profiles) + ")" +
                      (force ? "" : "; use --force to rebuild it"));
}

} // namespace machine::vm
