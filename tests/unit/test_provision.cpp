// Profiles as data: parsing (with positions in errors), resolution order, plans and step hashes.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "machine/config.hpp"
#include "machine/forge_keys.hpp"
#include "machine/provision.hpp"
#include "../support/sshd.hpp"
#include "error_message.hpp"
#include "test_support.hpp"

using namespace machine;
using provision::catalog;

namespace {

const char* kBase = R"(description = "the basics"
[[step]]
name = "packages"
check = "dpkg -s git"
run = "apt-get install -y git"
timeout = "20m"
env = { DEBIAN_FRONTEND = "noninteractive" }
)";

const char* kNode = R"(requires = ["base"]
[[step]]
name = "install"
run = "echo node"
[[step]]
name = "tools"
user = "user"
run = "npm i -g pnpm"
)";

const char* kSigning = R"(requires = ["base"]
bake = false
[[step]]
name = "identity"
user = "user"
env = { GIT_NAME = "${git.name}", KEY = "${git.signing_key}", WHO = "${vm.user}" }
run = "git config --global user.name \"$GIT_NAME\""
)";

catalog sample_catalog() {
    catalog c;
    c.add(catalog::parse(kBase, "base", "base.toml"));
    c.add(catalog::parse(kNode, "node", "node.toml"));
    c.add(catalog::parse(kSigning, "git-signing", "git-signing.toml"));
    return c;
}

std::function<std::string(std::size_t)> at(std::string prefix) {
    return [prefix](std::size_t i) { return prefix + "[" + std::to_string(i) + "]"; };
}

provision::host_values host() {
    provision::host_values h;
    h.git_name = "Ada";
    h.git_email = "ada@example.org";
    h.git_signing_key = "ssh-ed25519 AAAA ada";
    return h;
}

} // namespace

BOOST_AUTO_TEST_SUITE(provision_profiles)

BOOST_AUTO_TEST_CASE(a_profile_file_becomes_named_steps_with_their_settings) {
    const auto p = catalog::parse(kBase, "base", "base.toml");
    BOOST_TEST(p.description == "the basics");
    BOOST_TEST(p.bake);
    BOOST_REQUIRE_EQUAL(p.steps.size(), 1u);
    BOOST_TEST(p.steps[0].name == "base.packages");
    BOOST_TEST((p.steps[0].user == provision::run_as::root));
    BOOST_TEST(p.steps[0].timeout.count() == 20 * 60 * 1000);
    BOOST_TEST(p.steps[0].check == "dpkg -s git");
    BOOST_REQUIRE_EQUAL(p.steps[0].env.size(), 1u);
    BOOST_TEST(p.steps[0].env[0].first == "DEBIAN_FRONTEND");
}

BOOST_AUTO_TEST_CASE(bad_profile_files_name_file_line_column_and_key) {
    struct bad {
        const char* text;
        const char* message;
    };
    const bad cases[] = {
        {"[[step]]\nname = \"x\"\nrun = \"true\"\nuser = \"admin\"\n",
         "p.toml:4:1: step[0].user: expected \"root\" or \"user\" (the VM's normal user), got \"admin\""},
        {"[[step]]\nname = \"x\"\nrun = \"true\"\ntimeout = \"soon\"\n",
         "p.toml:4:1: step[0].timeout: expected a duration such as \"90s\", \"10m\" or \"1h\" (at most 24h), got \"soon\""},
        {"[[step]]\nname = \"x\"\nrun = \"true\"\nrnu = 1\n", "p.toml:4:1: step[0].rnu: unknown key (did you mean \"run\"?)"},
        {"[[step]]\nname = \"Bad Name\"\nrun = \"true\"\n",
         "p.toml:2:1: step[0].name: invalid step name \"Bad Name\" (1-48 of a-z, 0-9, \"-\" and \"_\", starting with a letter or digit)"},
        {"[[step]]\nname = \"x\"\n", "p.toml:1:1: step[0]: missing `run`"},
        {"[[step]]\nname = \"x\"\nrun = \"a\"\n[[step]]\nname = \"x\"\nrun = \"b\"\n",
         "p.toml:5:1: step[1].name: duplicate step name \"x\""},
        {"[[step]]\nname = \"x\"\nrun = \"a\"\nenv = { A = \"${git.nmae}\" }\n",
         "p.toml:4:9: step[0].env.A: unknown placeholder ${git.nmae} (known: ${git.name}, ${git.email}, ${git.signing_key}, ${vm.user}, ${vm.shell}, ${claude.mode}, ${forge.known_hosts})"},
        {"[[step]]\nname = \"x\"\nrun = \"a\"\nenv = { A = \"${git.name}\" }\n",
         "p.toml:4:9: step[0].env.A: ${git.*}, ${vm.shell} and ${claude.mode} need `bake = false` (on the profile or the step): a cached base is shared by every project"},
        {"[[step]]\nname = \"x\"\nrun = \"a\"\nenv = { S = \"${vm.shell}\" }\n",
         "p.toml:4:9: step[0].env.S: ${git.*}, ${vm.shell} and ${claude.mode} need `bake = false` (on the profile or the step): a cached base is shared by every project"},
        {"description = \"nothing\"\n", "p.toml:1:1: a profile needs at least one [[step]]"},
        {"[[step]]\nname = \"x\"\nrun = \"a\"\nenv = { \"1X\" = \"v\" }\n", "p.toml:4:9: step[0].env.1X: not a valid environment variable name"},
        {"egress = [\"registry.npmjs.org\", \"10.0.0.1\"]\n[[step]]\nname = \"x\"\nrun = \"a\"\n",
         "p.toml:1:33: egress[1]: "},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.text) {
            const std::string message = test::message_of<config::config_error>([&] { catalog::parse(c.text, "p", "p.toml"); });
            // An egress entry's reason is net::host_pattern_problem's: only where it points is ours.
            if (std::string_view(c.message).ends_with(": ")) BOOST_TEST(message.rfind(c.message, 0) == 0u, message);
            else BOOST_TEST(message == c.message);
        }
    }
}

BOOST_AUTO_TEST_CASE(requirements_come_first_and_each_profile_once) {
    const auto c = sample_catalog();
    const auto order = provision::resolve_profiles(c, {"git-signing", "node", "base"}, at("web.profiles"));
    BOOST_TEST(order == (std::vector<std::string>{"base", "git-signing", "node"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(an_unknown_profile_is_a_config_error_where_it_was_written) {
    const auto c = sample_catalog();
    BOOST_TEST(test::message_of<config::config_error>([&] { provision::resolve_profiles(c, {"base", "nodd"}, at("projects.toml:3:20: web.profiles")); }) ==
               "projects.toml:3:20: web.profiles[1]: unknown profile \"nodd\" (did you mean \"node\"?)");
    BOOST_TEST(test::message_of<config::config_error>([&] { provision::resolve_profiles(c, {"zzzzzzzz"}, at("x")); }) ==
               "x[0]: unknown profile \"zzzzzzzz\" (known: base, git-signing, node)");
}

BOOST_AUTO_TEST_CASE(requirement_cycles_are_refused) {
    catalog c;
    c.add(catalog::parse("requires = [\"b\"]\n[[step]]\nname = \"s\"\nrun = \"true\"\n", "a", "a.toml"));
    c.add(catalog::parse("requires = [\"a\"]\n[[step]]\nname = \"s\"\nrun = \"true\"\n", "b", "b.toml"));
    BOOST_TEST(test::message_of<config::config_error>([&] { provision::resolve_profiles(c, {"a"}, at("w")); }).find("cycle: a -> b -> a") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_plan_has_argv_vectors_users_and_expanded_env) {
    const auto c = sample_catalog();
    const auto plan = provision::make_plan(c, {"base", "git-signing"}, host());
    BOOST_REQUIRE_EQUAL(plan.steps.size(), 2u);
    const auto& sign = plan.steps[1];
    BOOST_TEST(sign.name == "git-signing.identity");
    BOOST_TEST(sign.user == "dev");
    BOOST_TEST(plan.steps[0].user == "root");
    // The script travels as one argv element: nothing from the host is spliced into it.
    BOOST_TEST(sign.run == (std::vector<std::string>{"bash", "-e", "-u", "-o", "pipefail", "-c",
                                                     "git config --global user.name \"$GIT_NAME\""}),
               boost::test_tools::per_element());
    BOOST_TEST(sign.check.empty());
    const std::vector<std::pair<std::string, std::string>> env{
        {"GIT_NAME", "Ada"}, {"KEY", "ssh-ed25519 AAAA ada"}, {"WHO", "dev"}};
    BOOST_TEST((sign.env == env));
    BOOST_TEST(plan.steps[0].timeout_ms == 20u * 60 * 1000);
}

BOOST_AUTO_TEST_CASE(a_step_hash_changes_with_any_part_of_its_definition_and_only_then) {
    const auto c = sample_catalog();
    const auto a = provision::make_plan(c, {"base", "git-signing"}, host());
    const auto b = provision::make_plan(c, {"base", "git-signing"}, host());
    BOOST_TEST(a.steps[0].hash == b.steps[0].hash);
    BOOST_TEST(a.steps[0].hash.size() == 64u);
    BOOST_TEST(a.steps[0].hash != a.steps[1].hash);

    auto other_key = host();
    other_key.git_signing_key = "ssh-ed25519 BBBB ada";
    const auto d = provision::make_plan(c, {"base", "git-signing"}, other_key);
    BOOST_TEST(d.steps[0].hash == a.steps[0].hash);  // base does not use the key
    BOOST_TEST(d.steps[1].hash != a.steps[1].hash);  // the signing step does

    catalog edited = sample_catalog();
    std::string base_text = kBase;
    base_text.replace(base_text.find("git\"\n"), 4, "git tmux\"");
    edited.add(catalog::parse(base_text, "base", "base.toml"));
    const auto e = provision::make_plan(edited, {"base"}, host());
    BOOST_TEST(e.steps[0].hash != a.steps[0].hash);
}

BOOST_AUTO_TEST_CASE(the_bakeable_part_stops_at_the_first_profile_that_cannot_be_baked) {
    const auto c = sample_catalog();
    const auto plan = provision::make_plan(c, {"base", "git-signing", "node"}, host());
    const auto base = provision::bakeable_prefix(c, plan);
    BOOST_TEST(base.profiles == (std::vector<std::string>{"base"}), boost::test_tools::per_element());
    BOOST_REQUIRE_EQUAL(base.steps.size(), 1u);
    BOOST_TEST(base.steps[0].name == "base.packages");
    BOOST_TEST(base.steps[0].hash == plan.steps[0].hash);
}

BOOST_AUTO_TEST_CASE(after_clone_steps_see_the_repos_rerun_when_they_change_and_are_never_baked) {
    catalog c = sample_catalog();
    c.add(catalog::parse("[[step]]\nname = \"pkgs\"\nrun = \"true\"\n[[step]]\nname = \"trust\"\nafter_clone = true\nrun = \"true\"\n",
                         "agents", "agents.toml"));
    auto h = host();
    h.repo_dirs = {"web", "api"};
    const auto plan = provision::make_plan(c, {"agents"}, h);
    BOOST_REQUIRE_EQUAL(plan.steps.size(), 2u);
    BOOST_TEST(!plan.steps[0].after_clone);
    BOOST_TEST(plan.steps[1].after_clone);
    const std::vector<std::pair<std::string, std::string>> env{{"MACHINE_REPOS", "web api"}};
    BOOST_TEST((plan.steps[1].env == env));
    BOOST_TEST(plan.steps[0].env.empty());

    h.repo_dirs = {"web"};
    const auto fewer = provision::make_plan(c, {"agents"}, h);
    BOOST_TEST(fewer.steps[0].hash == plan.steps[0].hash);
    BOOST_TEST(fewer.steps[1].hash != plan.steps[1].hash);

    const auto base = provision::bakeable_prefix(c, plan);
    BOOST_REQUIRE_EQUAL(base.steps.size(), 1u);
    BOOST_TEST(base.steps[0].name == "agents.pkgs");
}

// A step of a baked profile may carry a project value when the step itself says `bake = false`:
// it is kept out of the cached base and applied at `up`, with the project's value.
BOOST_AUTO_TEST_CASE(a_step_kept_out_of_the_base_may_use_project_values) {
    catalog c = sample_catalog();
    c.add(catalog::parse("[[step]]\nname = \"cli\"\nrun = \"true\"\n[[step]]\nname = \"mode\"\nbake = false\n"
                         "env = { M = \"${claude.mode}\" }\nrun = \"true\"\n[[step]]\nname = \"after\"\nrun = \"true\"\n",
                         "agents", "agents.toml"));
    auto h = host();
    h.claude_mode = "bypassPermissions";
    const auto plan = provision::make_plan(c, {"base", "agents"}, h);
    BOOST_REQUIRE_EQUAL(plan.steps.size(), 4u);
    BOOST_TEST(plan.steps[2].name == "agents.mode");
    const std::vector<std::pair<std::string, std::string>> env{{"M", "bypassPermissions"}};
    BOOST_TEST((plan.steps[2].env == env));
    const auto base = provision::bakeable_prefix(c, plan);
    std::vector<std::string> baked;
    for (const auto& s : base.steps) baked.push_back(s.name);
    BOOST_TEST(baked == (std::vector<std::string>{"base.packages", "agents.cli", "agents.after"}), boost::test_tools::per_element());
    // Another mode: only that step's hash changes (it runs again), the base stays the same.
    h.claude_mode = "auto";
    const auto other = provision::make_plan(c, {"base", "agents"}, h);
    BOOST_TEST(other.steps[2].hash != plan.steps[2].hash);
    BOOST_TEST(other.steps[1].hash == plan.steps[1].hash);
    BOOST_TEST(provision::bakeable_prefix(c, other).steps.size() == 3u);

    BOOST_TEST(test::message_of<config::config_error>([] { catalog::parse("[[step]]\nname = \"x\"\nrun = \"a\"\nbake = \"no\"\n", "p", "p.toml"); }) ==
               "p.toml:4:1: step[0].bake: expected a boolean, got \"no\"");
    // Without `bake = false` the project value is refused where it was written.
    BOOST_TEST(test::message_of<config::config_error>([] { catalog::parse("[[step]]\nname = \"x\"\nrun = \"a\"\nenv = { M = \"${claude.mode}\" }\n", "p", "p.toml"); }) ==
               "p.toml:4:9: step[0].env.M: ${git.*}, ${vm.shell} and ${claude.mode} need `bake = false` (on the profile or "
               "the step): a cached base is shared by every project");
}

namespace {

const provision::planned_step& step_named(const provision::plan& p, const std::string& name) {
    for (const auto& s : p.steps)
        if (s.name == name) return s;
    throw std::runtime_error("no step " + name);
}

// Runs a planned step's script (argv) on this host with `env` added: its exit status.
int run_script(const std::vector<std::string>& script, const std::vector<std::pair<std::string, std::string>>& env) {
    std::vector<std::string> argv{"env"};
    for (const auto& [k, v] : env) argv.push_back(k + "=" + v);
    argv.insert(argv.end(), script.begin(), script.end());
    try {
        machine::test::run_sync(argv);
        return 0;
    } catch (const std::runtime_error&) {
        return 1;
    }
}

} // namespace

// The built-in agents profile: Claude Code's permissions.defaultMode is the project's claude_mode
// (the step runs here, in a scratch HOME, with the env the plan gives it), bypass mode gets its
// consent flag, and the step stays out of the base; bubblewrap and socat are baked.
BOOST_AUTO_TEST_CASE(the_agents_profile_writes_the_projects_claude_mode) {
    const catalog c = catalog::builtin();
    const auto order = provision::resolve_profiles(c, {"agents"}, at("web.profiles"));
    auto h = host();
    const auto plan = provision::make_plan(c, order, h);
    const auto& settings = step_named(plan, "agents.claude-settings");
    BOOST_TEST(settings.user == "dev");
    BOOST_TEST(!settings.bake);
    const auto base = provision::bakeable_prefix(c, plan);
    for (const auto& s : base.steps) BOOST_TEST(s.name != "agents.claude-settings");
    const auto& sandbox = step_named(base, "agents.sandbox-packages");
    BOOST_TEST(sandbox.user == "root");
    BOOST_TEST(sandbox.run.back().find("bubblewrap socat") != std::string::npos, sandbox.run.back());

    test::temp_dir home;
    auto env_of = [&](const provision::planned_step& s) {
        auto env = s.env;
        env.emplace_back("HOME", home.path.string());
        return env;
    };
    auto settings_json = [&] {
        std::ifstream in(home.path / ".claude" / "settings.json");
        return nlohmann::json::parse(in);
    };
    // The default: auto.
    BOOST_TEST((settings.env == std::vector<std::pair<std::string, std::string>>{{"CLAUDE_MODE", "auto"}}));
    BOOST_TEST(run_script(settings.check, env_of(settings)) != 0);  // nothing written yet
    BOOST_REQUIRE(run_script(settings.run, env_of(settings)) == 0);
    BOOST_TEST(run_script(settings.check, env_of(settings)) == 0);
    auto json = settings_json();
    BOOST_TEST(json["permissions"]["defaultMode"] == "auto");
    BOOST_TEST(json["env"]["DISABLE_AUTOUPDATER"] == "1");
    BOOST_TEST(!json.contains("skipDangerousModePermissionPrompt"));

    // bypassPermissions: a new hash (the step runs again), the check sees the old mode, and the
    // user's own keys survive the merge.
    {
        std::ofstream(home.path / ".claude" / "settings.json")
            << R"J({"permissions": {"defaultMode": "auto", "allow": ["Bash(ls)"]}, "theme": "dark", "env": {"DISABLE_AUTOUPDATER": "1"}})J";
    }
    h.claude_mode = "bypassPermissions";
    const auto bypass_plan = provision::make_plan(c, order, h);
    const auto& bypass = step_named(bypass_plan, "agents.claude-settings");
    BOOST_TEST(bypass.hash != settings.hash);
    BOOST_TEST(run_script(bypass.check, env_of(bypass)) != 0);
    BOOST_REQUIRE(run_script(bypass.run, env_of(bypass)) == 0);
    BOOST_TEST(run_script(bypass.check, env_of(bypass)) == 0);
    json = settings_json();
    BOOST_TEST(json["permissions"]["defaultMode"] == "bypassPermissions");
    BOOST_TEST(json["skipDangerousModePermissionPrompt"] == true);
    BOOST_TEST(json["permissions"]["allow"][0] == "Bash(ls)");
    BOOST_TEST(json["theme"] == "dark");
    // And back to auto: the check notices, the run switches.
    BOOST_TEST(run_script(settings.check, env_of(settings)) != 0);
    BOOST_REQUIRE(run_script(settings.run, env_of(settings)) == 0);
    BOOST_TEST(settings_json()["permissions"]["defaultMode"] == "auto");
}

// The base profile writes the forges' keys machine ships (one table: machine/forge_keys.hpp) as
// the VM's system-wide known_hosts; the step is baked (the keys are the same for every project).
// Its script runs here against a scratch directory standing in for /etc/ssh.
BOOST_AUTO_TEST_CASE(the_base_profile_writes_the_shipped_forge_keys) {
    const catalog c = catalog::builtin();
    const auto plan = provision::make_plan(c, {"base"}, host());
    const auto base = provision::bakeable_prefix(c, plan);
    const auto& keys = step_named(base, "base.forge-host-keys");
    BOOST_TEST(keys.user == "root");
    BOOST_REQUIRE_EQUAL(keys.env.size(), 1u);
    BOOST_TEST(keys.env[0].first == "KNOWN_HOSTS");
    BOOST_TEST(keys.env[0].second == forge::known_hosts_text());
    BOOST_TEST(keys.env[0].second.find("github.com ssh-ed25519 ") != std::string::npos);

    test::temp_dir etc;
    auto relocated = [&](std::vector<std::string> argv) {
        std::string& script = argv.back();
        for (auto at = script.find("/etc/ssh"); at != std::string::npos; at = script.find("/etc/ssh", at))
            script.replace(at, 8, etc.path.string());
        return argv;
    };
    BOOST_TEST(run_script(relocated(keys.check), keys.env) != 0);
    BOOST_REQUIRE(run_script(relocated(keys.run), keys.env) == 0);
    BOOST_TEST(run_script(relocated(keys.check), keys.env) == 0);
    std::ifstream in(etc.path / "ssh_known_hosts");
    const std::string written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    BOOST_TEST(written == forge::known_hosts_text());
    // A tampered file is noticed and replaced.
    { std::ofstream(etc.path / "ssh_known_hosts", std::ios::app) << "github.com ssh-ed25519 AAAAevil\n"; }
    BOOST_TEST(run_script(relocated(keys.check), keys.env) != 0);
}


BOOST_AUTO_TEST_CASE(the_built_in_profiles_load_and_cover_the_default_set) {
    const catalog c = catalog::builtin();
    for (const auto& name : provision::default_profiles()) {
        BOOST_TEST_CONTEXT(name) {
            const auto* p = c.find(name);
            BOOST_REQUIRE(p);
            BOOST_TEST(!p->description.empty());
            BOOST_TEST(!p->steps.empty());
        }
    }
    // Each built-in profile whose steps fetch declares the hosts (for projects with an egress
    // allowlist): Debian's archive for the apt ones, the npm registry for node and the agents.
    using hosts = std::vector<std::string>;
    const hosts debian{"deb.debian.org", "security.debian.org"};
    for (const char* apt : {"base", "docker", "gh"}) BOOST_TEST(c.find(apt)->egress == debian, apt);
    for (const char* npm : {"node", "agents"}) BOOST_TEST(c.find(npm)->egress == hosts{"registry.npmjs.org"}, npm);
    for (const char* none : {"shell", "git-signing"}) BOOST_TEST(c.find(none)->egress.empty(), none);
    const auto declared = catalog::parse("egress = [\"*.example.com\"]\n[[step]]\nname = \"x\"\nrun = \"a\"\n", "p", "p.toml");
    BOOST_TEST(declared.egress == hosts{"*.example.com"}, boost::test_tools::per_element());
    // The default set plans without error, and only the per-project ones (the login shell,
    // git-signing) stay out of the base.
    const auto order = provision::resolve_profiles(c, provision::default_profiles(), at("default"));
    const auto plan = provision::make_plan(c, order, host());
    const auto base = provision::bakeable_prefix(c, plan);
    BOOST_TEST((std::find(base.profiles.begin(), base.profiles.end(), "git-signing") == base.profiles.end()));
    BOOST_TEST((std::find(base.profiles.begin(), base.profiles.end(), "shell") == base.profiles.end()));
    BOOST_TEST(base.profiles.size() == order.size() - 2);
}

BOOST_AUTO_TEST_CASE(user_profiles_add_to_and_replace_built_in_ones) {
    test::temp_dir dir;
    {
        std::ofstream(dir.path / "cypress.toml") << "requires = [\"base\"]\n[[step]]\nname = \"deps\"\nrun = \"true\"\n";
        std::ofstream(dir.path / "notes.txt") << "not a profile";
    }
    const catalog c = catalog::load(dir.path);
    BOOST_REQUIRE(c.find("cypress"));
    BOOST_TEST(c.find("cypress")->steps[0].name == "cypress.deps");
    BOOST_TEST(c.find("base"));
    BOOST_TEST(!c.find("notes"));
    {
        std::ofstream(dir.path / "broken.toml") << "[[step]]\nname = \"x\"\nrun = 3\n";
    }
    BOOST_TEST(test::message_of<config::config_error>([&] { catalog::load(dir.path); }) ==
               (dir.path / "broken.toml").string() + ":3:1: step[0].run: expected a string, got 3");
}

BOOST_AUTO_TEST_SUITE_END()
