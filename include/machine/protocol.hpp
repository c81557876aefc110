// The guest agent protocol (guest-agent/PROTOCOL.md): framing, envelope and message shapes.
//
// Pure and sans-io: nothing here reads or writes a socket. The agent and the host both feed the
// bytes they receive to a `decoder` and send what `encode` returns, so the two sides cannot
// disagree about framing. Typical host use:
//
//     protocol::decoder dec({.require_id = false});           // agent messages may carry id null
//     std::vector<protocol::decoded> items;
//     dec.feed(chunk, items);                                  // any chunk size, even one byte
//     for (auto& item : items) {
//         if (auto* e = std::get_if<protocol::decode_error>(&item)) { ... e->code ... }
//         auto& m = std::get<protocol::message>(item);
//         if (m.type == protocol::type::output) {
//             auto out = protocol::parse_output(m.body);      // parsed<output_chunk>
//             ...
//         }
//     }
//     send(protocol::encode(protocol::make_run_request(7, req)));
//
// Errors are values here (a `decode_error`, a `parsed<T>` holding a message); nothing throws
// except `encode` on a message that cannot fit in one line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace machine::protocol {

// Messages keep their keys in insertion order, so lines read "v, id, type, ..." on the wire.
using json = nlohmann::ordered_json;

inline constexpr int version = 1;
inline constexpr std::size_t max_line_bytes = 1 << 20;      // before the '\n', both directions
inline constexpr std::size_t output_chunk_bytes = 32 << 10; // raw bytes per `output` message
inline constexpr std::size_t max_event_bytes = 64 << 10;    // an emitted event, encoded
inline constexpr std::size_t max_nesting = 64;              // JSON depth accepted by the decoder
inline constexpr std::uint64_t max_id = (std::uint64_t{1} << 53) - 1;

// Message types (the `type` field).
namespace type {
// requests
inline constexpr std::string_view hello = "hello";
inline constexpr std::string_view run = "run";
inline constexpr std::string_view cancel = "cancel";
inline constexpr std::string_view health = "health";
inline constexpr std::string_view subscribe = "subscribe";
inline constexpr std::string_view emit = "emit";
inline constexpr std::string_view provision = "provision";
inline constexpr std::string_view session_register = "session.register";
inline constexpr std::string_view session_end = "session.end";
inline constexpr std::string_view session_list = "session.list";
inline constexpr std::string_view secrets_render = "secrets.render";
inline constexpr std::string_view secrets_clear = "secrets.clear";
inline constexpr std::string_view secrets_list = "secrets.list";
inline constexpr std::string_view provision_pending = "provision.pending";
inline constexpr std::string_view secrets_discover = "secrets.discover";
inline constexpr std::string_view network_apply = "network.apply";
// agent messages: final
inline constexpr std::string_view result = "result";
inline constexpr std::string_view error = "error";
// agent messages: streaming
inline constexpr std::string_view output = "output";
inline constexpr std::string_view event = "event";
inline constexpr std::string_view gap = "gap";
inline constexpr std::string_view live = "live";
} // namespace type

/// True for `result` and `error`: the one message that ends a request.
bool is_final(std::string_view type);

// Error codes carried by `error` messages (PROTOCOL.md §3). The wire carries the string form.
enum class errc {
    // framing and envelope
    line_too_long,
    invalid_json,
    not_an_object,
    bad_version,
    missing_type,
    bad_id,
    truncated,
    // requests
    unknown_type,
    bad_request,
    duplicate_id,
    too_many_requests,
    not_found,
    bad_seq,
    no_such_user,
    spawn_failed,
    too_large,
    too_many_clients,
    shutting_down,
    busy,        ///< provision: another provision is running (new codes go before `internal`)
    unsafe_target,  ///< secrets.*: the secrets directory is not a tmpfs, a symlink, someone else's
    internal,
};

/// The wire spelling: errc::line_too_long -> "line_too_long".
std::string_view to_string(errc code);
/// The code for a wire spelling; nullopt for codes this build does not know (treat as internal).
std::optional<errc> errc_from_string(std::string_view code);

// ---------------------------------------------------------------------------------------------
// Decoding

/// One decoded line: a message whose envelope (v, id, type) has been validated.
struct message {
    std::optional<std::uint64_t> id;  ///< nullopt only when the line had no id or id null
    std::string type;                 ///< never empty
    json body;                        ///< the whole object, v/id/type included
};

/// A line that could not be decoded into a message.
struct decode_error {
    errc code;
    std::string message;              ///< one line, for people
    std::optional<std::uint64_t> id;  ///< the line's id when it had a usable one (to reply to)
};

using decoded = std::variant<message, decode_error>;

struct decoder_options {
    std::size_t max_line = max_line_bytes;  ///< longer lines give errc::line_too_long
    /// Requests must carry an id (the agent's side). Agent messages may carry `id: null`
    /// (errors about undecodable lines), so the host decodes with require_id = false.
    bool require_id = true;
};

/// Incremental line decoder: feed it byte chunks of any size, it hands back every complete
/// line as a `decoded`. The result sequence does not depend on how the input was chunked.
/// Memory: it keeps at most `max_line` bytes of an unfinished line between calls; an overlong
/// line is reported once, as soon as it passes the limit, and discarded up to its '\n'.
class decoder {
public:
    explicit decoder(decoder_options options = {});

    /// Decodes `bytes`, appending one item per complete line (or overlong line) to `out`.
    void feed(std::string_view bytes, std::vector<decoded>& out);
    /// Convenience form of feed().
    std::vector<decoded> feed(std::string_view bytes);
    /// The stream has ended: reports an unfinished line as errc::truncated, then resets.
    void finish(std::vector<decoded>& out);

    /// Bytes of the unfinished line currently held (≤ max_line).
    std::size_t buffered() const noexcept { return partial_.size(); }
    /// True while skipping the rest of an overlong line.
    bool discarding() const noexcept { return discarding_; }
    /// Lines seen so far (complete, overlong or truncated), counting ignored blank lines.
    std::uint64_t lines() const noexcept { return lines_; }

private:
    void line_done(std::string_view line, std::vector<decoded>& out);

    decoder_options options_;
    std::string partial_;
    bool discarding_ = false;
    std::uint64_t lines_ = 0;
};

/// Decodes one complete line (without its '\n'). Blank lines give nullopt.
std::optional<decoded> decode_line(std::string_view line, const decoder_options& options = {});

// ---------------------------------------------------------------------------------------------
// Encoding

/// One message as one line, '\n' included. Strings that are not valid UTF-8 are repaired
/// (U+FFFD), never a throw. Throws std::length_error when the line would exceed
/// max_line_bytes: the message shapes below keep every agent message far under it.
std::string encode(const json& message);

/// {"v":1,"id":id,"type":type}: the start of any message.
json make_envelope(std::optional<std::uint64_t> id, std::string_view type);
/// A request with no fields yet (hello, health...).
inline json make_request(std::uint64_t id, std::string_view type) { return make_envelope(id, type); }
/// A `result` with `fields` (an object) after the envelope.
json make_result(std::optional<std::uint64_t> id, const json& fields = json::object());
/// An `error`.
json make_error(std::optional<std::uint64_t> id, errc code, std::string_view message);
json make_error(const decode_error& e);

// ---------------------------------------------------------------------------------------------
// Typed messages. parse_* check a decoded message's fields; on failure `error` says which
// field is wrong (the agent sends it as errc::bad_request).

template <class T>
struct parsed {
    std::optional<T> value;
    std::string error;               ///< what is wrong, naming the field
    errc code = errc::bad_request;   ///< the code to reply with

    static parsed fail(std::string why, errc c = errc::bad_request) {
        return parsed{std::nullopt, std::move(why), c};
    }
    explicit operator bool() const noexcept { return value.has_value(); }
    T& operator*() { return *value; }
    const T& operator*() const { return *value; }
    T* operator->() { return &*value; }
    const T* operator->() const { return &*value; }
};

struct hello_request {
    std::string client;  ///< free text for the agent's log
};
json make_hello_request(std::uint64_t id, const hello_request& r);
parsed<hello_request> parse_hello_request(const json& body);

struct journal_info {
    std::string id;
    std::uint64_t first_seq = 0;  ///< 0 when empty
    std::uint64_t last_seq = 0;
};

/// What is installed, as the running agent sees it: lets a client tell that the agent is current
/// without running anything in the VM. Empty strings when unknown (older agents send none).
struct deployment_info {
    std::string binary_sha256;  ///< of the agent's own executable, when it started
    std::string unit_sha256;    ///< of its systemd unit file, now ("" when unreadable)
    std::string user;           ///< its --user
};

struct hello_result {
    int protocol = version;
    std::string agent_version;
    std::vector<std::string> capabilities;
    std::string boot_id;
    journal_info journal;
    std::size_t max_line = max_line_bytes;
    std::size_t output_chunk = output_chunk_bytes;
    std::size_t max_event_bytes = protocol::max_event_bytes;
    deployment_info deployment;
};
json make_hello_result(std::uint64_t id, const hello_result& r);
parsed<hello_result> parse_hello_result(const json& body);
/// What a host keeps of a boot_id (a record on its disk): 1-64 of [0-9A-Za-z-], as the kernel's
/// UUIDs and the agent's "unknown" are. The VM chooses the text: anything else is not kept.
bool is_boot_id(std::string_view id);

struct run_request {
    std::vector<std::string> argv;  ///< never a shell string; argv[0] is found in PATH
    std::string user;
    std::optional<std::string> cwd;                          ///< default: the user's home
    std::vector<std::pair<std::string, std::string>> env;    ///< added to the base environment
    std::optional<std::string> stdin_data;                   ///< raw bytes; absent: /dev/null
    std::optional<std::uint32_t> grace_ms;                   ///< SIGTERM..SIGKILL on cancel
};
inline constexpr std::size_t max_argv = 4096;
json make_run_request(std::uint64_t id, const run_request& r);
parsed<run_request> parse_run_request(const json& body);

struct output_chunk {
    std::string stream;  ///< "stdout" or "stderr"
    std::string data;    ///< raw bytes, decoded from data_b64
};
json make_output(std::uint64_t id, std::string_view stream, std::string_view data);
parsed<output_chunk> parse_output(const json& body);

struct run_result {
    std::optional<int> exit_code;  ///< exactly one of exit_code and signal is set
    std::optional<int> signal;
    bool cancelled = false;
    std::uint64_t duration_ms = 0;
};
json make_run_result(std::uint64_t id, const run_result& r);
parsed<run_result> parse_run_result(const json& body);

struct cancel_request {
    std::uint64_t target = 0;
};
json make_cancel_request(std::uint64_t id, const cancel_request& r);
parsed<cancel_request> parse_cancel_request(const json& body);

struct health_result {
    std::uint64_t uptime_ms = 0;
    std::uint64_t rss_kib = 0;
    std::uint64_t clients = 0;
    std::uint64_t running = 0;
    std::uint64_t subscribers = 0;
    std::uint64_t journal_first_seq = 0;
    std::uint64_t journal_last_seq = 0;
    std::uint64_t journal_events = 0;
    std::uint64_t journal_bytes = 0;
};
json make_health_result(std::uint64_t id, const health_result& r);
parsed<health_result> parse_health_result(const json& body);

struct subscribe_request {
    std::uint64_t from_seq = 0;  ///< the last seq already seen; 0: everything retained
};
json make_subscribe_request(std::uint64_t id, const subscribe_request& r);
parsed<subscribe_request> parse_subscribe_request(const json& body);

/// An event as stored in the journal and streamed to subscribers.
struct event_record {
    std::uint64_t seq = 0;
    std::string ts;      ///< RFC 3339 UTC with milliseconds
    std::string event;   ///< the event's name, e.g. "boot.finished"
    json fields = json::object();  ///< the event's own fields, in order
};
/// The streamed form: {"v":1,"id":id,"type":"event","seq":...,"ts":...,"event":...,fields...}.
json make_event(std::uint64_t id, const event_record& e);
parsed<event_record> parse_event(const json& body);
/// The journal line: the streamed form without v, id and type (no '\n').
std::string journal_line(const event_record& e);
/// Turns a journal line into the streamed form for request `id` without re-parsing it
/// (the line must come from journal_line()). Returns the line with its '\n'.
std::string event_message_from_journal_line(std::uint64_t id, std::string_view line);

struct gap_notice {
    std::uint64_t from_seq = 0;  ///< first missing seq
    std::uint64_t to_seq = 0;    ///< last missing seq
};
json make_gap(std::uint64_t id, const gap_notice& g);
parsed<gap_notice> parse_gap(const json& body);

json make_live(std::uint64_t id, std::uint64_t seq);

struct emit_request {
    std::string event;
    json fields = json::object();
};
json make_emit_request(std::uint64_t id, const emit_request& r);
/// Checks the name, the reserved keys and the encoded size (errc::too_large above
/// max_event_bytes).
parsed<emit_request> parse_emit_request(const json& body);

/// Event names: 1-64 of [a-z0-9._-], starting with a letter or digit.
bool is_valid_event_name(std::string_view name);
/// Keys an event's fields may not use: v, id, type, seq, ts, event.
bool is_reserved_field(std::string_view key);

// provision (PROTOCOL.md §4 `provision`): an ordered list of idempotent steps.

inline constexpr std::size_t max_provision_steps = 512;
inline constexpr std::uint64_t default_step_timeout_ms = 600'000;
inline constexpr std::uint64_t max_step_timeout_ms = 86'400'000;

struct provision_step {
    std::string name;   ///< 1-64 of [a-z0-9._-], starting with a letter or digit; unique
    std::string user;   ///< a user from /etc/passwd
    std::vector<std::pair<std::string, std::string>> env;  ///< added to the base environment
    std::vector<std::string> check;   ///< empty: no check
    std::vector<std::string> run;
    std::uint64_t timeout_ms = default_step_timeout_ms;
    std::string hash;   ///< 1-128 of [0-9a-f], computed by the client; opaque to the agent
};
struct provision_request {
    std::string plan;   ///< 1-64 characters, a label echoed in events
    bool force = false; ///< ignore recorded hashes
    std::vector<provision_step> steps;
};
json make_provision_request(std::uint64_t id, const provision_request& r);
/// Every rule of PROTOCOL.md; errors name the step and field ("steps[2].name: ...").
parsed<provision_request> parse_provision_request(const json& body);

struct step_outcome {
    std::string name;
    std::string outcome;          ///< unchanged, satisfied, ran, failed, not_run
    std::uint64_t duration_ms = 0;
    std::string reason;           ///< failed only
    std::optional<int> exit_code;
    std::optional<int> signal;
    std::vector<std::string> tail;
    std::string error;
};
struct provision_result {
    bool ok = false;
    bool cancelled = false;
    std::uint64_t duration_ms = 0;
    std::vector<step_outcome> steps;
};
json make_provision_result(std::uint64_t id, const provision_result& r);
parsed<provision_result> parse_provision_result(const json& body);

// provision.pending (PROTOCOL.md §4): which steps a provision of them would not skip as
// unchanged, without running anything.
struct step_identity {
    std::string name;  ///< as provision_step::name
    std::string hash;  ///< as provision_step::hash
};
struct provision_pending_request {
    std::vector<step_identity> steps;
};
struct provision_pending_result {
    std::vector<std::string> pending;  ///< in the request's order
};
json make_provision_pending_request(std::uint64_t id, const provision_pending_request& r);
parsed<provision_pending_request> parse_provision_pending_request(const json& body);
json make_provision_pending_result(std::uint64_t id, const provision_pending_result& r);
parsed<provision_pending_result> parse_provision_pending_result(const json& body);

/// Step names follow the event-name rule: 1-64 of [a-z0-9._-], starting with a letter or digit.
inline bool is_valid_step_name(std::string_view name) { return is_valid_event_name(name); }

// Agent sessions (PROTOCOL.md §4 `session.*`): coding agents (Claude Code, Codex) running in
// tmux in the VM. Each session's wrapper (`machine-agent session run`) registers it on a
// connection it keeps open for the session's whole life.

inline constexpr std::size_t max_session_name = 64;
inline constexpr std::size_t max_sessions = 256;         ///< live registrations per agent
inline constexpr std::size_t max_session_user = 64;      ///< bytes of a user name in a listing
inline constexpr std::size_t max_session_agent = 32;     ///< bytes of an agent kind in a listing
inline constexpr std::size_t max_session_tty = 64;
inline constexpr std::int64_t max_session_pid = 0x7fffffff;
inline constexpr std::uint64_t max_session_attached = 65536;

/// Session names: 1-64 of [A-Za-z0-9_-], not starting with '-'. No '.' or ':': tmux turns both
/// into '_' in session names, so "a.b" and "a_b" would be one tmux session.
bool is_valid_session_name(std::string_view name);
/// The agent kinds a session can run: "claude" and "codex".
bool is_valid_agent_kind(std::string_view agent);

struct session_register_request {
    std::string name;
    std::string agent;            ///< claude or codex
    std::int64_t pid = 0;         ///< the wrapper's pid (the tmux pane's process)
    std::string tty;              ///< optional, e.g. /dev/pts/3
    std::uint64_t running_ms = 0; ///< how long the session has already run (re-registration)
    bool resumed = false;         ///< registered before, with an agent that has since restarted
};
json make_session_register_request(std::uint64_t id, const session_register_request& r);
parsed<session_register_request> parse_session_register_request(const json& body);

/// The end of the session registered on the same connection: how its agent process ended.
struct session_end_request {
    std::optional<int> exit_code;  ///< exactly one of exit_code and signal is set
    std::optional<int> signal;
    std::uint64_t duration_ms = 0;
};
json make_session_end_request(std::uint64_t id, const session_end_request& r);
parsed<session_end_request> parse_session_end_request(const json& body);

/// One live session as `session.list` reports it. Everything comes from the VM: the parser caps
/// every string and the count (max_sessions).
struct session_info {
    std::string name;        ///< is_valid_session_name
    std::string agent;       ///< 1-32 of [a-z0-9_-] (claude, codex; later agents may add kinds)
    std::string user;        ///< the user the session runs as, 1-64 printable bytes
    std::string started_at;  ///< RFC 3339 UTC, e.g. 2026-11-27T12:00:01.234Z
    std::int64_t pid = 0;    ///< the wrapper's pid in the VM
    std::uint64_t attached = 0;  ///< tmux clients attached to it now
};
struct session_list_result {
    std::vector<session_info> sessions;  ///< by name
};
json make_session_list_request(std::uint64_t id);
json make_session_list_result(std::uint64_t id, const session_list_result& r);
parsed<session_list_result> parse_session_list_result(const json& body);

// Secrets (PROTOCOL.md §4 `secrets.*`): a project's secrets, rendered by the agent as one
// bash-sourceable file per set into a tmpfs of its own in the VM. Values are raw bytes
// (`value_b64` on the wire). Nothing here puts a value into an error message: errors name a
// variable by its index, and by its name once the name is valid.

inline constexpr std::size_t max_secret_variables = 1000;        ///< per set
inline constexpr std::size_t max_secret_value_bytes = 64 << 10;  ///< raw bytes of one value
inline constexpr std::size_t max_secret_name = 128;              ///< bytes of a variable's name
inline constexpr std::size_t max_secret_set_name = 64;
inline constexpr std::size_t max_secret_sets = 256;              ///< sets rendered in one VM at once
inline constexpr std::size_t max_secret_path = 4096;             ///< bytes of a result's path

/// Set names: ^[a-z0-9][a-z0-9_-]{0,63}$ (the file is <set>.env).
bool is_valid_secret_set_name(std::string_view set);
/// Variable names: ^[A-Za-z_][A-Za-z0-9_]{0,127}$, except those bash cannot assign (its
/// read-only UID, EUID, PPID, BASHOPTS, SHELLOPTS, BASH_VERSINFO, and `_`, which it resets).
bool is_valid_secret_name(std::string_view name);

struct secret_variable {
    std::string name;
    std::string value;  ///< raw bytes, no NUL, at most max_secret_value_bytes
};
struct secrets_render_request {
    std::string set;
    std::vector<secret_variable> variables;  ///< unique names, at most max_secret_variables
    std::string user;  ///< who owns (and reads) the file; empty: the agent's --user
};
json make_secrets_render_request(std::uint64_t id, const secrets_render_request& r);
/// Every rule of PROTOCOL.md, checked before anything is written.
parsed<secrets_render_request> parse_secrets_render_request(const json& body);
/// Overwrites the bytes of `s` with zeros (in a way the compiler keeps), then empties it.
void wipe_secret_bytes(std::string& s);
/// wipe_secret_bytes() on every value of `r`.
void wipe_secrets(secrets_render_request& r);
/// The same on every `value_b64` of a secrets.render message (sent or received) once it is used.
void wipe_secrets(json& message);

struct secrets_render_result {
    std::string set;
    std::uint64_t count = 0;  ///< variables in the file
    std::string path;         ///< the file in the VM, e.g. /run/machine-secrets/web.env
};
json make_secrets_render_result(std::uint64_t id, const secrets_render_result& r);
parsed<secrets_render_result> parse_secrets_render_result(const json& body);

// network.apply: machine's nftables table for the VM (the second line: net::guest_ruleset),
// kept by the agent in a root-owned file and applied now and at every start.
inline constexpr std::size_t max_network_ruleset_bytes = 256 << 10;
inline constexpr std::size_t max_network_error_bytes = 4096;
struct network_apply_request {
    std::string ruleset;  ///< `nft -f` input, text without NUL, at most max_network_ruleset_bytes
};
json make_network_apply_request(std::uint64_t id, const network_apply_request& r);
parsed<network_apply_request> parse_network_apply_request(const json& body);

struct network_apply_result {
    std::string path;       ///< where the agent keeps it, e.g. /etc/machine/network.nft
    bool applied = false;   ///< `nft -f` succeeded
    bool nft_found = true;  ///< false: nft is not installed (the file is kept for the next try)
    std::string error;      ///< when not applied: nft's complaint (from the VM: escape it to show it)
};
json make_network_apply_result(std::uint64_t id, const network_apply_result& r);
parsed<network_apply_result> parse_network_apply_result(const json& body);

struct secrets_clear_request {
    std::optional<std::string> set;  ///< nullopt: every set
};
json make_secrets_clear_request(std::uint64_t id, const secrets_clear_request& r);
parsed<secrets_clear_request> parse_secrets_clear_request(const json& body);

struct secrets_clear_result {
    std::vector<std::string> cleared;  ///< the sets that were there, zero-filled and removed
};
json make_secrets_clear_result(std::uint64_t id, const secrets_clear_result& r);
parsed<secrets_clear_result> parse_secrets_clear_result(const json& body);

/// One rendered set as `secrets.list` reports it: names and sizes, never a value.
struct secret_set_info {
    std::string set;
    std::uint64_t count = 0;  ///< variables
    std::uint64_t bytes = 0;  ///< the file's size
    std::string mtime;        ///< when it was rendered, RFC 3339 UTC with milliseconds
};
struct secrets_list_result {
    std::vector<secret_set_info> sets;  ///< by set name, at most max_secret_sets
};
json make_secrets_list_request(std::uint64_t id);
json make_secrets_list_result(std::uint64_t id, const secrets_list_result& r);
parsed<secrets_list_result> parse_secrets_list_result(const json& body);

/// `secrets.discover` (PROTOCOL.md §4): the repos under the VM user's ~/code whose `.envrc`
/// says `use op_env ID`. Everything in the result comes from files in the VM, which anyone in
/// the VM can write: the parser caps every count and length, and checks that `dir` is a relative
/// path of one or two plain components that `path` ends with. A `set` is the token as written,
/// not necessarily a valid set name (the host says which line is wrong).
inline constexpr std::size_t max_discovered_repos = 256;
inline constexpr std::size_t max_envrc_uses = 64;           ///< `use op_env` lines per repo
inline constexpr std::size_t max_envrc_token = 128;         ///< bytes of a `set` as written
inline constexpr std::size_t envrc_read_bytes = 64 << 10;   ///< read of each .envrc
inline constexpr std::size_t max_repo_dir_component = 255;  ///< NAME_MAX

struct envrc_use {
    std::string set;         ///< the ID token as written: 1-128 bytes, printable (not checked as a set name)
    std::uint64_t line = 0;  ///< 1-based line in the .envrc
};
struct envrc_secrets {
    std::string dir;   ///< relative to ~/code: "web" or "org/web"
    std::string path;  ///< the .envrc, absolute: "/home/u/code/web/.envrc"
    std::vector<envrc_use> uses;  ///< in line order, 1..max_envrc_uses
};
struct secrets_discover_result {
    std::vector<envrc_secrets> repos;  ///< by dir, at most max_discovered_repos
    bool truncated = false;            ///< a cap (repos, uses, the scan's budget) left something out
};
json make_secrets_discover_request(std::uint64_t id);
json make_secrets_discover_result(std::uint64_t id, const secrets_discover_result& r);
parsed<secrets_discover_result> parse_secrets_discover_result(const json& body);
/// `dir` of a discovered repo: one or two '/'-separated components, each 1-255 printable bytes
/// (no control characters), not "." or "..".
bool is_valid_repo_dir(std::string_view dir);
/// A `set` token as the agent reports it: 1-128 bytes, no control characters (C0, DEL).
bool is_valid_envrc_token(std::string_view token);

/// The error fields of an `error` message (code as sent, so unknown codes survive).
struct error_reply {
    std::string code;
    std::string message;
};
parsed<error_reply> parse_error(const json& body);

// ---------------------------------------------------------------------------------------------
// base64 (RFC 4648 §4, with padding)

std::string base64_encode(std::string_view bytes);
/// nullopt for anything but canonical padded base64 (no whitespace, no missing padding).
std::optional<std::string> base64_decode(std::string_view text);

} // namespace machine::protocol
