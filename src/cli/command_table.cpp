// The rows of the command table, and the handlers that hand each command's arguments to its
// cmd_* function. A new command: `cmd_NAME` declared in cli.hpp and written in a file of its own
// (src/cli/NAME.cpp, picked up by CMake), a handler below that reads its arguments and calls it,
// and its row (and a probe in tests/cli/test_cli.cpp, which fails without one). How a row
// becomes the parser, --help and the completion scripts is src/cmdline's business
// (include/machine/cmdline.hpp), which knows nothing of machine's handlers or configuration.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "command_table.hpp"
#include "create.hpp"
#include "machine/config.hpp"
#include "machine/paths.hpp"

namespace machine::cli {

namespace {

using cmdline::completes;
using cmdline::excluding;
using cmdline::flag;
using cmdline::number;
using cmdline::one_of;
using cmdline::positional;
using cmdline::positionals;
using cmdline::repeatable;
using cmdline::required;
using cmdline::value;

const char* const kProject = "project";

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

asio::awaitable<int> down(context& ctx, const arguments& a) {
    co_return co_await cmd_down(ctx, a.value("name"), a.flag("--hibernate"));
}

asio::awaitable<int> destroy(context& ctx, const arguments& a) {
    // "--force" is the key of "-y,--yes,--force" (an option's key is its last spelling).
    co_return co_await cmd_destroy(ctx, a.value("name"), a.flag("--force"));
}

asio::awaitable<int> list(context& ctx, const arguments&) { co_return co_await cmd_list(ctx); }

// pause and resume: the row's name says which.
asio::awaitable<int> pause(context& ctx, const arguments& a) {
    co_return co_await cmd_pause(ctx, a.values("names"), a.command == "resume");
}

asio::awaitable<int> snapshot(context& ctx, const arguments& a) {
    const snapshot_action action = a.flag("--list")     ? snapshot_action::list
                                   : a.flag("--delete") ? snapshot_action::remove
                                                        : snapshot_action::create;
    co_return co_await cmd_snapshot(ctx, action, a.value("name"), a.value("tag"));
}

asio::awaitable<int> restore(context& ctx, const arguments& a) {
    co_return co_await cmd_restore(ctx, *a.value("name"), *a.value("tag"));
}

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

asio::awaitable<int> login(context& ctx, const arguments& a) {
    login_options opt;
    opt.tool = a.value("tool");
    if (opt.tool && opt.tool->empty()) opt.tool.reset();
    opt.status = a.flag("--status");
    opt.with_token = a.flag("--with-token");
    opt.from_op = a.value("--from-op");
    if (opt.from_op && opt.from_op->empty()) opt.from_op.reset();
    opt.from_command = a.flag("--from-command");
    opt.argv = a.values("command");
    co_return co_await cmd_login(ctx, std::move(opt));
}

asio::awaitable<int> logout(context& ctx, const arguments& a) {
    co_return co_await cmd_logout(ctx, a.value("tool").value_or(""));
}

asio::awaitable<int> net(context& ctx, const arguments& a) {
    co_return co_await cmd_net(ctx, a.value("name"), a.number("--last"));
}

asio::awaitable<int> create(context& ctx, const arguments& a) {
    create_options opt;
    opt.name = a.value("name");
    opt.repos = a.values("--repo");
    opt.profiles = a.values("--profile");
    opt.shell = a.value("--shell");
    opt.cpus = a.value("--cpus");
    opt.memory = a.value("--memory");
    opt.disk = a.value("--disk");
    opt.yes = a.flag("--yes");
    co_return co_await cmd_create(ctx, std::move(opt));
}

asio::awaitable<int> init(context& ctx, const arguments&) { co_return co_await cmd_init(ctx); }

asio::awaitable<int> doctor(context& ctx, const arguments&) { co_return co_await cmd_doctor(ctx); }

int completion(const arguments& a) {
    std::fputs(cmdline::completion_script(a.value("shell").value_or(""), program().commands, global_options()).c_str(),
               stdout);
    return 0;
}

// `machine man-page`: machine.1, made at build time from this table (cmdline::man_page).
int print_man_page(const arguments&) {
    std::fputs(cmdline::man_page(program()).c_str(), stdout);
    return 0;
}

// `machine project-names`: the projects configured in projects.toml, one per line, read from
// that file alone (no Lima, no .machine.toml), for completion scripts (completes::project). A
// broken configuration prints nothing at all (exit 2): a script completes nothing rather than
// show an error.
int print_project_names(const arguments&) {
    try {
        const auto file = paths::config_dir() / "projects.toml";
        std::ifstream in(file, std::ios::binary);
        if (!in) return 0;  // no projects.toml: no projects
        std::ostringstream text;
        text << in.rdbuf();
        // The host's resources only size VMs: fixed ones spare detecting them.
        const config::config cfg = config::parse_projects(text.str(), file, config::host_resources{});
        for (const auto& [name, project] : cfg.projects) std::printf("%s\n", name.c_str());
        return 0;
    } catch (...) {
        return static_cast<int>(exit_code::usage);
    }
}

command row(cmdline::spec spec, asio::awaitable<int> (*run)(context&, const arguments&)) {
    command c;
    static_cast<cmdline::spec&>(c) = std::move(spec);
    c.run = run;
    return c;
}

command row(cmdline::spec spec, int (*run_now)(const arguments&)) {
    command c;
    static_cast<cmdline::spec&>(c) = std::move(spec);
    c.run_now = run_now;
    return c;
}

int agent_proxy(const arguments& a) {
    setup_logging("info");
    return vm::run_agent_proxy(*a.value("--listen"), *a.value("--upstream"), *a.value("--vm-dir"), a.values("--allow"));
}

int net_proxy(const arguments& a) {
    setup_logging("info");
    vm::net_proxy_arguments args;
    args.vm = *a.value("--vm");
    args.listen = *a.value("--listen");
    args.vm_dir = *a.value("--vm-dir");
    args.audit_log = *a.value("--audit-log");
    args.egress = *a.value("--egress");
    args.allow = a.values("--allow");
    args.host_ports = a.values("--host-port");
    return vm::run_net_proxy(args);
}

const std::vector<command>& table() {
    static const std::vector<command> rows{
        row({.name = "up",
             .help = "create and start projects' VMs (a fast no-op when they run)",
             .options = {positionals("names", "projects (default: the .machine.toml project, else 'default')",
                                     completes::project),
                         flag("--all", "every configured project"),
                         number("--parallel", "VMs booting at once (default: as many as fit in free memory)"),
                         flag("--fail-fast", "cancel the others when one VM fails"), json_flag(),
                         number("--timeout", "minutes to wait for the VM to boot", 30)}}, up),
        row({.name = "bake",
             .help = "build the cached base new VMs are cloned from (up does it when needed)",
             .options = {positional("name", "project whose profiles to bake (default: the .machine.toml project, else 'default')",
                                    completes::project),
                         flag("--force", "rebuild even when the cached base is fresh"), json_flag()}}, bake),
        row({.name = "down",
             .help = "stop a project's VM (its disk is kept)",
             .options = {positional("name", kProject, completes::project),
                         flag("--hibernate", "save the running VM's memory to disk first: the next up resumes it in "
                                             "seconds, its processes and sessions as they were (machine's Lima stand-in)"),
                         json_flag()}}, down),
        row({.name = "destroy",
             .help = "delete a project's VM and its disk",
             .options = {positional("name", kProject, completes::project),
                         flag("-y,--yes,--force", "do not ask for confirmation (--force: the reference tool's spelling)"),
                         json_flag()}}, destroy),
        row({.name = "pause",
             .help = "stop VMs' CPUs, keeping their memory: seconds to resume, sessions kept (QEMU only)",
             .options = {positionals("names", "projects (default: the .machine.toml project, else 'default')",
                                     completes::project),
                         json_flag()}}, pause),
        row({.name = "resume",
             .help = "continue paused VMs; returns when each VM's agent answers again",
             .options = {positionals("names", "projects (default: the .machine.toml project, else 'default')",
                                     completes::project),
                         json_flag()}}, pause),
        row({.name = "snapshot",
             .help = "take a snapshot of a project's VM (running: disk and memory; stopped: disk), list or delete them",
             .options = {positional("name", kProject, completes::project),
                         positional("tag", "the snapshot's name (default: snap-YYYYMMDD-HHMMSS, UTC)"),
                         flag("--list", "the snapshots of the VM (default: of every VM)"),
                         excluding(flag("--delete", "delete snapshot TAG of VM NAME"), {"--list"}),
                         json_flag()},
             .footer = R"(
Snapshots are Lima's (limactl snapshot): a running VM's hold its disk and memory and restore
both; a stopped VM's hold its disk only, and are restored while it is stopped. They live inside
the VM's disk: destroy removes them with it.)"}, snapshot),
        row({.name = "restore",
             .help = "bring a project's VM back to a snapshot (its host key pin stays: it is the same machine)",
             .options = {required(positional("name", kProject, completes::project)),
                         required(positional("tag", "the snapshot to restore (machine snapshot --list)")),
                         json_flag()}}, restore),
        row({.name = "list",
             .help = "VMs and configured projects",
             .options = {json_flag("one JSON object per line")},
             .aliases = {"ls"}}, list),
        row({.name = "run",
             .help = "run a command in a project's VM: machine run NAME -- CMD...",
             .options = {required(positional("name", kProject, completes::project))},
             .trailing = "COMMAND [ARGS...]"}, run),
        row({.name = "pin",
             .help = "pin the host key a project's VM presents now (for a VM machine did not create)",
             .options = {required(positional("name", kProject, completes::project)),
                         flag("--replace", "replace a different pinned key (prints both)")},
             .footer = R"(
machine checks a VM's SSH host key against the key pinned when machine created the VM, on every
connection (up, ssh, run, claude, codex, secrets, sessions, watch, the repo clones). A VM machine
did not create, or whose pin was lost, has none and is refused; `machine pin NAME` records the key
the VM presents now and prints its fingerprint. When a different key is pinned, `pin` refuses and
prints both fingerprints; `--replace` then records the new one. Only do either when you know why
the VM has that key (you recreated it yourself): otherwise something may be intercepting the
connection.)"}, pin),
        row({.name = "watch",
             .help = "stream what every VM is doing until Ctrl-C",
             .options = {positionals("names", "VMs to watch (default: all)", completes::project),
                         json_flag("one JSON envelope per line")},
             .live = true}, watch),
        row({.name = "ssh",
             .help = "open a login shell in a project's VM",
             .options = {positional("name", kProject, completes::project)},
             .aliases = {"shell"}}, ssh),
        row({.name = "claude",
             .help = "attach to Claude Code in the VM's tmux session (started, and the VM brought up, when needed)",
             .options = {positional("name", kProject, completes::project),
                         value("--session", "session name, for more than one per VM (default: claude)")}}, agent_session),
        row({.name = "codex",
             .help = "attach to Codex in the VM's tmux session (started, and the VM brought up, when needed)",
             .options = {positional("name", kProject, completes::project),
                         value("--session", "session name, for more than one per VM (default: codex)")}}, agent_session),
        row({.name = "sessions",
             .help = "agent sessions in a project's VM, and who is attached",
             .options = {positional("name", kProject, completes::project), json_flag("one JSON object per session")}}, sessions),
        row({.name = "secrets",
             .help = "render a project's secrets into its VM's memory (tmpfs), or clear them",
             .options = {positional("name", kProject, completes::project),
                         value("--repo", "only the sets this repo's .envrc uses (use op_env ID)"),
                         flag("--clear", "overwrite the rendered secrets with zeros and remove them"),
                         excluding(flag("--list", "the sets rendered in the VM: names, variable counts, sizes, times"),
                                   {"--clear", "--repo"}),
                         json_flag()}}, secrets),
        row({.name = "login",
             .help = "keep an agent's login on this computer (claude, codex, gh) for its VMs; --status shows them",
             .options = {one_of(positional("tool", "the tool: claude, codex or gh"), {"claude", "codex", "gh"}),
                         flag("--with-token", "read the token from standard input (for scripts)"),
                         excluding(value("--from-op", "a 1Password reference (op://vault/item/field), read at each use"),
                                   {"--with-token"}),
                         excluding(flag("--from-command", "the token is what the command after -- prints, run at each use"),
                                   {"--with-token", "--from-op"}),
                         positionals("command", "with --from-command: the command and its arguments, after --"),
                         excluding(flag("--status", "which tools are logged in, their variables and sources (never a value)"),
                                   {"--with-token", "--from-op", "--from-command"}),
                         json_flag("one JSON object per tool")},
             .footer = R"(
Without an option the token is asked at a hidden prompt. claude takes the long-lived OAuth token
`claude setup-token` prints (sk-ant-oat..., exported as CLAUDE_CODE_OAUTH_TOKEN) or an API key
(sk-ant-api..., ANTHROPIC_API_KEY); codex an OpenAI API key (sk-..., OPENAI_API_KEY); gh a token
(ghp_, gho_, ghu_, ghs_, ghr_, github_pat_ or 40 hex digits, GH_TOKEN). A pasted token is kept in
a 0600 file under machine's state directory; --from-op and --from-command keep only where to
read it, and read it once now to check it:
  machine login gh --from-command -- pass show github/token
A refused token or a failing source stores nothing and keeps the previous login. The VMs whose
project allows the tool (agent_auth; default every tool) get it in memory at `machine up` and
at the next attach: login shells and agent sessions there have the variable.)"}, login),
        row({.name = "logout",
             .help = "remove an agent's login from this computer and from every running VM",
             .options = {required(one_of(positional("tool", "the tool: claude, codex or gh"), {"claude", "codex", "gh"})),
                         json_flag()}}, logout),
        row({.name = "net",
             .help = "a VM's last connections (allowed and refused) and a summary by destination",
             .options = {positional("name", kProject, completes::project),
                         number("--last", "how many of the last connections to list", 20),
                         json_flag("one JSON object: records and summary")}}, net),
        row({.name = "create",
             .help = "add a project to projects.toml: asks for its repos, profiles, shell, cpus, memory and disk",
             .options = {positional("name", "the new project's name (asked when not given)"),
                         repeatable(value("--repo", "a git URL to clone, the first being the primary repo (repeatable)")),
                         repeatable(value("--profile", "a tool profile (repeatable; 'none' for none)")),
                         one_of(value("--shell", "login shell"), {"zsh", "bash"}),
                         value("--cpus", "virtual CPUs"),
                         value("--memory", "memory: 8 means 8GiB, or 512MiB, 1.5GiB..."),
                         value("--disk", "disk size, in the same forms as --memory"),
                         flag("-y,--yes", "ask nothing: the defaults for what no option gives (for scripts)")},
             .footer = R"(
Each answer is checked as projects.toml's loader checks that key, and asked again when it is
wrong; an empty answer takes the default shown, which is then not written (it keeps following
default_shell, default_profile and this computer's size). Options answer their questions; on a
terminal the others are asked, and without one --yes is needed. The table is added after what
projects.toml holds (created with its documented header when there is none), never over a
project of that name.)"}, create),
        row({.name = "init",
             .help = "write a documented projects.toml to start from (never over an existing one)"}, init),
        row({.name = "doctor",
             .help = "check what machine needs on this computer, with a fix for each failure",
             .options = {json_flag("one JSON object: checks and a summary")}}, doctor),
        row({.name = "completion",
             .help = "print a shell completion script (see README: Shell completion)",
             .options = {required(one_of(positional("shell", "the shell to complete in"), {"bash", "zsh", "fish"}))}}, completion),
        // For the build: the manual page (above).
        row({.name = "man-page", .help = "", .hidden = true}, print_man_page),
        // For completion scripts: the configured project names, one per line (above).
        row({.name = "project-names", .help = "", .hidden = true}, print_project_names),
        // Started by machine itself (detached) to filter a project's forwarded SSH agent.
        row({.name = "agent-proxy",
             .help = "",
             .options = {required(value("--listen", "", completes::file)), required(value("--upstream", "", completes::file)),
                         required(value("--vm-dir", "", completes::file)), required(repeatable(value("--allow", "")))},
             .hidden = true}, agent_proxy),
        // Started by machine itself (detached) as a VM's egress proxy (src/net).
        row({.name = "net-proxy",
             .help = "",
             .options = {required(value("--vm", "")), required(value("--listen", "", completes::file)),
                         required(value("--vm-dir", "", completes::file)),
                         required(value("--audit-log", "", completes::file)),
                         required(one_of(value("--egress", ""), {"open", "allowlist"})),
                         repeatable(value("--allow", "")), repeatable(value("--host-port", ""))},
             .hidden = true}, net_proxy),
    };
    return rows;
}

const char* const kFooter = R"(
Exit codes:
  0    success
  1    failure (Lima or the VM reported an error; the message says which)
  2    usage or configuration error (nothing was run)
  130  interrupted (Ctrl-C; a second Ctrl-C stops children at once)
  `run` and `ssh` exit with the remote command's status, `claude` and `codex` with ssh's:
  0 after detaching or when the agent ended, 255 when the connection to the VM was lost
  (machine then says whether the VM stopped).

Environment:
  MACHINE_LIMACTL      the limactl to use (else limactl in PATH, else on Linux machine's
                       Lima stand-in installed next to it: lib/machine/limactl)
  MACHINE_CONFIG_DIR   where projects.toml lives (default $XDG_CONFIG_HOME/machine)
  MACHINE_STATE_DIR    rendered templates and locks (default $XDG_STATE_HOME/machine)
  MACHINE_LIMACTL_TIMEOUT  seconds a limactl list/stop/delete may take (default 60/300; a
                           create gets a boot's 30 min on top: it may fetch or build the image)
)";

} // namespace

std::span<const command> commands() { return table(); }

std::span<const option> global_options() {
    static const std::vector<option> options{cmdline::choice(
        "--log-level", "log detail on stderr", {"trace", "debug", "info", "warn", "error", "off"}, "warn")};
    return options;
}

const cmdline::program& program() {
    static const std::vector<const cmdline::spec*> specs = [] {
        std::vector<const cmdline::spec*> out;
        for (const command& row : commands()) out.push_back(&row);
        return out;
    }();
    static const cmdline::program machine{
        .name = "machine",
        .description = "machine: one disposable VM per project, for coding agents.",
        .footer = kFooter,
        .version = "machine " MACHINE_VERSION,
        .globals = global_options(),
        .commands = specs,
    };
    return machine;
}

} // namespace machine::cli
