// Lima through limactl's CLI: parsers for what it prints (pure) and a client that runs it.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include "machine/error.hpp"

namespace machine {
class cancel_signal;
}

namespace machine::lima {

// ---- What limactl prints -------------------------------------------------------------------

enum class status { running, stopped, broken, unknown };
std::string_view to_string(status s);

struct instance {
    std::string name;
    std::string hostname;
    status state = status::unknown;
    std::string status_text;   // as limactl printed it
    std::string dir;
    std::string vm_type;
    std::string arch;
    int cpus = 0;
    std::int64_t memory_bytes = 0;
    std::int64_t disk_bytes = 0;
    int ssh_local_port = 0;     // 0: unknown (never started)
    std::string ssh_config_file;
    int host_agent_pid = 0;
    int driver_pid = 0;
    bool is_protected = false;
    std::string lima_version;   // normalized: "2.2.0" for both "2.2.0" and "v2.2.0"
    std::vector<std::string> errors;  // strings, or a description of error objects
    std::optional<bool> forward_agent;  // config.ssh.forwardAgent, when listed
    std::string egress_socket;          // config.machineEgress.socket (the stand-in's), or ""
};

// `machineEgress` of `limactl info`'s JSON: true only when it says so.
bool parse_info_isolates(std::string_view json_text);
// A boolean key of `limactl info`'s JSON (the stand-in's machineEgress, machineHibernate): true
// only when it says so.
bool parse_info_flag(std::string_view json_text, std::string_view key);

// machine's Lima stand-in builds its guest image on first use (Lima downloads a template's);
// `limactl info` says how that stands (`machineGuestImage`), for doctor.
struct stand_in_image {
    bool ready = false;
    std::string image;                  // its directory, when ready
    std::string cache;                  // where it is (to be) kept
    std::vector<std::string> problems;  // what this host lacks to build it, each with its fix
};
// nullopt when the key is missing or malformed (a real Lima: it fetches images itself).
std::optional<stand_in_image> parse_info_guest_image(std::string_view json_text);

// limactl printed something we cannot understand.
class protocol_error : public error {
public:
    using error::error;
};

// `limactl list --json` output: JSON lines (or, defensively, pretty-printed values or one
// array). Throws protocol_error naming the value that failed.
std::vector<instance> parse_list(std::string_view text);

// One logrus line from limactl's stderr, text (`time=... level=... msg=...`) or JSON format.
struct log_line {
    std::string time;
    std::string level;
    std::string msg;
    std::map<std::string, std::string> fields;
};
std::optional<log_line> parse_log_line(std::string_view line);

// The message of the last `level=fatal` line (else the last `level=error`), "" if none.
std::string fatal_message(std::string_view stderr_text);

// Names quoted in a Lima message, in either style: `x` (v2.2+) or "x" (older).
std::vector<std::string> quoted_names(std::string_view msg);

// "limactl version 2.2.0" / "v2.2.0" / "2.2.0-153-g183a60d7" -> "2.2.0..." without the "v".
std::string normalize_version(std::string_view text);

// One event of the host agent's `ha.stdout.log`.
struct port_forward {
    std::string type;  // forwarding | not-forwarding | stopping | failed
    std::string protocol;
    std::string guest_addr;
    std::string host_addr;
    std::string error;
};
struct ha_event {
    std::string time;
    bool running = false;
    bool degraded = false;
    bool exiting = false;
    int ssh_local_port = 0;
    std::vector<std::string> errors;
    std::optional<port_forward> forward;
};
std::optional<ha_event> parse_ha_event(std::string_view line);

// ---- QEMU's monitor (QMP) --------------------------------------------------------------------
// Lima has no pause: machine asks QEMU itself, over the QMP socket that Lima's QEMU driver and
// the stand-in both create in the instance directory. The path is made from LIMA_HOME and the
// validated instance name, never taken from limactl's output or the VM; every reply is bounded.

// <instance dir>/qmp.sock.
std::filesystem::path qmp_socket(const std::filesystem::path& instance_dir);

// QEMU refused a command (its error's desc), or the monitor could not be reached or misbehaved.
class qmp_error : public error {
public:
    using error::error;
};

// How much one QMP exchange may read: a line (one JSON message) and the lines in all (QEMU
// sends asynchronous events between replies; they are skipped).
inline constexpr std::size_t qmp_max_line = 64 * 1024;
inline constexpr std::size_t qmp_max_lines = 256;

// Reads QMP's newline-delimited JSON messages from bytes as they arrive (pure; tested).
class qmp_reader {
public:
    // Appends received bytes; throws qmp_error for a line over qmp_max_line or too many lines.
    void feed(std::string_view bytes);
    // The next complete message (without its newline), if one is buffered.
    std::optional<std::string> next();

private:
    std::string buf_;
    std::size_t lines_ = 0;
};

// One QMP exchange on `socket`: the greeting, `qmp_capabilities`, then `command` (a JSON
// object text, e.g. {"execute":"stop"}); returns the reply's "return" member as JSON text.
// The whole exchange must finish within `timeout` (QEMU serves one monitor client at a time: a
// wedged or busy monitor is a qmp_error, not a hang). Synchronous: for sub-second commands only.
std::string qmp_execute(const std::filesystem::path& socket, std::string_view command,
                        std::chrono::milliseconds timeout);

// The "status" member of a query-status return ("running", "paused", "prelaunch", ...);
// protocol_error when it has none.
std::string parse_qmp_status(std::string_view return_json);

// ---- Hibernation (the stand-in's; Lima has none) ------------------------------------------------
// `limactl hibernate NAME` saves a running instance's state to <dir>/hibernate.state and stops
// it; the next `limactl start` loads it instead of booting, or drops it and boots, and writes
// <dir>/hibernate.outcome (tools/limactl_lib/hibernate.py).

std::filesystem::path hibernate_state(const std::filesystem::path& instance_dir);
// Removes the saved state and its record (a VM whose settings changed must boot cold).
void discard_hibernate_state(const std::filesystem::path& instance_dir);

struct hibernate_outcome {
    bool resumed = false;
    double took_seconds = 0;
    std::string reason;  // why it booted instead (escaped for the terminal)
};
// What the last start did with a saved state; nullopt when it says nothing (no file, too big:
// over 4 KiB, or not the expected JSON).
std::optional<hibernate_outcome> read_hibernate_outcome(const std::filesystem::path& instance_dir);
// The outcome file's text parsed (pure).
std::optional<hibernate_outcome> parse_hibernate_outcome(std::string_view json_text);

// The tags of `limactl snapshot list NAME --quiet` (one per line; blank lines skipped).
std::vector<std::string> parse_snapshot_tags(std::string_view text);

// ---- Running limactl ------------------------------------------------------------------------

// limactl failed: the message is limactl's own fatal line (or a summary); the diagnostics keep
// the tail of its stderr.
class command_error : public error {
public:
    command_error(std::string message, int exit_status, std::string diagnostics)
        : error(std::move(message), exit_code::failure, std::move(diagnostics)),
          exit_status_(exit_status) {}
    int exit_status() const noexcept { return exit_status_; }

private:
    int exit_status_;
};

// limactl did not finish in time; it was stopped.
class timeout_error : public error {
public:
    using error::error;
};

// The limactl machine runs, and why that one (for `machine doctor`).
struct limactl_choice {
    std::filesystem::path path;
    std::string why;
};

// $MACHINE_LIMACTL, else `limactl` in PATH, else on Linux machine's Lima stand-in where it is
// installed with machine (<prefix>/lib/machine/limactl next to <prefix>/bin/machine) or where the
// build tree links it (build/lib/machine/limactl); throws error with how to install Lima otherwise.
limactl_choice find_limactl();

struct timeouts {
    std::chrono::seconds query{60};    // list, --version
    std::chrono::seconds change{300};  // create, stop, delete, clone
    std::chrono::seconds start{1800};  // a first boot under software emulation is slow
};

// argv builders (pure, tested): always argv vectors, never a shell string.
struct argv_builder {
    std::string limactl;
    std::vector<std::string> list_json(const std::vector<std::string>& names) const;
    std::vector<std::string> create(const std::string& name, const std::filesystem::path& tmpl,
                                    const std::vector<std::string>& sets) const;
    std::vector<std::string> start(const std::string& name, std::chrono::seconds timeout) const;
    std::vector<std::string> stop(const std::string& name, bool force) const;
    std::vector<std::string> remove(const std::string& name, bool force) const;
    /// `start --name=NAME TEMPLATE`: creates the instance and boots it in one call.
    std::vector<std::string> start_new(const std::string& name, const std::filesystem::path& tmpl,
                                       std::chrono::seconds timeout) const;
    std::vector<std::string> clone(const std::string& from, const std::string& to,
                                   const std::vector<std::string>& sets = {}) const;
    /// `edit NAME --set=EXPR...`: rewrites a stopped instance's lima.yaml.
    std::vector<std::string> edit(const std::string& name, const std::vector<std::string>& sets) const;
    std::vector<std::string> shell(const std::string& name, const std::vector<std::string>& cmd,
                                   const std::string& workdir) const;
    std::vector<std::string> version() const;
    std::vector<std::string> info() const;
    /// `snapshot create|apply|delete NAME --tag TAG`.
    std::vector<std::string> snapshot(const std::string& verb, const std::string& name, const std::string& tag) const;
    /// `snapshot list NAME --quiet`.
    std::vector<std::string> snapshot_list(const std::string& name) const;
    /// `hibernate NAME` (the stand-in's own command).
    std::vector<std::string> hibernate(const std::string& name) const;
};

using line_handler = std::function<void(std::string_view)>;

// Environment changes for every limactl process a client runs: the SSH agent a VM may reach
// is whatever SSH_AUTH_SOCK limactl (and the ssh it starts) sees.
struct environment {
    std::vector<std::pair<std::string, std::string>> set;
    std::vector<std::string> unset;
};

// ---- The seam: what machine's workflows need from Lima ---------------------------------------

using log_handler = std::function<void(const log_line&)>;

// Runs a command in the guest with captured output (`limactl shell`).
struct shell_result {
    int status;
    std::string out;
    std::string err;
};

// Lima as the workflows (src/vm) see it. `client` runs limactl; the unit tests' fake keeps
// instances in memory and records every call (Ninja's CommandRunner / FakeCommandRunner).
class driver {
public:
    virtual ~driver() = default;

    // A driver of the same Lima whose calls `cancel` interrupts, with `t` and an environment of
    // its own (one per VM of `up --all`).
    virtual std::unique_ptr<driver> fork(cancel_signal* cancel, timeouts t) const = 0;
    // The environment of every limactl process this driver runs from now on.
    virtual void set_environment(environment env) = 0;

    virtual asio::awaitable<std::string> version() = 0;
    // Whether this Lima runs each VM's network outside the guest's reach, through machine's
    // egress proxy (`limactl info` says `"machineEgress": true`: the stand-in). Asked once per
    // process.
    virtual asio::awaitable<bool> isolates_network() = 0;
    virtual asio::awaitable<std::vector<instance>> list() = 0;
    // nullopt when no such instance exists.
    virtual asio::awaitable<std::optional<instance>> find(std::string name) = 0;
    // The named instances that exist (one call for many names; missing ones are left out).
    virtual asio::awaitable<std::vector<instance>> find_all(std::vector<std::string> names) = 0;
    // `on_log` receives each parsed stderr line as it arrives (progress: creating may fetch the
    // image first, or with machine's stand-in build it).
    virtual asio::awaitable<void> create(std::string name, std::filesystem::path tmpl,
                                         std::vector<std::string> sets, log_handler on_log) = 0;
    virtual asio::awaitable<void> start(std::string name, log_handler on_log) = 0;
    // Creates `name` from `tmpl` and boots it (one limactl call instead of create + start).
    virtual asio::awaitable<void> start_new(std::string name, std::filesystem::path tmpl, log_handler on_log) = 0;
    virtual asio::awaitable<void> stop(std::string name, bool force) = 0;
    virtual asio::awaitable<void> remove(std::string name, bool force) = 0;
    // A copy-on-write copy of a stopped instance, with a new identity; `sets` are yq
    // expressions applied to the copy's lima.yaml (--set).
    virtual asio::awaitable<void> clone(std::string from, std::string to, std::vector<std::string> sets) = 0;
    // Applies yq expressions to a stopped instance's lima.yaml (`limactl edit --set`).
    virtual asio::awaitable<void> edit(std::string name, std::vector<std::string> sets) = 0;
    // Returns the remote exit status with the captured output.
    virtual asio::awaitable<shell_result> shell(std::string name, std::vector<std::string> cmd,
                                                std::string workdir) = 0;
    // QEMU's run state of a running instance (QMP query-status: "running", "paused", ...);
    // qmp_error when its monitor cannot be asked.
    virtual asio::awaitable<std::string> run_state(std::string name) = 0;
    // Stops / continues the instance's vCPUs (QMP stop / cont): its memory and devices stay.
    virtual asio::awaitable<void> pause(std::string name) = 0;
    virtual asio::awaitable<void> resume(std::string name) = 0;
    // Whether this Lima can hibernate (`limactl info` says "machineHibernate": true: the
    // stand-in). Asked once per process.
    virtual asio::awaitable<bool> can_hibernate() = 0;
    // `limactl hibernate NAME`: the running instance's state saved, the instance stopped.
    virtual asio::awaitable<void> hibernate(std::string name) = 0;
    // `limactl snapshot list NAME --quiet`: the snapshot tags.
    virtual asio::awaitable<std::vector<std::string>> snapshots(std::string name) = 0;
    // `limactl snapshot create|apply|delete NAME --tag TAG`; returns limactl's warnings other
    // than "experimental" (HMP reports its errors that way, with exit status 0).
    virtual asio::awaitable<std::vector<std::string>> snapshot(std::string verb, std::string name, std::string tag) = 0;
    // Where Lima keeps instance `name` (before it is listed: a start that creates it).
    virtual std::filesystem::path instance_dir(const std::string& name) const = 0;
    // Follows the host agent's events (see follow_events below: `ha_log` is the instance's
    // ha.stdout.log) until `on_event` returns false or `cancel` fires.
    virtual asio::awaitable<void> follow_host_agent(std::filesystem::path ha_log, std::function<bool(const ha_event&)> on_event,
                                              cancel_signal* cancel, std::chrono::system_clock::time_point since) = 0;
};

// The real driver: runs limactl (argv vectors, bounded in time and output).
class client final : public driver {
public:
    client(std::filesystem::path limactl, cancel_signal* cancel, timeouts t = {});
    std::unique_ptr<driver> fork(cancel_signal* cancel, timeouts t) const override;
    void set_environment(environment env) override { env_ = std::move(env); }

    const std::filesystem::path& limactl() const { return limactl_; }
    const argv_builder& argv() const { return argv_; }

    asio::awaitable<std::string> version() override;
    asio::awaitable<bool> isolates_network() override;
    // `limactl info`'s machineGuestImage (parse_info_guest_image); doctor's, not the driver's.
    asio::awaitable<std::optional<stand_in_image>> stand_in_image_status();
    asio::awaitable<std::vector<instance>> list() override;
    asio::awaitable<std::optional<instance>> find(std::string name) override;
    asio::awaitable<std::vector<instance>> find_all(std::vector<std::string> names) override;
    asio::awaitable<void> create(std::string name, std::filesystem::path tmpl, std::vector<std::string> sets,
                                 log_handler on_log = {}) override;
    asio::awaitable<void> start(std::string name, log_handler on_log = {}) override;
    asio::awaitable<void> start_new(std::string name, std::filesystem::path tmpl, log_handler on_log) override;
    asio::awaitable<void> stop(std::string name, bool force) override;
    asio::awaitable<void> remove(std::string name, bool force) override;
    asio::awaitable<void> clone(std::string from, std::string to, std::vector<std::string> sets) override;
    asio::awaitable<void> edit(std::string name, std::vector<std::string> sets) override;
    asio::awaitable<shell_result> shell(std::string name, std::vector<std::string> cmd,
                                        std::string workdir = {}) override;
    asio::awaitable<std::string> run_state(std::string name) override;
    asio::awaitable<void> pause(std::string name) override;
    asio::awaitable<void> resume(std::string name) override;
    asio::awaitable<bool> can_hibernate() override;
    asio::awaitable<void> hibernate(std::string name) override;
    asio::awaitable<std::vector<std::string>> snapshots(std::string name) override;
    asio::awaitable<std::vector<std::string>> snapshot(std::string verb, std::string name, std::string tag) override;
    std::filesystem::path instance_dir(const std::string& name) const override;
    // lima::follow_events on the log file.
    asio::awaitable<void> follow_host_agent(std::filesystem::path ha_log, std::function<bool(const ha_event&)> on_event,
                                      cancel_signal* cancel, std::chrono::system_clock::time_point since) override;

private:
    // `limactl info`'s JSON, asked once per process.
    asio::awaitable<std::string> info_json();

    std::filesystem::path limactl_;
    cancel_signal* cancel_;
    timeouts timeouts_;
    argv_builder argv_;
    environment env_;
};

// Where limactl keeps instance `name`: $LIMA_HOME/<name>, LIMA_HOME defaulting to ~/.lima.
std::filesystem::path instance_dir(const std::string& name);

// Follows an instance's `ha.stdout.log` (written by the host agent) and hands each event to
// `on_event` until `on_event` returns false or the cancel signal fires. Copes with the file
// appearing late, being replaced and being truncated (every `limactl start` truncates it).
// Events older than `since` are skipped, as limactl itself does. The log may be huge (a guest
// grows it by opening and closing ports): it is read in bounded chunks, its past only from
// near its end (back to an event older than `since`, at most 1 MiB), and a line over 64 KiB is
// skipped unbuffered, with a warning.
asio::awaitable<void> follow_events(std::filesystem::path log_file,
                                    std::function<bool(const ha_event&)> on_event,
                                    cancel_signal* cancel,
                                    std::chrono::system_clock::time_point since = {},
                                    std::chrono::milliseconds poll = std::chrono::milliseconds(200));

// Parses an RFC 3339 timestamp with optional fraction and zone; nullopt when malformed.
std::optional<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view text);

} // namespace machine::lima
