// One OpenSSH master connection per running VM, which every OpenSSH session of machine's rides
// (vm.hpp, "One SSH connection per VM, reused", says what and why).
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <optional>

#include <spdlog/spdlog.h>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>

#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/proc.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"
#include "guest_link.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

fs::path identity_file(const std::string& name) { return project_state_dir(name) / "ssh-master.id"; }
fs::path master_log(const std::string& name) { return project_state_dir(name) / "ssh-master.log"; }

// What the master was opened for. Only a master opened for exactly this is ridden: the VM (its
// pin, for a re-pinned or re-created VM; Lima's ssh.config, for another instance of the name)
// and the agent the VM may use through it (the master forwards its own SSH_AUTH_SOCK to every
// session riding it).
struct master_identity {
    std::string vm, agent;
    std::string text() const { return vm + agent; }
};

std::optional<master_identity> identity_of(const ssh::host_key_pin& host_key, const openssh_target& t,
                                           const agent_environment& agent) {
    std::string pin;
    try {
        pin = text::trim(paths::read_file(host_key.file));
    } catch (const error&) {
        return std::nullopt;  // no pin: nothing to ride
    }
    std::string auth_sock = paths::env("SSH_AUTH_SOCK");
    for (const auto& [k, v] : agent.env.set)
        if (k == "SSH_AUTH_SOCK") auth_sock = v;
    for (const auto& k : agent.env.unset)
        if (k == "SSH_AUTH_SOCK") auth_sock.clear();
    return master_identity{"pin " + pin + "\nssh.config " + t.ssh_config.string() + "\n",
                           std::string("forward ") + (t.forward_agent ? "yes" : "no") + "\nagent " + auth_sock + "\n"};
}

std::string recorded_identity(const std::string& name) {
    try {
        return paths::read_file(identity_file(name));
    } catch (const error&) {
        return {};
    }
}

// The project's state directory must keep others out of the socket's name: ours, and nobody
// else may write in it.
bool private_dir(const fs::path& dir) {
    struct stat st {};
    return ::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() && (st.st_mode & 022) == 0;
}

awaitable<proc::result> run_ssh(std::vector<std::string> argv, const agent_environment& agent,
                                std::chrono::milliseconds timeout) {
    proc::command cmd;
    cmd.argv = std::move(argv);
    // ssh -f keeps the descriptors it was given in the master it leaves behind: no pipes, or the
    // run would wait for the master's end. Its messages go to its -E log.
    cmd.out = proc::stdio::null;
    cmd.err = proc::stdio::null;
    cmd.env_set = agent.env.set;
    cmd.env_unset = agent.env.unset;
    proc::run_options options;
    options.limit.timeout = timeout;
    co_return co_await proc::run(std::move(cmd), options);
}

awaitable<bool> open_master(const std::string& name, const openssh_target& t, const agent_environment& agent) {
    const fs::path log = master_log(name);
    std::error_code ec;
    fs::remove(log, ec);  // -E appends
    const proc::result r = co_await run_ssh(openssh_master_argv(t, log), agent, 20s);
    if (r.ok() && paths::socket_accepts(t.control_path)) co_return true;
    std::string why;
    try {
        why = text::sanitize_for_terminal(text::tail(paths::read_file(log), 400));
    } catch (const error&) {
    }
    spdlog::debug("vm={} the SSH master did not open (ssh exit {}{}): {}", name, r.status(),
                  r.timed_out ? ", timed out" : "", why);
    co_return false;
}

// `ssh -O exit` to the master `target` names (options, then a host alias).
awaitable<void> exit_master(std::string name, std::string whose, std::vector<std::string> target) {
    std::vector<std::string> argv{"ssh", "-O", "exit"};
    argv.insert(argv.end(), target.begin(), target.end());
    try {
        const proc::result r = co_await run_ssh(std::move(argv), agent_environment{}, 5s);
        spdlog::debug("vm={} closed {} SSH master: {}", name, whose, r.ok() ? "yes" : "status " + std::to_string(r.status()));
    } catch (const proc::spawn_error& e) {
        spdlog::debug("vm={} cannot run ssh to close {} SSH master: {}", name, whose, e.what());
    }
}

} // namespace

fs::path ssh_master_socket(const std::string& name) {
    const fs::path socket = project_state_dir(name) / "ssh-master";
    // OpenSSH binds "<path>.XXXXXXXXXXXXXXXX" first, then renames it.
    if (socket.native().size() + 17 >= sizeof(sockaddr_un{}.sun_path)) return {};
    // ssh expands %-tokens and ~ in ControlPath, and a quote would end the -o value.
    if (socket.native().find_first_of("%\"~\n") != std::string::npos) return {};
    return socket;
}

awaitable<void> verify_pin(context& ctx, const std::string& name, const lima::instance& inst) {
    const ssh::host_key_pin pin = pin_of(name, false);  // refuses a VM without one
    const ssh::endpoint ep = ssh::endpoint_from_lima_ssh_config(ssh_config_of(inst));
    auto session = co_await ssh::session::connect(ep, pin, &ctx.cancel);
    session->close();
}

awaitable<openssh_target> ssh_target(context& ctx, const std::string& name, const lima::instance& inst,
                                     const agent_environment& agent) {
    const ssh::host_key_pin pin = pin_of(name, false);  // refuses a VM without one
    openssh_target t{name, ssh_config_of(inst), pin.known_hosts, agent.forward, {}};
    const fs::path socket = ssh_master_socket(name);
    const auto identity = identity_of(pin, t, agent);
    if (socket.empty() || !identity || !private_dir(socket.parent_path())) {
        co_await verify_pin(ctx, name, inst);
        co_return t;
    }
    project_lock lock(name, "ssh-master.lock");
    co_await wait_for_lock(ctx, name, lock, &ctx.cancel);
    if (paths::socket_accepts(socket)) {
        const std::string recorded = recorded_identity(name);
        if (recorded == identity->text()) {
            t.control_path = socket;
            co_return t;
        }
        if (recorded.starts_with(identity->vm)) {
            // Opened for another agent (a shell with another SSH_AUTH_SOCK): left to the sessions
            // riding it; this one gets a connection of its own.
            co_await verify_pin(ctx, name, inst);
            co_return t;
        }
        co_await stop_ssh_master(name);  // opened for another VM of this name: that VM is gone
    }
    std::error_code ec;
    fs::remove(socket, ec);  // a stale one: its master is gone
    fs::remove(identity_file(name), ec);
    t.control_path = socket;
    for (int attempt = 1;; ++attempt) {
        if (co_await open_master(name, t, agent)) {
            paths::write_file_atomic(identity_file(name), identity->text(), 0600);
            co_return t;
        }
        if (attempt == 2) break;
        // OpenSSH refused: machine's own check says why when it is the key (host_key_mismatch,
        // both fingerprints), and rewrites the pin's known_hosts on the way (it may have been
        // missing or stale: then one more try); otherwise a connection of our own, without a master.
        co_await verify_pin(ctx, name, inst);
    }
    t.control_path.clear();
    co_return t;
}

std::optional<openssh_target> master_for(const std::string& name, const lima::instance& inst) {
    const fs::path socket = ssh_master_socket(name);
    if (socket.empty() || !private_dir(socket.parent_path()) || !paths::socket_accepts(socket)) return std::nullopt;
    const ssh::host_key_pin pin = pin_of(name, false);
    openssh_target t{name, ssh_config_of(inst), pin.known_hosts, false, socket};
    const auto identity = identity_of(pin, t, agent_environment{});
    if (!identity || !recorded_identity(name).starts_with(identity->vm)) return std::nullopt;
    return t;
}

awaitable<std::unique_ptr<guest::connection>> connect_to_agent(context& ctx, const std::string& name,
                                                               const lima::instance& inst,
                                                               std::chrono::milliseconds patience) {
    const guest_link link = co_await guest_link::open(ctx, name, inst, &ctx.cancel);
    co_return co_await link.connect(patience);
}

namespace {

// A relay over the master found before the VM is listed; no connection when no master serves it.
struct relay_before_listing {
    master_before_listing master;
    std::unique_ptr<guest::connection> conn;
};

awaitable<relay_before_listing> start_relay_before_listing(context& ctx, std::string name) {
    relay_before_listing out{find_master_before_listing(ctx, ctx.lima, name), nullptr};
    try {
        if (out.master.link) out.conn = co_await out.master.link->connect(0s);
    } catch (const interrupted_error&) {
        throw;
    } catch (const error& e) {
        spdlog::debug("vm={} no relay before listing: {}", name, e.what());
    }
    co_return out;
}

} // namespace

awaitable<std::unique_ptr<guest::connection>> connect_to_running_agent(context& ctx, const std::string& name,
                                                                       std::chrono::milliseconds patience) {
    using namespace asio::experimental::awaitable_operators;
    auto listing = require_running(ctx, name);  // named first: house style §4
    auto relaying = start_relay_before_listing(ctx, name);
    auto both = co_await (std::move(listing) && std::move(relaying));
    const lima::instance inst = std::move(std::get<0>(both));
    relay_before_listing early = std::move(std::get<1>(both));
    if (early.conn && early.master.serves(inst)) co_return std::move(early.conn);
    early.conn.reset();  // another instance than the one assumed: its relay ends
    co_return co_await connect_to_agent(ctx, name, inst, patience);
}

awaitable<void> stop_ssh_master(const std::string& name) {
    const fs::path socket = ssh_master_socket(name);
    std::error_code ec;
    fs::remove(identity_file(name), ec);
    if (socket.empty() || !paths::socket_accepts(socket)) co_return;
    // Named first: g++ 12 miscompiles string literals and braced lists as a coroutine's
    // arguments inside co_await (cpp-house-style.md §4).
    std::vector<std::string> target{"-o", "ControlPath=\"" + socket.string() + "\"", "machine-master"};
    std::string whose = "machine's";
    co_await exit_master(name, std::move(whose), std::move(target));
}

awaitable<void> close_ssh_masters_after_provisioning(const lima::instance& inst, const std::string& name) {
    co_await stop_ssh_master(name);
    const fs::path config = ssh_config_of(inst);
    std::error_code ec;
    if (!fs::exists(config, ec)) co_return;
    std::vector<std::string> target{"-F", config.string(), "lima-" + name};
    std::string whose = "Lima's";
    co_await exit_master(name, std::move(whose), std::move(target));
}

} // namespace machine::vm
