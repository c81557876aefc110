// Typed events and where they go.
//
// Every event travels in one envelope, `{"v":1,"seq":N,"ts":"...","vm":"name","type":"...",...}`:
// a terminal sink renders it for people, a JSON-lines sink for programs (`--json`). Results and
// events go to stdout; logs go to stderr through spdlog.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace machine::events {

inline constexpr int envelope_version = 1;

using value = std::variant<std::string, std::int64_t, bool, std::vector<std::string>>;

struct event {
    std::string vm;
    std::string type;
    std::vector<std::pair<std::string, value>> fields;  // in emission order
    std::uint64_t seq = 0;                              // set by the bus
    std::chrono::system_clock::time_point ts{};         // set by the bus

    const value* find(std::string_view key) const;
    std::string text(std::string_view key) const;  // a string field, or ""
};

// Event types. Constructors keep their names and field sets in one place.
namespace type {
inline constexpr const char* vm_state = "vm.state";        // state, [detail]
inline constexpr const char* lima_status = "lima.status";  // from ha.stdout.log
inline constexpr const char* step_started = "step.started";    // step
inline constexpr const char* step_finished = "step.finished";  // step, ok, duration_ms, [detail]
inline constexpr const char* step_output = "step.output";      // step, stream, line
inline constexpr const char* message = "message";          // level, text
inline constexpr const char* error = "error";              // message, [diagnostics]
inline constexpr const char* vm_done = "vm.done";          // outcome, duration_ms
inline constexpr const char* guest = "guest.event";        // event, agent_seq, then the agent's fields
// A connection (or DNS question) of the VM, from its egress proxy's audit log: kind, host, port,
// bytes_up, bytes_down, duration_ms, [reason], [suppressed]
inline constexpr const char* net_allowed = "net.allowed";
inline constexpr const char* net_refused = "net.refused";
} // namespace type

// VM lifecycle states as machine reports them.
event vm_state(std::string vm, std::string state, std::string detail = {});
event step_started(std::string vm, std::string step);
event step_finished(std::string vm, std::string step, bool ok, std::chrono::milliseconds took,
                    std::string detail = {});
// A line a provisioning step printed (VM-provided text: sinks sanitize it).
event step_output(std::string vm, std::string step, std::string stream, std::string line);
event message(std::string vm, std::string level, std::string text);
event error(std::string vm, std::string message, std::string diagnostics = {});
event vm_done(std::string vm, std::string outcome, std::chrono::milliseconds took);
// An event from the VM's guest agent (its journal), with the agent's own fields after ours.
event guest_event(std::string vm, std::string name, std::uint64_t seq,
                  std::vector<std::pair<std::string, value>> fields);

// One audit record of a VM's egress proxy (net::audit_record without its time: the event has
// its own). Everything in it came from the VM's traffic.
struct connection {
    bool allowed = false;
    std::string kind;  ///< "tcp" or "dns"
    std::string host;
    int port = 0;
    std::int64_t bytes_up = 0;
    std::int64_t bytes_down = 0;
    std::int64_t duration_ms = 0;
    std::string reason;           ///< why it was refused ("" when allowed)
    std::int64_t suppressed = 0;  ///< records the proxy's rate limit folded into this one
};
event net_connection(std::string vm, connection c);

// The envelope as one JSON line (without the newline).
std::string to_json_line(const event& e);
// RFC 3339 UTC with milliseconds: 2026-11-27T12:00:01.234Z
std::string format_timestamp(std::chrono::system_clock::time_point t);

class sink {
public:
    virtual ~sink() = default;
    virtual void write(const event& e) = 0;
};

// One JSON object per line, flushed after each.
class json_lines_sink : public sink {
public:
    explicit json_lines_sink(std::FILE* out) : out_(out) {}
    void write(const event& e) override;

private:
    std::FILE* out_;
};

// A copy of `e` for people's eyes: its VM name, its type, every field name and every string in
// its values passed through text::escape_for_terminal. Sinks that write to a terminal render
// from this copy only, so no value from a VM can reach the terminal raw, whichever field it is in.
event escaped_for_terminal(const event& e);

// Short human lines, one per event: `12:00:01 [default] starting VM`. Rendered from
// escaped_for_terminal(e): a value can neither end the line nor hide or reorder part of it.
class terminal_sink : public sink {
public:
    terminal_sink(std::FILE* out, bool show_time) : out_(out), show_time_(show_time) {}
    void write(const event& e) override;
    // The human line for an event (escaped), or "" when the event is not shown to people.
    static std::string render(const event& e);

private:
    std::FILE* out_;
    bool show_time_;
};

// Numbers events and hands them to every sink.
class bus {
public:
    void add(std::shared_ptr<sink> s) { sinks_.push_back(std::move(s)); }
    // Sends everything from now on to `s` alone (a live view taking over the terminal).
    void replace_sinks(std::shared_ptr<sink> s) {
        sinks_.clear();
        sinks_.push_back(std::move(s));
    }
    void emit(event e);
    std::uint64_t last_seq() const { return seq_; }

private:
    std::vector<std::shared_ptr<sink>> sinks_;
    std::uint64_t seq_ = 0;
};

} // namespace machine::events
