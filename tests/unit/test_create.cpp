// `machine create`'s questions (src/cli/create.*): flags answer theirs, the rest are asked with
// their defaults shown, and every answer is checked by the loader's rule for its key, a bad one
// asked again with the reason. Driven by a scripted questioner, no terminal.
#include <boost/test/unit_test.hpp>

#include <deque>

#include "create.hpp"
#include "error_message.hpp"
#include "machine/error.hpp"

namespace cli = machine::cli;
namespace config = machine::config;

namespace {

// Answers in order, and what was asked and said, one line each ("? prompt" or "  said").
struct script {
    std::deque<std::optional<std::string>> answers;
    std::vector<std::string> transcript;
    cli::questioner q;

    explicit script(std::vector<std::optional<std::string>> a) : answers(a.begin(), a.end()) {
        q.ask = [this](const std::string& prompt) -> std::optional<std::string> {
            transcript.push_back("? " + prompt);
            BOOST_REQUIRE_MESSAGE(!answers.empty(), "asked more than the script answers: " << prompt);
            auto a = answers.front();
            answers.pop_front();
            return a;
        };
        q.say = [this](const std::string& line) { transcript.push_back("  " + line); };
    }
    bool said(const std::string& text) const {
        for (const auto& l : transcript)
            if (l.find(text) != std::string::npos) return true;
        return false;
    }
};

cli::create_context context_with(std::vector<std::string> taken = {}) {
    cli::create_context c;
    c.defaults.host = {.cpus = 8, .memory_bytes = 32LL << 30};
    c.projects_file = "/cfg/projects.toml";
    c.taken = [taken](const std::string& n) { return std::find(taken.begin(), taken.end(), n) != taken.end(); };
    c.profiles = {"base", "docker", "node"};
    c.profiles_problem = [](const std::vector<std::string>& names) -> std::string {
        for (const auto& n : names)
            if (n != "base" && n != "docker" && n != "node") return "unknown profile '" + n + "'";
        return {};
    };
    return c;
}


} // namespace

BOOST_AUTO_TEST_SUITE(cli_create)

BOOST_AUTO_TEST_CASE(every_question_is_asked_and_bad_answers_again_with_the_reason) {
    script s({"Web_App", "", "web", "web-2",                                   // name: bad, empty, taken, fine
              "-oProxyCommand=x", "git@github.com:acme/web.git", "https://h/api.git", "",  // repos
              "node, nope", "docker node",                                     // profiles
              "fish", "bash",                                                  // shell
              "four", "0", "6",                                                // cpus
              "",                                                              // memory: the default
              "1TB", "60"});                                                   // disk
    const config::project_draft d = cli::draft_project({}, context_with({"web"}), &s.q);
    BOOST_TEST(d.name == "web-2");
    BOOST_TEST((d.repos == std::vector<std::string>{"git@github.com:acme/web.git", "https://h/api.git"}));
    BOOST_TEST((d.profiles == std::vector<std::string>{"docker", "node"}));
    BOOST_TEST(d.shell.value_or("") == "bash");
    BOOST_TEST(d.cpus.value_or(0) == 6);
    BOOST_TEST(!d.memory);  // left to the default: not written
    BOOST_TEST(d.disk.value_or("") == "60GiB");
    BOOST_TEST(s.said("invalid project name 'Web_App'"));
    BOOST_TEST(s.said("a name is needed"));
    BOOST_TEST(s.said("/cfg/projects.toml: there is a project [web] already"));
    BOOST_TEST(s.said("Creating [web-2] in /cfg/projects.toml"));
    BOOST_TEST(s.said("machine: " + config::repo_problem("-oProxyCommand=x")));
    BOOST_TEST(s.said("Available profiles: base, docker, node"));
    BOOST_TEST(s.said("unknown profile 'nope'"));
    BOOST_TEST(s.said("machine: " + config::shell_problem("fish")));
    BOOST_TEST(s.said("expected a whole number, got \"four\""));
    BOOST_TEST(s.said("machine: " + config::cpus_problem(0)));
    BOOST_TEST(s.said("machine: " + config::size_problem("1TB")));
    // The defaults are shown: the host's size, the built-in profile set, default_shell.
    BOOST_TEST(s.said("? CPUs [4]: "));
    BOOST_TEST(s.said("? Memory (8 = 8GiB; or 512MiB...) [8GiB]: "));
    BOOST_TEST(s.said("? Disk (grows only) [30GiB]: "));
    BOOST_TEST(s.said("? Shell (zsh/bash) [zsh]: "));
    BOOST_TEST(s.said("? Repo URL #1 (the primary one; Enter for none): "));
    BOOST_TEST(s.said("? Repo URL #3 (Enter to finish): "));
    BOOST_TEST(s.answers.empty());
}

BOOST_AUTO_TEST_CASE(empty_answers_write_nothing_but_the_repos_and_none_means_no_profiles) {
    script s({"", "", "", "", "", ""});
    cli::create_options opt;
    opt.name = "blog";
    config::project_draft d = cli::draft_project(opt, context_with(), &s.q);
    BOOST_TEST(d.repos.empty());
    BOOST_TEST(!d.profiles);
    BOOST_TEST(!d.shell);
    BOOST_TEST(!d.cpus);
    BOOST_TEST(!d.disk);
    script none({"", "none", "", "", "", ""});
    d = cli::draft_project(opt, context_with(), &none.q);
    BOOST_TEST((d.profiles && d.profiles->empty()));
    BOOST_TEST((cli::split_profiles(" a,b  c,,") == std::vector<std::string>{"a", "b", "c"}));
}

BOOST_AUTO_TEST_CASE(flags_answer_their_questions_and_yes_asks_nothing) {
    cli::create_options opt;
    opt.name = "web";
    opt.repos = {"git@github.com:acme/web.git"};
    opt.profiles = {"node"};
    opt.cpus = "2";
    opt.memory = "1.5GiB";
    opt.yes = true;
    const config::project_draft d = cli::draft_project(opt, context_with(), nullptr);
    BOOST_TEST((d.repos == opt.repos));
    BOOST_TEST((d.profiles == std::vector<std::string>{"node"}));
    BOOST_TEST(d.cpus.value_or(0) == 2);
    BOOST_TEST(d.memory.value_or("") == "1.5GiB");
    BOOST_TEST(!d.shell);
    BOOST_TEST(!d.disk);
    // On a terminal, only what no flag gave is asked.
    script s({"", "bash", ""});  // repos, shell, disk: profiles, cpus and memory came as flags
    opt.yes = false;
    opt.repos.clear();
    const config::project_draft asked = cli::draft_project(opt, context_with(), &s.q);
    BOOST_TEST(asked.shell.value_or("") == "bash");
    BOOST_TEST(!s.said("? CPUs"));
    BOOST_TEST(!s.said("? Profiles"));
    BOOST_TEST(s.said("? Repo URL #1"));
}

BOOST_AUTO_TEST_CASE(bad_flags_are_usage_errors_naming_the_flag) {
    auto with = [](auto set) {
        cli::create_options opt;
        opt.name = "web";
        opt.yes = true;
        set(opt);
        return machine::test::message_of<machine::usage_error>([&] { cli::draft_project(opt, context_with({"taken"}), nullptr); });
    };
    BOOST_TEST(with([](auto& o) { o.repos = {"ok.git", "--upload-pack=x"}; }) ==
               "--repo: " + config::repo_problem("--upload-pack=x"));
    BOOST_TEST(with([](auto& o) { o.profiles = {"node", "nope"}; }) == "--profile: unknown profile 'nope'");
    BOOST_TEST(with([](auto& o) { o.profiles = {"Node!"}; }) == "--profile: " + config::profile_problem("Node!"));
    BOOST_TEST(with([](auto& o) { o.cpus = "2x"; }) == "--cpus: expected a whole number, got \"2x\"");
    BOOST_TEST(with([](auto& o) { o.disk = "-1"; }) == "--disk: " + config::size_problem("-1"));
    BOOST_TEST(with([](auto& o) { o.name = "Bad"; }).rfind("invalid project name 'Bad'", 0) == 0);
    BOOST_TEST(with([](auto& o) { o.name.reset(); }) == "machine create --yes needs the project's NAME");
    // An existing project: a configuration error (exit 2 too), before any question.
    BOOST_TEST(with([](auto& o) { o.name = "taken"; }) ==
               "/cfg/projects.toml: there is a project [taken] already; edit it there, or choose another name");
    // A flag's value reaches a message escaped.
    BOOST_TEST(with([](auto& o) { o.cpus = "\x1b[2J"; }) == "--cpus: expected a whole number, got \"\\x1b[2J\"");
}

BOOST_AUTO_TEST_CASE(end_of_input_writes_nothing) {
    script s({"web", std::nullopt});
    BOOST_CHECK_THROW(cli::draft_project({}, context_with(), &s.q), machine::error);
}

BOOST_AUTO_TEST_SUITE_END()
