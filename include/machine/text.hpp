// Small text helpers shared by every module.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace machine::text {

// Levenshtein distance, for did-you-mean suggestions.
std::size_t edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word`, or "" when none is close enough to be a plausible typo.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

// Project names are Lima instance names and SSH host aliases: ^[a-z0-9][a-z0-9-]*$.
bool is_valid_project_name(std::string_view name);

// Throws usage_error("invalid project name '<name>' (use a-z, 0-9, hyphen; start with a letter or digit)").
void require_valid_project_name(std::string_view name);

// A set of secrets is a file in the VM (/run/machine-secrets/<set>.env) and a `use op_env <set>`
// word in an .envrc: 1-64 of a-z 0-9 _ -, starting with a letter or digit.
bool is_valid_secret_set_name(std::string_view set);

// A 1Password Environment ID as 1Password's Copy ID gives it: 1-128 lowercase letters and
// digits (the pattern the reference tool's `use op_env` takes).
bool is_op_environment_id(std::string_view id);

// A secret's variable name: a shell identifier (^[A-Za-z_][A-Za-z0-9_]*$, at most 128 bytes)
// that bash lets a file assign (not UID, EUID, PPID, BASHOPTS, SHELLOPTS, BASH_VERSINFO or _).
bool is_valid_secret_name(std::string_view name);

// Makes text safe for a terminal: drops ANSI/OSC escape sequences and other control
// characters except '\n' and '\t'; invalid UTF-8 becomes U+FFFD. Used on everything a VM or a
// child process sends back before it reaches the user's terminal.
std::string sanitize_for_terminal(std::string_view in);

// Makes one value from a VM (or any other untrusted source) safe to print inside one line of
// the terminal, keeping what was there visible (shown here as printed):
//   backslash                                   `\\`
//   newline, carriage return, tab               `\n` `\r` `\t`
//   other C0 controls, ESC, DEL                 `\x1b` ...
//   C1 controls, U+2028/U+2029, U+FFF9-FFFB,    `\u0085` `\u202e` `\U000e0041` ...
//   Unicode's default-ignorable code points
//   (bidi controls, zero-width and other invisible characters, fillers, variation selectors, tags)
//   each byte that is not well-formed UTF-8     `\xff` ...
// Everything else is kept. Unlike sanitize_for_terminal nothing is dropped and no line can end,
// or be rewritten or reordered, inside the value.
std::string escape_for_terminal(std::string_view in);

// Quotes `s` for a POSIX shell, only where a shell cannot be avoided (remote commands).
std::string shell_quote(std::string_view s);

// Splits on '\n', dropping a trailing empty piece; tolerates "\r\n".
std::vector<std::string> split_lines(std::string_view s);

// Keeps at most the last `max_bytes` of `s` (at a line boundary when possible).
std::string tail(std::string_view s, std::size_t max_bytes);

std::string trim(std::string_view s);

/// Log lines that someone else can cause at will (the agent proxy's refusals, one per message a
/// client sends; the guest connection's "bad line from the guest agent", one per line a VM
/// sends) go through one of these: the first is logged as it is, the rest are counted and
/// summarised at most once per `interval`, e.g.
///   "refused 48213 requests in the last 1.0 s (add identity x48213)".
/// A sender going as fast as it can then costs one line a second, not one line a message.
/// Sans-io: the caller passes the time and logs whatever line comes back, with its own prefix.
class log_limiter {
public:
    using clock = std::chrono::steady_clock;

    /// `verb` and `noun` make the summary: "<verb> <n> <noun>s in the last <t> s (...)".
    log_limiter(std::string verb, std::string noun, clock::duration interval = std::chrono::seconds(1));

    /// Counts one event of `kind` ("add identity"): the line to log now, if any. That is
    /// `detail` when it is the only event since the last line and a line is due, a summary of
    /// everything counted since when several are, and nothing before `interval` has passed.
    std::optional<std::string> note(std::string_view kind, std::string_view detail, clock::time_point now);

    /// The summary of the events counted but not yet logged (for when the client leaves), or
    /// nullopt when there are none.
    std::optional<std::string> flush(clock::time_point now);

private:
    std::string summary(clock::time_point now) const;
    void reset(clock::time_point now);

    // A summary names at most this many kinds; the rest are "other". Kinds come from the
    // sender (a message type, a problem's text), so the line stays short whatever it sends.
    static constexpr std::size_t max_kinds = 8;

    std::string verb_, noun_;
    clock::duration interval_;
    std::optional<clock::time_point> last_line_;
    std::uint64_t pending_ = 0;
    std::vector<std::pair<std::string, std::uint64_t>> kinds_; // in order of first appearance
    std::uint64_t other_ = 0;
};

// The last line that is not blank, trimmed ("" when there is none): the gist of a tool's stderr.
std::string last_line(std::string_view s);

} // namespace machine::text
