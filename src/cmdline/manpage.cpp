// The manual page (machine.1) from the same command table as --help and the completion
// scripts: the build writes it with `machine man-page`, so it cannot fall behind a command.
#include <string>

#include "machine/cmdline.hpp"

namespace machine::cmdline {

namespace {

// Text as roff shows it: backslashes and a leading '.' or '\'' are not requests.
std::string roff(std::string_view s) {
    std::string out;
    bool line_start = true;
    for (char c : s) {
        if (line_start && (c == '.' || c == '\'')) out += "\\&";
        if (c == '\\') out += "\\e";
        else if (c == '-') out += "\\-";
        else out += c;
        line_start = c == '\n';
    }
    return out;
}

std::string bold(std::string_view s) { return "\\fB" + roff(s) + "\\fR"; }
std::string italic(std::string_view s) { return "\\fI" + roff(s) + "\\fR"; }

std::string upper(std::string s) {
    for (char& c : s)
        if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    return s;
}

// "[NAME...]", "NAME": a positional as the usage line shows it.
std::string positional_usage(const option& o) {
    std::string word = italic(upper(o.names)) + (o.many ? "..." : "");
    return o.required ? word : "[" + word + "]";
}

// "-y, --yes", "--timeout N", "--repo REPO" (a value's placeholder is N for a number, else its
// key without dashes, in capitals).
std::string option_head(const option& o) {
    std::string out;
    for (const auto& s : o.spellings()) out += (out.empty() ? "" : ", ") + bold(s);
    if (o.kind == option_kind::number) {
        out += " " + italic("N");
    } else if (o.takes_value()) {
        std::string key = o.key();
        while (!key.empty() && key.front() == '-') key.erase(0, 1);
        out += " " + italic(upper(key));
    }
    return out;
}

std::string option_help(const option& o) {
    std::string out = roff(o.help);
    if (!o.words.empty()) {
        std::string words;
        for (const auto& w : o.words) words += (words.empty() ? "" : ", ") + bold(w);
        out += " (" + words + ")";
    }
    if (!o.default_value.empty()) out += "; default " + bold(o.default_value);
    if (o.kind == option_kind::number && o.default_number > 0) out += "; default " + std::to_string(o.default_number);
    return out;
}

std::string options_list(std::span<const option> options) {
    std::string out;
    for (const auto& o : options) {
        if (o.kind == option_kind::positional) continue;
        out += ".TP\n" + option_head(o) + "\n" + option_help(o) + "\n";
    }
    return out;
}

// A footer is preformatted text (exit codes, environment): kept as it is.
std::string preformatted(std::string_view text) {
    while (!text.empty() && text.front() == '\n') text.remove_prefix(1);
    return ".nf\n" + roff(text) + (text.empty() || text.back() != '\n' ? "\n" : "") + ".fi\n";
}

} // namespace

std::string man_page(const program& p) {
    std::string out;
    out += ".\\\" Made by `" + p.name + " man-page` from its command table; do not edit.\n";
    out += ".TH " + upper(p.name) + " 1 \"\" \"" + roff(p.version) + "\" \"User Commands\"\n";
    std::string summary = p.description;
    if (const auto colon = summary.find(": "); colon != std::string::npos) summary = summary.substr(colon + 2);
    while (!summary.empty() && summary.back() == '.') summary.pop_back();
    out += ".SH NAME\n" + roff(p.name) + " \\- " + roff(summary) + "\n";
    out += ".SH SYNOPSIS\n" + bold(p.name);
    for (const auto& g : p.globals)
        if (g.kind != option_kind::positional) out += " [" + option_head(g) + "]";
    out += " " + italic("COMMAND") + " [" + italic("OPTIONS") + "]\n.br\n" + bold(p.name) + " " + bold("--version") +
           "\n.br\n" + bold(p.name) + " [" + italic("COMMAND") + "] " + bold("--help") + "\n";
    out += ".SH DESCRIPTION\n" + roff(p.description) + "\n";
    out += ".SH COMMANDS\n";
    for (const spec* row : p.commands) {
        if (row->hidden) continue;
        std::string usage = bold(p.name) + " " + bold(row->name);
        for (const auto& o : row->options)
            if (o.kind == option_kind::positional) usage += " " + positional_usage(o);
        if (!row->trailing.empty()) usage += " [" + bold("--") + "] " + italic(row->trailing);
        out += ".SS \"" + usage + "\"\n" + roff(row->help) + ".\n";
        if (!row->aliases.empty()) {
            std::string names;
            for (const auto& a : row->aliases) names += (names.empty() ? "" : ", ") + bold(a);
            out += "Also: " + names + ".\n";
        }
        out += options_list(row->options);
        if (!row->footer.empty()) out += ".PP\n" + preformatted(row->footer);
    }
    out += ".SH OPTIONS\n" + options_list(p.globals);
    out += ".TP\n" + bold("-h") + ", " + bold("--help") + "\nthis help (after a command: the command's)\n";
    out += ".TP\n" + bold("--version") + "\nthe version\n";
    if (!p.footer.empty()) out += ".SH \"EXIT STATUS AND ENVIRONMENT\"\n" + preformatted(p.footer);
    out += ".SH FILES\n.TP\n" + italic("$XDG_CONFIG_HOME/machine/projects.toml") +
           "\nthe projects (see " + bold("machine init") + ")\n.TP\n" + italic("$XDG_CACHE_HOME/machine/guest/") +
           "\nthe guest image of machine's Lima stand-in, built on first use\n";
    out += ".SH \"SEE ALSO\"\n" + bold("limactl") + "(1), " + bold("ssh") + "(1); the README and docs/threat-model.md of machine's source.\n";
    return out;
}

} // namespace machine::cmdline
