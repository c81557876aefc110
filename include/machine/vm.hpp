// The product's workflows on a project's VM: bringing it up (created, from a cached base when its
// profiles allow, booted, its guest agent current, provisioned, its repos cloned), cached bases,
// down and destroy, project locks and host-key pins, agent forwarding, secrets planning and sync.
// Lima is reached only through lima::driver; what happens is told as events on the bus, and
// printing them is the caller's (the CLI's) business.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>

#include "machine/agent_proxy.hpp"
#include "machine/cancel.hpp"
#include "machine/config.hpp"
#include "machine/credentials.hpp"
#include "machine/events.hpp"
#include "machine/guest.hpp"
#include "machine/lima.hpp"
#include "machine/net.hpp"
#include "machine/protocol.hpp"
#include "machine/provision.hpp"
#include "machine/ssh.hpp"

namespace spdlog {
class logger;
}


namespace machine::vm {

// What every workflow gets. The caller owns what it refers to and keeps it alive.
class context {
public:
    context(cancel_signal& cancel_, events::bus& bus_, lima::driver& lima_) : cancel(cancel_), bus(bus_), lima(lima_) {}

    cancel_signal& cancel;  // the command's Ctrl-C
    events::bus& bus;
    lima::driver& lima;     // every Lima call of a workflow goes through it (or through its forks)
    lima::timeouts timeouts;  // of the drivers a workflow forks (one per VM)
    // False when MACHINE_AGENT=off (tests against a fake limactl): no guest-side work at all.
    bool agent = true;
    // The output is read by a program (--json): the guest's own provisioning events are passed on too.
    bool raw_guest_events = false;
    // The user's SSH agent, probed once per command (agent_forwarding.cpp): `up --all` with a
    // hung agent waits for it once, not once per project.
    std::optional<agent_proxy::agent_probe> agent_probe;
    // Starts a VM's egress proxy (prepare_network); unset: ensure_egress_proxy. Tests replace
    // it to see what would run without starting a process.
    std::function<asio::awaitable<void>(std::string name, net::policy rules)> egress_proxy;
    // The guest agent's relay and socket in the VM (tests point them at an agent of their own).
    std::string agent_relay = guest::agent_install_path;
    std::string agent_socket = guest::agent_socket;

    void emit(events::event e) { bus.emit(std::move(e)); }
    void say(const std::string& vm, const std::string& text) { emit(events::message(vm, "info", text)); }
};

// ---- A project's state on this computer ------------------------------------------------------

// $MACHINE_STATE_DIR/<name>: the rendered template, the host-key pin, the lock.
std::filesystem::path project_state_dir(const std::string& name);
/// True the first time it is asked for this project and `what` (a marker in its state
/// directory): for a note said once per project, not on every command.
bool first_time(const std::string& name, const std::string& what);

// One machine command at a time per project: two `up`s racing on one VM would each call
// `limactl create` or `start`. A second command waits for the first, then sees its result.
// The lock is released when the process exits, however it exits.
//
// The lock file also counts releases (its generation). A command that read the generation,
// then listed the VM, then took the lock and finds the same generation knows no machine
// command has changed the VM in between, so `up --all` can list every VM in one call.
class project_lock {
public:
    explicit project_lock(const std::string& name);
    /// Another lock of the project's, in `<state>/<name>/<file>` (ssh_target's, around opening
    /// the master, so an attach does not wait for a whole `up`).
    project_lock(const std::string& name, const std::string& file);
    ~project_lock();  // bumps the generation when this lock was held
    project_lock(const project_lock&) = delete;
    project_lock& operator=(const project_lock&) = delete;
    bool try_lock();
    std::uint64_t generation() const;
    // Without taking the lock (0 when no command has locked the project yet).
    static std::uint64_t generation_of(const std::string& name);

private:
    int fd_ = -1;
    bool held_ = false;
};

// Waits (cancellably, saying so) until no other machine command works on `name`.
asio::awaitable<std::unique_ptr<project_lock>> lock_project(context& ctx, std::string name,
                                                            cancel_signal* cancel);
// Waits (cancellably, saying so) until `lock`, one of project `name`'s, is ours.
asio::awaitable<void> wait_for_lock(context& ctx, const std::string& name, project_lock& lock, cancel_signal* cancel);

// The instance's ssh.config (as `limactl list` names it, else in its directory).
std::filesystem::path ssh_config_of(const lima::instance& inst);

// The VM, running; otherwise an error saying to run `machine up NAME`.
asio::awaitable<lima::instance> require_running(context& ctx, const std::string& name);

// The VM's host-key pin (<state>/<name>/host_key) and its OpenSSH form (known_hosts, under the
// alias `machine-<name>`), which every verified connection keeps current. `record_if_absent`
// only for the first connection after machine created the VM (new_vm_key_expected) and for
// `machine pin`; otherwise a VM without a pin is refused here with no_pin_message().
ssh::host_key_pin pin_of(const std::string& name, bool record_if_absent);

// "VM 'NAME' has no pinned host key ...; run 'machine pin NAME'".
std::string no_pin_message(const std::string& name);

// Called just before machine creates (or clones) the VM `name`: a pin of an earlier VM of that
// name is removed, and the first connection to the new one pins its key (until then
// new_vm_key_expected() is true, also for an `up` that failed before connecting).
void expect_new_vm_key(const std::string& name);
bool new_vm_key_expected(const std::string& name);
void new_vm_key_pinned(const std::string& name);

// Removes the pin and its known_hosts (`machine pin --replace`).
void forget_pin(const std::string& name);

// ---- Bring-up ----------------------------------------------------------------------------------

/// A project with its provisioning plan, decided before anything runs (so a bad profile is a
/// config error, exit 2, with nothing created).
struct up_target {
    config::project project;
    provision::plan plan;         ///< what the project's profiles do before its repos are cloned
    provision::plan after_clone;  ///< what they do once the repos are there
    provision::plan base;         ///< the part a cached base disk holds (bake profiles, in order)
    /// What the VM may reach (egress_policy_of), with where each allowed host came from.
    net::policy network;
    std::vector<net::allow_entry> allowed;
};

/// The built-in profiles plus the user's own (<config dir>/profiles/*.toml).
provision::catalog load_catalog();

/// The profiles project `p` gets, requirements first. config_error (exit 2) for an unknown
/// profile, naming where it was written.
std::vector<std::string> profiles_of(const provision::catalog& cat, const config::project& p);

/// The host's git identity and signing key, for the git-signing profile: $GIT_SIGNING_KEY, else
/// `git config --global user.signingkey` (a key, `key::` + a key, or a path to a public key).
asio::awaitable<provision::host_values> detect_host_values(std::string vm_user);

/// The values `projects`' profiles use: the VM user always, the host's git settings only when
/// one of those profiles copies them (reading them runs git).
asio::awaitable<provision::host_values> host_values_for(const provision::catalog& cat,
                                                        const std::vector<config::project>& projects);

up_target make_target(const provision::catalog& cat, provision::host_values host, config::project p);

/// The disk a base is made with; projects with a smaller disk start from the plain image.
inline constexpr const char* base_disk = "16GiB";

/// Whether a new VM for `t` is cloned from a cached base (rather than created from its template):
/// only with the guest agent (a base is baked through it), when some of its profiles go into a
/// base, and when its disk is at least the base's (a clone can grow a disk, not shrink it).
bool starts_from_base(const up_target& t, bool agent);

/// What one `limactl list` for many projects said about one of them, and the project's lock
/// generation read just before: still true if nobody has held the lock since (and it is recent).
struct prelisted {
    std::uint64_t generation = 0;
    std::chrono::steady_clock::time_point at;
    std::optional<lima::instance> instance;
};

/// Brings one VM up: created (from the cached base when its profiles allow), booted, its
/// agent current, provisioned, its repos cloned. On a running VM only what changed is
/// re-applied. Throws on failure; `cancel` interrupts it. `seen` (may be null) is what a list of
/// many VMs said before the lock was taken.
/// `started` (may be null) is set to how the VM came up: "created", "booted", "resumed" (from
/// hibernation) or "" (it was running).
asio::awaitable<void> up_one(context& ctx, up_target target, cancel_signal* cancel, const prelisted* seen,
                             std::string* started = nullptr);

/// How one VM of `up_many` ended.
struct up_outcome {
    std::string state = "cancelled";  ///< ready | failed | cancelled
    std::string message;
    std::string started;  ///< created | booted | resumed | "" (was running): see up_one
    std::chrono::milliseconds took{0};
};

/// Brings several VMs up, at most `parallel` at once, hibernated ones first (after a host
/// reboot they come back in seconds); with `fail_fast` the first failure cancels the rest. Ctrl-C (ctx.cancel) reaches every VM. One outcome per target, in order.
asio::awaitable<std::vector<up_outcome>> up_many(context& ctx, std::vector<up_target> targets, int parallel,
                                                 bool fail_fast);

/// How many VMs may boot at once: as many as fit their configured memory into the host's
/// available memory (at least one).
int default_parallelism(const std::vector<config::project>& projects);

/// The name of a fresh cached base for `t` (a stopped instance holding t.base), baking it
/// first when there is none or `force` is set.
asio::awaitable<std::string> ensure_base(context& ctx, const up_target& t, bool force, cancel_signal* cancel);

/// `machine bake`: ensure_base for the project's bake profiles, saying what it found or did.
asio::awaitable<void> bake(context& ctx, const up_target& t, bool force);

/// Stops the VM (forcibly when it is broken); "already stopped" when it is.
asio::awaitable<void> down(context& ctx, const std::string& name);

/// Deletes the VM and its state; `confirm` is asked (once the VM is known to exist) whether to go
/// on; false aborts with an error.
asio::awaitable<void> destroy(context& ctx, const std::string& name, std::function<bool()> confirm);

// ---- Pause, resume, snapshots ------------------------------------------------------------------
// Lima has no pause: machine asks the VM's QEMU over its monitor (lima::driver::pause/resume,
// QMP stop/cont). Snapshots are Lima's (`limactl snapshot`): a running VM's hold its memory
// too (HMP savevm), a stopped VM's only its disk (qemu-img).

/// Whether QEMU's run state (query-status) has the guest's CPUs stopped by someone: "paused"
/// (QMP stop) or "restore-vm" (a loadvm that failed leaves the guest so).
bool cpus_stopped(std::string_view qemu_state);

/// Whether Lima runs `inst` under QEMU (vmType qemu, or not listed): only QEMU can pause.
bool runs_on_qemu(const lima::instance& inst);

/// The status `list` and `watch` show: Lima's ("Running", "Stopped", ...), "Hibernated" for a
/// stopped VM with a saved state, or "Paused" for a running QEMU VM whose monitor says so. One QMP query per running VM (a local socket, a
/// few milliseconds; bounded at 3 s); when the monitor cannot be asked, Lima's status.
asio::awaitable<std::string> shown_status(context& ctx, const lima::instance& inst);

/// Stops the VM's vCPUs: its memory stays, SSH connections and tmux sessions wait (until TCP
/// gives up on them: keep pauses short). "already paused" when it is. A VM that is not
/// running, or not under QEMU (vz), is a clear error.
asio::awaitable<void> pause(context& ctx, const std::string& name);

/// Continues a paused VM and, with the guest agent, returns once the agent answers again
/// (through machine's master for the VM, whose connection a short pause keeps; else over a new
/// SSH connection checked against the pin). "not paused" when it runs.
asio::awaitable<void> resume(context& ctx, const std::string& name);

/// For `up` and `down` of a running VM: continues it when its QEMU is paused, saying so. A
/// monitor that cannot be asked is taken as running.
asio::awaitable<void> resume_if_paused(context& ctx, lima::driver& lima, const std::string& name);

/// `machine down --hibernate`: the running (or paused) VM's state saved to disk and the VM
/// stopped, freeing its memory and CPU; the next `up` resumes it, its processes and sessions as
/// they were. Only the stand-in can (`limactl info`: machineHibernate); with another Lima, or a
/// VM not under QEMU, it says so and stops the VM normally. The digest of the instance's
/// lima.yaml (what QEMU runs it with) is recorded: an `up` after it changed boots cold, saying why.
/// So is the guest's boot, as its agent says it: an `up` whose resumed guest is in another boot
/// (it crashed and restarted right after resuming) says that its processes did not survive.
asio::awaitable<void> hibernate(context& ctx, const std::string& name);

/// The size of VM `inst`'s saved state (0: not hibernated).
std::int64_t hibernated_bytes(const lima::instance& inst);
/// Why VM `name`'s saved state must not be resumed ("" when it may): no record of what it was
/// saved with, or the instance's lima.yaml changed since.
std::string hibernation_obstacle(const std::string& name, const std::filesystem::path& instance_dir);
/// The boot VM `name` was hibernated in, as its agent said it ("" when unknown).
std::string hibernated_boot(const std::string& name);
/// Drops VM `name`'s saved state and machine's record of it.
void forget_hibernation(const std::string& name, const std::filesystem::path& instance_dir);

/// A tag machine accepts: [A-Za-z0-9][A-Za-z0-9._-]*, at most 64 characters, not only digits
/// (QEMU would take digits for a snapshot's numeric ID).
bool is_valid_snapshot_tag(std::string_view tag);
/// "snap-20261206-153000" (UTC): the tag of `machine snapshot NAME` without one.
std::string default_snapshot_tag(std::chrono::system_clock::time_point now);

/// Takes snapshot `tag` of the VM (running: disk and memory; stopped: disk). An existing tag is
/// refused (delete it first): a snapshot is never replaced silently.
asio::awaitable<void> snapshot_create(context& ctx, const std::string& name, const std::string& tag);
/// The VM's snapshot tags.
asio::awaitable<std::vector<std::string>> snapshot_list(context& ctx, const std::string& name);
/// Deletes snapshot `tag`; an unknown tag is an error naming the VM's tags.
asio::awaitable<void> snapshot_delete(context& ctx, const std::string& name, const std::string& tag);

/// Brings the VM back to snapshot `tag`: a running VM to its disk and memory (then waits for its
/// agent, and renders the project's secrets again when `project` has secrets_on_up: the tmpfs
/// came back as it was then), a stopped VM to its disk (the next `up` boots it). It stays the
/// same machine: its host key pin and its agent's journal are its own. An unknown tag, or a
/// disk-only snapshot on a running VM (QEMU can only load those offline), is a clear error that
/// changes nothing.
asio::awaitable<void> restore(context& ctx, const std::string& name, const std::string& tag,
                              const config::project* project);

// ---- The VM's network ---------------------------------------------------------------------------

/// Who adds hosts to a project's allowlist, besides the project itself.
inline constexpr const char* provisioning_origin = "machine's provisioning";

/// The hosts machine itself makes the VM fetch from during `up`: each repo's host (the clone
/// runs in the VM) and the npm registry (a fresh clone's dependencies). Repos on a local path
/// or an IP address add nothing.
std::vector<std::string> provisioning_hosts(const config::project& p);

/// The host a git URL fetches from ("git@github.com:a/b" -> "github.com"); "" for a local path.
std::string repo_host(std::string_view url);

/// The policy project `p` gets with its (resolved) profiles: the open internet without
/// `egress`; with it, the project's entries, then each profile's `egress`, then
/// provisioning_hosts(p), each pattern once (its first origin kept). host_ports as written.
/// Throws config_error for a profile declaring a bad host.
net::policy egress_policy_of(const config::project& p, const provision::catalog& cat,
                             const std::vector<std::string>& profiles, std::vector<net::allow_entry>* allowed);

/// One line for `up`: "egress: 3 hosts from projects.toml, 2 from profiles (node, agents), 2 for
/// machine's provisioning (github.com, registry.npmjs.org)"; "" for the open internet.
std::string describe_egress(const net::policy& rules, const std::vector<net::allow_entry>& allowed);

/// `<state>/net/<name>.sock` (hashed when the path would not fit a Unix socket address).
std::filesystem::path egress_socket(const std::string& name);

/// `<state>/<name>/net.jsonl`: the VM's audit log, written by its proxy (rotated to net.jsonl.1).
std::filesystem::path audit_log_of(const std::string& name);

/// `machine net-proxy ...` for VM `name` (Lima directory `vm_dir`) with `rules`, the
/// executable first.
std::vector<std::string> net_proxy_argv(const std::filesystem::path& exe, const std::string& name,
                                        const std::filesystem::path& vm_dir, const net::policy& rules);

/// What is known about a VM's egress proxy, from its pidfile and fingerprint file.
struct proxy_seen {
    bool running = false;      ///< the recorded pid is a live `machine net-proxy --vm NAME`
    bool accepts = false;      ///< its socket accepts a connection
    std::string fingerprint;   ///< of the argv it was started with ("" when none recorded)
};
enum class proxy_action { keep, start, replace };
/// Keep a running proxy with the wanted fingerprint that accepts; replace one that runs with
/// another policy (or has stopped accepting); start one when none runs. Pure.
proxy_action decide_proxy(const proxy_seen& seen, const std::string& wanted_fingerprint);

/// Whether a command line (NUL-separated, as /proc/<pid>/cmdline) is `EXE net-proxy ... --vm
/// NAME ...`, and whether process `pid` runs one: only such a process is ever signalled.
bool is_net_proxy_cmdline(std::string_view cmdline, const std::string& name);
bool is_net_proxy_for(int pid, const std::string& name);

/// Makes sure VM `name` has a network machine can allow: when ctx.lima isolates VMs, starts (or
/// replaces, saying so) its egress proxy with `rules` and returns the socket for its template;
/// otherwise refuses an allowlist (config_error naming the project) and returns nullopt, noting
/// once per project that host isolation is then only the guest's own firewall. A VM `listed`
/// with an egress socket answers whether Lima isolates VMs without asking it (`limactl info`).
asio::awaitable<std::optional<std::filesystem::path>> prepare_network(context& ctx, const std::string& name,
                                                                      const net::policy& rules,
                                                                      const lima::instance* listed = nullptr);

/// The proxy part of prepare_network: VM `name`'s `machine net-proxy` serving `rules` on
/// egress_socket(name), started detached (log `<state>/<name>/net-proxy.log`) and waited for,
/// or kept when one already serves that policy, or replaced (saying so) when one serves another.
/// Its pid and policy fingerprint are recorded next to its log.
asio::awaitable<void> ensure_egress_proxy(context& ctx, std::string name, net::policy rules);

/// Stops VM `name`'s egress proxy, if one serves (down, destroy, after a bake): nothing needs it
/// while the VM is stopped, and without this it would wait out its 10 minutes for a VM that is
/// gone. Only a process that is that VM's net-proxy is signalled.
asio::awaitable<void> stop_egress_proxy(const std::string& name);

// ---- Watching ----------------------------------------------------------------------------------

struct watch_options {
    std::vector<std::string> names;             // the VMs to watch; none: every VM
    std::chrono::milliseconds poll{2000};       // how often Lima's list is polled
    std::chrono::milliseconds audit_poll{250};  // how often each VM's audit log is read
    // The project of the VM `name`, when it is one that projects.toml (or .machine.toml)
    // configures: after a boot its logins are rendered again, and its secrets with secrets_on_up.
    std::function<std::optional<config::project>(const std::string& name)> after_boot;
};

/// Runs until ctx.cancel fires, then throws interrupted_error: VMs appearing, changing state and
/// disappearing (Lima's list), each VM's host agent events, each running VM's guest agent
/// events (with ctx.agent), and after a boot the agents' logins of a configured project, and its
/// secrets with secrets_on_up, rendered again, all told as events. Nothing it started is left running.
asio::awaitable<void> watch(context& ctx, watch_options opt);

/// watch's follower of one VM's network: each record appended to `audit_log` (its egress
/// proxy's, audit_log_of) while it runs becomes a net.allowed or net.refused event, across the
/// log's rotations, a torn last line waited for. Runs until `stop` fires.
asio::awaitable<void> follow_connections(context& ctx, std::string name, std::filesystem::path audit_log,
                                         std::shared_ptr<cancel_signal> stop, std::chrono::milliseconds poll);

// ---- Agent forwarding --------------------------------------------------------------------------

/// The environment of every ssh or limactl process that connects to the VM: the agent a VM can
/// use is the one in SSH_AUTH_SOCK of whichever process opens the SSH connection (including
/// Lima's ControlMaster, which outlives the command that started it).
struct agent_environment {
    bool forward = false;  ///< ssh -o ForwardAgent=…
    lima::environment env;
};

/// Decides and prepares the project's agent forwarding: with `agent_keys`, makes sure its
/// filter runs (started detached, it ends after the VM stops). The choice applies from the VM's
/// next start (`inst` not running, or null); for a running VM started with another choice it
/// says so (Lima's host agent keeps the agent it was started with).
/// With `speak`, says once per project when the whole agent is forwarded and warns when no
/// agent answers (`run` stays quiet: its output is the remote command's).
asio::awaitable<agent_environment> prepare_agent_forwarding(context& ctx, const config::project& p,
                                                            const lima::instance* inst, bool speak);

/// `machine agent-proxy` (hidden; started by prepare_agent_forwarding): serves the filter on
/// `listen` until the VM whose Lima directory is `vm_dir` has stopped.
int run_agent_proxy(const std::string& listen, const std::string& upstream, const std::string& vm_dir,
                    const std::vector<std::string>& allowed);

/// `machine net-proxy` (hidden; started detached when a VM starts) as its command line gave it:
///   machine net-proxy --vm NAME --listen SOCKET --vm-dir LIMA_INSTANCE_DIR --audit-log FILE
///                     --egress open|allowlist [--allow PATTERN]... [--host-port N]...
struct net_proxy_arguments {
    std::string vm, listen, vm_dir, audit_log, egress;
    std::vector<std::string> allow, host_ports;
};

/// Serves the VM's egress proxy (net::run_proxy) on `listen` until the VM whose Lima directory
/// is `vm_dir` has stopped. Logs to the file spawn_detached named (src/vm/detached.hpp), else
/// stderr. 2 for bad arguments, 1 when the socket cannot be set up.
int run_net_proxy(const net_proxy_arguments& args);

/// The agent filter's log: `file` (a project's agent-filter.log) holds at most 1 MiB, then
/// becomes agent-filter.1.log (replacing the previous one) and a new file starts, so the
/// filter never keeps more than 2 MiB of log whatever the VM sends. Throws spdlog::spdlog_ex
/// when the file cannot be opened.
std::shared_ptr<spdlog::logger> agent_filter_logger(const std::filesystem::path& file);

// ---- OpenSSH to a VM ---------------------------------------------------------------------------

/// What `ssh` needs to reach a VM with its pinned host key (pure: tested without a VM).
struct openssh_target {
    std::string name;                     ///< the project (Lima's host alias is lima-<name>)
    std::filesystem::path ssh_config;     ///< Lima's ssh.config for the instance
    std::filesystem::path known_hosts;    ///< the pin's known_hosts file
    bool forward_agent = false;
    /// machine's own master for the VM (ensure_ssh_master) to ride; empty: a connection of its own.
    std::filesystem::path control_path;
};

/// `ssh -F <ssh.config> [-t|-T] <pinning, no-master and forwarding options> lima-<name> [-- <remote>]`:
/// the one way every OpenSSH connection to a VM is built (ssh, claude, codex, run, clones).
/// Lima's ssh.config turns host-key checking off and shares one ControlMaster, which Lima opened
/// without checking the key; these options turn checking back on against our pin and open a
/// connection of our own (ControlMaster=no, ControlPath=none: OpenSSH takes the first value it
/// obtains, and -o comes before -F's file). `remote` is argv for the VM: each word is quoted for
/// the remote shell (ssh hands the remote side one string).
/// With `t.control_path`, the session rides machine's master there (ControlMaster=no: never
/// made a master itself); when that master is gone, ssh connects on its own, pinned as ever.
std::vector<std::string> openssh_argv(const openssh_target& t, bool tty, const std::vector<std::string>& remote);

/// `ssh ... -M -N -f -E LOG lima-<name>`: opens machine's master for the VM at `t.control_path`,
/// pinned like every other connection, and goes to the background once it is authenticated.
std::vector<std::string> openssh_master_argv(const openssh_target& t, const std::filesystem::path& log);

// ---- One SSH connection per VM, reused -----------------------------------------------------------
//
// A fresh SSH connection costs a key exchange and an authentication: about 0.7 s under TCG. So
// machine keeps one OpenSSH master connection per running VM (`<state>/<name>/ssh-master`, a
// socket in the project's private state directory), which `up` opens at its end, and every short
// command rides it: `ssh`, `claude`/`codex` attaches and `run`, and the guest agent's relay for
// `sessions`, `secrets` and the logins' delivery (connect_to_agent). The master is opened like
// every connection, checking the pinned host key (OpenSSH, StrictHostKeyChecking=yes against the
// pin's known_hosts), and forwards the agent as the project does. Beside it, `ssh-master.id`
// records what it was opened for (the pin, Lima's ssh.config, the forwarding and the agent
// socket): a master opened for anything else is not ridden, so a re-pinned or re-created VM, or a
// shell with another SSH agent, never rides a connection that was checked for something else. It
// ends with the VM (down, destroy, a new pin; or, the VM gone, at once when its sshd closes the
// connection and within 15 s when it stops answering).

/// The master's socket: `<state>/<name>/ssh-master`; empty when that path is too long for a Unix
/// socket (OpenSSH adds 17 characters while it binds) or has characters ssh's -o would change.
std::filesystem::path ssh_master_socket(const std::string& name);

/// Checks the key the VM presents against its pin with a libssh connection of machine's own: a
/// VM without a pin, or with another key, is refused with machine's message naming the VM (and
/// both fingerprints); the pin's known_hosts file for OpenSSH is rewritten from the pin.
asio::awaitable<void> verify_pin(context& ctx, const std::string& name, const lima::instance& inst);

/// The target for OpenSSH sessions to a running VM: riding machine's master (opened now when
/// none serves this pin, config and agent), or, when no master can be used, on a connection of
/// its own after checking the pin with libssh. Throws ssh::host_key_mismatch (machine's message,
/// both fingerprints) when the VM presents another key, machine::error when it has no pin.
asio::awaitable<openssh_target> ssh_target(context& ctx, const std::string& name, const lima::instance& inst,
                                           const agent_environment& agent);

/// A connection to running VM `name`'s guest agent: through machine's master for the VM when
/// one runs for its pin and instance (an `ssh` client on the master runs the relay: no
/// handshake), else over a pinned libssh connection of machine's own, waiting up to `patience`
/// for an agent that is starting. Lines from the agent it cannot make sense of are warnings
/// about `name`.
asio::awaitable<std::unique_ptr<guest::connection>> connect_to_agent(context& ctx, const std::string& name,
                                                                     const lima::instance& inst,
                                                                     std::chrono::milliseconds patience);

/// connect_to_agent for a command that has only the VM's name (`sessions`, `secrets`): the VM is
/// listed (it must be running, else machine::error naming it) while a relay over its master
/// starts, so the command waits for one of them, not both. The relay is used only when the
/// listed instance is the one it assumed (Lima's directory for the name); else, and without a
/// master, connect_to_agent.
asio::awaitable<std::unique_ptr<guest::connection>> connect_to_running_agent(context& ctx, const std::string& name,
                                                                             std::chrono::milliseconds patience);

/// Ends the VM's master, if one runs (down, destroy): every session riding it ends too.
asio::awaitable<void> stop_ssh_master(const std::string& name);

/// After provisioning changed the VM user's groups (docker): ends machine's master and the one
/// Lima keeps for `limactl shell`, whose logins predate the change, so the next session logs in
/// anew and has the new groups (sessions on a connection get the groups of its login).
asio::awaitable<void> close_ssh_masters_after_provisioning(const lima::instance& inst, const std::string& name);

/// The directory `git clone URL` makes ("https://h/a/web.git" -> "web"); "" when the URL has
/// no usable name.
std::string repo_dir_name(std::string_view url);

// ---- Events from the guest ---------------------------------------------------------------------

// An agent event as one of ours. The guest is untrusted: at most 32 fields, values cut at 1 KiB,
// nested values flattened to JSON text (the terminal sink sanitizes what it prints).
events::event from_guest(const std::string& vm, const protocol::event_record& e);

// ---- Secrets -----------------------------------------------------------------------------------

/// One set to render: where its variables come from, and which repos load it.
struct planned_set {
    std::string name;
    std::vector<config::secret_source> sources;
    std::vector<std::string> used_by;  ///< "~/code/web/.envrc"
};

struct secrets_plan {
    std::vector<planned_set> sets;
    std::vector<std::string> warnings;  ///< one line each, escaped: a .envrc is the VM's text
};

/// The project's declared sets, each with the repos whose .envrc loads it. The VM only says
/// which repos use which set: it never chooses what the host reads. A `use op_env X` for a set
/// the project does not declare is a warning naming the file and line, and the entry to add to
/// projects.toml. With `only_repo`, just the sets that repo uses (an error when it has no
/// .envrc, or uses no declared set). Pure: no I/O.
secrets_plan plan_secret_sets(const config::project& p, const std::vector<protocol::envrc_secrets>& repos,
                              const std::optional<std::string>& only_repo);

/// `~/code/<dir>/.envrc`, escaped for the terminal.
std::string shown_envrc(const protocol::envrc_secrets& r);

/// `--repo web` names ~/code/web, or a nested ~/code/org/web by either spelling.
bool repo_matches(const protocol::envrc_secrets& r, const std::string& repo);

struct secrets_sync_options {
    // Only the sets this repo's .envrc uses (`~/code/<repo>/.envrc`; a nested repo by its path
    // under ~/code or its last component).
    std::optional<std::string> repo;
    // Leave sets the VM already has alone (watch after a boot: `up` may have rendered them).
    bool only_missing = false;
    // Nothing to render is an error (`machine secrets`), or only a warning (`up` with
    // secrets_on_up, before any repo says `use op_env`).
    bool required = true;
};

// Reads every set the project declares ([[NAME.secrets]]) and every 1Password Environment the
// VM's repos ask for (`use op_env ID`), all of them into memory before anything is sent: a
// source that fails renders nothing. Then one `secrets.render` per set over `agent`. Says
// which sets it rendered and how many variables, never a value. Throws machine::error (exit 1)
// when a source fails or nothing is there to render.
asio::awaitable<void> sync_secrets(context& ctx, const config::project& project, guest::connection& agent,
                                   secrets_sync_options options);

// The same for the running VM of `project`, over a connection of its own (`machine secrets`).
asio::awaitable<void> sync_secrets(context& ctx, const config::project& project, secrets_sync_options options);

// ---- The agents' logins in a VM (agent_credentials.cpp) ------------------------------------

// The secret set that carries a login in a VM: `machine-cred-<tool>-<16 hex>`, the hex a
// fingerprint of the login's description (tool, variable, source, when it was set), never of its
// value. A new `machine login` gives a new name.
std::string credential_set_name(const credentials::login& l);

// The tools whose login the project's VM receives: allowed by its agent_auth (absent: every
// tool) and logged in on this computer. Throws machine::error for a login file it refuses.
std::vector<std::string> credentials_for(const config::project& p, const credentials::store& store);

struct credentials_sync_options {
    // Read every source again and render (`up`, after a boot). Otherwise (an attach) only a
    // login the VM does not have yet is read and rendered: the set's name says which it has.
    bool reread = false;
    // `machine logout TOOL`: remove that tool's sets, read and touch nothing else.
    std::optional<std::string> only_remove;
    // Where the logins are; nullopt: credentials::store::at_default().
    std::optional<credentials::store> store;
};

// What sync_credentials did, by tool; never a value.
struct credentials_outcome {
    std::vector<std::string> delivered;  // rendered now
    std::vector<std::string> unchanged;  // the VM had the current login already
    std::vector<std::string> kept;       // the source failed: the VM keeps what it had (a warning says so)
    std::vector<std::string> removed;    // no longer allowed or logged in: zero-filled and removed
    std::vector<std::string> warnings;   // sanitized: a source that failed, a login file refused
};

// Makes the VM's credential sets what the project may receive: each allowed, logged-in tool's
// current login rendered (PROTOCOL.md §8), every other tool's sets (and older logins' sets)
// cleared. A source that fails (1Password locked, a command exiting 1) is a warning naming the
// tool (in the outcome: the caller says it where its output goes), and the VM keeps that tool's
// previous set. Throws for a failure of the connection to the agent.
asio::awaitable<credentials_outcome> sync_credentials(const config::project& project, guest::connection& agent,
                                                      credentials_sync_options options);

// One running VM as `machine logout` found it.
struct removal_reach {
    std::string vm;
    bool reached = false;  // the agent answered: the tool's sets are gone from it
    bool removed = false;  // it had some
    std::string problem;   // when not reached: why (sanitized)
};

// `machine logout TOOL`: the tool's credential sets zero-filled and removed from every running
// VM machine has a pin for, each on a connection of its own (best effort: one that cannot be
// reached is reported, not an error). Nothing when ctx.agent is off.
asio::awaitable<std::vector<removal_reach>> remove_credentials_everywhere(context& ctx, std::string tool);

// "credentials: claude, gh delivered; codex removed", or "" when there is nothing to say.
std::string describe(const credentials_outcome& o);

// Clears the sets rendered in the VM (every set, or with `repo` those its .envrc uses); returns
// the names of the sets cleared.
asio::awaitable<std::vector<std::string>> clear_secrets(context& ctx, const config::project& p,
                                                        std::optional<std::string> repo);

// The sets rendered in the VM now, by name, count, size and time; never a value. Everything in
// them came from the VM: capped by the parser, to be sanitized before it is printed.
asio::awaitable<std::vector<protocol::secret_set_info>> list_secrets(context& ctx, const config::project& p);

} // namespace machine::vm
