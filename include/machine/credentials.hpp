// The agents' logins kept on the host (`machine login claude|codex|gh`): what each tool's
// credential looks like, where it comes from (a value stored here, a 1Password reference, a
// command), and the credentials a project's VM may receive, read into memory.
//
// On disk, under `<state dir>/credentials/` (0700, ours, never a symlink): per tool a JSON file
// describing the source (tool, variable, kind, the reference or argv, when it was set) and never a
// value, and for a stored value its own 0600 file. Both are written atomically; a symlink, or a
// file or directory another user owns, is refused, never followed. Values never reach argv, the
// environment, logs, events, JSON or an error message (a message says a value's length and which
// rule it broke); callers wipe them (secrets::wipe) when done.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>

#include "machine/agent_tools.hpp"
#include "machine/secrets.hpp"

namespace machine::credentials {

/// A token longer than this is refused.
inline constexpr std::size_t max_token_bytes = 4096;

/// Checks `value` as `tool`'s credential and returns the variable the tool reads it from
/// (claude: CLAUDE_CODE_OAUTH_TOKEN for `sk-ant-oat...`, ANTHROPIC_API_KEY for `sk-ant-api...`;
/// codex: OPENAI_API_KEY; gh: GH_TOKEN). Throws usage_error naming the tool, the value's length
/// and the rule it broke (empty, whitespace or a control character, non-ASCII, too long, not the
/// tool's prefix), never the value itself.
std::string check_token(std::string_view tool, std::string_view value);

/// Removes one final line end ("\n" or "\r\n"), as a value piped in or printed by a command has.
void trim_line_end(std::string& value);

enum class source_kind { stored, op, command };
std::string_view kind_name(source_kind kind);

/// One tool's login: where its value comes from. Holds no value.
struct login {
    std::string tool;
    std::string variable;                ///< what check_token() said when it was set
    source_kind kind = source_kind::stored;
    std::string op_reference;            ///< kind op: `op://vault/item/field`
    std::vector<std::string> argv;       ///< kind command: run without a shell, stdout is the value
    std::string set_at;                  ///< UTC, as events' timestamps
};

/// The logins on this computer, in one directory.
class store {
public:
    explicit store(std::filesystem::path dir);
    /// `<paths::state_dir()>/credentials`.
    static store at_default();
    const std::filesystem::path& dir() const { return dir_; }

    /// The tool's login, or nullopt. Throws machine::error for a file that is unsafe (a symlink,
    /// another user's) or malformed.
    std::optional<login> find(std::string_view tool) const;
    /// Records `l` (replacing the tool's previous login only once everything is written); for
    /// kind stored, `value` (already checked) goes to its own 0600 file first.
    void save(const login& l, std::string_view value);
    /// Removes the tool's login; false when there was none.
    bool remove(std::string_view tool);
    /// The value a stored login keeps (a secret: wipe it).
    std::string read_stored(std::string_view tool) const;

private:
    std::filesystem::path dir_;
};

/// What `machine login` was given.
struct request {
    std::string tool;
    source_kind kind = source_kind::stored;
    std::string op_reference;       ///< kind op
    std::vector<std::string> argv;  ///< kind command
    std::string value;              ///< kind stored: the token (wiped by log_in, whatever happens)
};

/// Checks the request's value (read once from its source, for op and command), then saves the
/// login. Nothing is written, and the previous login is kept, when the value is refused
/// (usage_error) or its source fails (secrets::provider_error). `op_binary` as secrets::read's.
asio::awaitable<login> log_in(store& s, request r, std::filesystem::path op_binary);

/// The login's current value, read from where it comes from and checked again.
asio::awaitable<std::string> read_value(const store& s, const login& l, std::filesystem::path op_binary);

/// The credentials a project may receive (`allowed`: its agent_auth; nullopt: every tool), for
/// every allowed tool that is logged in, as the variables to export. The caller wipes them.
asio::awaitable<std::vector<secrets::variable>> resolve_credentials(
    const store& s, const std::optional<std::vector<std::string>>& allowed, std::filesystem::path op_binary);

} // namespace machine::credentials
