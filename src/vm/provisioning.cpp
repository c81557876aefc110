#include "provisioning.hpp"

#include <algorithm>
#include <map>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "async_compat.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/proc.hpp"
#include "machine/protocol.hpp"
#include "machine/ssh.hpp"
#include "machine/render.hpp"
#include "machine/text.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
namespace pr = protocol;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// Transports git may use, on the host and in the VM: never ext:: (runs a command) or fd::.
constexpr const char* allowed_git_protocols = "https:http:ssh:git:file";

// git without prompts: a missing credential is an error, not a hang.
std::vector<std::pair<std::string, std::string>> git_env() {
    return {{"GIT_TERMINAL_PROMPT", "0"},
            {"GIT_ALLOW_PROTOCOL", allowed_git_protocols},
            {"GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=10 -o StrictHostKeyChecking=accept-new"}};
}

bool looks_like_ssh_public_key(std::string_view s) {
    return s.rfind("ssh-", 0) == 0 || s.rfind("ecdsa-", 0) == 0 || s.rfind("sk-ssh-", 0) == 0 ||
           s.rfind("sk-ecdsa-", 0) == 0;
}

// The host's global git settings machine copies, read by one `git config` call: key -> the
// last value, as `git config --get` would give it.
awaitable<std::map<std::string, std::string>> git_config_globals() {
    proc::command cmd;
    cmd.argv = {"git", "config", "--global", "-z", "--get-regexp", "^(user\\.(name|email|signingkey)|gpg\\.format)$"};
    std::map<std::string, std::string> values;
    try {
        const proc::result r = co_await proc::run(std::move(cmd));
        if (!r.ok()) co_return values;  // exit 1: none of them is set
        // -z: "key\nvalue\0" per entry; keys come lower-cased.
        std::string_view rest = r.out;
        while (!rest.empty()) {
            const auto end = rest.find('\0');
            const std::string_view entry = rest.substr(0, end);
            const auto nl = entry.find('\n');
            if (nl != std::string_view::npos) values[std::string(entry.substr(0, nl))] = std::string(entry.substr(nl + 1));
            if (end == std::string_view::npos) break;
            rest.remove_prefix(end + 1);
        }
    } catch (const proc::spawn_error&) {
        // no git on the host: no identity to copy
    }
    co_return values;
}

// user.signingkey as git reads it for gpg.format=ssh: a key, "key::" + a key, or a file.
std::string signing_key_from(std::string value) {
    if (value.rfind("key::", 0) == 0) value = value.substr(5);
    if (looks_like_ssh_public_key(value)) return value;
    if (value.empty()) return {};
    fs::path file = value.rfind("~/", 0) == 0 ? paths::home_dir() / value.substr(2) : fs::path(value);
    std::error_code ec;
    // A private key path: git signs with it, and its public half sits next to it.
    if (file.extension() != ".pub" && fs::exists(file.string() + ".pub", ec)) file += ".pub";
    try {
        const std::string line = text::last_line(paths::read_file(file).substr(0, 16384));
        if (looks_like_ssh_public_key(line)) return line;
    } catch (const error&) {
    }
    spdlog::warn("user.signingkey {} is not an SSH public key; commits in the VM will not be signed", file.string());
    return {};
}

std::string outcome_detail(const pr::step_outcome& s) {
    std::string why = s.reason;
    if (s.exit_code) why = "exit " + std::to_string(*s.exit_code);
    else if (s.signal) why = "killed by signal " + std::to_string(*s.signal);
    if (s.reason == "timeout") why = "timed out";
    if (!s.error.empty()) why += ": " + s.error;
    return why;
}

// Turns the agent's journal events about this provisioning into ours.
class step_reporter {
public:
    step_reporter(context& ctx, std::string vm) : ctx_(ctx), vm_(std::move(vm)) {}

    // false once the agent said the provisioning is over.
    bool on_event(const pr::event_record& e) {
        if (ctx_.raw_guest_events) ctx_.emit(from_guest(vm_, e));
        const auto text = [&e](const char* key) {
            const auto it = e.fields.find(key);
            return it != e.fields.end() && it->is_string() ? it->get<std::string>() : std::string();
        };
        const auto millis = [&e]() {
            const auto it = e.fields.find("duration_ms");
            return std::chrono::milliseconds(it != e.fields.end() && it->is_number_unsigned() ? it->get<std::int64_t>() : 0);
        };
        // A script in the VM may emit events with these names too; ours carry the plan.
        if (text("plan") != vm_) return true;
        const std::string step = text("step");
        if (e.event == "step.started") {
            current_ = step;
            ctx_.emit(events::step_started(vm_, step));
        } else if (e.event == "step.output") {
            ctx_.emit(events::step_output(vm_, step, text("stream"), text("line").substr(0, 2000)));
        } else if (e.event == "step.skipped" && text("reason") == "satisfied") {
            ctx_.emit(events::step_finished(vm_, step, true, millis(), "already in place"));
        } else if (e.event == "step.finished") {
            ctx_.emit(events::step_finished(vm_, step, true, millis()));
        } else if (e.event == "step.failed") {
            ctx_.emit(events::step_finished(vm_, step, false, millis(), text("reason")));
        } else if (e.event == "provision.finished") {
            return false;
        }
        return true;
    }

    /// The step that started last ("" before the first).
    const std::string& current() const { return current_; }

private:
    context& ctx_;
    std::string vm_;
    std::string current_;
};

// Both sides record the first failure of the pair: when one fails, `&&` cancels the other, and
// Asio 1.22 rethrows the exception of the *left* operand (multiple_exceptions holds only that
// one), which is then the cancellation ("Operation aborted"), not the reason.
awaitable<void> follow_provisioning(guest::connection& conn, std::uint64_t from, step_reporter& reporter,
                                    std::exception_ptr& first_failure) {
    try {
        co_await conn.subscribe(from, [&reporter](const pr::event_record& e) { return reporter.on_event(e); });
    } catch (...) {
        if (!first_failure) first_failure = std::current_exception();
        throw;
    }
}

awaitable<pr::provision_result> request_provisioning(guest::connection& conn, pr::provision_request request,
                                                     std::exception_ptr& first_failure) {
    try {
        co_return co_await conn.provision(std::move(request));
    } catch (...) {
        if (!first_failure) first_failure = std::current_exception();
        throw;
    }
}

// The request and the progress it makes, together. A failure (the VM gone) is returned, not
// thrown: `||` waits for the first *success*, so a throwing side would leave it waiting for Ctrl-C.
awaitable<std::exception_ptr> provision_with_progress(guest::connection& request_conn, guest::connection& events_conn,
                                                      pr::provision_request request, std::uint64_t from,
                                                      step_reporter& reporter, pr::provision_result& result) {
    using namespace asio::experimental::awaitable_operators;
    std::exception_ptr first_failure;
    try {
        result = co_await (request_provisioning(request_conn, std::move(request), first_failure) &&
                           follow_provisioning(events_conn, from, reporter, first_failure));
        co_return nullptr;
    } catch (...) {
        co_return first_failure ? first_failure : std::current_exception();
    }
}

awaitable<void> wait_for_cancel(cancel_signal& cancel) { co_await cancel.wait_above(cancel_signal::none); }

}  // namespace

provision::catalog load_catalog() { return provision::catalog::load(paths::config_dir() / "profiles"); }

std::vector<std::string> profiles_of(const provision::catalog& cat, const config::project& p) {
    const std::vector<std::string>& wanted = p.builtin_profiles ? provision::default_profiles() : p.profiles;
    return provision::resolve_profiles(cat, wanted, [&p](std::size_t i) {
        if (i < p.profile_origins.size()) return p.profile_origins[i];
        return p.builtin_profiles ? std::string("the built-in default profiles") : p.name + ".profiles";
    });
}

awaitable<provision::host_values> detect_host_values(std::string vm_user) {
    provision::host_values v;
    v.vm_user = std::move(vm_user);
    auto git = co_await git_config_globals();
    v.git_name = git["user.name"];
    v.git_email = git["user.email"];
    const std::string from_env = paths::env("GIT_SIGNING_KEY");
    if (!from_env.empty()) {
        v.git_signing_key = signing_key_from(from_env);
    } else {
        const std::string format = git["gpg.format"];
        const std::string key = git["user.signingkey"];
        // An OpenPGP key id means nothing to ssh-keygen in the VM.
        if (format == "ssh" || looks_like_ssh_public_key(key) || key.rfind("key::", 0) == 0)
            v.git_signing_key = signing_key_from(key);
    }
    co_return v;
}

awaitable<provision::host_values> host_values_for(const provision::catalog& cat,
                                                  const std::vector<config::project>& projects) {
    bool wants_git = false;
    for (const auto& p : projects)
        for (const auto& name : profiles_of(cat, p)) wants_git |= cat.find(name)->uses_git_values;
    if (wants_git) co_return co_await detect_host_values(render::vm_user);
    provision::host_values host;
    host.vm_user = render::vm_user;
    co_return host;
}

std::string repo_dir_name(std::string_view url) {
    // git's "humanish" part: the last path component, without a trailing "/", "/.git" or ".git".
    while (!url.empty() && url.back() == '/') url.remove_suffix(1);
    if (url.size() >= 5 && url.substr(url.size() - 5) == "/.git") url.remove_suffix(5);
    const auto cut = url.find_last_of("/:");
    std::string_view name = cut == std::string_view::npos ? url : url.substr(cut + 1);
    if (name.size() >= 4 && name.substr(name.size() - 4) == ".git") name.remove_suffix(4);
    const bool ok = !name.empty() && name != "." && name != ".." && name.front() != '-' && name.size() <= 100 &&
                    std::all_of(name.begin(), name.end(), [](char c) {
                        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                               c == '-' || c == '_' || c == '.';
                    });
    return ok ? std::string(name) : std::string();
}

awaitable<void> check_repos_reachable(context& ctx, const config::project& p, cancel_signal* cancel) {
    if (p.repos.empty()) co_return;
    ctx.say(p.name, "checking access to " + std::to_string(p.repos.size()) + " repo(s)");
    std::vector<std::string> problems(p.repos.size());
    task_group checks(co_await asio::this_coro::executor);
    for (std::size_t i = 0; i < p.repos.size(); ++i) {
        checks.spawn([url = p.repos[i], &problem = problems[i], cancel]() -> awaitable<void> {
            proc::command cmd;
            // `--` first: the URL can never be read as an option.
            cmd.argv = {"git", "-c", "protocol.ext.allow=never", "ls-remote", "--", url, "HEAD"};
            cmd.env_set = git_env();
            proc::run_options opt;
            opt.limit.timeout = 30s;
            opt.limit.max_output = 1 << 20;
            opt.cancel = cancel;
            try {
                const proc::result r = co_await proc::run(std::move(cmd), std::move(opt));
                if (r.timed_out) problem = "no answer within 30s";
                else if (!r.ok()) problem = text::last_line(r.err).empty() ? "git ls-remote failed" : text::last_line(r.err);
            } catch (const proc::spawn_error& e) {
                problem = std::string("cannot run git: ") + e.what();
            }
        });
    }
    co_await checks.join();
    if (cancel && cancel->current() != cancel_signal::none) throw interrupted_error();
    std::string report;
    for (std::size_t i = 0; i < p.repos.size(); ++i)
        if (!problems[i].empty()) report += "\n  " + p.repos[i] + ": " + problems[i];
    if (!report.empty())
        throw error(text::sanitize_for_terminal("cannot reach repo(s) of '" + p.name +
                                                "'; check its repos for typos or access:" + report));
}

awaitable<std::size_t> apply_plan(context& ctx, const std::string& vm, std::shared_ptr<ssh::session> session,
                                  const provision::plan& plan, cancel_signal* cancel) {
    using namespace asio::experimental::awaitable_operators;
    if (plan.steps.empty()) co_return 0;
    auto on_problem = [&ctx, vm](const std::string& p) { ctx.emit(events::message(vm, "warning", p)); };
    // Two channels: one follows the journal (live progress), the other carries the request.
    auto events_conn = co_await guest::connect_agent(session, 20s, on_problem);
    const pr::hello_result hello = co_await events_conn->hello("machine " MACHINE_VERSION);
    auto request_conn = co_await guest::connect_agent(session, 20s, on_problem);

    pr::provision_request request;
    request.plan = vm;
    for (const auto& s : plan.steps) {
        pr::provision_step step;
        step.name = s.name;
        step.user = s.user;
        step.env = s.env;
        step.check = s.check;
        step.run = s.run;
        step.timeout_ms = s.timeout_ms;
        step.hash = s.hash;
        request.steps.push_back(std::move(step));
    }
    const auto t0 = std::chrono::steady_clock::now();
    step_reporter reporter(ctx, vm);
    cancel_signal& interrupt = cancel ? *cancel : ctx.cancel;
    pr::provision_result result;
    auto outcome = co_await (provision_with_progress(*request_conn, *events_conn, std::move(request),
                                                     hello.journal.last_seq, reporter, result) ||
                             wait_for_cancel(interrupt));
    if (outcome.index() == 1) {
        // Closing the session ends our channels: the agent stops the running step.
        session->close();
        throw interrupted_error();
    }
    if (auto failure = std::get<0>(outcome)) {
        try {
            std::rethrow_exception(failure);
        } catch (const ssh::connection_lost& e) {
            // Powered off, crashed or stopped: the next `up` runs the unfinished step again.
            throw error("VM '" + vm + "' went away while provisioning" +
                        (reporter.current().empty() ? "" : " (step " + reporter.current() + ")") + ": " + e.what() +
                        "; 'machine up " + vm + "' finishes it");
        }
    }

    std::vector<std::string> ran;
    int unchanged = 0, satisfied = 0;
    const pr::step_outcome* failed = nullptr;
    for (const auto& s : result.steps) {
        if (s.outcome == "ran") ran.push_back(s.name);
        unchanged += s.outcome == "unchanged";
        satisfied += s.outcome == "satisfied";
        if (s.outcome == "failed") failed = &s;
    }
    if (failed) {
        std::string diagnostics;
        bool disk_full = false;
        for (const auto& line : failed->tail) {
            diagnostics += line + "\n";
            disk_full |= line.find("No space left on device") != std::string::npos;
        }
        disk_full |= failed->error.find("No space left on device") != std::string::npos;
        std::string message = "provisioning step " + failed->name + " failed (" + outcome_detail(*failed) + ")";
        if (disk_full) message += ": No space left on device in the VM; free space, or raise the project's `disk` (then destroy and up)";
        else if (!failed->tail.empty()) message += ": " + failed->tail.back();
        throw error(text::sanitize_for_terminal(message), exit_code::failure, text::sanitize_for_terminal(diagnostics));
    }
    if (result.cancelled) throw interrupted_error();
    std::string summary;
    if (ran.empty()) {
        const std::size_t n = result.steps.size();
        summary = n == 1 ? std::string("its 1 step in place") : "all " + std::to_string(n) + " steps in place";
    } else {
        summary = "applied ";
        for (std::size_t i = 0; i < ran.size(); ++i) summary += (i ? ", " : "") + ran[i];
        summary += " (" + std::to_string(unchanged) + " unchanged";
        if (satisfied) summary += ", " + std::to_string(satisfied) + " already in place";
        summary += ")";
    }
    ctx.emit(events::step_finished(vm, "provision", true, since(t0), summary));
    co_return ran.size();
}

awaitable<void> close_lima_ssh_master(const lima::instance& inst, const std::string& name) {
    const fs::path config = ssh_config_of(inst);
    std::error_code ec;
    if (!fs::exists(config, ec)) co_return;
    proc::command cmd;
    cmd.argv = {"ssh", "-F", config.string(), "-O", "exit", "lima-" + name};
    proc::run_options opt;
    opt.limit.timeout = 5s;
    try {
        const proc::result r = co_await proc::run(std::move(cmd), std::move(opt));
        spdlog::debug("vm={} closed Lima's SSH master: {}", name, r.ok() ? "yes" : text::last_line(r.err));
    } catch (const proc::spawn_error& e) {
        spdlog::debug("vm={} cannot run ssh to close Lima's SSH master: {}", name, e.what());
    }
}

namespace {

struct clone_target {
    std::string url;
    std::string dir;
};

// Runs argv in the VM as `user` through the agent; output lines become step.output events.
awaitable<pr::run_result> run_in_vm(context& ctx, guest::connection& conn, const std::string& vm,
                                    const std::string& step, std::vector<std::string> argv, std::string user,
                                    std::string cwd, std::string* captured = nullptr) {
    pr::run_request request;
    request.argv = std::move(argv);
    request.user = std::move(user);
    if (!cwd.empty()) request.cwd = std::move(cwd);  // else the user's home
    std::string pending;
    auto on_output = [&](const pr::output_chunk& c) {
        if (captured && c.stream == "stdout" && captured->size() < (1u << 20)) captured->append(c.data);
        pending += c.data;
        for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
            ctx.emit(events::step_output(vm, step, c.stream, pending.substr(0, std::min<std::size_t>(nl, 2000))));
            pending.erase(0, nl + 1);
        }
        if (pending.size() > 2000) pending.clear();
    };
    co_return co_await conn.run(std::move(request), on_output);
}

// The package manager a JavaScript repo declares: packageManager in package.json, else its
// lockfile; empty when it is not one.
std::string package_manager(const std::string& package_json, bool has_pnpm_lock, bool has_yarn_lock) {
    const auto doc = nlohmann::json::parse(package_json, nullptr, false);
    if (doc.is_object()) {
        const auto it = doc.find("packageManager");
        if (it != doc.end() && it->is_string()) {
            const std::string pm = it->get<std::string>();
            for (const char* name : {"pnpm", "yarn", "npm"})
                if (pm.rfind(std::string(name) + "@", 0) == 0) return name;
        }
    }
    if (has_pnpm_lock) return "pnpm";
    if (has_yarn_lock) return "yarn";
    return "npm";
}

}  // namespace

std::vector<std::string> clone_command(const std::string& url, const std::string& path) {
    std::vector<std::string> argv{"env"};
    for (const auto& [k, v] : git_env()) argv.push_back(k + "=" + v);
    for (const char* a : {"git", "-c", "protocol.ext.allow=never", "clone", "--progress", "--recurse-submodules", "--"})
        argv.emplace_back(a);
    argv.push_back(url);
    argv.push_back(path);
    return argv;
}

clone_progress::clone_progress(std::chrono::milliseconds interval, std::size_t max_bytes)
    : interval_(interval), max_bytes_(max_bytes) {}

std::optional<std::string> clone_progress::feed(std::string_view line, std::chrono::steady_clock::time_point now) {
    std::string text = text::trim(line.substr(0, max_bytes_ * 4));
    if (text.size() > max_bytes_) {
        std::size_t cut = max_bytes_;
        // Not inside a UTF-8 sequence (the sinks escape what is not well-formed anyway).
        while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
        text = text.substr(0, cut) + "...";
    }
    if (text.empty()) return std::nullopt;
    tail_.push_back(text);
    if (tail_.size() > 20) tail_.pop_front();
    if (last_shown_ && now - *last_shown_ < interval_) {
        pending_ = std::move(text);
        return std::nullopt;
    }
    last_shown_ = now;
    pending_.reset();
    return text;
}

std::optional<std::string> clone_progress::finish() {
    std::optional<std::string> last = std::move(pending_);
    pending_.reset();
    return last;
}

std::string clone_progress::tail() const {
    std::string out;
    for (const auto& l : tail_) out += l + "\n";
    return out;
}

std::string format_duration(std::chrono::seconds d) {
    long long s = d.count();
    std::string out;
    if (s >= 3600) out += std::to_string(s / 3600) + "h", s %= 3600;
    if (s >= 60) out += std::to_string(s / 60) + "m", s %= 60;
    if (s > 0 || out.empty()) out += std::to_string(s) + "s";
    return out;
}

awaitable<bool> run_clone(context& ctx, clone_run run, cancel_signal* cancel) {
    const std::string vm = run.vm, step = run.step;
    ctx.emit(events::step_started(vm, step));
    const auto t0 = std::chrono::steady_clock::now();
    proc::command cmd;
    cmd.argv = std::move(run.argv);
    cmd.env_set = run.env.set;
    cmd.env_unset = run.env.unset;
    clone_progress progress;
    proc::run_options opt;
    opt.limit.timeout = run.timeout;
    opt.limit.max_output = 64 << 10;  // what matters is in progress.tail()
    opt.cancel = cancel;
    opt.lines_end_at_cr = true;
    opt.on_stderr_line = [&ctx, &progress, vm, step](std::string_view line) {
        if (auto shown = progress.feed(line, std::chrono::steady_clock::now()))
            ctx.emit(events::step_output(vm, step, "stderr", *shown));
    };
    const proc::result r = co_await proc::run(std::move(cmd), std::move(opt));
    if (auto last = progress.finish()) ctx.emit(events::step_output(vm, step, "stderr", *last));
    if (r.cancelled) {
        ctx.emit(events::step_finished(vm, step, false, since(t0), "interrupted"));
        throw interrupted_error();
    }
    if (r.timed_out) {
        const std::string limit = format_duration(run.timeout);
        ctx.emit(events::step_finished(vm, step, false, since(t0), "timed out after " + limit));
        throw error(text::sanitize_for_terminal("git clone " + run.url + " in VM '" + vm + "' timed out after " + limit +
                                                " (raise clone_timeout for project " + vm + ")"),
                    exit_code::failure, progress.tail());
    }
    if (r.ok()) {
        ctx.emit(events::step_finished(vm, step, true, since(t0)));
        co_return true;
    }
    std::string why = text::last_line(progress.tail());
    if (why.empty()) why = "ssh exited with status " + std::to_string(r.status());
    ctx.emit(events::step_finished(vm, step, false, since(t0), why));
    // 255: ssh itself failed (the connection, the host key), never the deploy key's fault.
    if (!run.failure_is_fatal && r.exit_code != 255) co_return false;
    throw error(text::sanitize_for_terminal("git clone " + run.url + " failed in VM '" + vm + "': " + why),
                exit_code::failure, progress.tail());
}

awaitable<void> clone_repos(context& ctx, lima::instance inst, agent_environment agent, config::project p,
                            std::shared_ptr<ssh::session> session, std::string vm_user, cancel_signal* cancel) {
    if (p.repos.empty()) co_return;
    const std::string vm = p.name;
    std::vector<clone_target> targets;
    for (const auto& url : p.repos) {
        const std::string dir = repo_dir_name(url);
        if (dir.empty()) throw error(text::sanitize_for_terminal("cannot tell which directory " + url + " clones into"));
        targets.push_back({url, dir});
    }
    auto on_problem = [&ctx, vm](const std::string& m) { ctx.emit(events::message(vm, "warning", m)); };
    auto conn = co_await guest::connect_agent(session, 20s, on_problem);
    std::string home;
    // Braced lists are named first: g++ 12 cannot pass one to a coroutine in a co_await.
    std::vector<std::string> argv_home{"printenv", "HOME"};
    const pr::run_result home_result = co_await run_in_vm(ctx, *conn, vm, "clone", argv_home, vm_user, "", &home);
    home = text::last_line(home);
    if (!home_result.exit_code || *home_result.exit_code != 0 || home.empty() || home.front() != '/')
        throw error("cannot find the home directory of " + vm_user + " in VM '" + vm + "'");
    const std::string code = home + "/code";
    std::vector<std::string> argv_mkdir{"mkdir", "-p", "--", code};
    co_await run_in_vm(ctx, *conn, vm, "clone", argv_mkdir, vm_user, "");

    for (const auto& t : targets) {
        const std::string path = code + "/" + t.dir;
        std::vector<std::string> argv_test{"test", "-d", path + "/.git"};
        const pr::run_result present = co_await run_in_vm(ctx, *conn, vm, "clone", argv_test, vm_user, "");
        if (present.exit_code && *present.exit_code == 0) {
            ctx.say(vm, "clone " + t.dir + ": already present");
            continue;
        }
        const std::string step = "clone " + t.dir;
        // Through OpenSSH on a connection of its own, pinned to the VM's key: its session
        // carries the forwarded agent git needs.
        const openssh_target target{vm, ssh_config_of(inst), pin_of(vm, false).known_hosts, agent.forward};
        clone_run run;
        run.vm = vm;
        run.step = step;
        run.url = t.url;
        run.argv = openssh_argv(target, false, clone_command(t.url, path));
        run.env = agent.env;
        run.timeout = p.clone_timeout;
        run.failure_is_fatal = p.forward_agent;
        if (!co_await run_clone(ctx, std::move(run), cancel)) {
            ctx.emit(events::message(vm, "warning",
                                     "clone failed for " + t.dir + ": agent forwarding is off for this project; install a "
                                     "deploy key in the VM, then run 'machine up " + vm + "' again"));
            continue;
        }

        // Dependencies, after a fresh clone only (a present clone is the user's to manage).
        std::string package_json;
        std::vector<std::string> argv_cat{"cat", "package.json"};
        const pr::run_result has_package = co_await run_in_vm(ctx, *conn, vm, step, argv_cat, vm_user, path, &package_json);
        if (!has_package.exit_code || *has_package.exit_code != 0) continue;
        std::vector<std::string> argv_pnpm{"test", "-f", "pnpm-lock.yaml"}, argv_yarn{"test", "-f", "yarn.lock"};
        const pr::run_result pnpm_lock = co_await run_in_vm(ctx, *conn, vm, step, argv_pnpm, vm_user, path);
        const pr::run_result yarn_lock = co_await run_in_vm(ctx, *conn, vm, step, argv_yarn, vm_user, path);
        const std::string pm = package_manager(package_json, pnpm_lock.exit_code == 0, yarn_lock.exit_code == 0);
        const std::string deps_step = "deps " + t.dir;
        ctx.emit(events::step_started(vm, deps_step));
        const auto td = std::chrono::steady_clock::now();
        std::vector<std::string> argv_install{pm, "install"};
        std::string why;
        try {
            const pr::run_result installed = co_await run_in_vm(ctx, *conn, vm, deps_step, argv_install, vm_user, path);
            if (!installed.exit_code || *installed.exit_code != 0) why = pm + " install failed";
        } catch (const guest::agent_error& e) {
            if (e.code() != "spawn_failed") throw;
            why = pm + " is not installed in the VM (the node profile provides it)";
        }
        ctx.emit(events::step_finished(vm, deps_step, why.empty(), since(td), pm + " install"));
        if (!why.empty())
            ctx.emit(events::message(vm, "warning", "dependencies of " + t.dir + " were not installed: " + why +
                                                        "; install them in the VM"));
    }
}

} // namespace machine::vm
