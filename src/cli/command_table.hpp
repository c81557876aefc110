// The command table: every `machine` command as one row (name, help, options, handler). The
// command line and `--help` (command_line.cpp), the dispatch (app.cpp) and the shell
// completions (completion.cpp) are made from it, so adding a command is a handler and a row
// (command_table.cpp).
#pragma once

#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "cli.hpp"

namespace machine::cli {

// What a shell completes an option's value (or a positional) to.
enum class completes { nothing, project, file, words };

enum class option_kind { flag, value, number, positional };

// One option or positional of a command (or of machine itself).
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

// The rows' vocabulary.
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

// What the command line gave a command, by option key.
class arguments {
public:
    struct slot {
        const option* spec = nullptr;
        bool given = false;
        bool flag = false;
        int number = 0;
        std::string text;
        std::vector<std::string> texts;
    };

    std::string command;                // the row's name (also when an alias was typed)
    std::vector<std::string> trailing;  // a row with `trailing`: the words after its positionals
    std::map<std::string, slot> slots;  // filled by the parser (command_line.cpp)

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
    // A key the row does not declare is a bug in the row's handler: std::logic_error.
    const slot& at(const std::string& key) const;
};

struct command {
    std::string name;
    std::string help;
    std::vector<option> options;
    // Every user command runs on the event loop, with a context.
    asio::awaitable<int> (*run)(context&, const arguments&) = nullptr;
    // Or it runs at once: no loop, no logging set up, nothing printed but what it prints itself
    // (the hidden agent filter, completion).
    int (*run_now)(const arguments&) = nullptr;
    std::vector<std::string> aliases;
    std::string footer;  // more help, after the options in `machine NAME --help`
    // Non-empty: everything after the command's positionals is a command line of its own, split
    // off before parsing (options included); this is its usage ("COMMAND [ARGS...]").
    std::string trailing;
    bool hidden = false;  // started by machine itself or by completion scripts: not in help or completions
    bool live = false;    // runs until Ctrl-C, which is its normal end; lines carry their time (watch)
};

// The rows, in `--help` order.
std::span<const command> commands();
// machine's own options (before the command).
std::span<const option> global_options();

} // namespace machine::cli
