// What the agent knows about tmux (3.3, Debian 12's): the argv that starts or reattaches an
// agent session, and the parsing of `tmux list-sessions`. Pure functions.
//
// tmux traps, each handled here:
// - session names: tmux turns '.' and ':' into '_', so session names exclude both
//   (protocol::is_valid_session_name);
// - `-c DIR` is format-expanded: "#(cmd)" in a directory name would run cmd, so '#' is doubled;
// - on a command line, an argument ending in ';' ends the tmux command: it is escaped as "\;";
// - targets use the exact-match form "=NAME:" ("NAME" alone also matches prefixes and patterns).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace machine::agent::tmux {

/// The format `tmux list-sessions -F` is given: "name<TAB>attached clients".
inline constexpr const char* list_format = "#{session_name}\t#{session_attached}";

/// An argument as tmux's command-line parser must see it to keep it verbatim: a trailing ';'
/// becomes "\;".
std::string literal_arg(std::string_view arg);

/// A string for an option tmux format-expands (-c): every '#' doubled.
std::string format_literal(std::string_view text);

struct attach_spec {
    std::string tmux = "tmux";  ///< the program (looked up in PATH)
    std::string name;           ///< a valid session name
    std::string agent;          ///< claude or codex
    std::string dir;            ///< the session's start directory (existing, absolute)
    std::string self;           ///< this executable, for the pane's `session run`
    std::string socket;         ///< the agent's socket; empty: the default (not passed on)
    /// The --dir that was not a directory (printable), passed on as `session run --missing-dir`
    /// for the note in the pane; none when --dir was used (or not given).
    std::optional<std::string> missing_dir;
};

/// tmux new-session -A -s NAME -c DIR -- SELF session run --name NAME --agent AGENT
///   [--socket PATH] [--missing-dir D]
///   ; set-option -w -t =NAME: remain-on-exit off
/// -A attaches when the session exists, so running it twice never starts a second agent; the
/// option makes the session end with its agent even when the user's tmux.conf keeps dead panes.
std::vector<std::string> attach_argv(const attach_spec& spec);

/// `tmux list-sessions -F list_format` output: session name -> attached clients. Malformed
/// lines are skipped.
std::map<std::string, std::uint64_t> parse_list(std::string_view text);

} // namespace machine::agent::tmux
