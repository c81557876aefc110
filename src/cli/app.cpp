// Command-line parsing, the event loop, Ctrl-C, and turning errors into exit codes.
#include <csignal>
#include <cstdio>

#include <CLI/CLI.hpp>
#include <asio/co_spawn.hpp>
#include <asio/signal_set.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "machine/text.hpp"

namespace machine::cli {

namespace {

constexpr const char* kFooter = R"(
Exit codes:
  0    success
  1    failure (Lima or the VM reported an error; the message says which)
  2    usage or configuration error (nothing was run)
  130  interrupted (Ctrl-C; a second Ctrl-C stops children at once)
  `run` and `ssh` exit with the remote command's status, `claude` and `codex` with ssh's:
  0 after detaching or when the agent ended, 255 when the connection to the VM was lost
  (machine then says whether the VM stopped).

Environment:
  MACHINE_LIMACTL      the limactl to use (else limactl in PATH); on Linux without Lima,
                       point it at tools/limactl from machine's source tree
  MACHINE_CONFIG_DIR   where projects.toml lives (default $XDG_CONFIG_HOME/machine)
  MACHINE_STATE_DIR    rendered templates and locks (default $XDG_STATE_HOME/machine)
  MACHINE_LIMACTL_TIMEOUT  seconds a limactl list/create/stop/delete may take (default 60/300)
)";

struct parsed {
    std::string command;
    std::optional<std::string> name;
    std::vector<std::string> names;  // up, watch
    bool all = false;
    bool fail_fast = false;
    int parallel = 0;
    std::vector<std::string> run_command;
    bool json = false;
    bool yes = false;
    bool force = false;  // bake
    bool replace = false;  // pin
    int start_timeout_minutes = 30;
    std::optional<std::string> session;  // claude, codex
    std::optional<std::string> repo;     // secrets
    bool clear = false;                  // secrets
    bool list = false;                   // secrets
    // agent-proxy (hidden: started by machine itself)
    std::string listen, upstream, vm_dir;
    std::vector<std::string> allowed;
    std::string log_level = "warn";
};

// `machine run NAME [--] CMD...`: everything after NAME belongs to the remote command, options
// included, so it is split off before CLI11 sees it.
std::vector<std::string> split_run_command(std::vector<std::string>& args) {
    std::vector<std::string> remote;
    for (std::size_t i = 0; i < args.size(); ++i) {
        if (args[i] != "run") {
            if (args[i] == "--log-level") ++i;  // skip its value
            if (!args[i].empty() && args[i][0] != '-') return remote;  // another command
            continue;
        }
        for (std::size_t j = i + 1; j < args.size(); ++j) {
            if (args[j] == "--") {  // `run -- NAME`? then NAME follows; otherwise CMD follows
                if (j == i + 1) continue;
                remote.assign(args.begin() + static_cast<long>(j) + 1, args.end());
                args.resize(j);
                return remote;
            }
            if (args[j].empty() || args[j][0] == '-') continue;  // run's own options (--help)
            remote.assign(args.begin() + static_cast<long>(j) + 1, args.end());
            if (!remote.empty() && remote.front() == "--") remote.erase(remote.begin());
            args.resize(j + 1);
            return remote;
        }
        return remote;
    }
    return remote;
}

void setup_logging(const std::string& level) {
    auto logger = spdlog::stderr_color_mt("machine");
    // Debugging is about where the time goes: stamp debug and trace lines.
    const auto lvl = spdlog::level::from_str(level);
    logger->set_pattern(lvl <= spdlog::level::debug ? "machine: %H:%M:%S.%e %l: %v" : "machine: %l: %v");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(level));
}

asio::awaitable<int> dispatch(context& ctx, parsed p) {
    if (p.command == "up") {
        up_options opt;
        opt.names = p.names;
        opt.all = p.all;
        opt.parallel = p.parallel;
        opt.fail_fast = p.fail_fast;
        opt.start_timeout = std::chrono::minutes(p.start_timeout_minutes);
        co_return co_await cmd_up(ctx, opt);
    }
    if (p.command == "bake") co_return co_await cmd_bake(ctx, p.name, p.force);
    if (p.command == "down") co_return co_await cmd_down(ctx, p.name);
    if (p.command == "destroy") co_return co_await cmd_destroy(ctx, p.name, p.yes);
    if (p.command == "list") co_return co_await cmd_list(ctx);
    if (p.command == "run") co_return co_await cmd_run(ctx, p.name.value_or(""), p.run_command);
    if (p.command == "ssh") co_return co_await cmd_ssh(ctx, p.name);
    if (p.command == "pin") co_return co_await cmd_pin(ctx, p.name.value_or(""), p.replace);
    if (p.command == "claude" || p.command == "codex")
        co_return co_await cmd_agent_session(ctx, p.command, p.name, p.session);
    if (p.command == "sessions") co_return co_await cmd_sessions(ctx, p.name);
    if (p.command == "secrets") {
        const secrets_action action = p.clear ? secrets_action::clear : p.list ? secrets_action::list : secrets_action::render;
        co_return co_await cmd_secrets(ctx, p.name, p.repo, action);
    }
    if (p.command == "watch") co_return co_await cmd_watch(ctx, p.names);
    if (p.command == "doctor") co_return co_await cmd_doctor(ctx);
    if (p.command == "init") co_return co_await cmd_init(ctx);
    throw usage_error("unknown command " + p.command);
}

void report(context* ctx, const std::string& vm, const error& e) {
    std::fprintf(stderr, "machine: %s\n", text::sanitize_for_terminal(e.what()).c_str());
    if (!e.diagnostics().empty()) {
        std::fprintf(stderr, "machine: last lines of its output:\n");
        auto lines = text::split_lines(e.diagnostics());
        const std::size_t from = lines.size() > 10 ? lines.size() - 10 : 0;
        for (std::size_t i = from; i < lines.size(); ++i)
            std::fprintf(stderr, "  %s\n", text::sanitize_for_terminal(lines[i]).c_str());
    }
    if (ctx && ctx->json) ctx->emit(events::error(vm, e.what(), e.diagnostics()));
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    parsed p;
    p.run_command = split_run_command(args);

    CLI::App app{"machine: one disposable VM per project, for coding agents."};
    app.name("machine");
    app.footer(kFooter);
    app.set_version_flag("--version", "machine " MACHINE_VERSION);
    app.add_option("--log-level", p.log_level, "log detail on stderr")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
    app.require_subcommand(1);

    auto* up = app.add_subcommand("up", "create and start projects' VMs (a fast no-op when they run)");
    up->add_option("names", p.names, "projects (default: the .machine.toml project, else 'default')");
    up->add_flag("--all", p.all, "every configured project");
    up->add_option("--parallel", p.parallel, "VMs booting at once (default: as many as fit in free memory)")
        ->check(CLI::PositiveNumber);
    up->add_flag("--fail-fast", p.fail_fast, "cancel the others when one VM fails");
    up->add_flag("--json", p.json, "events as JSON lines on stdout");
    up->add_option("--timeout", p.start_timeout_minutes, "minutes to wait for the VM to boot")->check(CLI::PositiveNumber);

    auto* bake = app.add_subcommand("bake", "build the cached base new VMs are cloned from (up does it when needed)");
    bake->add_option("name", p.name, "project whose profiles to bake (default: the .machine.toml project, else 'default')");
    bake->add_flag("--force", p.force, "rebuild even when the cached base is fresh");
    bake->add_flag("--json", p.json, "events as JSON lines on stdout");

    auto* down = app.add_subcommand("down", "stop a project's VM (its disk is kept)");
    down->add_option("name", p.name, "project");
    down->add_flag("--json", p.json, "events as JSON lines on stdout");

    auto* destroy = app.add_subcommand("destroy", "delete a project's VM and its disk");
    destroy->add_option("name", p.name, "project");
    destroy->add_flag("-y,--yes", p.yes, "do not ask for confirmation");
    destroy->add_flag("--json", p.json, "events as JSON lines on stdout");

    auto* list = app.add_subcommand("list", "VMs and configured projects");
    list->alias("ls");
    list->add_flag("--json", p.json, "one JSON object per line");

    auto* run = app.add_subcommand("run", "run a command in a project's VM: machine run NAME -- CMD...");
    run->add_option("name", p.name, "project")->required();

    auto* pin = app.add_subcommand("pin", "pin the host key a project's VM presents now (for a VM machine did not create)");
    pin->add_option("name", p.name, "project")->required();
    pin->add_flag("--replace", p.replace, "replace a different pinned key (prints both)");
    pin->footer(R"(
machine checks a VM's SSH host key against the key pinned when machine created the VM, on every
connection (up, ssh, run, claude, codex, secrets, sessions, watch, the repo clones). A VM machine
did not create, or whose pin was lost, has none and is refused; `machine pin NAME` records the key
the VM presents now and prints its fingerprint. When a different key is pinned, `pin` refuses and
prints both fingerprints; `--replace` then records the new one. Only do either when you know why
the VM has that key (you recreated it yourself): otherwise something may be intercepting the
connection.)");

    auto* watch = app.add_subcommand("watch", "stream what every VM is doing until Ctrl-C");
    watch->add_option("names", p.names, "VMs to watch (default: all)");
    watch->add_flag("--json", p.json, "one JSON envelope per line");

    auto* ssh = app.add_subcommand("ssh", "open a login shell in a project's VM");
    ssh->alias("shell");
    ssh->add_option("name", p.name, "project");

    for (const char* agent : {"claude", "codex"}) {
        auto* sub = app.add_subcommand(agent, std::string("attach to ") + (agent[1] == 'l' ? "Claude Code" : "Codex") +
                                                  " in the VM's tmux session (started, and the VM brought up, when needed)");
        sub->add_option("name", p.name, "project");
        sub->add_option("--session", p.session, std::string("session name, for more than one per VM (default: ") + agent + ")");
    }

    auto* sessions = app.add_subcommand("sessions", "agent sessions in a project's VM, and who is attached");
    sessions->add_option("name", p.name, "project");
    sessions->add_flag("--json", p.json, "one JSON object per session");

    auto* secrets = app.add_subcommand("secrets", "render a project's secrets into its VM's memory (tmpfs), or clear them");
    secrets->add_option("name", p.name, "project");
    secrets->add_option("--repo", p.repo, "only the sets this repo's .envrc uses (use op_env ID)");
    auto* clear = secrets->add_flag("--clear", p.clear, "overwrite the rendered secrets with zeros and remove them");
    secrets->add_flag("--list", p.list, "the sets rendered in the VM: names, variable counts, sizes, times")
        ->excludes(clear)
        ->excludes("--repo");
    secrets->add_flag("--json", p.json, "events as JSON lines on stdout");

    app.add_subcommand("init", "write a documented projects.toml to start from (never over an existing one)");

    auto* doctor = app.add_subcommand("doctor", "check what machine needs on this computer, with a fix for each failure");
    doctor->add_flag("--json", p.json, "one JSON object: checks and a summary");

    // Started by machine itself (detached) to filter a project's forwarded SSH agent.
    auto* proxy = app.add_subcommand("agent-proxy", "");
    proxy->group("");
    proxy->add_option("--listen", p.listen)->required();
    proxy->add_option("--upstream", p.upstream)->required();
    proxy->add_option("--vm-dir", p.vm_dir)->required();
    proxy->add_option("--allow", p.allowed)->required();

    std::vector<char*> cli_argv{argv[0]};
    for (auto& a : args) cli_argv.push_back(a.data());
    try {
        app.parse(static_cast<int>(cli_argv.size()), cli_argv.data());
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return static_cast<int>(exit_code::usage);
    }
    for (auto* sub : app.get_subcommands()) p.command = sub->get_name();
    if (p.command == "run" && p.run_command.empty()) {
        std::fprintf(stderr, "machine: usage: machine run NAME -- COMMAND [ARGS...]\n");
        return static_cast<int>(exit_code::usage);
    }

    if (p.command == "agent-proxy") {
        setup_logging("info");
        return vm::run_agent_proxy(p.listen, p.upstream, p.vm_dir, p.allowed);
    }
    setup_logging(p.log_level);
    asio::io_context io;
    context ctx(io, p.json);
    if (p.json) ctx.bus.add(std::make_shared<events::json_lines_sink>(stdout));
    else ctx.bus.add(std::make_shared<events::terminal_sink>(stdout, p.command == "watch"));

    // First Ctrl-C: stop gracefully (children get SIGINT, then SIGTERM); second: SIGKILL.
    asio::signal_set signals(io, SIGINT, SIGTERM);
    std::function<void(std::error_code, int)> on_signal = [&](std::error_code ec, int) {
        if (ec) return;
        if (ctx.cancel.current() == cancel_signal::none) {
            std::fprintf(stderr, "\nmachine: interrupting (Ctrl-C again to force)\n");
            ctx.cancel.trigger(cancel_signal::graceful);
        } else {
            ctx.cancel.trigger(cancel_signal::forceful);
        }
        signals.async_wait(on_signal);
    };
    signals.async_wait(on_signal);

    int code = 0;
    std::exception_ptr failure;
    auto main_task = dispatch(ctx, p);
    asio::co_spawn(io, std::move(main_task), [&](std::exception_ptr e, int c) {
        failure = e;
        code = c;
        signals.cancel();
    });
    io.run();

    const std::string vm = p.name.value_or(p.names.size() == 1 ? p.names[0] : "");
    if (!failure) return code;
    try {
        std::rethrow_exception(failure);
    } catch (const interrupted_error& e) {
        std::fprintf(stderr, "machine: interrupted\n");
        // For watch, Ctrl-C is the normal way out, not an error worth an event.
        if (ctx.json && p.command != "watch") ctx.emit(events::error(vm, "interrupted"));
        return static_cast<int>(exit_code::interrupted);
    } catch (const error& e) {
        report(&ctx, vm, e);
        return static_cast<int>(e.code());
    } catch (const std::exception& e) {
        report(&ctx, vm, error(std::string("internal error: ") + e.what()));
        return static_cast<int>(exit_code::failure);
    }
}

} // namespace machine::cli
