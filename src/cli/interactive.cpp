// `machine claude|codex [NAME] [--session S]`, `machine ssh [NAME]`, `machine run NAME -- CMD`:
// the user's terminal joined to the VM through OpenSSH (a real TTY when there is one), on a
// connection of its own (never Lima's ControlMaster, which Lima opened without checking the
// host key), after machine checked the VM's key against its pin, with the project's agent
// forwarding. Also `machine pin`, which records that key explicitly.
#include "interactive.hpp"

#include <cstdio>

#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/proc.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;

std::vector<std::string> run_in_dir(const std::string& dir, const std::vector<std::string>& command) {
    // sshd starts the command in the home directory, so a `cd` that fails (the repo is not
    // cloned yet) leaves it there, silently. No command: the user's login shell (`ssh`). A
    // command is not run by a login shell, so it gets the agents' logins from the profile's
    // script itself (guest-agent/PROTOCOL.md §8): `machine run web -- gh pr list` works.
    std::vector<std::string> argv{
        "sh", "-c",
        "cd -- \"$1\" 2>/dev/null; shift; [ \"$#\" -gt 0 ] || exec \"$SHELL\" -l; "
        "! [ -r /etc/profile.d/machine-credentials.sh ] || . /etc/profile.d/machine-credentials.sh; exec \"$@\"",
        "sh", dir};
    argv.insert(argv.end(), command.begin(), command.end());
    return argv;
}

std::vector<std::string> in_primary_repo(const config::project& p, const std::vector<std::string>& command) {
    return run_in_dir(primary_repo_dir(p), command);
}

std::string primary_repo_dir(const config::project& p) {
    if (p.repos.empty()) return ".";
    const std::string dir = vm::repo_dir_name(p.repos.front());
    return dir.empty() ? "." : "code/" + dir;
}

awaitable<void> deliver_credentials(context& ctx, const config::project& project, lima::instance inst) {
    const std::string& name = project.name;
    // Nothing to deliver, nothing to ask the VM (an attach stays as fast as it was): no login
    // the project may receive. What the VM may still hold from before goes at the next `up`.
    bool wanted = ctx.vm().agent;
    try {
        wanted = wanted && !vm::credentials_for(project, credentials::store::at_default()).empty();
    } catch (const error&) {
        // A login file machine refuses: sync_credentials says which.
    }
    if (!wanted) co_return;
    // Through the VM's master, which the attach rides next (no handshake of its own).
    auto agent = co_await vm::connect_to_agent(ctx.vm(), name, inst, std::chrono::seconds(10));
    // The logins the VM lacks (after a boot, a new `machine login`), read and rendered; none when
    // it has them all (one secrets.list). Never in the way of the attach: a problem is a warning.
    try {
        vm::credentials_sync_options missing;  // named: g++ 12 and a braced list in co_await
        const vm::credentials_outcome o = co_await vm::sync_credentials(project, *agent, std::move(missing));
        // On stderr: stdout is the command's (`machine run web -- cat x > y`).
        for (const auto& w : o.warnings) std::fprintf(stderr, "machine: %s: warning: %s\n", name.c_str(), w.c_str());
        if (!o.delivered.empty() || !o.removed.empty())
            std::fprintf(stderr, "machine: %s: %s\n", name.c_str(), vm::describe(o).c_str());
    } catch (const interrupted_error&) {
        throw;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "machine: %s: warning: credentials not delivered: %s\n", name.c_str(),
                     text::sanitize_for_terminal(e.what()).c_str());
    }
}

awaitable<pin_outcome> repin(context& ctx, std::string name, lima::instance inst, bool replace) {
    const ssh::endpoint ep = ssh::endpoint_from_lima_ssh_config(vm::ssh_config_of(inst));
    pin_outcome out;
    std::error_code ec;
    if (fs::exists(vm::pin_of(name, true).file, ec)) {
        std::shared_ptr<ssh::session> same;
        try {
            same = co_await ssh::session::connect(ep, vm::pin_of(name, false), &ctx.cancel);
        } catch (const ssh::host_key_mismatch& e) {
            if (!replace)
                throw error(std::string(e.what()) + ". To trust the key it presents now instead, run 'machine pin " +
                            name + " --replace'");
            out.replaced = e.expected();
        }
        if (same) {
            out.fingerprint = same->fingerprint();
            out.key_type = same->host_key_type();
            out.unchanged = true;
            same->close();
            co_return out;
        }
        vm::forget_pin(name);
    }
    auto session = co_await ssh::session::connect(ep, vm::pin_of(name, true), &ctx.cancel);
    vm::new_vm_key_pinned(name);
    out.fingerprint = session->fingerprint();
    out.key_type = session->host_key_type();
    session->close();
    co_return out;
}

void require_valid_session_name(const std::string& s) {
    const bool ok = !s.empty() && s.size() <= 64 && s.front() != '-' &&
                    std::all_of(s.begin(), s.end(), [](char c) {
                        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                               c == '_' || c == '-';
                    });
    if (!ok)
        throw usage_error("invalid session name '" + text::sanitize_for_terminal(s) +
                          "' (use letters, digits, '_' and '-', at most 64 characters, not starting with '-')");
}

namespace {

// The VM, running: brought up first (with `up`'s progress) when it is not.
awaitable<lima::instance> running_vm(context& ctx, const std::string& name) {
    auto inst = co_await ctx.lima().find(name);
    if (!inst || inst->state != lima::status::running) {
        up_options opt;
        opt.names = {name};
        co_await cmd_up(ctx, opt);
        inst = co_await ctx.lima().find(name);
        if (!inst || inst->state != lima::status::running)
            throw error("VM '" + name + "' is not running after 'machine up " + name + "'");
    }
    co_return *inst;
}

// Runs ssh on the user's terminal and returns its exit status. ssh stays in the terminal's
// foreground group (it owns the TTY); machine only waits.
awaitable<int> run_on_terminal(std::vector<std::string> argv, const vm::agent_environment& agent) {
    proc::command cmd;
    cmd.argv = std::move(argv);
    cmd.in = proc::stdio::inherit;
    cmd.out = proc::stdio::inherit;
    cmd.err = proc::stdio::inherit;
    cmd.new_process_group = false;
    cmd.env_set = agent.env.set;
    cmd.env_unset = agent.env.unset;
    std::fflush(stdout);
    std::fflush(stderr);
    const proc::result r = co_await proc::run(std::move(cmd), proc::run_options{});
    co_return r.signal ? 128 + r.signal : r.exit_code;
}

// ssh exits 255 when the connection itself failed: say why when the VM went away. A VM being
// stopped drops the connection before Lima lists it as stopped: give it a few seconds.
awaitable<int> explain_lost_connection(context& ctx, const std::string& name, int status, const std::string& again) {
    if (status != 255) co_return status;
    std::optional<lima::instance> inst;
    for (int i = 0; i < 20; ++i) {
        inst = co_await ctx.lima().find(name);
        if (!inst || inst->state != lima::status::running) break;
        co_await sleep_for(std::chrono::milliseconds(500));
    }
    if (!inst || inst->state != lima::status::running) {
        std::fprintf(stderr,
                     "machine: VM '%s' stopped while you were attached (ssh exit 255); '%s' starts it again\n",
                     name.c_str(), again.c_str());
    } else {
        std::fprintf(stderr, "machine: the SSH connection to VM '%s' failed (ssh exit 255); the VM is still running\n",
                     name.c_str());
    }
    co_return status;
}

} // namespace

awaitable<int> cmd_agent_session(context& ctx, std::string agent, std::optional<std::string> name_opt,
                                 std::optional<std::string> session_opt) {
    const std::string session = session_opt.value_or(agent);
    require_valid_session_name(session);
    const std::string name = resolve_name(ctx, name_opt);
    const config::project project = ctx.cfg().resolve(name);
    const lima::instance inst = co_await running_vm(ctx, name);
    const vm::agent_environment agent_env = co_await vm::prepare_agent_forwarding(ctx.vm(), project, &inst, true);
    const vm::openssh_target target = co_await vm::ssh_target(ctx.vm(), name, inst, agent_env);
    co_await deliver_credentials(ctx, project, inst);
    const std::vector<std::string> remote{guest::agent_install_path, "session", "attach", "--name", session,
                                          "--agent", agent, "--dir", primary_repo_dir(project)};
    std::string again = "machine " + agent + " " + name;
    if (session != agent) again += " --session " + session;
    std::fprintf(stderr, "detach: ctrl-b d (%s keeps running); reattach: %s\n", agent.c_str(), again.c_str());
    const int status = co_await run_on_terminal(vm::openssh_argv(target, true, remote), agent_env);
    co_return co_await explain_lost_connection(ctx, name, status, again);
}

awaitable<int> cmd_ssh(context& ctx, std::optional<std::string> name_opt) {
    const std::string name = resolve_name(ctx, name_opt);
    const config::project project = ctx.cfg().resolve(name);
    const lima::instance inst = co_await vm::require_running(ctx.vm(), name);
    const vm::agent_environment agent_env = co_await vm::prepare_agent_forwarding(ctx.vm(), project, &inst, true);
    const vm::openssh_target target = co_await vm::ssh_target(ctx.vm(), name, inst, agent_env);
    co_await deliver_credentials(ctx, project, inst);
    // The user's login shell (zsh or bash, as configured), where `run` runs its commands.
    const std::vector<std::string> remote = in_primary_repo(project, {});
    const int status = co_await run_on_terminal(vm::openssh_argv(target, true, remote), agent_env);
    co_return co_await explain_lost_connection(ctx, name, status, "machine ssh " + name);
}

awaitable<int> cmd_run(context& ctx, std::string name, std::vector<std::string> command) {
    text::require_valid_project_name(name);
    if (command.empty()) throw usage_error("usage: machine run NAME -- COMMAND [ARGS...]");
    const config::project project = ctx.cfg().resolve(name);
    const lima::instance inst = co_await vm::require_running(ctx.vm(), name);
    const vm::agent_environment agent_env = co_await vm::prepare_agent_forwarding(ctx.vm(), project, &inst, false);
    const vm::openssh_target target = co_await vm::ssh_target(ctx.vm(), name, inst, agent_env);
    co_await deliver_credentials(ctx, project, inst);
    // A terminal only when both ends are one (`machine run web -- vim`); pipes stay clean.
    const bool tty = stdin_is_terminal() && stdout_is_terminal();
    const std::vector<std::string> remote = in_primary_repo(project, command);
    co_return co_await run_on_terminal(vm::openssh_argv(target, tty, remote), agent_env);
}

awaitable<int> cmd_pin(context& ctx, std::string name, bool replace) {
    text::require_valid_project_name(name);
    const lima::instance inst = co_await vm::require_running(ctx.vm(), name);
    const auto lock = co_await vm::lock_project(ctx.vm(), name, &ctx.cancel);
    const pin_outcome out = co_await repin(ctx, name, inst, replace);
    std::string line;
    if (out.unchanged)
        line = "VM '" + name + "' presents its pinned host key " + out.fingerprint + " (" + out.key_type + "); nothing to do";
    else if (out.replaced)
        line = "VM '" + name + "': replaced pinned host key " + *out.replaced + " with " + out.fingerprint + " (" + out.key_type + ")";
    else
        line = "VM '" + name + "': pinned host key " + out.fingerprint + " (" + out.key_type + ")";
    std::printf("%s\n", text::sanitize_for_terminal(line).c_str());
    co_return 0;
}

} // namespace machine::cli
