// The bash, zsh and fish completion scripts, made from the specs. What the scripts read at
// completion time (project names) is only ever added as literal words: no script evaluates it.
// Words from the specs are quoted too, so a help text can hold any character.
#include <sstream>

#include "machine/cmdline.hpp"
#include "machine/text.hpp"

namespace machine::cmdline {

namespace {

// CLI11 gives every command these.
const char* const kHelpNames = "-h,--help";
const char* const kHelpText = "Print this help message and exit";
const char* const kVersionText = "Display program version information and exit";

std::vector<const spec*> visible(std::span<const spec* const> rows) {
    std::vector<const spec*> out;
    for (const spec* row : rows)
        if (!row->hidden) out.push_back(row);
    return out;
}

std::vector<const option*> positionals_of(const spec& row) {
    std::vector<const option*> out;
    for (const auto& o : row.options)
        if (o.kind == option_kind::positional) out.push_back(&o);
    return out;
}

std::vector<const option*> named_options_of(std::span<const option> options) {
    std::vector<const option*> out;
    for (const auto& o : options)
        if (o.kind != option_kind::positional) out.push_back(&o);
    return out;
}

// A word for bash and zsh (POSIX quoting: as it is when plain, else in single quotes).
std::string sh_quote(std::string_view s) { return text::shell_quote(s); }

// A word for fish, whose single quotes take \' and \\ as escapes.
std::string fish_quote(std::string_view s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\\' || c == '\'') out += '\\';
        out += c;
    }
    return out + "'";
}

std::string joined(const std::vector<std::string>& words, std::string (*quote)(std::string_view)) {
    std::string out;
    for (const auto& w : words) out += (out.empty() ? "" : " ") + quote(w);
    return out;
}

// ---- bash ----------------------------------------------------------------------------------

constexpr const char* kBashHead = R"sh(# bash completion for machine, made by `machine completion bash` from its command table.
# Load it with: source <(machine completion bash)

# Adds each argument that starts with the word being completed.
_machine_add() {
    local word
    for word in "$@"; do
        [[ $word == "$cur"* ]] && COMPREPLY+=("$word")
    done
}

# The configured projects (`machine project-names`, one per line; nothing when the
# configuration is broken), each added as a literal word: nothing in them is expanded.
_machine_projects() {
    local name
    while IFS= read -r name; do
        _machine_add "$name"
    done < <(command machine project-names 2>/dev/null)
}

_machine_files() {
    local file
    compopt -o filenames 2>/dev/null
    while IFS= read -r file; do
        COMPREPLY+=("$file")
    done < <(compgen -f -- "$cur")
}

_machine() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    # `--option=value` reaches a completion function as three words: the option, '=', the value.
    if [[ $cur == = ]]; then
        cur=
    elif [[ $prev == = ]]; then
        prev=${COMP_WORDS[COMP_CWORD-2]}
    fi
    COMPREPLY=()
    # The command, and how many of its positionals come before the word being completed.
    local cmd= positionals=0 i word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $cmd:$word in
)sh";

std::string bash_action(const option& o) {
    switch (o.to) {
    case completes::project: return "_machine_projects";
    case completes::file: return "_machine_files";
    case completes::words: return "_machine_add " + joined(o.words, sh_quote);
    case completes::nothing: break;
    }
    return ":";
}

// "up:--parallel" patterns, quoted, for every option of `owner` ("" for machine's own) that
// takes a value.
std::vector<std::pair<std::string, const option*>> bash_value_patterns(const std::string& owner,
                                                                       std::span<const option> options) {
    std::vector<std::pair<std::string, const option*>> out;
    for (const option* o : named_options_of(options))
        if (o->takes_value())
            for (const auto& spelling : o->spellings()) out.emplace_back(sh_quote(owner + ":" + spelling), o);
    return out;
}

std::vector<std::string> option_words(std::span<const option> options, bool with_version) {
    std::vector<std::string> words = option{.names = kHelpNames}.spellings();
    if (with_version) words.push_back("--version");
    for (const option* o : named_options_of(options))
        for (const auto& s : o->spellings()) words.push_back(s);
    return words;
}

std::string bash_script(std::span<const spec* const> rows, std::span<const option> globals) {
    const auto shown = visible(rows);
    std::vector<std::pair<std::string, const option*>> values = bash_value_patterns("", globals);
    for (const spec* row : shown) {
        auto more = bash_value_patterns(row->name, row->options);
        values.insert(values.end(), more.begin(), more.end());
    }
    std::ostringstream s;
    s << kBashHead;
    if (!values.empty()) {
        std::string patterns;
        for (const auto& [pattern, o] : values) patterns += (patterns.empty() ? "" : "|") + pattern;
        s << "        " << patterns << ")  # an option's value\n"
          << "            [[ ${COMP_WORDS[i+1]} == = ]] && ((i++))\n"
          << "            ((i++)) ;;\n";
    }
    s << "        *:-*|*:=) ;;\n"
      << "        :*) cmd=$word ;;\n"
      << "        *) ((positionals++)) ;;\n"
      << "        esac\n"
      << "    done\n";
    s << "    case $cmd in\n";
    for (const spec* row : shown)
        for (const auto& alias : row->aliases) s << "    " << sh_quote(alias) << ") cmd=" << sh_quote(row->name) << " ;;\n";
    s << "    esac\n";
    s << "    case $cmd:$prev in\n";
    for (const auto& [pattern, o] : values) {
        s << "    " << pattern << ") ";
        if (o->to != completes::nothing) s << bash_action(*o) << "; ";
        s << "return ;;\n";
    }
    s << "    esac\n";
    std::vector<std::string> names;
    for (const spec* row : shown) {
        names.push_back(row->name);
        names.insert(names.end(), row->aliases.begin(), row->aliases.end());
    }
    s << "    case $cmd in\n"
      << "    '')\n"
      << "        if [[ $cur == -* ]]; then _machine_add " << joined(option_words(globals, true), sh_quote) << "\n"
      << "        else _machine_add " << joined(names, sh_quote) << "; fi ;;\n";
    for (const spec* row : shown) {
        const auto positionals = positionals_of(*row);
        s << "    " << sh_quote(row->name) << ")\n";
        if (!row->trailing.empty())
            s << "        ((positionals >= " << positionals.size() << ")) && return  # the rest is a command line of its own\n";
        s << "        if [[ $cur == -* ]]; then _machine_add " << joined(option_words(row->options, false), sh_quote) << "\n";
        if (!positionals.empty()) {
            s << "        else case $positionals in\n";
            for (std::size_t i = 0; i < positionals.size(); ++i) {
                const bool rest = positionals[i]->many;
                s << "            " << (rest ? "*" : std::to_string(i)) << ") " << bash_action(*positionals[i]) << " ;;\n";
                if (rest) break;
            }
            s << "            esac\n";
        }
        s << "        fi ;;\n";
    }
    s << "    esac\n"
      << "}\n"
      << "complete -F _machine machine\n";
    return s.str();
}

// ---- zsh -----------------------------------------------------------------------------------

constexpr const char* kZshHead = R"sh(#compdef machine
# zsh completion for machine, made by `machine completion zsh` from its command table.
# Load it with `source <(machine completion zsh)` after compinit, or save it as _machine in a
# directory of $fpath.

# The configured projects (`machine project-names`, one per line; nothing when the
# configuration is broken), offered as literal words: nothing in them is evaluated.
_machine_projects() {
  local -a names
  names=(${(f)"$(command machine project-names 2>/dev/null)"})
  _wanted projects expl project compadd -a names
}

_machine() {
  local curcontext=$curcontext state state_descr line ret=1
  typeset -A opt_args
)sh";

// Text inside an _arguments description ([...]) or after a _describe name.
std::string zsh_description(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c == '\\' || c == '[' || c == ']' || c == ':') out += '\\';
        out += c;
    }
    return out;
}

std::string zsh_action(const option& o) {
    switch (o.to) {
    case completes::project: return "_machine_projects";
    case completes::file: return "_files";
    case completes::words: {
        std::string words;
        for (const auto& w : o.words) words += (words.empty() ? "" : " ") + zsh_description(w);
        return "(" + words + ")";
    }
    case completes::nothing: break;
    }
    return " ";
}

// _arguments specs (each quoted) for a command's options and positionals.
std::vector<std::string> zsh_specs(std::span<const option> options, bool with_version) {
    std::vector<std::string> specs;
    for (const auto& spelling : option{.names = kHelpNames}.spellings())
        specs.push_back(sh_quote(spelling + "[" + zsh_description(kHelpText) + "]"));
    if (with_version) specs.push_back(sh_quote(std::string("--version[") + zsh_description(kVersionText) + "]"));
    std::size_t position = 0;
    for (const auto& o : options) {
        if (o.kind == option_kind::positional) {
            ++position;
            const std::string where = o.many ? "*" : std::to_string(position);
            specs.push_back(sh_quote(where + ":" + zsh_description(o.key()) + ":" + zsh_action(o)));
            continue;
        }
        for (const auto& spelling : o.spellings()) {
            std::string spec = spelling + (o.takes_value() ? "=" : "") + "[" + zsh_description(o.help) + "]";
            if (o.takes_value()) spec += ":" + zsh_description(o.key().substr(o.key().find_first_not_of('-'))) + ":" + zsh_action(o);
            if (o.many) spec = "*" + spec;
            specs.push_back(sh_quote(spec));
        }
    }
    return specs;
}

std::string zsh_arguments(const std::vector<std::string>& specs, const std::string& indent, const std::string& tail) {
    std::string out = indent + "_arguments -C";
    for (const auto& spec : specs) out += " \\\n" + indent + "  " + spec;
    return out + tail;
}

std::string zsh_script(std::span<const spec* const> rows, std::span<const option> globals) {
    const auto shown = visible(rows);
    std::ostringstream s;
    s << kZshHead;
    auto top = zsh_specs(globals, true);
    top.push_back(sh_quote("1:command:->command"));
    top.push_back(sh_quote("*::argument:->argument"));
    s << zsh_arguments(top, "  ", " && ret=0\n");
    s << "  case $state in\n"
      << "  (command)\n"
      << "    local -a commands=(\n";
    for (const spec* row : shown) {
        s << "      " << sh_quote(row->name + ":" + zsh_description(row->help)) << "\n";
        for (const auto& alias : row->aliases)
            s << "      " << sh_quote(alias + ":" + zsh_description(row->help)) << "\n";
    }
    s << "    )\n"
      << "    _describe -t commands command commands && ret=0 ;;\n"
      << "  (argument)\n"
      << "    curcontext=${curcontext%:*:*}:machine-$words[1]:\n"
      << "    case $words[1] in\n";
    for (const spec* row : shown) {
        std::string pattern = sh_quote(row->name);
        for (const auto& alias : row->aliases) pattern += "|" + sh_quote(alias);
        s << "    (" << pattern << ")\n";
        auto specs = zsh_specs(row->options, false);
        // A trailing command line is not completed (nor taken for machine's options).
        if (!row->trailing.empty()) specs.push_back(sh_quote("*::" + zsh_description(row->trailing) + ": "));
        s << zsh_arguments(specs, "      ", " && ret=0 ;;\n");
    }
    s << "    esac ;;\n"
      << "  esac\n"
      << "  return ret\n"
      << "}\n"
      << "\n"
      << "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n"
      << "  _machine \"$@\"  # autoloaded from $fpath\n"
      << "else\n"
      << "  compdef _machine machine\n"
      << "fi\n";
    return s.str();
}

// ---- fish ----------------------------------------------------------------------------------

constexpr const char* kFishHead = R"sh(# fish completion for machine, made by `machine completion fish` from its command table.
# Load it with `machine completion fish | source`, or save it as
# ~/.config/fish/completions/machine.fish.

# How many positionals follow the command on the line, then the command (none: machine's own
# options).
function __machine_state
    set -l words (commandline -opc)
    set -e words[1]
    set -l cmd ''
    set -l positionals 0
    set -l skip 0
    for word in $words
        if test $skip = 1
            set skip 0
            continue
        end
        switch "$cmd:$word"
)sh";

constexpr const char* kFishMiddle = R"sh(
# True when the line's command is $argv[1] ('' for machine's own options) and, given $argv[2],
# fewer positionals than that follow it.
function __machine_using
    set -l state (__machine_state)
    test "$state[2]" = "$argv[1]"; or return 1
    test (count $argv) -lt 2; or test $state[1] -lt $argv[2]
end

# The configured projects (`machine project-names`, one per line; nothing when the
# configuration is broken): fish offers each line as it is, evaluating nothing in it.
function __machine_projects
    command machine project-names 2>/dev/null
end

# No file names, unless an option's value is one.
complete -c machine -f
)sh";

std::string fish_action(const option& o) {
    switch (o.to) {
    case completes::project: return " -a '(__machine_projects)'";
    case completes::file: return " -F";
    case completes::words: return " -a " + fish_quote(joined(o.words, sh_quote));
    case completes::nothing: break;
    }
    return "";
}

std::string fish_option(const std::string& condition, const option& o) {
    std::string line = "complete -c machine -n " + fish_quote(condition);
    for (const auto& spelling : o.spellings()) {
        if (spelling.rfind("--", 0) == 0) line += " -l " + fish_quote(spelling.substr(2));
        else line += " -s " + fish_quote(spelling.substr(1));
    }
    if (o.takes_value()) line += o.to == completes::file ? " -r" + fish_action(o) : " -x" + fish_action(o);
    return line + " -d " + fish_quote(o.help) + "\n";
}

std::string fish_script(std::span<const spec* const> rows, std::span<const option> globals) {
    const auto shown = visible(rows);
    std::ostringstream s;
    s << kFishHead;
    std::string patterns;
    for (const option* o : named_options_of(globals))
        for (const auto& spelling : o->spellings()) patterns += " " + fish_quote(":" + spelling);
    for (const spec* row : shown)
        for (const option* o : named_options_of(row->options))
            if (o->takes_value())
                for (const auto& spelling : o->spellings()) patterns += " " + fish_quote(row->name + ":" + spelling);
    if (!patterns.empty()) s << "            case" << patterns << "  # an option's value\n                set skip 1\n";
    s << "            case '*:-*'\n"
      << "            case ':*'\n"
      << "                set cmd $word\n"
      << "            case '*'\n"
      << "                set positionals (math $positionals + 1)\n"
      << "        end\n"
      << "    end\n"
      << "    switch $cmd\n";
    for (const spec* row : shown)
        for (const auto& alias : row->aliases)
            s << "        case " << fish_quote(alias) << "\n            set cmd " << fish_quote(row->name) << "\n";
    s << "    end\n"
      << "    echo $positionals\n"
      << "    echo $cmd\n"
      << "end\n"
      << kFishMiddle;
    const option help{.names = kHelpNames, .help = kHelpText};
    s << fish_option("__machine_using ''", help);
    s << fish_option("__machine_using ''", option{.names = "--version", .help = kVersionText});
    for (const option* o : named_options_of(globals)) s << fish_option("__machine_using ''", *o);
    for (const spec* row : shown) {
        s << "complete -c machine -n " << fish_quote("__machine_using ''") << " -a " << fish_quote(row->name)
          << " -d " << fish_quote(row->help) << "\n";
        for (const auto& alias : row->aliases)
            s << "complete -c machine -n " << fish_quote("__machine_using ''") << " -a " << fish_quote(alias)
              << " -d " << fish_quote(row->help) << "\n";
    }
    for (const spec* row : shown) {
        const std::string using_row = "__machine_using " + sh_quote(row->name);
        s << "\n# " << row->name << "\n";
        const auto positionals = positionals_of(*row);
        // Options of a row with a trailing command line only before it: after the positionals,
        // a word is the command's, not machine's.
        const std::string options_when = row->trailing.empty() ? using_row : using_row + " " + std::to_string(positionals.size());
        s << fish_option(options_when, help);
        for (const option* o : named_options_of(row->options)) s << fish_option(options_when, *o);
        for (std::size_t i = 0; i < positionals.size(); ++i) {
            const std::string when = positionals[i]->many ? using_row : using_row + " " + std::to_string(i + 1);
            s << "complete -c machine -n " << fish_quote(when) << fish_action(*positionals[i]) << "\n";
            if (positionals[i]->many) break;
        }
    }
    return s.str();
}

} // namespace

std::string completion_script(std::string_view shell, std::span<const spec* const> rows, std::span<const option> globals) {
    if (shell == "bash") return bash_script(rows, globals);
    if (shell == "zsh") return zsh_script(rows, globals);
    if (shell == "fish") return fish_script(rows, globals);
    return "";
}

} // namespace machine::cmdline
