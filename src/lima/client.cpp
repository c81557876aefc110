#include <unistd.h>

#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "machine/cancel.hpp"
#include "machine/lima.hpp"
#include "machine/paths.hpp"
#include "machine/platform.hpp"
#include "machine/proc.hpp"
#include "machine/text.hpp"

namespace machine::lima {

namespace fs = std::filesystem;
using asio::awaitable;

namespace {
// How much of limactl's stderr an error keeps as diagnostics.
constexpr std::size_t diagnostics_bytes = 4096;

std::string go_duration(std::chrono::seconds s) { return std::to_string(s.count()) + "s"; }
} // namespace

limactl_choice find_limactl() {
    if (const auto configured = paths::env("MACHINE_LIMACTL"); !configured.empty()) {
        if (::access(configured.c_str(), X_OK) != 0 || fs::is_directory(configured))
            throw error("MACHINE_LIMACTL=" + configured + " is not an executable file");
        return {configured, "MACHINE_LIMACTL"};
    }
    if (auto found = proc::find_program("limactl")) return {*found, "limactl in PATH"};
#ifdef __linux__
    // No Lima: machine's stand-in (tools/limactl: the same CLI contract, QEMU underneath).
    std::error_code ec;  // is_directory's (no throw): access() has found the candidate already
    const fs::path exe_dir = platform::self_executable().parent_path();
    if (!exe_dir.empty()) {
        for (const fs::path& candidate : {exe_dir / ".." / "lib" / "machine" / "limactl",  // installed
                                          exe_dir / "lib" / "machine" / "limactl"}) {       // build tree
            if (::access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate, ec))
                return {candidate.lexically_normal(), "no limactl in PATH: machine's Lima stand-in"};
        }
    }
#endif
    throw error(
        "limactl not found: install Lima (https://lima-vm.io; `brew install lima` on macOS), "
        "or on Linux without Lima set MACHINE_LIMACTL to the stand-in (tools/limactl in machine's "
        "source tree)");
}

// ---- argv ------------------------------------------------------------------------------------
// `--tty=false` everywhere: no prompts, no editor, no colors, whatever our stdout is.

std::vector<std::string> argv_builder::list_json(const std::vector<std::string>& names) const {
    std::vector<std::string> argv{limactl, "--tty=false", "list", "--json"};
    argv.insert(argv.end(), names.begin(), names.end());
    return argv;
}

std::vector<std::string> argv_builder::create(const std::string& name, const fs::path& tmpl,
                                              const std::vector<std::string>& sets) const {
    std::vector<std::string> argv{limactl, "--tty=false", "create", "--name=" + name};
    for (const auto& s : sets) argv.push_back("--set=" + s);
    argv.push_back(tmpl.string());
    return argv;
}

std::vector<std::string> argv_builder::start(const std::string& name, std::chrono::seconds timeout) const {
    return {limactl, "--tty=false", "start", "--timeout=" + go_duration(timeout), name};
}

std::vector<std::string> argv_builder::start_new(const std::string& name, const fs::path& tmpl,
                                                 std::chrono::seconds timeout) const {
    return {limactl, "--tty=false", "start", "--timeout=" + go_duration(timeout), "--name=" + name, tmpl.string()};
}

std::vector<std::string> argv_builder::stop(const std::string& name, bool force) const {
    std::vector<std::string> argv{limactl, "--tty=false", "stop"};
    if (force) argv.push_back("-f");
    argv.push_back(name);
    return argv;
}

std::vector<std::string> argv_builder::remove(const std::string& name, bool force) const {
    std::vector<std::string> argv{limactl, "--tty=false", "delete"};
    if (force) argv.push_back("-f");
    argv.push_back(name);
    return argv;
}

std::vector<std::string> argv_builder::clone(const std::string& from, const std::string& to,
                                             const std::vector<std::string>& sets) const {
    std::vector<std::string> argv{limactl, "--tty=false", "clone"};
    for (const auto& s : sets) argv.push_back("--set=" + s);
    argv.push_back(from);
    argv.push_back(to);
    return argv;
}

std::vector<std::string> argv_builder::edit(const std::string& name, const std::vector<std::string>& sets) const {
    std::vector<std::string> argv{limactl, "--tty=false", "edit"};
    for (const auto& s : sets) argv.push_back("--set=" + s);
    argv.push_back(name);
    return argv;
}

std::vector<std::string> argv_builder::shell(const std::string& name, const std::vector<std::string>& cmd,
                                             const std::string& workdir) const {
    std::vector<std::string> argv{limactl, "--tty=false", "shell"};
    if (!workdir.empty()) {
        argv.push_back("--workdir");
        argv.push_back(workdir);
    }
    argv.push_back(name);
    if (!cmd.empty()) {
        argv.push_back("--");
        argv.insert(argv.end(), cmd.begin(), cmd.end());
    }
    return argv;
}

std::vector<std::string> argv_builder::version() const { return {limactl, "--version"}; }
std::vector<std::string> argv_builder::info() const { return {limactl, "info"}; }

std::vector<std::string> argv_builder::snapshot(const std::string& verb, const std::string& name,
                                                const std::string& tag) const {
    return {limactl, "--tty=false", "snapshot", verb, name, "--tag=" + tag};
}

std::vector<std::string> argv_builder::hibernate(const std::string& name) const {
    return {limactl, "--tty=false", "hibernate", name};
}

std::vector<std::string> argv_builder::snapshot_list(const std::string& name) const {
    return {limactl, "--tty=false", "snapshot", "list", name, "--quiet"};
}

// ---- client ----------------------------------------------------------------------------------

client::client(fs::path limactl, cancel_signal* cancel, timeouts t)
    : limactl_(std::move(limactl)), cancel_(cancel), timeouts_(t), argv_{limactl_.string()} {}

namespace {

// What to call the invocation in messages: "limactl start web".
std::string describe(const std::vector<std::string>& argv) {
    std::string out = "limactl";
    for (std::size_t i = 1; i < argv.size(); ++i) {
        // `start --name=N TEMPLATE` is about instance N, not the template's path.
        if (argv[i].rfind("--name=", 0) == 0) return out + " " + argv[i].substr(7);
        if (argv[i].rfind("--", 0) == 0 || argv[i] == "-f") continue;
        out += " " + argv[i];
        if (argv[i] != "list" && argv[i] != "create" && argv[i] != "start" && argv[i] != "stop" &&
            argv[i] != "delete" && argv[i] != "clone" && argv[i] != "shell" && argv[i] != "snapshot" &&
            argv[i] != "apply" && argv[i] != "hibernate")
            break;  // the verb and its first operand are enough
    }
    return out;
}

awaitable<proc::result> invoke(std::vector<std::string> argv, std::chrono::seconds timeout,
                               cancel_signal* cancel, const environment& env,
                               proc::line_callback on_stderr_line = {}) {
    const std::string what = describe(argv);
    proc::command cmd;
    cmd.argv = std::move(argv);
    cmd.env_set = env.set;
    cmd.env_unset = env.unset;
    cmd.env_unset.push_back("_LIMA_OUTPUT_IS_TTY");  // it would make `list --json` pretty-print
    proc::run_options opt;
    opt.limit.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
    opt.cancel = cancel;
    opt.on_stderr_line = std::move(on_stderr_line);
    proc::result r;
    try {
        r = co_await proc::run(std::move(cmd), std::move(opt));
    } catch (const proc::spawn_error& e) {
        throw error(std::string(e.what()) + " (set MACHINE_LIMACTL or install Lima)");
    }
    if (r.cancelled) throw interrupted_error();
    if (r.timed_out) {
        throw timeout_error(what + " did not finish within " + std::to_string(timeout.count()) +
                                "s and was stopped",
                            exit_code::failure, text::tail(r.err, diagnostics_bytes));
    }
    co_return r;
}

[[noreturn]] void fail(const std::string& what, const proc::result& r) {
    std::string reason = fatal_message(r.err);
    if (reason.empty()) {
        reason = r.signal ? "killed by signal " + std::to_string(r.signal)
                          : "exit status " + std::to_string(r.exit_code);
    }
    throw command_error(what + ": " + reason, r.status(), text::tail(r.err, diagnostics_bytes));
}

awaitable<void> invoke_checked(std::vector<std::string> argv, std::chrono::seconds timeout,
                               cancel_signal* cancel, const environment& env,
                               proc::line_callback on_stderr_line = {}) {
    const std::string what = describe(argv);
    const auto r = co_await invoke(std::move(argv), timeout, cancel, env, std::move(on_stderr_line));
    if (!r.ok()) fail(what, r);
}

} // namespace

std::unique_ptr<driver> client::fork(cancel_signal* cancel, timeouts t) const {
    return std::make_unique<client>(limactl_, cancel, t);
}

awaitable<std::string> client::version() {
    auto argv = argv_.version();
    const auto r = co_await invoke(std::move(argv), timeouts_.query, cancel_, env_);
    if (!r.ok()) fail("limactl --version", r);
    co_return normalize_version(text::trim(r.out));
}

awaitable<std::string> client::info_json() {
    // One Lima per process: its answer does not change while machine runs.
    static std::optional<std::string> known;
    if (!known) {
        auto argv = argv_.info();
        const auto r = co_await invoke(std::move(argv), timeouts_.query, cancel_, env_);
        if (!r.ok()) fail("limactl info", r);
        known = r.out;
    }
    co_return *known;
}

awaitable<bool> client::isolates_network() {
    const std::string info = co_await info_json();
    co_return parse_info_isolates(info);
}

awaitable<bool> client::can_hibernate() {
    const std::string info = co_await info_json();
    co_return parse_info_flag(info, "machineHibernate");
}

awaitable<void> client::hibernate(std::string name) {
    auto argv = argv_.hibernate(name);
    // Writing the guest's memory to disk: a start's allowance.
    co_await invoke_checked(std::move(argv), timeouts_.start, cancel_, env_);
}

awaitable<std::optional<stand_in_image>> client::stand_in_image_status() {
    const std::string info = co_await info_json();
    co_return parse_info_guest_image(info);
}

awaitable<std::vector<instance>> client::list() {
    auto argv = argv_.list_json({});
    const auto r = co_await invoke(std::move(argv), timeouts_.query, cancel_, env_);
    if (!r.ok()) fail("limactl list", r);
    co_return parse_list(r.out);
}

awaitable<std::optional<instance>> client::find(std::string name) {
    std::vector<std::string> names{name};
    auto argv = argv_.list_json(names);
    const auto r = co_await invoke(std::move(argv), timeouts_.query, cancel_, env_);
    if (!r.ok()) {
        if (fatal_message(r.err) == "unmatched instances") co_return std::nullopt;
        fail("limactl list " + name, r);
    }
    for (auto& i : parse_list(r.out))
        if (i.name == name) co_return std::move(i);
    co_return std::nullopt;
}

awaitable<std::vector<instance>> client::find_all(std::vector<std::string> names) {
    auto argv = argv_.list_json(names);
    const auto r = co_await invoke(std::move(argv), timeouts_.query, cancel_, env_);
    // Some names unknown: limactl still prints the others, then fails with "unmatched instances".
    if (!r.ok() && fatal_message(r.err) != "unmatched instances") fail("limactl list", r);
    co_return parse_list(r.out);
}

namespace {

proc::line_callback log_lines_to(log_handler on_log) {
    proc::line_callback on_line;
    if (on_log) {
        on_line = [on_log = std::move(on_log)](std::string_view raw) {
            if (auto line = parse_log_line(raw)) on_log(*line);
        };
    }
    return on_line;
}

} // namespace

awaitable<void> client::create(std::string name, fs::path tmpl, std::vector<std::string> sets, log_handler on_log) {
    auto argv = argv_.create(name, tmpl, sets);
    // Creating may download an image first (the stand-in: build it): a start's allowance too.
    co_await invoke_checked(std::move(argv), timeouts_.start + timeouts_.change, cancel_, env_,
                            log_lines_to(std::move(on_log)));
}

awaitable<void> client::start_new(std::string name, fs::path tmpl, log_handler on_log) {
    auto argv = argv_.start_new(name, tmpl, timeouts_.start);
    // Creating may download an image first: the same allowance as a start, plus the change's.
    co_await invoke_checked(std::move(argv), timeouts_.start + timeouts_.change, cancel_, env_,
                            log_lines_to(std::move(on_log)));
}

awaitable<void> client::start(std::string name, log_handler on_log) {
    auto argv = argv_.start(name, timeouts_.start);
    // limactl's own --timeout governs the boot; ours only catches a wedged limactl.
    co_await invoke_checked(std::move(argv), timeouts_.start + std::chrono::seconds(60), cancel_, env_,
                            log_lines_to(std::move(on_log)));
}

fs::path client::instance_dir(const std::string& name) const { return lima::instance_dir(name); }

awaitable<void> client::follow_host_agent(fs::path ha_log, std::function<bool(const ha_event&)> on_event,
                                    cancel_signal* cancel, std::chrono::system_clock::time_point since) {
    co_await follow_events(std::move(ha_log), std::move(on_event), cancel, since);
}

fs::path instance_dir(const std::string& name) {
    const std::string home = paths::env("LIMA_HOME");
    return (home.empty() ? paths::home_dir() / ".lima" : fs::path(home)) / name;
}

awaitable<void> client::stop(std::string name, bool force) {
    auto argv = argv_.stop(name, force);
    co_await invoke_checked(std::move(argv), timeouts_.change, cancel_, env_);
}

awaitable<void> client::remove(std::string name, bool force) {
    auto argv = argv_.remove(name, force);
    co_await invoke_checked(std::move(argv), timeouts_.change, cancel_, env_);
}

awaitable<void> client::edit(std::string name, std::vector<std::string> sets) {
    auto argv = argv_.edit(name, sets);
    co_await invoke_checked(std::move(argv), timeouts_.change, cancel_, env_);
}

awaitable<void> client::clone(std::string from, std::string to, std::vector<std::string> sets) {
    auto argv = argv_.clone(from, to, sets);
    co_await invoke_checked(std::move(argv), timeouts_.change, cancel_, env_);
}

awaitable<shell_result> client::shell(std::string name, std::vector<std::string> cmd,
                                              std::string workdir) {
    auto argv = argv_.shell(name, cmd, workdir);
    const auto r = co_await invoke(std::move(argv), timeouts_.change, cancel_, env_);
    // `limactl shell` passes the remote status through silently; its own failures (no such
    // instance, stopped) are fatal lines with status 1.
    if (r.exit_code == 1 && !fatal_message(r.err).empty()) fail("limactl shell " + name, r);
    co_return shell_result{r.status(), r.out, r.err};
}

// ---- QMP and snapshots ------------------------------------------------------------------------

namespace {

// A status query or a stop/cont is answered at once by a QEMU that works.
constexpr std::chrono::milliseconds qmp_timeout{3000};

fs::path qmp_socket_of(const std::string& name) {
    // The socket's path is ours to make: LIMA_HOME and a project name, nothing anyone printed.
    if (!text::is_valid_project_name(name)) throw error("not a VM name: " + text::escape_for_terminal(name));
    return qmp_socket(lima::instance_dir(name));
}

} // namespace

awaitable<std::string> client::run_state(std::string name) {
    co_return parse_qmp_status(qmp_execute(qmp_socket_of(name), R"({"execute":"query-status"})", qmp_timeout));
}

awaitable<void> client::pause(std::string name) {
    qmp_execute(qmp_socket_of(name), R"({"execute":"stop"})", qmp_timeout);
    co_return;
}

awaitable<void> client::resume(std::string name) {
    qmp_execute(qmp_socket_of(name), R"({"execute":"cont"})", qmp_timeout);
    co_return;
}

awaitable<std::vector<std::string>> client::snapshots(std::string name) {
    auto argv = argv_.snapshot_list(name);
    const auto r = co_await invoke(std::move(argv), timeouts_.query, cancel_, env_);
    if (!r.ok()) fail("limactl snapshot list " + name, r);
    co_return parse_snapshot_tags(r.out);
}

awaitable<std::vector<std::string>> client::snapshot(std::string verb, std::string name, std::string tag) {
    auto argv = argv_.snapshot(verb, name, tag);
    // savevm/loadvm write or read the guest's whole memory: a start's allowance.
    const auto r = co_await invoke(std::move(argv), timeouts_.start, cancel_, env_);
    if (!r.ok()) fail("limactl snapshot " + verb + " " + name, r);
    std::vector<std::string> warnings;
    for (const auto& raw : text::split_lines(r.err)) {
        const auto line = parse_log_line(raw);
        if (line && line->level == "warning" && line->msg.find("is experimental") == std::string::npos)
            warnings.push_back(line->msg);
    }
    co_return warnings;
}

} // namespace machine::lima
