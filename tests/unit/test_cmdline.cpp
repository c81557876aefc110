// The command-line module (src/cmdline, include/machine/cmdline.hpp): parsing a made-up program's
// specs, and what can be said of the completion scripts' text without running a shell (the real
// bash, zsh and fish run them in tests/cli, suite cli_command_table).
#include <boost/test/unit_test.hpp>

#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "machine/cmdline.hpp"

namespace cmdline = machine::cmdline;
using namespace machine::cmdline;

namespace {

// A small program: `tool [--level L] up|run|secrets|completion ...`.
const std::vector<spec>& specs() {
    static const std::vector<spec> all{
        {.name = "up",
         .help = "start",
         .options = {positionals("names", "projects", completes::project), flag("--all", "every project"),
                     number("--parallel", "at once"), number("--timeout", "minutes", 30),
                     value("--session", "session name")}},
        {.name = "run",
         .help = "run a command",
         .options = {required(positional("name", "project", completes::project))},
         .aliases = {"exec"},
         .trailing = "COMMAND [ARGS...]"},
        {.name = "secrets",
         .help = "secrets",
         .options = {positional("name", "project", completes::project), value("--repo", "repo"),
                     flag("--clear", "clear"), excluding(flag("--list", "list"), {"--clear", "--repo"})}},
        {.name = "completion",
         .help = "script",
         .options = {required(one_of(positional("shell", "shell"), {"bash", "zsh", "fish"}))}},
        {.name = "internal", .help = "", .options = {value("--socket", "", completes::file)}, .hidden = true},
    };
    return all;
}

const std::vector<option>& globals() {
    static const std::vector<option> all{choice("--level", "log detail", {"debug", "info", "warn"}, "warn")};
    return all;
}

const std::vector<const spec*>& spec_pointers() {
    static const std::vector<const spec*> out = [] {
        std::vector<const spec*> p;
        for (const auto& s : specs()) p.push_back(&s);
        return p;
    }();
    return out;
}

program tool() {
    return {.name = "tool", .description = "a test tool", .footer = "", .version = "tool 1", .globals = globals(),
            .commands = spec_pointers()};
}

parsed parse_words(std::vector<std::string> words) {
    words.insert(words.begin(), "tool");
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    return parse(tool(), static_cast<int>(argv.size()), argv.data());
}

const std::string& name_of(const parsed& p) { return specs().at(*p.chosen).name; }

bool usage_error(const parsed& p) { return !p.chosen && p.exit_code == 2; }

} // namespace

BOOST_AUTO_TEST_SUITE(cmdline_parse)

BOOST_AUTO_TEST_CASE(flags_values_and_numbers_with_their_defaults) {
    auto p = parse_words({"up", "alpha", "beta", "--all", "--timeout", "5"});
    BOOST_REQUIRE(p.chosen);
    BOOST_TEST(name_of(p) == "up");
    BOOST_TEST(p.args.command == "up");
    BOOST_TEST((p.args.values("names") == std::vector<std::string>{"alpha", "beta"}));
    BOOST_TEST(p.args.flag("--all"));
    BOOST_TEST(p.args.number("--timeout") == 5);
    BOOST_TEST(p.args.number("--parallel") == 0);  // not given: its default
    BOOST_TEST(!p.args.value("--session"));         // not given, no default
    BOOST_TEST(p.args.slots.at("--all").given);
    BOOST_TEST(!p.args.slots.at("--parallel").given);
    BOOST_TEST(*p.globals.value("--level") == "warn");  // a choice's default

    p = parse_words({"--level", "debug", "up", "--session=s1"});
    BOOST_REQUIRE(p.chosen);
    BOOST_TEST(!p.args.flag("--all"));
    BOOST_TEST(p.args.number("--timeout") == 30);
    BOOST_TEST(*p.args.value("--session") == "s1");
    BOOST_TEST(p.args.values("names").empty());
    BOOST_TEST(*p.globals.value("--level") == "debug");
}

BOOST_AUTO_TEST_CASE(an_alias_chooses_its_row_and_names_it) {
    const auto p = parse_words({"exec", "alpha", "--", "ls"});
    BOOST_REQUIRE(p.chosen);
    BOOST_TEST(name_of(p) == "run");
    BOOST_TEST(p.args.command == "run");
}

BOOST_AUTO_TEST_CASE(usage_errors_run_nothing_and_exit_2) {
    BOOST_TEST(usage_error(parse_words({})));                                  // no command
    BOOST_TEST(usage_error(parse_words({"nosuch"})));                          // unknown command
    BOOST_TEST(usage_error(parse_words({"completion"})));                      // required positional missing
    BOOST_TEST(usage_error(parse_words({"completion", "tcsh"})));              // not one of its words
    BOOST_TEST(usage_error(parse_words({"secrets", "--list", "--clear"})));    // excluded pair
    BOOST_TEST(usage_error(parse_words({"secrets", "--repo", "r", "--list"})));
    BOOST_TEST(usage_error(parse_words({"up", "--parallel", "0"})));           // numbers are positive
    BOOST_TEST(usage_error(parse_words({"up", "--timeout", "soon"})));
    BOOST_TEST(usage_error(parse_words({"up", "--bogus"})));
    BOOST_TEST(usage_error(parse_words({"--level", "loud", "up"})));
    BOOST_TEST(usage_error(parse_words({"--level"})));
    // The excluded options alone are fine.
    BOOST_TEST(parse_words({"secrets", "--list"}).chosen.has_value());
    BOOST_TEST(parse_words({"secrets", "--clear", "--repo", "r"}).chosen.has_value());
}

BOOST_AUTO_TEST_CASE(version_is_printed_and_nothing_runs) {
    const auto p = parse_words({"--version"});
    BOOST_TEST(!p.chosen);
    BOOST_TEST(p.exit_code == 0);
}

BOOST_AUTO_TEST_CASE(a_trailing_command_line_is_split_off_options_and_all) {
    auto p = parse_words({"run", "alpha", "--", "ls", "-l", "--all"});
    BOOST_REQUIRE(p.chosen);
    BOOST_TEST(*p.args.value("name") == "alpha");
    BOOST_TEST((p.args.trailing == std::vector<std::string>{"ls", "-l", "--all"}));

    // Without `--`: everything after the positional, options included.
    p = parse_words({"run", "alpha", "git", "--version"});
    BOOST_REQUIRE(p.chosen);
    BOOST_TEST((p.args.trailing == std::vector<std::string>{"git", "--version"}));

    // `run -- NAME CMD`: the `--` before the positional only ends the options.
    p = parse_words({"run", "--", "alpha", "ls"});
    BOOST_REQUIRE(p.chosen);
    BOOST_TEST(*p.args.value("name") == "alpha");
    BOOST_TEST((p.args.trailing == std::vector<std::string>{"ls"}));

    // A global option's value is not taken for the command.
    p = parse_words({"--level", "run", "run", "alpha", "--", "x"});
    BOOST_TEST(usage_error(p));  // "run" is not a level...
    p = parse_words({"--level", "info", "run", "alpha", "--", "x", "--level"});
    BOOST_REQUIRE(p.chosen);      // ...and the trailing `--level` is the command's
    BOOST_TEST(*p.globals.value("--level") == "info");
    BOOST_TEST((p.args.trailing == std::vector<std::string>{"x", "--level"}));

    // Words after another command's positionals are not split off.
    BOOST_TEST(usage_error(parse_words({"secrets", "alpha", "extra"})));
    // A row with a trailing command line needs one.
    BOOST_TEST(usage_error(parse_words({"run", "alpha"})));
    BOOST_TEST(usage_error(parse_words({"run", "alpha", "--"})));
}

BOOST_AUTO_TEST_CASE(a_key_the_spec_does_not_declare_is_a_bug) {
    const auto p = parse_words({"up"});
    BOOST_REQUIRE(p.chosen);
    BOOST_CHECK_THROW(p.args.flag("--yes"), std::logic_error);
    BOOST_CHECK_THROW(p.args.value("name"), std::logic_error);
}

BOOST_AUTO_TEST_CASE(named_project_is_the_one_positional_given) {
    BOOST_TEST(parse_words({"up", "alpha"}).args.named_project() == "alpha");
    BOOST_TEST(parse_words({"up", "alpha", "beta"}).args.named_project() == "");
    BOOST_TEST(parse_words({"up"}).args.named_project() == "");
    BOOST_TEST(parse_words({"run", "alpha", "--", "beta"}).args.named_project() == "alpha");
}

BOOST_AUTO_TEST_CASE(option_spellings_and_key) {
    const option o = flag("-y,--yes", "");
    BOOST_TEST((o.spellings() == std::vector<std::string>{"-y", "--yes"}));
    BOOST_TEST(o.key() == "--yes");
    BOOST_TEST(positional("name", "").key() == "name");
    BOOST_TEST(number("--n", "").takes_value());
    BOOST_TEST(!flag("--f", "").takes_value());
}

BOOST_AUTO_TEST_SUITE_END()

// The scripts' safety rules, as far as their text shows them: what `machine project-names`
// prints is read as data in exactly one place per script, nothing is evaluated, and words from
// the specs are quoted.
BOOST_AUTO_TEST_SUITE(cmdline_completion)

namespace {

// The lines of a script holding `needle`, comments left out.
std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        const auto first = line.find_first_not_of(' ');
        if (first != std::string::npos && line[first] == '#') continue;
        if (line.find(needle) != std::string::npos) out.push_back(line);
    }
    return out;
}

// A spec whose words and help hold shell syntax.
std::vector<const spec*> hostile() {
    static const spec s{.name = "up",
                        .help = "it's $(touch /tmp/pwned) `id` \\ [x]:y",
                        .options = {one_of(value("--mode", "a 'mode'"), {"a'b", "$(id)", "c d"}),
                                    positional("name", "$(id)", completes::project)}};
    return {&s};
}

} // namespace

BOOST_AUTO_TEST_CASE(project_names_are_read_as_data_in_one_place) {
    const std::vector<std::string> reads{
        "bash", "    done < <(command machine project-names 2>/dev/null)",
        "zsh", "  names=(${(f)\"$(command machine project-names 2>/dev/null)\"})",
        "fish", "    command machine project-names 2>/dev/null"};
    for (std::size_t i = 0; i < reads.size(); i += 2) {
        BOOST_TEST_CONTEXT(reads[i]) {
            const std::string script = completion_script(reads[i], spec_pointers(), globals());
            BOOST_TEST((lines_with(script, "project-names") == std::vector<std::string>{reads[i + 1]}));
            // No eval, no `compgen -W` (which expands its words), no (e) expansion flag in zsh.
            BOOST_TEST(!std::regex_search(script, std::regex(R"(\beval\b)")));
            BOOST_TEST(script.find("compgen -W") == std::string::npos);
            BOOST_TEST(script.find("(e)") == std::string::npos);
            BOOST_TEST(script.find("(e:") == std::string::npos);
        }
    }
    // And they are offered as literal words.
    const std::string bash = completion_script("bash", spec_pointers(), globals());
    BOOST_TEST(bash.find("        _machine_add \"$name\"\n") != std::string::npos);
    BOOST_TEST(completion_script("zsh", spec_pointers(), globals()).find("compadd -a names") != std::string::npos);
    BOOST_TEST(completion_script("fish", spec_pointers(), globals()).find(" -a '(__machine_projects)'") !=
               std::string::npos);
}

BOOST_AUTO_TEST_CASE(words_and_help_from_the_specs_are_quoted) {
    const std::string bash = completion_script("bash", hostile(), {});
    BOOST_TEST(bash.find("_machine_add 'a'\\''b' '$(id)' 'c d'") != std::string::npos);
    BOOST_TEST(lines_with(bash, "touch").empty());  // bash shows no help texts
    const std::string zsh = completion_script("zsh", hostile(), {});
    // Inside single quotes, with _arguments' own special characters escaped.
    BOOST_TEST((lines_with(zsh, "touch") ==
                std::vector<std::string>{"      'up:it'\\''s $(touch /tmp/pwned) `id` \\\\ \\[x\\]\\:y'"}));
    const std::string fish = completion_script("fish", hostile(), {});
    BOOST_TEST(fish.find("-d 'it\\'s $(touch /tmp/pwned) `id` \\\\ [x]:y'") != std::string::npos);
    BOOST_TEST(fish.find("-a '\\'a\\'\\\\\\'\\'b\\' \\'$(id)\\' \\'c d\\''") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(hidden_commands_and_unknown_shells) {
    for (const char* shell : {"bash", "zsh", "fish"}) {
        const std::string script = completion_script(shell, spec_pointers(), globals());
        BOOST_TEST(script.find("internal") == std::string::npos, shell);
        BOOST_TEST(script.find("--socket") == std::string::npos, shell);
        BOOST_TEST(script.find("exec") != std::string::npos, shell);  // aliases are offered
    }
    BOOST_TEST(completion_script("tcsh", spec_pointers(), globals()).empty());
    BOOST_TEST(completion_script("", spec_pointers(), globals()).empty());
}

BOOST_AUTO_TEST_SUITE_END()
