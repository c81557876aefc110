// A project's provisioning: its profiles and plan (decided before any VM work), applied through
// the guest agent with each step reported as it starts and ends.
#include "provisioning.hpp"

#include <algorithm>
#include <map>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "machine/async.hpp"
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
awaitable<void> provision_with_progress(guest::connection& request_conn, guest::connection& events_conn,
                                        pr::provision_request request, std::uint64_t from,
                                        step_reporter& reporter, pr::provision_result& result) {
    using namespace asio::experimental::awaitable_operators;
    std::exception_ptr first_failure;
    std::exception_ptr failure;
    try {
        result = co_await (request_provisioning(request_conn, std::move(request), first_failure) &&
                           follow_provisioning(events_conn, from, reporter, first_failure));
    } catch (...) {
        failure = first_failure ? first_failure : std::current_exception();
    }
    if (failure) std::rethrow_exception(failure);
}

// The plan as the agent's request. The one translation between the two step types: the plan's
// (src/provision) and the wire's (src/protocol, shared with the agent) are kept apart so that
// neither module depends on the other; this module is the one that knows both.
pr::provision_request provision_request_of(const std::string& vm, const provision::plan& plan) {
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
    return request;
}

// Whether the agent would skip every step of `plan` as unchanged since it last succeeded (a
// re-up): then nothing runs, and nothing needs following. An agent that cannot say: no.
awaitable<bool> all_unchanged(guest::connection& agent, const provision::plan& plan) {
    pr::provision_pending_request request;
    for (const auto& s : plan.steps) request.steps.push_back(pr::step_identity{s.name, s.hash});
    try {
        const std::vector<std::string> pending = co_await agent.pending_steps(std::move(request));
        co_return pending.empty();
    } catch (const guest::agent_error& e) {
        if (e.code() != "unknown_type") throw;
    }
    co_return false;
}

std::string in_place(std::size_t steps) {
    return steps == 1 ? std::string("its 1 step in place") : "all " + std::to_string(steps) + " steps in place";
}

}  // namespace

provision::catalog load_catalog() { return provision::catalog::load(paths::config_dir() / "profiles"); }

std::vector<std::string> profiles_of(const provision::catalog& cat, const config::project& p) {
    const std::vector<std::string>& wanted = p.builtin_profiles ? provision::default_profiles() : p.profiles;
    return provision::resolve_profiles(cat, wanted, [&p](std::size_t i) {
        if (i < p.profile_origins.size()) return p.profile_origins[i];
        return p.builtin_profiles ? std::string("the built-in default profiles") : p.name + ".profiles";
    });
}

up_target make_target(const provision::catalog& cat, provision::host_values host, config::project p) {
    up_target t;
    const auto profiles = profiles_of(cat, p);
    for (const auto& url : p.repos) host.repo_dirs.push_back(repo_dir_name(url));
    // Without a forwarded agent nothing in the VM can sign: commits would fail, so no signing.
    if (!p.forward_agent) host.git_signing_key.clear();
    host.vm_shell = p.shell;
    host.claude_mode = p.claude_mode;
    const provision::plan all = provision::make_plan(cat, profiles, host);
    t.plan.profiles = t.after_clone.profiles = all.profiles;
    for (const auto& s : all.steps) (s.after_clone ? t.after_clone : t.plan).steps.push_back(s);
    t.base = provision::bakeable_prefix(cat, t.plan);
    t.network = egress_policy_of(p, cat, all.profiles, &t.allowed);
    t.project = std::move(p);
    return t;
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

awaitable<std::size_t> apply_plan(context& ctx, const std::string& vm, const guest_link& link,
                                  guest::connection& agent, const provision::plan& plan, cancel_signal* cancel) {
    if (plan.steps.empty()) co_return 0;
    const auto t_asked = std::chrono::steady_clock::now();
    if (co_await all_unchanged(agent, plan)) {
        ctx.emit(events::step_finished(vm, "provision", true, since(t_asked), in_place(plan.steps.size())));
        co_return 0;
    }
    // Two connections: one follows the journal (live progress), the other carries the request.
    auto events_conn = co_await link.connect(20s);
    const pr::hello_result hello = co_await events_conn->hello("machine " MACHINE_VERSION);
    auto request_conn = co_await link.connect(20s);

    pr::provision_request request = provision_request_of(vm, plan);
    const auto t0 = std::chrono::steady_clock::now();
    step_reporter reporter(ctx, vm);
    cancel_signal& interrupt = cancel ? *cancel : ctx.cancel;
    pr::provision_result result;
    try {
        auto outcome = co_await first_of(provision_with_progress(*request_conn, *events_conn, std::move(request),
                                                                 hello.journal.last_seq, reporter, result),
                                          interrupt.until_above(cancel_signal::none));
        if (outcome.index() == 1) {
            // The request's connection ends: the agent stops the running step.
            request_conn.reset();
            events_conn.reset();
            throw interrupted_error();
        }
    } catch (const ssh::connection_lost& e) {
        // Powered off, crashed or stopped: the next `up` runs the unfinished step again.
        throw error("VM '" + vm + "' went away while provisioning" +
                    (reporter.current().empty() ? "" : " (step " + reporter.current() + ")") + ": " + e.what() +
                    "; 'machine up " + vm + "' finishes it");
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
        summary = in_place(result.steps.size());
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

} // namespace machine::vm
