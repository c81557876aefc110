// A command line made from a table: each command is a spec (name, help, options...), and from
// the specs come the parser with its --help and usage errors (parse), what a command was given
// (arguments) and the bash, zsh and fish completion scripts (completion_script). CLI11 does the
// parsing, behind parse(): this header does not include it.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace machine::cmdline {

// What a shell completes an option's value (or a positional) to. `project`: the lines
// `machine project-names` prints (see completion_script).
enum class completes { nothing, project, file, words };

enum class option_kind { flag, value, number, positional };

// One option or positional of a command (or of the program itself).
struct option {
    option_kind kind = option_kind::flag;
    std::string names;  // as CLI11 spells them: "-y,--yes", "--repo", or a positional's name ("name")
    std::string help;
    completes to = completes::nothing;
    std::vector<std::string> words;     // to == words: the only values accepted
    bool many = false;                  // takes several values (positionals: the rest of the line)
    bool required = false;
    int default_number = 0;             // option_kind::number (always a positive integer)
    std::string default_value;          // option_kind::value
    std::vector<std::string> excludes;  // options of the same command it cannot be given with

    // How handlers look it up: its last spelling ("--yes" for "-y,--yes", "name").
    std::string key() const;
    // Its spellings, each on its own ("-y", "--yes").
    std::vector<std::string> spellings() const;
    bool takes_value() const { return kind == option_kind::value || kind == option_kind::number; }
};

// The specs' vocabulary.
option flag(std::string names, std::string help);
option value(std::string names, std::string help, completes to = completes::nothing);
option number(std::string names, std::string help, int default_number = 0);
option choice(std::string names, std::string help, std::vector<std::string> words, std::string default_value = {});
option positional(std::string name, std::string help, completes to = completes::nothing);
option positionals(std::string name, std::string help, completes to = completes::nothing);
option required(option o);
option repeatable(option o);
option excluding(option o, std::vector<std::string> others);
option one_of(option o, std::vector<std::string> words);  // accepts and completes only these

// What the command line gave a command (or the program's own options), by option key.
class arguments {
public:
    struct slot {
        const option* declared = nullptr;  // in the spec it was parsed by, which outlives it
        bool given = false;
        bool flag = false;
        int number = 0;
        std::string text;
        std::vector<std::string> texts;
    };

    std::string command;                // the spec's name (also when an alias was typed)
    std::vector<std::string> trailing;  // a spec with `trailing`: the words after its positionals
    std::map<std::string, slot> slots;  // filled by parse()

    bool has(const std::string& key) const { return slots.count(key) != 0; }
    bool flag(const std::string& key) const;
    // A value option or single positional: the value given, else its default, else nullopt.
    std::optional<std::string> value(const std::string& key) const;
    std::vector<std::string> values(const std::string& key) const;
    int number(const std::string& key) const;
    // The one project the command names (for error events): its positional's value when exactly
    // one was given, else "".
    std::string named_project() const;

private:
    // A key the spec does not declare is a bug in the code reading it: std::logic_error.
    const slot& at(const std::string& key) const;
};

// A command: what the parser, --help and the completion scripts know of it.
struct spec {
    std::string name;
    std::string help;
    std::vector<option> options;
    std::vector<std::string> aliases;
    std::string footer;  // more help, after the options in `PROGRAM NAME --help`
    // Non-empty: everything after the command's positionals is a command line of its own, split
    // off before parsing (options included); this is its usage ("COMMAND [ARGS...]").
    std::string trailing;
    bool hidden = false;  // not in help or completions (started by the program itself or by scripts)
    bool live = false;    // runs until Ctrl-C, which is its normal end (for the caller; parse ignores it)
};

// The whole command line: exactly one command must be given.
struct program {
    std::string name;         // argv[0] as help and usage errors spell it
    std::string description;  // the first line of --help
    std::string footer;       // after the commands in --help
    std::string version;      // what --version prints
    std::span<const option> globals;         // the program's own options, before the command
    std::span<const spec* const> commands;   // in --help order; they outlive the parse
};

struct parsed {
    // The index in program::commands of the command given. None: nothing to run; exit with
    // exit_code (help or the version was printed, or a usage error).
    std::optional<std::size_t> chosen;
    arguments args;     // the chosen command's
    arguments globals;  // the program's own options
    int exit_code = 0;
};

// Parses argv (argv[0] is skipped); prints help, the version or a usage error itself.
parsed parse(const program& p, int argc, char** argv);

// The completion script for `shell` ("bash", "zsh" or "fish"; "" for another): the visible
// commands, their options, and for completes::project the lines `machine project-names` prints,
// each offered as a literal word that no shell evaluates.
std::string completion_script(std::string_view shell, std::span<const spec* const> commands,
                              std::span<const option> globals);

// The manual page (roff, section 1) of the program: its visible commands with their options,
// then the program's options and its footer.
std::string man_page(const program& p);

} // namespace machine::cmdline
