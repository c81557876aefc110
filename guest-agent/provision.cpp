#include "provision.hpp"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <deque>
#include <map>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>

#include "log.hpp"
#include "machine/events.hpp"
#include "machine/supervise.hpp"
#include "spawn.hpp"

namespace machine::agent {

namespace {

namespace proto = machine::protocol;
using asio::awaitable;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

constexpr std::size_t max_line = 2000;            // bytes of one step.output line
constexpr std::size_t max_output_events = 2000;   // per step; later lines are only counted
constexpr std::size_t tail_lines = 20;            // kept for step.failed and the result
constexpr auto check_timeout_cap = 60000ms;       // a check is a quick question

std::uint64_t ms_since(clock::time_point t0) {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0).count());
}

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF), or 0 when there is none.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
    auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = byte(i);
    if (c < 0x80) return 1;
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) n = 3;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else return 0;
    if (i + n > s.size() || byte(i + 1) < lo || byte(i + 1) > hi) return 0;
    for (std::size_t k = 2; k < n; ++k)
        if ((byte(i + k) & 0xC0) != 0x80) return 0;
    return n;
}

// `raw` as valid UTF-8 of at most `max` bytes: each byte that is not part of a well-formed
// character becomes U+FFFD, and a character that would cross the limit is left out whole.
std::string clean_line(std::string_view raw, std::size_t max) {
    static constexpr std::string_view replacement = "\xEF\xBF\xBD";
    std::string out;
    out.reserve(std::min(raw.size(), max));
    for (std::size_t i = 0; i < raw.size();) {
        const std::size_t n = utf8_sequence(raw, i);
        const std::string_view piece = n ? raw.substr(i, n) : replacement;
        if (out.size() + piece.size() > max) break;
        out += piece;
        i += n ? n : 1;
    }
    return out;
}

} // namespace

// --- one process: a check or a run --------------------------------------------------------------

struct provision_job::process_end {
    std::optional<int> exit_code;
    std::optional<int> signal;
    bool timed_out = false;
    bool cancelled = false;
    std::string spawn_error;      // not empty: it never started
};

// A step's stdout and stderr as lines: each a step.output event (up to max_output_events),
// the newest tail_lines kept for a failure report.
class provision_job::output_sink {
public:
    output_sink(provision_job& job, std::string step) : job_(job), step_(std::move(step)) {}

    void feed(int stream, std::string_view data) {
        auto& p = partial_[stream];
        while (!data.empty()) {
            const auto nl = data.find('\n');
            take(p, data.substr(0, nl));
            if (nl == std::string_view::npos) break;
            line(stream, p);
            data.remove_prefix(nl + 1);
        }
    }
    // End of the stream: an unterminated last line still counts.
    void finish(int stream) {
        auto& p = partial_[stream];
        if (!p.bytes.empty() || p.cut) line(stream, p);
    }
    std::vector<std::string> tail() const { return {tail_.begin(), tail_.end()}; }
    std::uint64_t dropped() const { return dropped_; }

private:
    struct partial {
        std::string bytes;
        bool cut = false;  // longer than what is kept; the rest was discarded
    };
    // A few bytes beyond max_line are kept so that a character crossing the cut is whole and
    // clean_line() can leave it out, rather than turning its first bytes into U+FFFD.
    static constexpr std::size_t keep = max_line + 3;

    static void take(partial& p, std::string_view piece) {
        const std::size_t room = keep - p.bytes.size();
        if (piece.size() > room) {
            p.bytes.append(piece.substr(0, room));
            p.cut = true;
        } else {
            p.bytes.append(piece);
        }
    }

    void line(int stream, partial& p) {
        std::string_view raw = p.bytes;
        if (!p.cut && !raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
        std::string text = clean_line(raw, max_line);
        p.bytes.clear();
        p.cut = false;
        if (emitted_ < max_output_events) {
            ++emitted_;
            auto f = job_.fields_for(step_);
            f["stream"] = stream == 0 ? "stdout" : "stderr";
            f["line"] = text;
            job_.emit("step.output", f);
        } else {
            ++dropped_;
        }
        tail_.push_back(std::move(text));
        if (tail_.size() > tail_lines) tail_.pop_front();
    }

    provision_job& job_;
    std::string step_;
    partial partial_[2];
    std::uint64_t emitted_ = 0;
    std::uint64_t dropped_ = 0;
    std::deque<std::string> tail_;
};

awaitable<provision_job::process_end> provision_job::run_process(std::vector<std::string> argv, std::size_t index,
                                                                 std::chrono::milliseconds timeout,
                                                                 output_sink* sink) {
    const auto& step = request_.steps[index];
    const auto& user = users_[index];
    process_end end;

    spawn_spec spec;
    spec.argv = std::move(argv);
    auto extra = step.env;
    // After the step's own env: these are the agent's to say.
    extra.emplace_back("MACHINE_STEP", step.name);
    extra.emplace_back("MACHINE_AGENT_SOCKET", setup_.socket_path);
    spec.env = child_environment(user, setup_.runtime_dir_root, extra);
    spec.cwd = home_or_root(user);
    spec.as_user = user;
    child_process started;
    try {
        started = spawn(spec);
    } catch (const spawn_failure& e) {
        end.spawn_error = e.what();
        co_return end;
    }
    log::debug("provision " + request_.plan + ": step " + step.name + ": pid " + std::to_string(started.pid) + " as " +
               user.name + ": " + spec.argv[0]);

    auto ex = co_await asio::this_coro::executor;
    const pid_t pid = started.pid;  // also its process group's id (spawn makes it a session leader)
    // SIGTERM on the deadline or a cancel, SIGKILL after kill_grace.
    proc::stopper stopper(ex, proc::stop_ladder::term_kill(setup_.kill_grace), [pid](int sig) { ::kill(-pid, sig); });
    stopper.deadline(clock::now() + timeout);
    if (cancelled_) stopper.request();
    proc::child_watch watch;
    watch.pid = pid;
    watch.pidfd = started.pidfd;
    watch.out.fd = started.stdout_fd;
    watch.err.fd = started.stderr_fd;
    if (sink) {
        watch.out.on_chunk = [sink](std::string_view chunk) -> awaitable<bool> {
            sink->feed(0, chunk);
            co_return true;
        };
        watch.err.on_chunk = [sink](std::string_view chunk) -> awaitable<bool> {
            sink->feed(1, chunk);
            co_return true;
        };
    }
    // A step we stopped (timeout, cancel) must not leave anything of its group behind, and
    // while its leader is an unreaped zombie the group's id cannot belong to anyone else.
    watch.on_exit = [&stopper, pid] {
        if (stopper.stopping()) ::kill(-pid, SIGKILL);
    };
    watch.on_reaped = [&stopper] { stopper.exited(); };
    current_ = &stopper;
    auto draining = proc::drain_and_reap(std::move(watch));  // named first: house style §4
    const int status = co_await (std::move(draining) && stopper.run());
    current_ = nullptr;
    if (sink) {
        // An unterminated last line still counts.
        sink->finish(0);
        sink->finish(1);
    }

    if (WIFSIGNALED(status)) end.signal = WTERMSIG(status);
    else end.exit_code = WEXITSTATUS(status);
    end.timed_out = stopper.why() == proc::stopper::reason::deadline;
    end.cancelled = stopper.stopping() && !end.timed_out;
    co_return end;
}

// --- the job ------------------------------------------------------------------------------------

provision_job::provision_job(provision_setup setup, protocol::provision_request request)
    : setup_(std::move(setup)), request_(std::move(request)) {}

std::optional<std::string> provision_job::resolve_users() {
    std::map<std::string, user_info, std::less<>> seen;  // /etc/passwd once per name, not per step
    users_.clear();
    for (std::size_t i = 0; i < request_.steps.size(); ++i) {
        const auto& name = request_.steps[i].user;
        auto it = seen.find(name);
        if (it == seen.end()) {
            auto u = find_user(name);
            if (!u)
                return "steps[" + std::to_string(i) + "] (" + request_.steps[i].name + "): no user '" + name +
                       "' in /etc/passwd";
            it = seen.emplace(name, std::move(*u)).first;
        }
        users_.push_back(it->second);
    }
    return std::nullopt;
}

void provision_job::cancel() {
    cancelled_ = true;
    if (current_) current_->request();
}

void provision_job::kill_now() {
    cancelled_ = true;
    if (current_) current_->force();
}

proto::json provision_job::fields_for(const std::string& step) const {
    proto::json f = proto::json::object();
    f["plan"] = request_.plan;
    f["step"] = step;
    return f;
}

void provision_job::emit(std::string_view event, const proto::json& fields) {
    // The journal failing (its disk full) must not stop the steps: the result still tells.
    try {
        setup_.emit(event, fields);
    } catch (const std::exception& e) {
        if (!emit_failed_)
            log::error("provision " + request_.plan + ": cannot journal " + std::string(event) + ": " + e.what());
        emit_failed_ = true;
    }
}

void provision_job::fail_step(protocol::step_outcome& o, std::string reason, const process_end* end,
                              clock::time_point t0, std::uint64_t dropped_lines) {
    o.outcome = "failed";
    o.reason = std::move(reason);
    o.duration_ms = ms_since(t0);
    if (end) {
        o.exit_code = end->exit_code;
        o.signal = end->signal;
    }
    // So that it runs again next time (steps_state logs a failure to write this).
    setup_.state->forget(o.name);

    auto f = fields_for(o.name);
    f["duration_ms"] = o.duration_ms;
    if (o.exit_code) f["exit_code"] = *o.exit_code;
    if (o.signal) f["signal"] = *o.signal;
    f["reason"] = o.reason;
    f["tail"] = o.tail;
    if (!o.error.empty()) f["error"] = o.error;
    if (dropped_lines) f["dropped_lines"] = dropped_lines;
    // 20 lines of up to 2000 bytes may escape to more than an event may hold: oldest out first.
    auto size = [&] { return f.dump(-1, ' ', false, proto::json::error_handler_t::replace).size() + 80; };
    while (!f["tail"].empty() && size() > proto::max_event_bytes) f["tail"].erase(0);
    emit("step.failed", f);
    log::info("provision " + request_.plan + ": step " + o.name + " failed (" + o.reason + ")");
}

awaitable<protocol::step_outcome> provision_job::run_step(std::size_t index) {
    const auto t0 = clock::now();
    const auto& step = request_.steps[index];
    protocol::step_outcome o;
    o.name = step.name;
    const std::chrono::milliseconds timeout(step.timeout_ms);
    const auto check_timeout = std::min<std::chrono::milliseconds>(timeout, check_timeout_cap);
    auto record = [&] {
        return setup_.state->record_success(step.name, step.hash,
                                            events::format_timestamp(std::chrono::system_clock::now()));
    };

    // 1. Unchanged since it last succeeded: no process at all.
    if (!request_.force) {
        if (setup_.state->unchanged(step.name, step.hash)) {
            o.outcome = "unchanged";
            auto f = fields_for(step.name);
            f["reason"] = "unchanged";
            emit("step.skipped", f);
            co_return o;
        }
    }

    // 2. Already true?
    if (!step.check.empty()) {
        if (cancelled_) {
            fail_step(o, "cancelled", nullptr, t0, 0);
            co_return o;
        }
        auto end = co_await run_process(step.check, index, check_timeout, nullptr);
        if (!end.spawn_error.empty()) {
            // A check that cannot start is a broken plan, not a "no": say so.
            o.error = "check: " + end.spawn_error;
            fail_step(o, "spawn_failed", nullptr, t0, 0);
            co_return o;
        }
        if (end.cancelled) {
            fail_step(o, "cancelled", &end, t0, 0);
            co_return o;
        }
        if (end.exit_code == 0) {
            if (auto err = record()) {
                o.error = *err;
                fail_step(o, "state_write_failed", &end, t0, 0);
                co_return o;
            }
            o.outcome = "satisfied";
            o.duration_ms = ms_since(t0);
            auto f = fields_for(step.name);
            f["reason"] = "satisfied";
            f["duration_ms"] = o.duration_ms;
            emit("step.skipped", f);
            co_return o;
        }
        // Any other end (non-zero, a signal, its own timeout) means "not yet": run the step.
    }

    // 3. Run it.
    if (cancelled_) {
        fail_step(o, "cancelled", nullptr, t0, 0);
        co_return o;
    }
    {
        auto f = fields_for(step.name);
        f["index"] = index + 1;
        f["count"] = request_.steps.size();
        f["user"] = step.user;
        emit("step.started", f);
    }
    output_sink sink(*this, step.name);
    auto end = co_await run_process(step.run, index, timeout, &sink);
    o.tail = sink.tail();
    const std::uint64_t dropped = sink.dropped();
    if (!end.spawn_error.empty()) {
        o.error = end.spawn_error;
        fail_step(o, "spawn_failed", nullptr, t0, dropped);
        co_return o;
    }
    const char* reason = end.timed_out             ? "timeout"
                         : end.cancelled           ? "cancelled"
                         : end.signal.has_value()  ? "signal"
                         : end.exit_code != 0      ? "exit"
                                                   : nullptr;
    if (reason) {
        fail_step(o, reason, &end, t0, dropped);
        co_return o;
    }
    if (!step.check.empty()) {
        if (cancelled_) {
            fail_step(o, "cancelled", nullptr, t0, dropped);
            co_return o;
        }
        auto again = co_await run_process(step.check, index, check_timeout, nullptr);
        if (again.cancelled) {
            fail_step(o, "cancelled", &again, t0, dropped);
            co_return o;
        }
        if (!again.spawn_error.empty() || again.exit_code != 0) {
            // exit_code/signal are the check's here: the run itself exited 0.
            if (!again.spawn_error.empty()) o.error = "check: " + again.spawn_error;
            fail_step(o, "check_failed_after_run", &again, t0, dropped);
            co_return o;
        }
    }
    if (auto err = record()) {
        o.error = *err;
        fail_step(o, "state_write_failed", &end, t0, dropped);
        co_return o;
    }
    o.outcome = "ran";
    o.duration_ms = ms_since(t0);
    o.tail.clear();  // a failure report; the lines themselves were step.output events
    auto f = fields_for(step.name);
    f["duration_ms"] = o.duration_ms;
    if (dropped) f["dropped_lines"] = dropped;
    emit("step.finished", f);
    co_return o;
}

awaitable<protocol::provision_result> provision_job::run() {
    const auto t0 = clock::now();
    setup_.state->load();  // the file is the truth: it may have been edited since the last provision
    log::info("provision " + request_.plan + ": " + std::to_string(request_.steps.size()) + " steps" +
              (request_.force ? " (forced)" : ""));
    {
        auto f = proto::json::object();
        f["plan"] = request_.plan;
        f["steps"] = request_.steps.size();
        f["force"] = request_.force;
        emit("provision.started", f);
    }

    protocol::provision_result r;
    std::uint64_t ran = 0, satisfied = 0, unchanged = 0;
    std::optional<std::string> failed;
    for (std::size_t i = 0; i < request_.steps.size(); ++i) {
        if (failed || cancelled_) {
            protocol::step_outcome skipped;
            skipped.name = request_.steps[i].name;
            skipped.outcome = "not_run";
            r.steps.push_back(std::move(skipped));
            continue;
        }
        auto o = co_await run_step(i);
        if (o.outcome == "ran") ++ran;
        else if (o.outcome == "satisfied") ++satisfied;
        else if (o.outcome == "unchanged") ++unchanged;
        else if (o.outcome == "failed") failed = o.name;
        r.steps.push_back(std::move(o));
    }
    r.cancelled = cancelled_;
    r.ok = !failed && !cancelled_;
    r.duration_ms = ms_since(t0);

    auto f = proto::json::object();
    f["plan"] = request_.plan;
    f["ok"] = r.ok;
    f["ran"] = ran;
    f["satisfied"] = satisfied;
    f["unchanged"] = unchanged;
    f["failed"] = failed ? proto::json(*failed) : proto::json(nullptr);
    f["duration_ms"] = r.duration_ms;
    f["cancelled"] = r.cancelled;
    emit("provision.finished", f);
    log::info("provision " + request_.plan + ": " + (r.ok ? "ok" : r.cancelled ? "cancelled" : "failed at " + *failed) +
              " (" + std::to_string(ran) + " ran, " + std::to_string(satisfied) + " satisfied, " +
              std::to_string(unchanged) + " unchanged) in " + std::to_string(r.duration_ms) + " ms");
    co_return r;
}

} // namespace machine::agent
