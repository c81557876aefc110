// The `provision` request's step engine (PROTOCOL.md §4 `provision`).
//
// A provision runs a client's ordered list of steps, each an argv run as some user, and
// remembers in steps_state which definition (hash) of each step last succeeded, so that sending
// the same plan again runs nothing. Per step: unchanged (recorded hash matches: no process at
// all), satisfied (its `check` exits 0), or run (then `check` again, when there is one). The first
// failure ends the provision. Everything that happens is an event in the agent's journal;
// the request's own reply is one final result.
//
// The server owns at most one job at a time (errc::busy for a second one) and forwards cancel,
// disconnection and shutdown to it. Single-threaded, like the rest of the agent.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>

#include "machine/protocol.hpp"
#include "steps_state.hpp"
#include "users.hpp"

namespace machine::proc {
class stopper;
}

namespace machine::agent {

struct provision_setup {
    std::string socket_path;       ///< given to steps as MACHINE_AGENT_SOCKET
    std::string runtime_dir_root;  ///< for XDG_RUNTIME_DIR, as `run` does
    steps_state* state = nullptr;  ///< the agent's one store; outlives every job
    /// Appends an event to the journal (subscribers see it). May throw on I/O failure.
    std::function<void(std::string_view event, const protocol::json& fields)> emit;
    std::chrono::milliseconds kill_grace{5000};  ///< SIGTERM..SIGKILL on timeout and cancel
};

class provision_job {
public:
    provision_job(provision_setup setup, protocol::provision_request request);
    provision_job(const provision_job&) = delete;
    provision_job& operator=(const provision_job&) = delete;

    /// Looks up every step's user before anything runs. The error message (for
    /// errc::no_such_user) when one is missing; nothing has run then.
    std::optional<std::string> resolve_users();

    /// Runs the steps; call once, after resolve_users() succeeded, and keep the job alive (a
    /// shared_ptr in the awaiting frame) until it returns. Never throws for a failing step: that
    /// is a result with ok false.
    asio::awaitable<protocol::provision_result> run();

    /// Ends the provision: the current process group gets SIGTERM (SIGKILL after kill_grace),
    /// no later step starts, the result says cancelled. Idempotent.
    void cancel();
    /// The agent exits now: SIGKILL the current process group.
    void kill_now();

    const std::string& plan() const noexcept { return request_.plan; }

private:
    struct process_end;
    class output_sink;

    asio::awaitable<protocol::step_outcome> run_step(std::size_t index);
    asio::awaitable<process_end> run_process(std::vector<std::string> argv, std::size_t index,
                                             std::chrono::milliseconds timeout, output_sink* sink);
    void fail_step(protocol::step_outcome& o, std::string reason, const process_end* end,
                   std::chrono::steady_clock::time_point t0, std::uint64_t dropped_lines);
    void emit(std::string_view event, const protocol::json& fields);
    protocol::json fields_for(const std::string& step) const;

    provision_setup setup_;
    protocol::provision_request request_;
    std::vector<user_info> users_;   // per step, from resolve_users()
    bool cancelled_ = false;
    bool emit_failed_ = false;
    proc::stopper* current_ = nullptr;  // stops the process running now, if any
};

} // namespace machine::agent
