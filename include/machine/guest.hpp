// The host's side of the guest agent (guest-agent/PROTOCOL.md): deploying it into a VM and
// talking to it through a relay to its Unix socket (over SSH).
//
// Everything the agent sends is untrusted: lines are capped by the protocol decoder, malformed
// lines are reported (through `on_problem`, at most one line a second plus a count) and
// skipped, nothing in a message is ever used as a host path or a host command, and every
// request has a deadline (request_deadlines; guest-agent/PROTOCOL.md §4 "Deadlines"). Text
// reaches the user's terminal only through the sanitizing terminal sink.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "machine/error.hpp"
#include "machine/protocol.hpp"
#include "machine/text.hpp"

namespace machine::ssh {
class session;
class channel;
} // namespace machine::ssh

namespace machine::proc {
class child;
} // namespace machine::proc

namespace machine::guest {

inline constexpr const char* agent_socket = "/run/machine-agent/agent.sock";
inline constexpr const char* agent_install_path = "/usr/local/bin/machine-agent";

// The agent answered a request with an `error` message.
class agent_error : public error {
public:
    agent_error(std::string code, const std::string& message)
        : error("the guest agent refused: " + message + " (" + code + ")"), code_(std::move(code)) {}
    const std::string& code() const noexcept { return code_; }

private:
    std::string code_;
};

// No guest agent answered: the relay to it (`machine-agent relay`, which the connection runs in
// the VM) was not there or found nothing listening on the agent's socket. Not a lost connection:
// the VM is up, the agent is not (not installed yet, stopped, or an older agent without the relay).
class agent_unavailable : public error {
public:
    agent_unavailable(const std::string& vm, int relay_status);
    int relay_status() const noexcept { return relay_status_; }

private:
    int relay_status_;
};

// The agent did not answer a request in time (request_deadlines). The message names the VM and
// the request: "VM 'web': the guest agent did not answer secrets.discover within 20 s". The
// connection is closed: every later request on it fails at once.
class request_timeout : public error {
public:
    request_timeout(const std::string& vm, std::string request, std::chrono::milliseconds after, bool silence);
    const std::string& request() const noexcept { return request_; }

private:
    std::string request_;
};

// How long the agent may take to answer, per request type (guest-agent/PROTOCOL.md §4,
// "Deadlines"). A total deadline runs from sending the request to its final message; a
// silence deadline restarts with every message for the request. Messages that are not for the
// request (garbage, other ids) never extend one.
struct request_deadlines {
    using ms = std::chrono::milliseconds;
    ms hello{10'000};
    ms emit{10'000};
    ms cancel{10'000};            // also: a subscription's end after its cancel
    ms session_list{15'000};
    ms secrets_render{30'000};
    ms secrets_clear{15'000};
    ms secrets_list{15'000};
    ms secrets_discover{20'000};
    ms network_apply{30'000};     // a small file, then `nft -f` (the agent kills it after 20 s)
    ms provision_pending{15'000}; // reads the steps' record
    ms subscribe_replay{30'000};  // silence, until the agent's `live`; none afterwards
    ms run_silence{600'000};      // silence; run() callers may pass their own
    ms provision_margin{60'000};  // on top of what the plan's own timeouts allow (provision_deadline)
    // Not a time: how many bad or unexpected lines one request puts up with. A healthy agent
    // sends none; past this many the agent is flooding, and the request fails at once (its
    // deadline may be hours away, e.g. a provision's or a live subscription's, which has none).
    std::uint64_t max_bad_lines = 10'000;
};

// The agent sent more than request_deadlines::max_bad_lines lines that could not be decoded or
// were not for the request in flight: "VM 'web': the guest agent sent 10001 bad or unexpected
// lines during provision; gave up on it". The connection is closed, as after a timeout, and
// on_problem hears no summary of those lines (this message is it).
class agent_flood : public error {
public:
    agent_flood(const std::string& vm, const std::string& request, std::uint64_t lines);
};

// A provision sends nothing until its result (progress is in the journal), so its deadline is
// the longest the agent may take by PROTOCOL.md's rules for this plan, plus `margin`: per step
// its timeout_ms, 5 s from SIGTERM to SIGKILL, its check twice (each at most 60 s) and 1 s of
// background output.
std::chrono::milliseconds provision_deadline(const protocol::provision_request& request, std::chrono::milliseconds margin);

// The bytes a connection speaks the protocol over: the relay (`machine-agent relay`) in the
// VM, reached through a channel of machine's own pinned SSH connection (libssh), or through the
// pipes of an `ssh` client riding the VM's pinned OpenSSH master (no handshake of its own).
class stream {
public:
    virtual ~stream() = default;
    /// The next chunk; nullopt at the end. Throws ssh::connection_lost when the way to the VM died.
    virtual asio::awaitable<std::optional<std::string>> read() = 0;
    virtual asio::awaitable<void> write(std::string data) = 0;
    /// write() of secret bytes, from the caller's buffer, which is wiped however the write ends.
    virtual asio::awaitable<void> write_secret(std::string& data) = 0;
    /// The relay's exit status once it has ended; nullopt when it cannot be known (waited for:
    /// race it against a deadline).
    virtual asio::awaitable<std::optional<int>> exit_status() = 0;
    /// The relay's end closed the stream (not we).
    virtual bool closed_by_remote() const = 0;
    virtual void close() = 0;
};

// The relay over a channel of `session`.
std::unique_ptr<stream> channel_stream(std::shared_ptr<ssh::channel> channel);
// The relay over `relay`'s stdin and stdout (an `ssh` client that runs it in the VM).
std::unique_ptr<stream> process_stream(std::unique_ptr<proc::child> relay);

// The command that runs the relay in the VM, for a shell there: RELAY relay --socket SOCKET
// (guest-agent/relay.hpp says why not a stream-local channel to the socket).
std::string relay_command(const std::string& socket = agent_socket, const std::string& relay = agent_install_path);

// One channel to the agent. Requests are sequential on a connection; open several for
// concurrent work (channels are cheap). Every request fails with request_timeout at its
// deadline and with agent_flood past max_bad_lines; the connection is then closed.
class connection {
public:
    // `on_problem` hears about the lines from the agent that could not be decoded or did not
    // belong to the request in flight (such lines are skipped): the first as it is, then at
    // most one summary a second with a count, and one when the request ends.
    // Errors name the VM of the session (ssh::session::vm_name()).
    // The channel runs `RELAY relay --socket SOCKET` in the VM (guest-agent/relay.hpp says why not a
    // stream-local channel to the socket); tests point both at their own agent.
    static asio::awaitable<std::unique_ptr<connection>> open(
        std::shared_ptr<ssh::session> session, std::function<void(const std::string&)> on_problem = {},
        std::string socket = agent_socket, std::string relay = agent_install_path);
    ~connection();

    // The deadlines of the requests sent from now on (tests shorten them).
    void set_deadlines(const request_deadlines& d) { deadlines_ = d; }
    const request_deadlines& deadlines() const noexcept { return deadlines_; }

    asio::awaitable<protocol::hello_result> hello(std::string client);

    // Runs a command as `request.user`; output chunks go to `on_output` as they arrive. Throws
    // request_timeout when nothing comes for the run for `silence` (default
    // deadlines().run_silence): pass more for a command that may be quiet for longer.
    asio::awaitable<protocol::run_result> run(protocol::run_request request,
                                              std::function<void(const protocol::output_chunk&)> on_output);
    asio::awaitable<protocol::run_result> run(protocol::run_request request,
                                              std::function<void(const protocol::output_chunk&)> on_output,
                                              std::chrono::milliseconds silence);

    // Streams every event with seq > from_seq, then live ones, to `on_event` until it returns
    // false (the subscription is then cancelled and drained). Returns the last seq delivered.
    // Throws ssh::connection_lost when the VM or the connection goes away, request_timeout when
    // the agent is silent for deadlines().subscribe_replay before its `live` (after it, silence
    // is normal) or does not end the subscription within deadlines().cancel of our cancel.
    asio::awaitable<std::uint64_t> subscribe(std::uint64_t from_seq,
                                             std::function<bool(const protocol::event_record&)> on_event,
                                             std::function<void(const protocol::gap_notice&)> on_gap = {});

    // Applies a provisioning plan; its progress is in the journal (subscribe on another
    // connection to follow it). A failed step is a result with ok == false, not an exception.
    // Deadline: provision_deadline(request, deadlines().provision_margin).
    asio::awaitable<protocol::provision_result> provision(protocol::provision_request request);

    // The steps of `request` a provision would not skip as unchanged (PROTOCOL.md §4
    // `provision.pending`), in its order: only names it asked about. Nothing runs in the VM.
    // An agent older than provision.pending refuses with agent_error code "unknown_type".
    asio::awaitable<std::vector<std::string>> pending_steps(protocol::provision_pending_request request);

    // Appends an event to the agent's journal; returns its seq.
    asio::awaitable<std::uint64_t> emit(protocol::emit_request request);

    // The live agent sessions (Claude Code, Codex in tmux) in the VM, by name, each with the
    // number of tmux clients attached now. An agent older than sessions refuses with
    // agent_error code "unknown_type".
    asio::awaitable<std::vector<protocol::session_info>> list_sessions();

    // Renders one set of secrets into the VM's tmpfs (PROTOCOL.md §4 `secrets.render`): the
    // file <dir>/<set>.env, owned by `request.user` (empty: the agent's VM user), replacing the
    // set atomically. The values are wiped from `request` and the JSON message once encoded, and
    // from the encoded line once the stream has it, also when the write fails or times out
    // (stream::write_secret; libssh's and the kernel's own buffers are beyond reach); no error
    // carries one.
    // Deadline: deadlines().secrets_render, sending the line included.
    // Throws machine::error when the set does not fit in one protocol line (1 MiB: about
    // 760 KiB of values), agent_error when the agent refuses (`bad_request` naming the
    // variable, `no_such_user`, `unsafe_target` when its directory is not a tmpfs of the VM
    // user's with mode 0700 or is a symlink, `busy` at 256 sets, `internal` for an I/O failure
    // such as a full tmpfs, `unknown_type` from an agent older than secrets; an agent older
    // than `unsafe_target` says `internal` for an unsafe directory). When the connection drops
    // mid-send the agent never sees a whole line and writes nothing: the set stays as it was.
    asio::awaitable<protocol::secrets_render_result> render_secrets(protocol::secrets_render_request request);

    // Zero-fills and removes one set of secrets in the VM, or every set when `set` is nullopt
    // (PROTOCOL.md §4 `secrets.clear`). Returns the sets that were there: a set that was not is
    // no error.
    asio::awaitable<std::vector<std::string>> clear_secrets(std::optional<std::string> set);

    // The repos under the VM user's ~/code whose .envrc loads secret sets (`use op_env ID`,
    // PROTOCOL.md §4 `secrets.discover`), sorted by dir. Each `uses` entry is the token as
    // written, with its line: it may not be a valid set name (check it with
    // protocol::is_valid_secret_set_name and say which line is wrong). Everything in it comes
    // from files anyone in the VM can write: the parser has capped it (256 repos, 64 uses,
    // 128-byte tokens, printable text), but print it through the sanitizing terminal sink.
    // `truncated` (a cap left repos out) is reported through `on_problem`. An agent older than
    // secrets.discover refuses with agent_error code "unknown_type".
    asio::awaitable<std::vector<protocol::envrc_secrets>> discover_secrets();

    // The sets rendered in the VM now (PROTOCOL.md §4 `secrets.list`): names, variable counts,
    // sizes and times, never a value.
    asio::awaitable<std::vector<protocol::secret_set_info>> list_secrets();
    /// network.apply: the agent keeps `ruleset` (an `nft -f` file: net::guest_ruleset) as the
    /// VM's network rules and applies it now and at every start. Not being applied is in the
    /// result (applied, nft_found, error), not an exception.
    asio::awaitable<protocol::network_apply_result> apply_network(std::string ruleset);

    // Over `s`, a relay already started; `vm` names the VM in errors.
    connection(std::unique_ptr<stream> s, std::function<void(const std::string&)> on_problem, std::string vm = {});

private:
    using clock = std::chrono::steady_clock;
    // The request in flight and its deadline, from begin() until the scope ends.
    class request_scope;
    request_scope begin(const char* request, std::chrono::milliseconds limit, bool on_silence);
    [[noreturn]] void timed_out();
    void problem(std::string_view kind, const std::string& detail);
    void flush_problems();

    asio::awaitable<std::optional<std::string>> read_chunk();
    asio::awaitable<std::optional<int>> relay_exit_status();
    [[noreturn]] void relay_ended(std::optional<int> status);
    asio::awaitable<protocol::message> next_for(std::uint64_t id, std::uint64_t also = 0);
    asio::awaitable<protocol::message> final_for(std::uint64_t id);
    asio::awaitable<protocol::message> call(std::uint64_t id, const protocol::json& message);
    asio::awaitable<void> send(const protocol::json& message);
    asio::awaitable<void> send_line(std::string& line, bool secret);
    asio::awaitable<void> write_line(std::string& line, bool secret);

    std::unique_ptr<stream> stream_;
    std::function<void(const std::string&)> on_problem_;
    std::string vm_;
    request_deadlines deadlines_;
    protocol::decoder decoder_;
    std::vector<protocol::decoded> pending_;
    std::size_t next_pending_ = 0;
    std::uint64_t next_id_ = 1;
    // The request in flight: its name, its deadline (max: none) and, for a silence deadline,
    // how far each of its messages pushes it.
    const char* request_ = nullptr;
    clock::time_point deadline_ = clock::time_point::max();
    std::chrono::milliseconds limit_{0};
    bool on_silence_ = false;
    bool broken_ = false;  // a request timed out or was flooded: the stream is closed
    std::uint64_t bad_lines_ = 0;  // in the request in flight
    text::log_limiter problems_{"the guest agent sent", "bad or unexpected line"};
};

// The agent binary and unit this host ships.
struct agent_files {
    std::filesystem::path binary;
    std::string sha256;  // hex
};

// The architecture machine itself is built for ("x86_64", "aarch64"): its VMs' usual one.
std::string_view native_agent_arch();
// Lima's `arch` values there is a guest agent for: x86_64 and aarch64.
bool known_agent_arch(std::string_view arch);

// The agent for a VM of architecture `arch` (Lima's `arch`). For machine's own architecture:
// $MACHINE_AGENT, else `machine-agent` next to this executable, else the installed one
// (<prefix>/lib/machine/machine-agent, for <prefix>/bin/machine), else the build tree's
// guest-agent/machine-agent; for another one the same with the architecture appended
// ($MACHINE_AGENT_AARCH64, machine-agent-aarch64, guest-agent/machine-agent-aarch64). The file
// must be a Linux executable for `arch`. Throws machine::error naming `vm` (when given) and
// saying where it looked, or that there is no agent for `arch`.
agent_files find_agent(std::string_view arch = native_agent_arch(), std::string_view vm = {});

// The systemd unit (guest-agent/machine-agent.service, compiled in).
std::string_view agent_unit();

// What ensure_agent() did.
enum class deployment { already_current, installed, upgraded };

// Whether the agent that said `running` in its hello is exactly `files` as the `machine-agent`
// service for `vm_user` (what ensure_agent installs): then nothing needs to run in the VM (a
// shell and sudo cost about a second under emulation). Ask it before ensure_agent.
bool is_current(const protocol::deployment_info& running, const agent_files& files, const std::string& vm_user);

// Makes sure the VM runs exactly `files` as its `machine-agent` service for `vm_user`:
// compares the installed files' SHA-256, uploads and installs when missing or different,
// (re)starts the service.
asio::awaitable<deployment> ensure_agent(std::shared_ptr<ssh::session> session, const agent_files& files,
                                         std::string vm_user);

// Opens a connection to the agent, retrying for up to `patience` while it starts.
asio::awaitable<std::unique_ptr<connection>> connect_agent(
    std::shared_ptr<ssh::session> session, std::chrono::milliseconds patience,
    std::function<void(const std::string&)> on_problem = {}, std::string socket = agent_socket,
    std::string relay = agent_install_path);

} // namespace machine::guest
