// The rows of the command table, and the handlers that hand each command's arguments to its
// cmd_* function. A new command: its handler in a file of its own (src/cli/NAME.cpp, picked up
// by CMake), `asio::awaitable<int> NAME_command(context&, const arguments&)` declared here, and
// its row below (and a probe in tests/cli/test_cli.cpp, which fails without one).
#include <cstdio>

#include "agent_forwarding.hpp"
#include "command_table.hpp"
#include "completion.hpp"

namespace machine::cli {

namespace {

const char* const kProject = "project";
const char* const kAmbient = "project (default: the .machine.toml project, else 'default')";

option json_flag(std::string help = "events as JSON lines on stdout") { return flag("--json", std::move(help)); }

asio::awaitable<int> up(context& ctx, const arguments& a) {
    up_options opt;
    opt.names = a.values("names");
    opt.all = a.flag("--all");
    opt.parallel = a.number("--parallel");
    opt.fail_fast = a.flag("--fail-fast");
    opt.start_timeout = std::chrono::minutes(a.number("--timeout"));
    co_return co_await cmd_up(ctx, opt);
}

asio::awaitable<int> bake(context& ctx, const arguments& a) {
    co_return co_await cmd_bake(ctx, a.value("name"), a.flag("--force"));
}

asio::awaitable<int> down(context& ctx, const arguments& a) { co_return co_await cmd_down(ctx, a.value("name")); }

asio::awaitable<int> destroy(context& ctx, const arguments& a) {
    co_return co_await cmd_destroy(ctx, a.value("name"), a.flag("--yes"));
}

asio::awaitable<int> list(context& ctx, const arguments&) { co_return co_await cmd_list(ctx); }

asio::awaitable<int> run(context& ctx, const arguments& a) {
    co_return co_await cmd_run(ctx, a.value("name").value_or(""), a.trailing);
}

asio::awaitable<int> pin(context& ctx, const arguments& a) {
    co_return co_await cmd_pin(ctx, a.value("name").value_or(""), a.flag("--replace"));
}

asio::awaitable<int> watch(context& ctx, const arguments& a) { co_return co_await cmd_watch(ctx, a.values("names")); }

asio::awaitable<int> ssh(context& ctx, const arguments& a) { co_return co_await cmd_ssh(ctx, a.value("name")); }

// claude and codex: the row's name is the agent.
asio::awaitable<int> agent_session(context& ctx, const arguments& a) {
    co_return co_await cmd_agent_session(ctx, a.command, a.value("name"), a.value("--session"));
}

asio::awaitable<int> sessions(context& ctx, const arguments& a) { co_return co_await cmd_sessions(ctx, a.value("name")); }

asio::awaitable<int> secrets(context& ctx, const arguments& a) {
    const secrets_action action = a.flag("--clear")  ? secrets_action::clear
                                  : a.flag("--list") ? secrets_action::list
                                                     : secrets_action::render;
    co_return co_await cmd_secrets(ctx, a.value("name"), a.value("--repo"), action);
}

asio::awaitable<int> init(context& ctx, const arguments&) { co_return co_await cmd_init(ctx); }

asio::awaitable<int> doctor(context& ctx, const arguments&) { co_return co_await cmd_doctor(ctx); }

int completion(const arguments& a) {
    std::fputs(completion_script(a.value("shell").value_or(""), commands(), global_options()).c_str(), stdout);
    return 0;
}

int agent_proxy(const arguments& a) {
    setup_logging("info");
    return run_agent_proxy(*a.value("--listen"), *a.value("--upstream"), *a.value("--vm-dir"), a.values("--allow"));
}

const std::vector<command>& table() {
    static const std::vector<command> rows{
        {.name = "up",
         .help = "create and start projects' VMs (a fast no-op when they run)",
         .options = {positionals("names", "projects (default: the .machine.toml project, else 'default')",
                                 completes::project),
                     flag("--all", "every configured project"),
                     number("--parallel", "VMs booting at once (default: as many as fit in free memory)"),
                     flag("--fail-fast", "cancel the others when one VM fails"), json_flag(),
                     number("--timeout", "minutes to wait for the VM to boot", 30)},
         .run = up},
        {.name = "bake",
         .help = "build the cached base new VMs are cloned from (up does it when needed)",
         .options = {positional("name", "project whose profiles to bake (default: the .machine.toml project, else 'default')",
                                completes::project),
                     flag("--force", "rebuild even when the cached base is fresh"), json_flag()},
         .run = bake},
        {.name = "down",
         .help = "stop a project's VM (its disk is kept)",
         .options = {positional("name", kProject, completes::project), json_flag()},
         .run = down},
        {.name = "destroy",
         .help = "delete a project's VM and its disk",
         .options = {positional("name", kProject, completes::project), flag("-y,--yes", "do not ask for confirmation"),
                     json_flag()},
         .run = destroy},
        {.name = "list",
         .help = "VMs and configured projects",
         .options = {json_flag("one JSON object per line")},
         .run = list,
         .aliases = {"ls"}},
        {.name = "run",
         .help = "run a command in a project's VM: machine run NAME -- CMD...",
         .options = {required(positional("name", kProject, completes::project))},
         .run = run,
         .trailing = "COMMAND [ARGS...]"},
        {.name = "pin",
         .help = "pin the host key a project's VM presents now (for a VM machine did not create)",
         .options = {required(positional("name", kProject, completes::project)),
                     flag("--replace", "replace a different pinned key (prints both)")},
         .run = pin,
         .footer = R"(
machine checks a VM's SSH host key against the key pinned when machine created the VM, on every
connection (up, ssh, run, claude, codex, secrets, sessions, watch, the repo clones). A VM machine
did not create, or whose pin was lost, has none and is refused; `machine pin NAME` records the key
the VM presents now and prints its fingerprint. When a different key is pinned, `pin` refuses and
prints both fingerprints; `--replace` then records the new one. Only do either when you know why
the VM has that key (you recreated it yourself): otherwise something may be intercepting the
connection.)"},
        {.name = "watch",
         .help = "stream what every VM is doing until Ctrl-C",
         .options = {positionals("names", "VMs to watch (default: all)", completes::project),
                     json_flag("one JSON envelope per line")},
         .run = watch,
         .live = true},
        {.name = "ssh",
         .help = "open a login shell in a project's VM",
         .options = {positional("name", kProject, completes::project)},
         .run = ssh,
         .aliases = {"shell"}},
        {.name = "claude",
         .help = "attach to Claude Code in the VM's tmux session (started, and the VM brought up, when needed)",
         .options = {positional("name", kProject, completes::project),
                     value("--session", "session name, for more than one per VM (default: claude)")},
         .run = agent_session},
        {.name = "codex",
         .help = "attach to Codex in the VM's tmux session (started, and the VM brought up, when needed)",
         .options = {positional("name", kProject, completes::project),
                     value("--session", "session name, for more than one per VM (default: codex)")},
         .run = agent_session},
        {.name = "sessions",
         .help = "agent sessions in a project's VM, and who is attached",
         .options = {positional("name", kProject, completes::project), json_flag("one JSON object per session")},
         .run = sessions},
        {.name = "secrets",
         .help = "render a project's secrets into its VM's memory (tmpfs), or clear them",
         .options = {positional("name", kProject, completes::project),
                     value("--repo", "only the sets this repo's .envrc uses (use op_env ID)"),
                     flag("--clear", "overwrite the rendered secrets with zeros and remove them"),
                     excluding(flag("--list", "the sets rendered in the VM: names, variable counts, sizes, times"),
                               {"--clear", "--repo"}),
                     json_flag()},
         .run = secrets},
        {.name = "init",
         .help = "write a documented projects.toml to start from (never over an existing one)",
         .run = init},
        {.name = "doctor",
         .help = "check what machine needs on this computer, with a fix for each failure",
         .options = {json_flag("one JSON object: checks and a summary")},
         .run = doctor},
        {.name = "completion",
         .help = "print a shell completion script (see README: Shell completion)",
         .options = {required(one_of(positional("shell", "the shell to complete in"), {"bash", "zsh", "fish"}))},
         .run_now = completion},
        // For completion scripts: the configured project names, one per line (completion.cpp).
        {.name = "project-names", .help = "", .run_now = print_project_names, .hidden = true},
        // Started by machine itself (detached) to filter a project's forwarded SSH agent.
        {.name = "agent-proxy",
         .help = "",
         .options = {required(value("--listen", "", completes::file)), required(value("--upstream", "", completes::file)),
                     required(value("--vm-dir", "", completes::file)), required(repeatable(value("--allow", "")))},
         .run_now = agent_proxy,
         .hidden = true},
    };
    return rows;
}

} // namespace

std::span<const command> commands() { return table(); }

std::span<const option> global_options() {
    static const std::vector<option> options{
        choice("--log-level", "log detail on stderr", {"trace", "debug", "info", "warn", "error", "off"}, "warn")};
    return options;
}

} // namespace machine::cli
