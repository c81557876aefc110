// Secret providers: read (NAME, value) pairs into memory, and nowhere else.
//
// Four sources: a 1Password Environment (`op environment read ID --no-masking`), one 1Password
// reference (`op read op://vault/item/field`), a dotenv file on the host, and a command (an argv
// vector, never a shell string) whose stdout is dotenv. `op` and commands run through
// machine::proc; values never appear in argv, logs or error messages (an error may name a
// variable, a file, a line and a column, never a value).
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>

#include "machine/error.hpp"
#include "machine/secret_kind.hpp"

namespace machine::secrets {

struct variable {
    std::string name;
    std::string value;  ///< secret: wipe() it when done
};

/// At most this much output is accepted from one provider (a file, `op`, or a command).
inline constexpr std::size_t max_provider_output = 4u << 20;

/// A malformed dotenv text. what() is `origin:line:col: problem`; the parts are kept apart so a
/// caller can phrase the place differently ("line 3 of `cmd`'s output").
class dotenv_error : public error {
public:
    dotenv_error(const std::string& origin, std::size_t line, std::size_t column,
                 std::string problem);
    std::size_t line() const noexcept { return line_; }
    std::size_t column() const noexcept { return column_; }
    const std::string& problem() const noexcept { return problem_; }

private:
    std::size_t line_;
    std::size_t column_;
    std::string problem_;
};

/// Parses dotenv text (no shell, no variable expansion):
/// - `NAME=value` lines, an optional `export ` prefix, blanks around `=` allowed;
///   `#` comment lines and blank lines are skipped; "\r\n" line ends are accepted;
/// - NAME matches ^[A-Za-z_][A-Za-z0-9_]*$;
/// - 'single quoted' values are literal; "double quoted" values understand
///   \n \t \r \" \\ \$ (any other backslash is kept as is); both kinds may span lines;
///   after the closing quote only blanks and a `#` comment may follow;
/// - unquoted values end at the line end or at a `#` preceded by a blank, and are trimmed;
/// - a later definition of a NAME replaces the earlier value (keeping the first position);
/// - values may not contain NUL.
/// Throws dotenv_error naming origin, line and column; never a value.
std::vector<variable> parse_dotenv(std::string_view text, const std::string& origin);

/// Renders variables as dotenv text that parse_dotenv() reads back exactly: every value double
/// quoted, with \n \r \t \" \\ \$ escaped. The result holds secrets: wipe it.
std::string render_dotenv(const std::vector<variable>& vars);

struct source {
    secret_kind kind = secret_kind::dotenv_file;
    /// op_environment: the Environment ID (^[a-z0-9]+$); op_reference: `op://vault/item/field`;
    /// dotenv_file: the file's path. Unused for command.
    std::string id_or_ref_or_path;
    /// op_reference: the variable it defines. command: empty, the output is dotenv; else the
    /// whole output (less one final "\n") is this one variable's value (`machine login`'s tokens).
    std::string name;
    std::vector<std::string> argv;  ///< command only: argv[0] is looked up in PATH
};

/// A provider failed (op missing, not signed in, item not found, a command failed...).
class provider_error : public error {
public:
    using error::error;
};

/// The message when `op` cannot be found.
inline constexpr std::string_view op_missing_message =
    "the 1Password CLI `op` is not installed (https://developer.1password.com/docs/cli/get-started/)";

/// Reads one source. `op_binary` is the `op` to run ("op": looked up in PATH).
/// Throws provider_error, or dotenv_error for a malformed dotenv file, or
/// machine::usage_error for a malformed source (bad ID, reference or name).
/// `op` may wait for the user's approval (Touch ID): it gets 2 minutes; a command gets 1.
asio::awaitable<std::vector<variable>> read(source src, std::filesystem::path op_binary);

/// Zeroes every variable's bytes (zero_in_place), then frees them and empties the list.
void wipe(std::vector<variable>& vars);
/// Zeroes a string's bytes (zero_in_place), then frees it.
void wipe(std::string& s);
/// Overwrites a string's whole buffer, its capacity and not just its size, with zeros that the
/// compiler cannot drop; the string keeps its buffer and its size (every character is then '\0').
/// wipe() does this before freeing; tests inspect the buffer afterwards.
void zero_in_place(std::string& s);
/// zero_in_place() on a variable's name and value.
void zero_in_place(variable& v);

} // namespace machine::secrets
