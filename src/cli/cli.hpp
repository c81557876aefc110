// Internal interface of the CLI module (not a public header).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>

#include "machine/cancel.hpp"
#include "machine/config.hpp"
#include "machine/events.hpp"
#include "machine/lima.hpp"
#include "machine/vm.hpp"

namespace machine::cli {

// What every command gets: the loop, the Ctrl-C signal, the event bus, and lazily loaded
// configuration, Lima client and workflow context (so `--help` and bad names cost nothing).
class context {
public:
    context(asio::io_context& io, bool json);

    asio::io_context& io;
    cancel_signal cancel;
    events::bus bus;
    bool json;
    lima::timeouts timeouts;  // from $MACHINE_LIMACTL_TIMEOUT and `up --timeout`
    // False when MACHINE_AGENT=off (tests against a fake limactl): no guest-side work at all.
    const bool agent;

    const config::config& cfg();
    lima::client& lima();
    // The workflows' context (src/vm) on this command's signal, bus and Lima client, with its
    // current timeouts. Built at first use: it needs limactl.
    vm::context& vm();

    // Emits an event for `vm` through the bus.
    void emit(events::event e) { bus.emit(std::move(e)); }
    void say(const std::string& vm, const std::string& text) { emit(events::message(vm, "info", text)); }

private:
    std::optional<config::config> cfg_;
    std::unique_ptr<lima::client> lima_;
    std::optional<vm::context> vm_;
};

// The name given (validated), else the ambient project (.machine.toml, else "default").
std::string resolve_name(context& ctx, const std::optional<std::string>& name);

// usage_error: no such project, with a did-you-mean among the configured ones.
[[noreturn]] void unknown_project(const config::config& cfg, const std::string& name);

struct up_options {
    std::vector<std::string> names;  // none: the ambient project
    bool all = false;                // every configured project
    int parallel = 0;                // 0: as many as fit the host's available memory
    bool fail_fast = false;          // the first failure cancels the rest
    std::chrono::seconds start_timeout{1800};
};

asio::awaitable<int> cmd_up(context& ctx, up_options opt);
// Builds (or with `force` rebuilds) the cached base for the project's bake profiles.
asio::awaitable<int> cmd_bake(context& ctx, std::optional<std::string> name, bool force);
asio::awaitable<int> cmd_down(context& ctx, std::optional<std::string> name, bool hibernate);
asio::awaitable<int> cmd_destroy(context& ctx, std::optional<std::string> name, bool yes);
asio::awaitable<int> cmd_list(context& ctx);
// Runs until interrupted (then exits 130): VM states from Lima for NAMES (all VMs when empty).
asio::awaitable<int> cmd_watch(context& ctx, std::vector<std::string> names);
// `run`: the command in the VM through OpenSSH (interactive.cpp), pinned like `ssh`, in the
// primary repo's directory; exits with the remote command's status (ssh's 255 when the
// connection failed).
asio::awaitable<int> cmd_run(context& ctx, std::string name, std::vector<std::string> command);
// `machine pin NAME [--replace]`: records the host key the VM presents now (interactive.cpp).
asio::awaitable<int> cmd_pin(context& ctx, std::string name, bool replace);
// A login shell in the VM through OpenSSH (interactive.cpp); exits with ssh's status.
asio::awaitable<int> cmd_ssh(context& ctx, std::optional<std::string> name);
// `machine claude|codex`: attaches to the agent's tmux session in the VM (interactive.cpp).
asio::awaitable<int> cmd_agent_session(context& ctx, std::string agent, std::optional<std::string> name,
                                       std::optional<std::string> session);
// `machine sessions`: the agent sessions of a VM (sessions.cpp).
asio::awaitable<int> cmd_sessions(context& ctx, std::optional<std::string> name);
// `machine secrets`: renders a project's secrets into its running VM, or clears them (secrets.cpp).
// `machine net`: the last `last` connections of a project's VM and a summary by destination,
// from its egress proxy's audit log (net.cpp).
asio::awaitable<int> cmd_net(context& ctx, std::optional<std::string> name, int last);
// `machine doctor`: preflight checks of this computer (doctor.cpp); exit 1 when one failed.
asio::awaitable<int> cmd_doctor(context& ctx);
// `machine init`: the documented example as the user's projects.toml (init.cpp).
asio::awaitable<int> cmd_init(context& ctx);
// `machine login`: what the command line gave (login.cpp).
struct login_options {
    std::optional<std::string> tool;  // claude, codex or gh; none with `status`
    bool status = false;              // `--status`: what is set, never a value
    bool with_token = false;          // the token from stdin
    std::optional<std::string> from_op;  // a 1Password reference, read at each use
    bool from_command = false;        // `argv`'s stdout, run at each use
    std::vector<std::string> argv;
};
// `machine login TOOL ...` / `machine login --status` (login.cpp).
asio::awaitable<int> cmd_login(context& ctx, login_options opt);
// `machine logout TOOL`: removes the tool's login from this computer (login.cpp).
asio::awaitable<int> cmd_logout(context& ctx, std::string tool);
// `machine pause|resume [NAME...]` (pause.cpp): QEMU's vCPUs stopped / continued.
asio::awaitable<int> cmd_pause(context& ctx, std::vector<std::string> names, bool resume);
// `machine snapshot [NAME] [TAG]`, `--list [NAME]`, `--delete NAME TAG` (pause.cpp).
enum class snapshot_action { create, list, remove };
asio::awaitable<int> cmd_snapshot(context& ctx, snapshot_action action, std::optional<std::string> name,
                                  std::optional<std::string> tag);
// `machine restore NAME TAG` (pause.cpp).
asio::awaitable<int> cmd_restore(context& ctx, std::string name, std::string tag);
enum class secrets_action { render, clear, list };
asio::awaitable<int> cmd_secrets(context& ctx, std::optional<std::string> name, std::optional<std::string> repo,
                                 secrets_action action);

// Terminal helpers.
bool stdin_is_terminal();
bool stdout_is_terminal();
// Asks on stderr; true only for an explicit yes. EOF means no.
bool confirm(const std::string& question);
std::string human_bytes(std::int64_t bytes);
// machine's logger on stderr, at `level` ("warn", "debug"...); once per process (app.cpp).
void setup_logging(const std::string& level);

// machine: parses argv as the command table declares (src/cmdline/parse.cpp) and runs the command
// (app.cpp); returns the exit status.
int main(int argc, char** argv);

} // namespace machine::cli
