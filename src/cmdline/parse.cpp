// The command line: argv parsed with CLI11 as the specs declare it (--help, usage errors), after
// splitting off a trailing command line (`machine run NAME -- CMD...`).
#include "machine/cmdline.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include <CLI/CLI.hpp>

#include "machine/error.hpp"

namespace machine::cmdline {

namespace {

// Registers a spec's options on its CLI11 command, bound to `into`'s slots.
void add_options(CLI::App& app, std::span<const option> options, arguments& into,
                 std::vector<std::pair<CLI::Option*, arguments::slot*>>& bound) {
    for (const option& o : options) {
        arguments::slot& slot = into.slots[o.key()];
        slot.declared = &o;
        CLI::Option* added = nullptr;
        switch (o.kind) {
        case option_kind::flag: added = app.add_flag(o.names, slot.flag, o.help); break;
        case option_kind::number:
            slot.number = o.default_number;
            added = app.add_option(o.names, slot.number, o.help)->check(CLI::PositiveNumber);
            break;
        case option_kind::value:
        case option_kind::positional:
            if (o.many) {
                added = app.add_option(o.names, slot.texts, o.help);
            } else {
                slot.text = o.default_value;
                added = app.add_option(o.names, slot.text, o.help);
            }
            break;
        }
        if (!o.words.empty()) added->check(CLI::IsMember(o.words));
        if (o.required) added->required();
        bound.emplace_back(added, &slot);
    }
    for (const option& o : options)
        for (const auto& other : o.excludes) app.get_option(o.key())->excludes(other);
}

// The spellings of the options before the command that take a value.
std::vector<std::string> global_value_options(const program& p) {
    std::vector<std::string> out;
    for (const auto& o : p.globals)
        if (o.takes_value())
            for (const auto& spelling : o.spellings()) out.push_back(spelling);
    return out;
}

const spec* command_named(const program& p, const std::string& word) {
    for (const spec* command : p.commands) {
        if (command->name == word) return command;
        for (const auto& alias : command->aliases)
            if (alias == word) return command;
    }
    return nullptr;
}

// A command with a trailing command line (`machine run NAME [--] CMD...`): everything after its
// positionals belongs to that command, options included, so it is split off before CLI11 sees it.
std::vector<std::string> split_trailing_command(const program& p, std::vector<std::string>& args) {
    std::vector<std::string> remote;
    const auto value_options = global_value_options(p);
    for (std::size_t i = 0; i < args.size(); ++i) {
        const spec* row = command_named(p, args[i]);
        if (!row || row->trailing.empty()) {
            if (std::find(value_options.begin(), value_options.end(), args[i]) != value_options.end()) {
                ++i;  // its value
                continue;
            }
            if (!args[i].empty() && args[i][0] != '-') return remote;  // another command
            continue;
        }
        std::size_t positionals = 0;
        for (const auto& o : row->options) positionals += o.kind == option_kind::positional;
        std::size_t seen = 0;
        for (std::size_t j = i + 1; j < args.size(); ++j) {
            if (args[j] == "--") {  // `run -- NAME`? then NAME follows; otherwise CMD follows
                if (seen == 0) continue;
                remote.assign(args.begin() + static_cast<long>(j) + 1, args.end());
                args.resize(j);
                return remote;
            }
            if (args[j].empty() || args[j][0] == '-') continue;  // the row's own options (--help)
            if (++seen < positionals) continue;
            remote.assign(args.begin() + static_cast<long>(j) + 1, args.end());
            if (!remote.empty() && remote.front() == "--") remote.erase(remote.begin());
            args.resize(j + 1);
            return remote;
        }
        return remote;
    }
    return remote;
}

// `machine run NAME -- COMMAND [ARGS...]`
std::string trailing_usage(const program& p, const spec& row) {
    std::string usage = p.name + " " + row.name;
    for (const auto& o : row.options) {
        if (o.kind != option_kind::positional) continue;
        std::string upper = o.key();
        for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        usage += " " + upper;
    }
    return usage + " -- " + row.trailing;
}

} // namespace

parsed parse(const program& p, int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    const std::vector<std::string> trailing = split_trailing_command(p, args);

    CLI::App app{p.description};
    app.name(p.name);
    app.footer(p.footer);
    app.set_version_flag("--version", p.version);
    app.require_subcommand(1);
    parsed out;
    std::vector<std::pair<CLI::Option*, arguments::slot*>> bound;
    add_options(app, p.globals, out.globals, bound);

    std::vector<arguments> given(p.commands.size());
    std::vector<CLI::App*> subcommands;
    for (std::size_t i = 0; i < p.commands.size(); ++i) {
        const spec& row = *p.commands[i];
        auto* sub = app.add_subcommand(row.name, row.help);
        for (const auto& alias : row.aliases) sub->alias(alias);
        if (!row.footer.empty()) sub->footer(row.footer);
        if (row.hidden) sub->group("");
        given[i].command = row.name;
        add_options(*sub, row.options, given[i], bound);
        subcommands.push_back(sub);
    }

    std::vector<char*> cli_argv{argv[0]};
    for (auto& a : args) cli_argv.push_back(a.data());
    try {
        app.parse(static_cast<int>(cli_argv.size()), cli_argv.data());
    } catch (const CLI::CallForHelp& e) {
        return {.exit_code = app.exit(e)};
    } catch (const CLI::CallForAllHelp& e) {
        return {.exit_code = app.exit(e)};
    } catch (const CLI::CallForVersion& e) {
        return {.exit_code = app.exit(e)};
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return {.exit_code = static_cast<int>(exit_code::usage)};
    }
    for (auto& [opt, slot] : bound) slot->given = opt->count() > 0;
    std::size_t chosen = 0;
    while (!subcommands[chosen]->parsed()) ++chosen;  // require_subcommand(1): there is one
    const spec& row = *p.commands[chosen];
    if (!row.trailing.empty() && trailing.empty()) {
        std::fprintf(stderr, "%s: usage: %s\n", p.name.c_str(), trailing_usage(p, row).c_str());
        return {.exit_code = static_cast<int>(exit_code::usage)};
    }
    out.chosen = chosen;
    out.args = std::move(given[chosen]);
    out.args.trailing = trailing;
    return out;
}

} // namespace machine::cmdline
