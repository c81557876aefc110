// The config module: projects.toml and .machine.toml into structs, with exact error messages.
#include "machine/config.hpp"

#include <boost/test/unit_test.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <toml++/toml.h>

#include "error_message.hpp"

namespace fs = std::filesystem;
using machine::usage_error;
using namespace machine::config;

namespace {

// A host big enough that the resource defaults are not capped, so results do not depend on
// the machine running the tests.
const host_resources big_host{.cpus = 8, .memory_bytes = 32LL << 30};

const std::string name_rule =
    " (use a-z, 0-9 and hyphens, starting with a letter or digit, at most 63 characters)";
const std::string project_keys_list =
    "repos, profiles, shell, claude_mode, forward_agent, cpus, memory, disk, arch, ports, host_ports, egress, ca_certs, agent_keys, agent_auth, secrets, "
    "secrets_on_up, clone_timeout";

config parse(std::string_view text, const host_resources& host = big_host) {
    return parse_projects(text, "projects.toml", host);
}

// The message parse() fails with, or "(no error)".
std::string parse_error(std::string_view text) {
    return machine::test::message_of<config_error>([&] { parse(text); });
}

std::string resolve_error(const config& c, const std::string& name) {
    return machine::test::message_of<usage_error>([&] { c.resolve(name); });
}

bool has_raw_control(std::string_view s) {
    return std::any_of(s.begin(), s.end(), [](char c) {
        return static_cast<unsigned char>(c) < 0x20 || c == 0x7F;
    });
}

// A fresh directory under the system temp directory, removed afterwards.
struct temp_dir {
    fs::path path;
    temp_dir() {
        std::string pattern = (fs::temp_directory_path() / "machine-config-test-XXXXXX").string();
        path = ::mkdtemp(pattern.data());
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void write(const fs::path& path, std::string_view content) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << content;
}

void run(const std::string& command) { BOOST_REQUIRE_EQUAL(std::system(command.c_str()), 0); }

load_options options_in(const temp_dir& tmp, const fs::path& working_dir) {
    return {.config_dir = tmp.path / "config",
            .working_dir = working_dir,
            .search_stop = tmp.path,
            .host = big_host};
}

std::string load_error(const load_options& options) {
    return machine::test::message_of<config_error>([&] { load(options); });
}

} // namespace

BOOST_AUTO_TEST_SUITE(config_projects)

BOOST_AUTO_TEST_CASE(reads_every_project_key) {
    const config c = parse(R"(
[web]
repos = ["git@github.com:acme/web.git", "https://github.com/acme/api"]
profiles = ["cypress", "supabase-fly"]
shell = "bash"
forward_agent = false
cpus = 6
memory = "12GiB"
disk = 60
ports = [3000, 8080]
ca_certs = ["/etc/corp-ca.pem", "host"]
agent_keys = ["SHA256:abcDEF123+/="]
)");
    const project& web = c.projects.at("web");
    BOOST_TEST(web.name == "web");
    BOOST_TEST(web.repos == (std::vector<std::string>{"git@github.com:acme/web.git",
                                                      "https://github.com/acme/api"}),
               boost::test_tools::per_element());
    BOOST_TEST(web.profiles == (std::vector<std::string>{"cypress", "supabase-fly"}),
               boost::test_tools::per_element());
    BOOST_TEST(web.shell == "bash");
    BOOST_TEST(!web.forward_agent);
    BOOST_TEST(web.cpus == 6);
    BOOST_TEST(web.memory == "12GiB");
    BOOST_TEST(web.disk == "60GiB");
    BOOST_TEST((web.ports.mode == port_forwarding::policy::listed));
    BOOST_TEST(web.ports.ports == (std::vector<int>{3000, 8080}), boost::test_tools::per_element());
    BOOST_TEST(web.ca_certs == (std::vector<std::string>{"/etc/corp-ca.pem", "host"}),
               boost::test_tools::per_element());
    BOOST_TEST(web.agent_keys == (std::vector<std::string>{"SHA256:abcDEF123+/="}),
               boost::test_tools::per_element());
    BOOST_TEST(web.configured);
    BOOST_TEST(web.source == fs::path("projects.toml"));
    BOOST_TEST(c.projects_file_exists);
}

BOOST_AUTO_TEST_CASE(an_empty_table_takes_the_defaults) {
    const config c = parse(R"(
default_profile = "cypress"
default_shell = "bash"
ca_certs = ["/etc/corp-ca.pem"]

[blog]
)");
    const project& blog = c.projects.at("blog");
    BOOST_TEST(blog.repos.empty());
    BOOST_TEST(blog.profiles == (std::vector<std::string>{"cypress"}), boost::test_tools::per_element());
    BOOST_TEST(blog.shell == "bash");
    BOOST_TEST(blog.forward_agent);
    BOOST_TEST(blog.cpus == 4);
    BOOST_TEST(blog.memory == "8GiB");
    BOOST_TEST(blog.disk == "30GiB");
    BOOST_TEST((blog.ports.mode == port_forwarding::policy::all));
    BOOST_TEST(blog.ca_certs == (std::vector<std::string>{"/etc/corp-ca.pem"}),
               boost::test_tools::per_element());
    BOOST_TEST(blog.agent_keys.empty());
}

BOOST_AUTO_TEST_CASE(default_profile_may_be_a_list_and_an_explicit_empty_list_means_none) {
    const config c = parse(R"(
default_profile = ["cypress", "supabase-fly"]
[inherits]
[none]
profiles = []
)");
    BOOST_TEST(c.projects.at("inherits").profiles ==
                   (std::vector<std::string>{"cypress", "supabase-fly"}),
               boost::test_tools::per_element());
    BOOST_TEST(c.projects.at("none").profiles.empty());
    // Only a project without either key gets the built-in set; `[]` means none.
    BOOST_TEST(!c.projects.at("none").builtin_profiles);
    BOOST_TEST(!c.projects.at("inherits").builtin_profiles);
    // Where each name was written, for errors found later (an unknown profile).
    BOOST_TEST(c.projects.at("inherits").profile_origins ==
                   (std::vector<std::string>{"projects.toml:2:20: default_profile[0]", "projects.toml:2:31: default_profile[1]"}),
               boost::test_tools::per_element());
    BOOST_TEST(parse("[bare]\n").projects.at("bare").builtin_profiles);
    BOOST_TEST(parse("[own]\nprofiles = [\"node\"]\n").projects.at("own").profile_origins ==
                   (std::vector<std::string>{"projects.toml:2:13: own.profiles[0]"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(project_tables_may_come_before_settings_in_the_map) {
    // toml++ keeps keys sorted, so "a" is visited before "default_shell".
    const config c = parse("default_shell = \"bash\"\n[a]\n");
    BOOST_TEST(c.projects.at("a").shell == "bash");
}

BOOST_AUTO_TEST_CASE(resource_defaults_are_capped_by_the_host) {
    const config small = parse("[web]\n", {.cpus = 2, .memory_bytes = 7LL << 30});
    BOOST_TEST(small.projects.at("web").cpus == 2);
    BOOST_TEST(small.projects.at("web").memory == "3GiB");  // half of 7GiB, rounded down

    const config tiny = parse("[web]\n", {.cpus = 1, .memory_bytes = 1LL << 30});
    BOOST_TEST(tiny.projects.at("web").cpus == 1);
    BOOST_TEST(tiny.projects.at("web").memory == "1GiB");  // never below 1GiB

    const config huge = parse("[web]\n", {.cpus = 64, .memory_bytes = 256LL << 30});
    BOOST_TEST(huge.projects.at("web").cpus == 4);
    BOOST_TEST(huge.projects.at("web").memory == "8GiB");
}

BOOST_AUTO_TEST_CASE(malformed_toml_names_file_line_and_column) {
    BOOST_TEST(parse_error("[web]\ncpus = 4\nmemory = \n") ==
               "projects.toml:3:10: invalid TOML: Error while parsing key-value pair: expected "
               "value, saw '\\n'");
    BOOST_TEST(parse_error("[web\n") ==
               "projects.toml:1:5: invalid TOML: Error while parsing table header: expected ']', "
               "saw '\\n'");
}

BOOST_AUTO_TEST_CASE(wrong_types_name_the_key_path_and_show_the_value) {
    const std::pair<std::string, std::string> cases[] = {
        {"[web]\ncpus = \"four\"", "projects.toml:2:1: web.cpus: expected an integer, got \"four\""},
        {"[web]\ncpus = true", "projects.toml:2:1: web.cpus: expected an integer, got true"},
        {"[web]\ncpus = 2.5", "projects.toml:2:1: web.cpus: expected an integer, got 2.5"},
        {"[web]\nshell = 1", "projects.toml:2:1: web.shell: expected a string, got 1"},
        {"[web]\nforward_agent = \"yes\"",
         "projects.toml:2:1: web.forward_agent: expected a boolean, got \"yes\""},
        {"[web]\nrepos = \"git@github.com:acme/web.git\"",
         "projects.toml:2:1: web.repos: expected an array of strings, got "
         "\"git@github.com:acme/web.git\""},
        {"[web]\nrepos = [\"a\", 3]", "projects.toml:2:15: web.repos[1]: expected a string, got 3"},
        {"[web]\nprofiles = { a = 1 }",
         "projects.toml:2:1: web.profiles: expected an array of strings, got a table"},
        {"[web]\nca_certs = [[\"x\"]]",
         "projects.toml:2:13: web.ca_certs[0]: expected a string, got [\"x\"]"},
        {"[web]\nagent_keys = \"SHA256:abc\"",
         "projects.toml:2:1: web.agent_keys: expected an array of strings, got \"SHA256:abc\""},
        {"[web]\nmemory = true",
         "projects.toml:2:1: web.memory: expected a size like 8 or \"8GiB\" (KiB, MiB, GiB, TiB), "
         "got true"},
        {"[web]\nports = \"3000\"",
         "projects.toml:2:1: web.ports: expected true, false or an array of port numbers, got "
         "\"3000\""},
        {"default_shell = [\"zsh\"]",
         "projects.toml:1:1: default_shell: expected a string, got [\"zsh\"]"},
        {"default_profile = 3",
         "projects.toml:1:1: default_profile: expected a string or an array of strings, got 3"},
        {"ca_certs = \"host\"", "projects.toml:1:1: ca_certs: expected an array of strings, got \"host\""},
        {"[default_shell]", "projects.toml:1:2: default_shell: expected a string, got a table"},
    };
    for (const auto& [text, expected] : cases) {
        BOOST_TEST_CONTEXT(text) { BOOST_TEST(parse_error(text) == expected); }
    }
}

BOOST_AUTO_TEST_CASE(wrong_values_say_what_is_expected) {
    const std::pair<std::string, std::string> cases[] = {
        {"[web]\nshell = \"fish\"",
         "projects.toml:2:1: web.shell: expected \"zsh\" or \"bash\", got \"fish\""},
        {"default_shell = \"fish\"",
         "projects.toml:1:1: default_shell: expected \"zsh\" or \"bash\", got \"fish\""},
        {"[web]\ncpus = 0", "projects.toml:2:1: web.cpus: must be at least 1, got 0"},
        {"[web]\ncpus = -3", "projects.toml:2:1: web.cpus: must be at least 1, got -3"},
        {"[web]\ncpus = 100000", "projects.toml:2:1: web.cpus: must be at most 1024, got 100000"},
        {"[web]\nrepos = [\"\"]", "projects.toml:2:10: web.repos[0]: must not be empty"},
        {"[web]\nrepos = [\"-uhttps://evil\"]",
         "projects.toml:2:10: web.repos[0]: must not start with \"-\", got \"-uhttps://evil\""},
        {"[web]\nrepos = [\"git@x:a b.git\"]",
         "projects.toml:2:10: web.repos[0]: must not contain whitespace or control characters, "
         "got \"git@x:a b.git\""},
        {"[web]\nprofiles = [\"../x\"]",
         "projects.toml:2:13: web.profiles[0]: invalid profile name \"../x\" (use a-z, 0-9, \"-\" "
         "and \"_\", starting with a letter or digit)"},
        {"default_profile = \"Cypress\"",
         "projects.toml:1:1: default_profile: invalid profile name \"Cypress\" (use a-z, 0-9, \"-\" "
         "and \"_\", starting with a letter or digit)"},
        {"[web]\nca_certs = [\"\"]", "projects.toml:2:13: web.ca_certs[0]: must not be empty"},
        {"[web]\nagent_keys = [\"SHA256:abc\", \"MD5:aa:bb\"]",
         "projects.toml:2:29: web.agent_keys[1]: expected a key fingerprint like \"SHA256:...\", got "
         "\"MD5:aa:bb\""},
    };
    for (const auto& [text, expected] : cases) {
        BOOST_TEST_CONTEXT(text) { BOOST_TEST(parse_error(text) == expected); }
    }
}

BOOST_AUTO_TEST_CASE(unknown_project_key_suggests_the_closest) {
    BOOST_TEST(parse_error("default_shell = \"zsh\"\n\n[web]\ncpu = 4\n") ==
               "projects.toml:4:1: web.cpu: unknown key (did you mean \"cpus\"?)");
    BOOST_TEST(parse_error("[web]\nforward_agnet = true\n") ==
               "projects.toml:2:1: web.forward_agnet: unknown key (did you mean \"forward_agent\"?)");
}

BOOST_AUTO_TEST_CASE(unknown_project_key_without_a_close_match_lists_the_valid_keys) {
    BOOST_TEST(parse_error("[web]\nbanana = 1\n") ==
               "projects.toml:2:1: web.banana: unknown key; valid keys: " + project_keys_list);
    // A sub-table is an unknown key of its project, at the sub-table's key.
    BOOST_TEST(parse_error("[web]\n[web.extra]\nx = 1\n") ==
               "projects.toml:2:6: web.extra: unknown key; valid keys: " + project_keys_list);
}

BOOST_AUTO_TEST_CASE(unknown_top_level_keys) {
    BOOST_TEST(parse_error("default_shel = \"zsh\"\n") ==
               "projects.toml:1:1: default_shel: unknown key (did you mean \"default_shell\"?)");
    BOOST_TEST(parse_error("web = 3\n") ==
               "projects.toml:1:1: web: unknown key; valid keys: default_profile, default_shell, "
               "ca_certs");
    BOOST_TEST(parse_error("[[web]]\ncpus = 2\n") ==
               "projects.toml:1:3: web: expected a table ([name]), got an array of tables ([[name]])");
    BOOST_TEST(parse_error("cpus = 4\n") ==
               "projects.toml:1:1: cpus: unknown key; valid keys: default_profile, default_shell, "
               "ca_certs (project keys belong in a project's table, such as [web])");
}

BOOST_AUTO_TEST_CASE(invalid_project_names_point_at_the_table) {
    BOOST_TEST(parse_error("[Web]\n") == "projects.toml:1:2: invalid project name 'Web'" + name_rule);
    BOOST_TEST(parse_error("[\"../x\"]\ncpus = 2\n") ==
               "projects.toml:1:2: invalid project name '../x'" + name_rule);
    BOOST_TEST(parse_error("[ok]\n[\"a;rm -rf ~\"]\n") ==
               "projects.toml:2:2: invalid project name 'a;rm -rf ~'" + name_rule);
    // Key paths of a project with a name that is not a bare key are quoted.
    BOOST_TEST(parse_error("[\"a b\".x]\n").find("projects.toml:1:2: invalid project name 'a b'") == 0);
}

BOOST_AUTO_TEST_CASE(the_first_problem_in_file_order_is_reported) {
    // toml++ iterates keys sorted by name: alpha before zeta, cpus before shell.
    BOOST_TEST(parse_error("[zeta]\ncpus = \"x\"\n[alpha]\nmemory = \"bad\"\n") ==
               "projects.toml:2:1: zeta.cpus: expected an integer, got \"x\"");
    BOOST_TEST(parse_error("[web]\nshell = \"fish\"\ncpus = 0\n") ==
               "projects.toml:2:1: web.shell: expected \"zsh\" or \"bash\", got \"fish\"");
    BOOST_TEST(parse_error("[web]\nrepos = [\"-a\", 3]\n[web.x]\n") ==
               "projects.toml:2:10: web.repos[0]: must not start with \"-\", got \"-a\"");
}

BOOST_AUTO_TEST_CASE(messages_never_carry_raw_control_characters) {
    // TOML escapes put real control characters into values and keys.
    const std::string value_error = parse_error("[web]\nshell = \"\\u001b[31mred\\u0007\"\n");
    BOOST_TEST(value_error ==
               "projects.toml:2:1: web.shell: expected \"zsh\" or \"bash\", got "
               "\"\\u001B[31mred\\u0007\"");
    const std::string inputs[] = {
        "[web]\n\"\\u001b]0;owned\\u0007\" = 1\n",          // unknown key
        "[\"\\u001b[2Jx\"]\n",                               // project name
        "\"a\\u001bb\" = 1\n\"a\\u001bb\" = 2\n",            // toml++'s own description
        "[web]\nrepos = [\"x\\ny\"]\n",                      // newline in a value
        "[web]\nshell = \"\\u009b31m\"\n",                   // C1 control
    };
    for (const auto& input : inputs) {
        BOOST_TEST_CONTEXT(input) {
            const std::string message = parse_error(input);
            BOOST_TEST(message != "(no error)");
            BOOST_TEST(!has_raw_control(message));
            BOOST_TEST(message.find("\xC2\x9B") == std::string::npos);
        }
    }
    BOOST_TEST(parse_error("[web]\nrepos = [\"x\\ny\"]\n") ==
               "projects.toml:2:10: web.repos[0]: must not contain whitespace or control "
               "characters, got \"x\\ny\"");
}

BOOST_AUTO_TEST_CASE(long_values_are_shortened_in_messages) {
    const std::string long_value(500, 'x');
    const std::string message = parse_error("[web]\nshell = \"" + long_value + "\"\n");
    BOOST_TEST(message == "projects.toml:2:1: web.shell: expected \"zsh\" or \"bash\", got \"" +
                              std::string(60, 'x') + "...\"");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_sizes)

BOOST_AUTO_TEST_CASE(memory_and_disk_are_normalized) {
    const config c = parse(R"(
[a]
memory = 8
disk = "1.5GiB"
[b]
memory = "512MiB"
disk = "2TiB"
)");
    BOOST_TEST(c.projects.at("a").memory == "8GiB");
    BOOST_TEST(c.projects.at("a").disk == "1.5GiB");
    BOOST_TEST(c.projects.at("b").memory == "512MiB");
    BOOST_TEST(c.projects.at("b").disk == "2TiB");
}

BOOST_AUTO_TEST_CASE(bad_sizes_are_refused_with_the_accepted_forms) {
    const std::string hint = "expected a size like 8 or \"8GiB\" (KiB, MiB, GiB, TiB), got ";
    const std::pair<std::string, std::string> cases[] = {
        {"memory = \"8GB\"", "web.memory: " + hint + "\"8GB\""},
        {"memory = \"8 gigs\"", "web.memory: " + hint + "\"8 gigs\""},
        {"memory = -1", "web.memory: " + hint + "-1"},
        {"memory = true", "web.memory: " + hint + "true"},
        {"disk = 0", "web.disk: " + hint + "0"},
        {"disk = \"1.GiB\"", "web.disk: " + hint + "\"1.GiB\""},
        {"disk = 8.5", "web.disk: " + hint + "8.5"},
    };
    for (const auto& [line, expected] : cases) {
        BOOST_TEST_CONTEXT(line) {
            BOOST_TEST(parse_error("[web]\n" + line) == "projects.toml:2:1: " + expected);
        }
    }
}

BOOST_AUTO_TEST_CASE(normalize_size_accepts_only_lima_sizes) {
    BOOST_TEST(normalize_size("8").value_or("-") == "8GiB");
    BOOST_TEST(normalize_size("08").value_or("-") == "8GiB");
    BOOST_TEST(normalize_size("1.5GiB").value_or("-") == "1.5GiB");
    BOOST_TEST(normalize_size("512MiB").value_or("-") == "512MiB");
    BOOST_TEST(normalize_size("64KiB").value_or("-") == "64KiB");
    BOOST_TEST(normalize_size("8388607TiB").value_or("-") == "8388607TiB");  // 2^63 - 2^40 bytes
    for (const char* bad : {"", "0", "0GiB", "0.0MiB", "8GB", "8gib", "8 GiB", "-1", "1.GiB",
                            ".5GiB", "GiB", "8388608TiB", "99999999999999999999"}) {
        BOOST_TEST_CONTEXT(bad) { BOOST_TEST(!normalize_size(bad).has_value()); }
    }
}

BOOST_AUTO_TEST_CASE(size_bytes_counts_bytes) {
    BOOST_TEST(size_bytes("4GiB") == 4294967296LL);
    BOOST_TEST(size_bytes("1.5GiB") == 1610612736LL);
    BOOST_TEST(size_bytes("512MiB") == 536870912LL);
    BOOST_TEST(size_bytes("2TiB") == 2199023255552LL);
    BOOST_TEST(size_bytes("nonsense") == 0);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_ports)

BOOST_AUTO_TEST_CASE(ports_forms) {
    using policy = port_forwarding::policy;
    const config c = parse(R"(
[unset]
[all]
ports = true
[none]
ports = false
[listed]
ports = [3000, 8080, 65535, 1]
[empty]
ports = []
)");
    BOOST_TEST((c.projects.at("unset").ports.mode == policy::all));
    BOOST_TEST((c.projects.at("all").ports.mode == policy::all));
    BOOST_TEST((c.projects.at("none").ports.mode == policy::none));
    BOOST_TEST((c.projects.at("listed").ports.mode == policy::listed));
    BOOST_TEST(c.projects.at("listed").ports.ports == (std::vector<int>{3000, 8080, 65535, 1}),
               boost::test_tools::per_element());
    BOOST_TEST((c.projects.at("empty").ports.mode == policy::none));
}

BOOST_AUTO_TEST_CASE(bad_ports_point_at_the_element) {
    BOOST_TEST(parse_error("[web]\nports = [80, 0]\n") ==
               "projects.toml:2:14: web.ports[1]: expected a port from 1 to 65535, got 0");
    BOOST_TEST(parse_error("[web]\nports = [70000]\n") ==
               "projects.toml:2:10: web.ports[0]: expected a port from 1 to 65535, got 70000");
    BOOST_TEST(parse_error("[web]\nports = [\"80\"]\n") ==
               "projects.toml:2:10: web.ports[0]: expected an integer, got \"80\"");
    BOOST_TEST(parse_error("[web]\nports = 8080\n") ==
               "projects.toml:2:1: web.ports: expected true, false or an array of port numbers, got "
               "8080");
}

BOOST_AUTO_TEST_SUITE_END()

// What a VM may reach: host loopback ports, and an egress allowlist (absent: the open internet).
BOOST_AUTO_TEST_SUITE(config_network)

BOOST_AUTO_TEST_CASE(host_ports_and_egress_are_read_with_where_each_host_was_written) {
    const config c = parse(R"([open]
[web]
host_ports = [5432, 6379]
egress = ["github.com", "*.githubusercontent.com"]
[closed]
egress = []
)");
    const project& open = c.projects.at("open");
    BOOST_TEST(open.host_ports.empty());
    BOOST_TEST(!open.egress.has_value());  // the open internet
    const project& web = c.projects.at("web");
    BOOST_TEST(web.host_ports == (std::vector<int>{5432, 6379}), boost::test_tools::per_element());
    BOOST_REQUIRE(web.egress.has_value());
    BOOST_TEST(*web.egress == (std::vector<std::string>{"github.com", "*.githubusercontent.com"}),
               boost::test_tools::per_element());
    BOOST_TEST(web.egress_origins ==
                   (std::vector<std::string>{"projects.toml:4:11: web.egress[0]", "projects.toml:4:25: web.egress[1]"}),
               boost::test_tools::per_element());
    // Present and empty is an allowlist of nothing, not the open internet.
    BOOST_REQUIRE(c.projects.at("closed").egress.has_value());
    BOOST_TEST(c.projects.at("closed").egress->empty());
}

BOOST_AUTO_TEST_CASE(bad_host_ports_point_at_the_element) {
    BOOST_TEST(parse_error("[web]\nhost_ports = [5432, 0]\n") ==
               "projects.toml:2:21: web.host_ports[1]: expected a port from 1 to 65535, got 0");
    BOOST_TEST(parse_error("[web]\nhost_ports = [5432, 6379, 5432]\n") ==
               "projects.toml:2:27: web.host_ports[2]: port 5432 is listed twice");
    BOOST_TEST(parse_error("[web]\nhost_ports = true\n") ==
               "projects.toml:2:1: web.host_ports: expected an array of port numbers, got true");
}

BOOST_AUTO_TEST_CASE(an_egress_entry_that_is_no_host_pattern_is_refused_where_it_was_written) {
    for (const char* bad : {"10.0.0.1", "https://github.com", "git hub.com", "*github.com", "localhost", ""}) {
        BOOST_TEST_CONTEXT(bad) {
            const std::string message = parse_error(std::string("[web]\negress = [\"github.com\", \"") + bad + "\"]\n");
            BOOST_TEST(message.rfind("projects.toml:2:25: web.egress[1]: ", 0) == 0u, message);
        }
    }
    BOOST_TEST(parse_error("[web]\negress = \"github.com\"\n") ==
               "projects.toml:2:1: web.egress: expected an array of strings, got \"github.com\"");
}

// Claude Code's permission mode per project: "auto" unless the project says "bypassPermissions";
// anything else is refused where it was written, naming both allowed values.
BOOST_AUTO_TEST_CASE(claude_mode_is_auto_by_default_or_bypass_permissions_and_nothing_else) {
    const config c = parse("[web]\n[yolo]\nclaude_mode = \"bypassPermissions\"\n[calm]\nclaude_mode = \"auto\"\n");
    BOOST_TEST(c.projects.at("web").claude_mode == "auto");
    BOOST_TEST(c.projects.at("yolo").claude_mode == "bypassPermissions");
    BOOST_TEST(c.projects.at("calm").claude_mode == "auto");
    BOOST_TEST(c.resolve("other").claude_mode == "auto");  // a project without a table
    const std::string expected = "expected \"auto\" (full autonomy with Claude's own safety checks) or "
                                 "\"bypassPermissions\" (no checks), got ";
    BOOST_TEST(parse_error("[web]\nclaude_mode = \"default\"\n") ==
               "projects.toml:2:1: web.claude_mode: " + expected + "\"default\"");
    // Case matters: Claude Code reads the exact value.
    BOOST_TEST(parse_error("[web]\ncpus = 2\nclaude_mode = \"BypassPermissions\"\n") ==
               "projects.toml:3:1: web.claude_mode: " + expected + "\"BypassPermissions\"");
    BOOST_TEST(parse_error("[web]\nclaude_mode = true\n") == "projects.toml:2:1: web.claude_mode: expected a string, got true");
    BOOST_TEST(parse_error("[web]\nclaude-mode = \"auto\"\n") ==
               "projects.toml:2:1: web.claude-mode: unknown key (did you mean \"claude_mode\"?)");

    // A repository's .machine.toml may ask for "auto", never switch Claude's checks off (the
    // code it comes with would run unchecked); a hostile value reaches the message escaped.
    temp_dir tmp;
    write(tmp.path / "app" / ".machine.toml", "claude_mode = \"auto\"\n");
    BOOST_TEST(load(options_in(tmp, tmp.path / "app")).resolve("app").claude_mode == "auto");
    write(tmp.path / "app" / ".machine.toml", "cpus = 2\nclaude_mode = \"bypassPermissions\"\n");
    BOOST_TEST(load_error(options_in(tmp, tmp.path / "app")) ==
               (tmp.path / "app" / ".machine.toml").string() +
                   ":2:1: claude_mode: a repository's .machine.toml cannot turn off Claude's permission checks; "
                   "set claude_mode = \"bypassPermissions\" in projects.toml");
    write(tmp.path / "app" / ".machine.toml", "claude_mode = \"auto\\u001b]0;pwned\\u0007\"\n");
    const std::string hostile = load_error(options_in(tmp, tmp.path / "app"));
    BOOST_TEST(hostile.rfind((tmp.path / "app" / ".machine.toml").string() + ":1:1: claude_mode: expected \"auto\"", 0) == 0u,
               hostile);
    BOOST_TEST(!has_raw_control(hostile), hostile);
}

// A cloned repository's .machine.toml is as hostile as the rest of it: the list and each entry
// are bounded, and what it wrote reaches a message escaped.
BOOST_AUTO_TEST_CASE(a_repository_cannot_hand_machine_an_unbounded_or_hostile_allowlist) {
    temp_dir tmp;
    std::string many = "egress = [";
    for (int i = 0; i < 257; ++i) many += "\"h" + std::to_string(i) + ".example.com\", ";
    many += "]\n";
    write(tmp.path / "app" / ".machine.toml", many);
    const std::string too_many = load_error(options_in(tmp, tmp.path / "app"));
    BOOST_TEST(too_many == (tmp.path / "app" / ".machine.toml").string() + ":1:1: egress: at most 256 entries, got 257");

    write(tmp.path / "app" / ".machine.toml", "egress = [\"" + std::string(300, 'a') + ".com\"]\n");
    const std::string too_long = load_error(options_in(tmp, tmp.path / "app"));
    BOOST_TEST(too_long.find("egress[0]: longer than 255 bytes") != std::string::npos, too_long);

    write(tmp.path / "app" / ".machine.toml", "egress = [\"evil\\u001b]0;pwned\\u0007.com\"]\n");
    const std::string hostile = load_error(options_in(tmp, tmp.path / "app"));
    BOOST_TEST(hostile.find("egress[0]: ") != std::string::npos, hostile);
    BOOST_TEST(!has_raw_control(hostile), hostile);

    write(tmp.path / "app" / ".machine.toml", "egress = [\"api.example.com\"]\nhost_ports = [5432]\n");
    const project p = load(options_in(tmp, tmp.path / "app")).resolve("app");
    BOOST_TEST(p.egress.value_or(std::vector<std::string>{}) == (std::vector<std::string>{"api.example.com"}),
               boost::test_tools::per_element());
    BOOST_TEST(p.host_ports == (std::vector<int>{5432}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_resolve)

BOOST_AUTO_TEST_CASE(invalid_names_are_refused_with_the_name_rule) {
    const config c = parse("[web-2]\ncpus = 2\n");
    for (const char* bad : {"../x", "a;rm -rf ~", "UPPER", "-lead", ""}) {
        BOOST_TEST_CONTEXT(bad) {
            BOOST_TEST(resolve_error(c, bad) ==
                       "invalid project name '" + std::string(bad) + "'" + name_rule);
        }
    }
    // A name from the command line that would end the message's line, or hide part of it, is
    // shown escaped.
    BOOST_TEST(resolve_error(c, "web\nmachine: all good") == "invalid project name 'web\\nmachine: all good'" + name_rule);
    BOOST_TEST(resolve_error(c, "a\u202eb") == "invalid project name 'a\\u202eb'" + name_rule);
    BOOST_CHECK_THROW(c.resolve("UPPER"), usage_error);
    BOOST_TEST(c.resolve("web-2").cpus == 2);
    BOOST_TEST(c.resolve("web-2").configured);
}

BOOST_AUTO_TEST_CASE(an_unconfigured_name_resolves_to_the_defaults) {
    const config c = parse("default_shell = \"bash\"\ndefault_profile = \"cypress\"\n[web]\n");
    const project p = c.resolve("scratch");
    BOOST_TEST(p.name == "scratch");
    BOOST_TEST(!p.configured);
    BOOST_TEST(p.source.empty());
    BOOST_TEST(p.shell == "bash");
    BOOST_TEST(p.profiles == (std::vector<std::string>{"cypress"}), boost::test_tools::per_element());
    BOOST_TEST(p.cpus == 4);
    BOOST_TEST(p.memory == "8GiB");
    BOOST_TEST(p.disk == "30GiB");
}

BOOST_AUTO_TEST_CASE(missing_projects_toml_gives_the_ambient_default_project) {
    temp_dir tmp;
    const config c = load(options_in(tmp, tmp.path));
    BOOST_TEST(!c.projects_file_exists);
    BOOST_TEST(c.projects_file == tmp.path / "config" / "projects.toml");
    BOOST_TEST(c.projects.empty());
    BOOST_TEST(!c.local_file.has_value());
    BOOST_TEST(c.ambient_project() == "default");
    const project p = c.resolve(c.ambient_project());
    BOOST_TEST(p.name == "default");
    BOOST_TEST(!p.configured);
    BOOST_TEST(p.shell == "zsh");
    BOOST_TEST(p.profiles.empty());
    BOOST_TEST(p.builtin_profiles);
    BOOST_TEST(p.cpus == 4);
    BOOST_TEST(p.memory == "8GiB");
    BOOST_TEST(p.ca_certs == (std::vector<std::string>{"host"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(projects_toml_is_read_from_the_config_dir) {
    temp_dir tmp;
    write(tmp.path / "config" / "projects.toml", "[default]\ncpus = 2\n");
    const config c = load(options_in(tmp, tmp.path));
    BOOST_TEST(c.projects_file_exists);
    BOOST_TEST(c.resolve("default").cpus == 2);
    BOOST_TEST(c.resolve("default").source == tmp.path / "config" / "projects.toml");
}

BOOST_AUTO_TEST_CASE(errors_name_the_projects_file_path) {
    temp_dir tmp;
    const fs::path file = tmp.path / "config" / "projects.toml";
    write(file, "[web]\ncpus = \"four\"\n");
    BOOST_TEST(load_error(options_in(tmp, tmp.path)) ==
               file.string() + ":2:1: web.cpus: expected an integer, got \"four\"");
}

BOOST_AUTO_TEST_CASE(an_unreadable_projects_toml_is_an_error) {
    temp_dir tmp;
    const fs::path file = tmp.path / "config" / "projects.toml";
    fs::create_directories(file);  // readable by anyone, root included, yet not a file
    BOOST_TEST(load_error(options_in(tmp, tmp.path)) == "cannot read " + file.string() + ": Is a directory");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_local)

BOOST_AUTO_TEST_CASE(found_by_searching_upward_and_named_after_its_directory) {
    temp_dir tmp;
    const fs::path project_dir = tmp.path / "Sites" / "My App";
    write(project_dir / ".machine.toml", "");
    fs::create_directories(project_dir / "src" / "deep");
    const config c = load(options_in(tmp, project_dir / "src" / "deep"));
    BOOST_TEST(c.local_file.value_or("") == project_dir / ".machine.toml");
    BOOST_TEST(c.local_project.value_or("") == "my-app");
    BOOST_TEST(c.ambient_project() == "my-app");
    const project p = c.resolve("my-app");
    BOOST_TEST(p.configured);
    BOOST_TEST(p.source == project_dir / ".machine.toml");
    BOOST_TEST(p.repos.empty());  // not a git checkout
    BOOST_TEST(p.cpus == 4);
    BOOST_TEST(!c.local_shadows_table);
}

BOOST_AUTO_TEST_CASE(the_search_stops_at_search_stop) {
    temp_dir tmp;
    write(tmp.path / "outer" / ".machine.toml", "name = \"outer\"\n");
    fs::create_directories(tmp.path / "outer" / "inner" / "x");
    load_options options = options_in(tmp, tmp.path / "outer" / "inner" / "x");
    options.search_stop = tmp.path / "outer" / "inner";
    BOOST_TEST(!load(options).local_file.has_value());
    options.search_stop = tmp.path / "outer/";  // a trailing separator is the same directory
    BOOST_TEST(load(options).local_project.value_or("") == "outer");
    BOOST_TEST(find_local_file(tmp.path / "outer" / "inner", tmp.path).value_or("") ==
               tmp.path / "outer" / ".machine.toml");
}

BOOST_AUTO_TEST_CASE(secrets_are_sources_in_file_order_each_with_its_set) {
    const config c = parse(R"(
[web]
secrets_on_up = true

[[web.secrets]]
op_environment = "p6x3sxq2abc"

[[web.secrets]]
op_reference = "op://Private/Stripe/credential"
variable = "STRIPE_KEY"
set = "p6x3sxq2abc"

[[web.secrets]]
dotenv_file = "~/.config/web/dev.env"

[[web.secrets]]
command = ["pass", "show", "web/env"]
set = "tools_1"

[api]
secrets = [{ dotenv_file = "/srv/api.env", set = "shared" }]
)");
    const project web = c.resolve("web");
    BOOST_TEST(web.secrets_on_up);
    BOOST_REQUIRE(web.secrets.size() == 4u);
    using kind = secret_kind;
    BOOST_TEST((web.secrets[0].kind == kind::op_environment));
    BOOST_TEST(web.secrets[0].value == "p6x3sxq2abc");
    BOOST_TEST(web.secrets[0].set == "p6x3sxq2abc");  // the Environment ID names its set
    BOOST_TEST(web.secrets[0].origin == "projects.toml:5:1: web.secrets[0]");
    BOOST_TEST((web.secrets[1].kind == kind::op_reference));
    BOOST_TEST(web.secrets[1].value == "op://Private/Stripe/credential");
    BOOST_TEST(web.secrets[1].variable == "STRIPE_KEY");
    BOOST_TEST(web.secrets[1].set == "p6x3sxq2abc");
    BOOST_TEST((web.secrets[2].kind == kind::dotenv_file));
    BOOST_TEST(web.secrets[2].value == "~/.config/web/dev.env");
    BOOST_TEST(web.secrets[2].set == "web");  // other sources: the project's name
    BOOST_TEST((web.secrets[3].kind == kind::command));
    BOOST_TEST(web.secrets[3].argv == (std::vector<std::string>{"pass", "show", "web/env"}),
               boost::test_tools::per_element());
    BOOST_TEST(web.secrets[3].set == "tools_1");

    const project api = c.resolve("api");
    BOOST_TEST(!api.secrets_on_up);
    BOOST_REQUIRE(api.secrets.size() == 1u);
    BOOST_TEST(api.secrets[0].set == "shared");
    BOOST_TEST(c.resolve("other").secrets.empty());
}

BOOST_AUTO_TEST_CASE(bad_secrets_name_the_entry_and_the_key) {
    const std::string variable_rule =
        "expected a variable name (letters, digits and \"_\", not starting with a digit; not UID, EUID, PPID, "
        "BASHOPTS, SHELLOPTS, BASH_VERSINFO or _), got ";
    const std::string one_source =
        ": give exactly one of op_environment, op_reference (with variable), dotenv_file, command";
    const std::pair<std::string, std::string> cases[] = {
        {"[web]\nsecrets = \"x\"",
         "projects.toml:2:1: web.secrets: expected an array of tables ([[web.secrets]]), got \"x\""},
        {"[web]\nsecrets = [1]",
         "projects.toml:2:12: web.secrets[0]: expected a table ([[...secrets]] or { op_environment = \"...\" }), got 1"},
        {"[[web.secrets]]\nset = \"x\"", "projects.toml:1:1: web.secrets[0]: names no source" + one_source},
        {"[[web.secrets]]\ndotenv_file = \"a\"\ncommand = [\"b\"]",
         "projects.toml:1:1: web.secrets[0]: names more than one source" + one_source},
        {"[[web.secrets]]\nop_reference = \"op://v/i/f\"",
         "projects.toml:1:1: web.secrets[0]: op_reference needs `variable`, the name the value gets in the VM"},
        {"[[web.secrets]]\ndotenv_file = \"a\"\nvariable = \"A\"",
         "projects.toml:1:1: web.secrets[0]: `variable` goes only with op_reference (the other sources name their "
         "own variables)"},
        {"[[web.secrets]]\nop_environment = \"My-Env\"",
         "projects.toml:2:1: web.secrets[0].op_environment: expected a 1Password Environment ID (lowercase letters "
         "and digits, as 1Password's Copy ID gives it), got \"My-Env\""},
        {"[[web.secrets]]\nop_reference = \"vault/item\"\nvariable = \"A\"",
         "projects.toml:2:1: web.secrets[0].op_reference: expected a 1Password secret reference like "
         "\"op://vault/item/field\", got \"vault/item\""},
        {"[[web.secrets]]\nop_reference = \"op://v/i/f\"\nvariable = \"1A\"",
         "projects.toml:3:1: web.secrets[0].variable: " + variable_rule + "\"1A\""},
        {"[[web.secrets]]\nop_reference = \"op://v/i/f\"\nvariable = \"UID\"",
         "projects.toml:3:1: web.secrets[0].variable: " + variable_rule + "\"UID\""},
        {"[[web.secrets]]\ndotenv_file = \"a\"\nset = \"../etc\"",
         "projects.toml:3:1: web.secrets[0].set: invalid set name \"../etc\" (1-64 of a-z, 0-9, \"_\" and \"-\", "
         "starting with a letter or digit)"},
        {"[[web.secrets]]\ncommand = []",
         "projects.toml:2:1: web.secrets[0].command: expected a program and its arguments, such as [\"pass\", "
         "\"show\", \"web/env\"]; the program must not be empty"},
        {"[[web.secrets]]\ndotenv_file = \"\"", "projects.toml:2:1: web.secrets[0].dotenv_file: must not be empty"},
        {"[[web.secrets]]\ndotenv_file = \"a\"\n[[web.secrets]]\ndotenv_flie = \"b\"",
         "projects.toml:4:1: web.secrets[1].dotenv_flie: unknown key (did you mean \"dotenv_file\"?)"},
        {"[web]\nsecrets_on_up = 1", "projects.toml:2:1: web.secrets_on_up: expected a boolean, got 1"},
        {"[[secrets]]\ndotenv_file = \"a\"",
         "projects.toml:1:3: secrets: expected a table ([name]), got an array of tables ([[name]]); a project's "
         "secrets go in [[<project>.secrets]]"},
    };
    for (const auto& [text, expected] : cases) {
        BOOST_TEST_CONTEXT(text) { BOOST_TEST(parse_error(text) == expected); }
    }
}

// clone_timeout: the durations profiles' step timeouts take, 30 minutes when absent.
BOOST_AUTO_TEST_CASE(clone_timeout_is_a_duration_of_at_most_a_day) {
    BOOST_TEST(parse("[web]\n").projects.at("web").clone_timeout.count() == 30 * 60);
    BOOST_TEST(parse("[web]\nclone_timeout = \"45m\"").projects.at("web").clone_timeout.count() == 45 * 60);
    BOOST_TEST(parse("[web]\nclone_timeout = \"90s\"").projects.at("web").clone_timeout.count() == 90);
    BOOST_TEST(parse("[web]\nclone_timeout = \"24h\"").projects.at("web").clone_timeout.count() == 24 * 3600);
    const std::string expected = "expected a duration such as \"90s\", \"45m\" or \"1h\" (at most 24h), got ";
    const std::vector<std::pair<std::string, std::string>> cases{
        {"[web]\nclone_timeout = \"30\"", "projects.toml:2:1: web.clone_timeout: " + expected + "\"30\""},
        {"[web]\nclone_timeout = \"0m\"", "projects.toml:2:1: web.clone_timeout: " + expected + "\"0m\""},
        {"[web]\nclone_timeout = \"25h\"", "projects.toml:2:1: web.clone_timeout: " + expected + "\"25h\""},
        {"[web]\nclone_timeout = \"10 m\"", "projects.toml:2:1: web.clone_timeout: " + expected + "\"10 m\""},
        {"[web]\ncpus = 2\nclone_timeout = 1800", "projects.toml:3:1: web.clone_timeout: expected a string, got 1800"},
    };
    for (const auto& [text, message] : cases) {
        BOOST_TEST_CONTEXT(text) { BOOST_TEST(parse_error(text) == message); }
    }
    BOOST_TEST(parse_duration("1h30m").value_or(std::chrono::seconds(0)).count() == 5400);
    BOOST_TEST(!parse_duration("").has_value());
    BOOST_TEST(!parse_duration("5d").has_value());
    BOOST_TEST(parse_duration("90s").value_or(std::chrono::seconds(0)).count() == 90);
    BOOST_TEST(!parse_duration("10").has_value());  // a unit is required
    BOOST_TEST(!parse_duration("0s").has_value());  // zero is no timeout
}

BOOST_AUTO_TEST_CASE(keys_and_an_explicit_name) {
    temp_dir tmp;
    write(tmp.path / "checkout" / ".machine.toml", R"(
name = "api"
repos = ["git@github.com:acme/api.git"]
shell = "bash"
forward_agent = false
cpus = 8
memory = "16GiB"
disk = 60
ports = [8080]
secrets_on_up = true
clone_timeout = "1h30m"
[[secrets]]
op_reference = "op://Private/api/token"
variable = "API_TOKEN"
)");
    const config c = load(options_in(tmp, tmp.path / "checkout"));
    BOOST_TEST(c.ambient_project() == "api");
    const project p = c.resolve("api");
    BOOST_TEST(p.repos == (std::vector<std::string>{"git@github.com:acme/api.git"}),
               boost::test_tools::per_element());
    BOOST_TEST(p.shell == "bash");
    BOOST_TEST(!p.forward_agent);
    BOOST_TEST(p.cpus == 8);
    BOOST_TEST(p.memory == "16GiB");
    BOOST_TEST(p.disk == "60GiB");
    BOOST_TEST(p.ports.ports == (std::vector<int>{8080}), boost::test_tools::per_element());
    BOOST_TEST(p.secrets_on_up);
    BOOST_REQUIRE(p.secrets.size() == 1u);
    BOOST_TEST(p.secrets[0].set == "api");  // the name given in the file, not the directory's
    BOOST_TEST(p.clone_timeout.count() == 90 * 60);
    BOOST_TEST(p.secrets[0].origin == (tmp.path / "checkout" / ".machine.toml").string() + ":12:1: secrets[0]");
}

BOOST_AUTO_TEST_CASE(a_repository_file_names_ca_certs_inside_the_repository_only) {
    temp_dir tmp;
    const fs::path file = tmp.path / "app" / ".machine.toml";
    const load_options options = options_in(tmp, tmp.path / "app");
    const std::pair<std::string, std::string> refused[] = {
        {"~/.mitmproxy/mitmproxy-ca.pem", ":1:13: ca_certs[0]: a repository's .machine.toml may name \"host\" or "
                                          "files inside the repository, got \"~/.mitmproxy/mitmproxy-ca.pem\""},
        {"/etc/ssl/private/corp.pem", ":1:13: ca_certs[0]: a repository's .machine.toml may name \"host\" or files "
                                      "inside the repository, got \"/etc/ssl/private/corp.pem\""},
        {"certs/../../x.pem", ":1:13: ca_certs[0]: a repository's .machine.toml may name files inside the "
                              "repository only, got \"certs/../../x.pem\""},
    };
    for (const auto& [entry, expected] : refused) {
        write(file, "ca_certs = [\"" + entry + "\"]\n");
        BOOST_TEST(load_error(options) == file.string() + expected);
    }
    write(file, "ca_certs = [\"host\", \"certs/corp.pem\"]\n");
    const project p = load(options).resolve("app");
    BOOST_TEST(p.ca_certs == (std::vector<std::string>{"host", "certs/corp.pem"}), boost::test_tools::per_element());
    BOOST_TEST(p.from_repository);
    // projects.toml is the user's own: any path there.
    BOOST_TEST(!load(options_in(tmp, tmp.path)).resolve("default").from_repository);
}

BOOST_AUTO_TEST_CASE(a_repository_file_cannot_run_or_read_secrets_on_the_host) {
    temp_dir tmp;
    const fs::path file = tmp.path / "app" / ".machine.toml";
    const load_options options = options_in(tmp, tmp.path / "app");
    write(file, "[[secrets]]\nop_environment = \"abc\"\n[[secrets]]\ncommand = [\"sh\", \"-c\", \"curl evil\"]\n");
    BOOST_TEST(load_error(options) == file.string() +
                                          ":3:1: secrets[1]: command secrets run or read on this computer, so a "
                                          "repository's .machine.toml cannot declare them; put this entry in projects.toml");
    write(file, "[[secrets]]\ndotenv_file = \"~/.aws/credentials\"\n");
    BOOST_TEST(load_error(options) == file.string() +
                                          ":1:1: secrets[0]: dotenv_file secrets run or read on this computer, so a "
                                          "repository's .machine.toml cannot declare them; put this entry in projects.toml");
}

BOOST_AUTO_TEST_CASE(errors_use_flat_key_paths) {
    temp_dir tmp;
    const fs::path file = tmp.path / "app" / ".machine.toml";
    const load_options options = options_in(tmp, tmp.path / "app");
    write(file, "cpus = \"four\"\n");
    BOOST_TEST(load_error(options) == file.string() + ":1:1: cpus: expected an integer, got \"four\"");
    write(file, "\ncpu = 2\n");
    BOOST_TEST(load_error(options) == file.string() + ":2:1: cpu: unknown key (did you mean \"cpus\"?)");
    write(file, "default_shell = \"bash\"\n");
    BOOST_TEST(load_error(options) == file.string() +
                                          ":1:1: default_shell: unknown key; valid keys: name, " +
                                          project_keys_list);
    write(file, "name = \"UPPER\"\n");
    BOOST_TEST(load_error(options) == file.string() + ":1:1: name: invalid project name 'UPPER'" + name_rule);
    write(file, "[web]\n");
    BOOST_TEST(load_error(options) == file.string() + ":1:2: web: unknown key; valid keys: name, " +
                                          project_keys_list);
    write(file, "name = \n");
    BOOST_TEST(load_error(options) == file.string() +
                                          ":1:8: invalid TOML: Error while parsing key-value pair: "
                                          "expected value, saw '\\n'");
}

BOOST_AUTO_TEST_CASE(a_directory_without_a_usable_name_needs_name_set) {
    temp_dir tmp;
    const fs::path dir = tmp.path / "___";
    write(dir / ".machine.toml", "cpus = 2\n");
    BOOST_TEST(load_error(options_in(tmp, dir)) ==
               (dir / ".machine.toml").string() + ": cannot derive a project name from directory \"" +
                   dir.string() + "\"; set name in .machine.toml");
    write(dir / ".machine.toml", "name = \"fine\"\n");
    BOOST_TEST(load(options_in(tmp, dir)).local_project.value_or("") == "fine");
}

BOOST_AUTO_TEST_CASE(slugs_squash_runs_and_trim_hyphens) {
    temp_dir tmp;
    const std::pair<std::string, std::string> cases[] = {
        {"--Hello,  World!--", "hello-world"}, {"web_2.0", "web-2-0"}, {"caf\xC3\xA9 app", "caf-app"},
        {std::string(70, 'a'), std::string(63, 'a')},
    };
    for (const auto& [dir_name, expected] : cases) {
        BOOST_TEST_CONTEXT(dir_name) {
            write(tmp.path / dir_name / ".machine.toml", "");
            BOOST_TEST(load(options_in(tmp, tmp.path / dir_name)).local_project.value_or("") == expected);
        }
    }
}

BOOST_AUTO_TEST_CASE(repos_default_to_the_origin_remote) {
    temp_dir tmp;
    const fs::path repo = tmp.path / "shop";
    run("git init -q " + repo.string());
    run("git -C " + repo.string() + " remote add origin git@github.com:acme/shop.git");
    write(repo / ".machine.toml", "");
    fs::create_directories(repo / "src");
    const config c = load(options_in(tmp, repo / "src"));
    BOOST_TEST(c.resolve("shop").repos == (std::vector<std::string>{"git@github.com:acme/shop.git"}),
               boost::test_tools::per_element());

    // Explicit repos win, and an explicit empty list means none.
    write(repo / ".machine.toml", "repos = []\n");
    BOOST_TEST(load(options_in(tmp, repo)).resolve("shop").repos.empty());
    write(repo / ".machine.toml", "repos = [\"https://example.com/other.git\"]\n");
    BOOST_TEST(load(options_in(tmp, repo)).resolve("shop").repos ==
                   (std::vector<std::string>{"https://example.com/other.git"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(origin_is_read_from_worktrees_and_quoted_config_values) {
    // A linked worktree: `.git` is a file pointing into the main repository's .git, whose
    // `commondir` leads back to the shared config.
    temp_dir tmp;
    write(tmp.path / "main" / ".git" / "config", R"([core]
	bare = false
[remote "upstream"]
	url = https://example.com/upstream.git
[Remote "origin"]
	fetch = +refs/heads/*:refs/remotes/origin/*
	URL = "https://example.com/first.git"
	url = "https://example.com/with;semicolon.git" ; the last one wins
[remote "Origin"]
	url = https://example.com/wrong-case.git
)");
    write(tmp.path / "main" / ".git" / "worktrees" / "feature" / "commondir", "../..\n");
    write(tmp.path / "feature" / ".git", "gitdir: ../main/.git/worktrees/feature\n");
    write(tmp.path / "feature" / ".machine.toml", "");
    const config c = load(options_in(tmp, tmp.path / "feature"));
    BOOST_TEST(c.resolve("feature").repos ==
                   (std::vector<std::string>{"https://example.com/with;semicolon.git"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(an_unusable_origin_url_is_an_error) {
    temp_dir tmp;
    write(tmp.path / "app" / ".git" / "config", "[remote \"origin\"]\n\turl = -oProxyCommand=x\n");
    write(tmp.path / "app" / ".machine.toml", "");
    BOOST_TEST(load_error(options_in(tmp, tmp.path / "app")) ==
               (tmp.path / "app" / ".git" / "config").string() +
                   ": remote.origin.url: must not start with \"-\", got \"-oProxyCommand=x\"");
}

BOOST_AUTO_TEST_CASE(the_local_file_replaces_a_table_of_the_same_name) {
    temp_dir tmp;
    write(tmp.path / "config" / "projects.toml", R"(
default_shell = "bash"
[web]
cpus = 2
repos = ["git@github.com:acme/web.git"]
[api]
cpus = 3
)");
    write(tmp.path / "web" / ".machine.toml", "memory = \"4GiB\"\n");
    const config c = load(options_in(tmp, tmp.path / "web"));
    BOOST_TEST(c.local_shadows_table);
    BOOST_TEST(c.ambient_project() == "web");
    const project web = c.resolve("web");
    BOOST_TEST(web.source == tmp.path / "web" / ".machine.toml");
    BOOST_TEST(web.memory == "4GiB");
    BOOST_TEST(web.cpus == 4);          // the table's cpus is not merged in
    BOOST_TEST(web.repos.empty());      // nor its repos
    BOOST_TEST(web.shell == "bash");    // settings still give the defaults
    BOOST_TEST(c.resolve("api").cpus == 3);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config_examples)

// The shipped examples: valid as they are (all comments), and valid with every example line
// (`#` directly followed by TOML, unlike prose comments `# ...`) uncommented.
std::string read_example(const char* name) {
    std::ifstream in(fs::path(MACHINE_SOURCE_DIR) / "templates" / name, std::ios::binary);
    BOOST_REQUIRE(in);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string uncomment_examples(const std::string& text) {
    std::string out;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        if (line.size() > 1 && line[0] == '#' && line[1] != ' ') line.erase(0, 1);
        out += line + "\n";
    }
    return out;
}

BOOST_AUTO_TEST_CASE(projects_example_parses_with_and_without_its_examples) {
    const std::string text = read_example("projects.toml.example");
    BOOST_TEST(parse(text).projects.empty());
    const config c = parse(uncomment_examples(text));
    BOOST_TEST(c.projects.size() == 3u);
    BOOST_TEST(c.projects.at("wallet").repos.size() == 3u);
    BOOST_TEST(c.projects.at("wallet").memory == "16GiB");
    BOOST_TEST(c.projects.at("blog").profiles == (std::vector<std::string>{"base", "node", "agents", "git-signing"}),
               boost::test_tools::per_element());
    BOOST_TEST(!c.projects.at("blog").builtin_profiles);
    BOOST_TEST(c.projects.at("playground").shell == "bash");
}

BOOST_AUTO_TEST_CASE(machine_example_parses_with_and_without_its_examples) {
    const std::string text = read_example("machine.toml.example");
    temp_dir tmp;
    const fs::path file = tmp.path / "Example Repo" / ".machine.toml";
    write(file, text);
    BOOST_TEST(load(options_in(tmp, file.parent_path())).local_project.value_or("") == "example-repo");
    write(file, uncomment_examples(text));
    const config c = load(options_in(tmp, file.parent_path()));
    BOOST_TEST(c.local_project.value_or("") == "my-app");
    BOOST_TEST(c.resolve("my-app").cpus == 8);
    BOOST_TEST(c.resolve("my-app").disk == "60GiB");
}

BOOST_AUTO_TEST_SUITE_END()

// `machine create`'s side of the config module: the rules it checks answers with are the
// loader's, the table it writes is serialized by toml++ and loads back, and projects.toml keeps
// every byte it had.
BOOST_AUTO_TEST_SUITE(config_create)

project_draft full_draft() {
    return {.name = "web",
            .repos = {"git@github.com:acme/web.git", "https://github.com/acme/api.git"},
            .profiles = std::vector<std::string>{"base", "node"},
            .shell = "bash",
            .cpus = 6,
            .memory = "12GiB",
            .disk = "1.5TiB"};
}

std::string read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string add_error(const fs::path& file, const project_draft& d) {
    return machine::test::message_of<config_error>([&] { add_project(file, d); });
}

BOOST_AUTO_TEST_CASE(the_rules_are_the_loaders) {
    // What the loader says of a value in the file is what create says of the same answer.
    BOOST_TEST(parse_error("[w]\nrepos = [\"-x\"]\n") == "projects.toml:2:10: w.repos[0]: " + repo_problem("-x"));
    BOOST_TEST(parse_error("[w]\nrepos = [\"ext::sh\"]\n") == "projects.toml:2:10: w.repos[0]: " + repo_problem("ext::sh"));
    BOOST_TEST(parse_error("[w]\nprofiles = [\"../x\"]\n") == "projects.toml:2:13: w.profiles[0]: " + profile_problem("../x"));
    BOOST_TEST(parse_error("[w]\nshell = \"fish\"\n") == "projects.toml:2:1: w.shell: " + shell_problem("fish"));
    BOOST_TEST(parse_error("[w]\ncpus = 0\n") == "projects.toml:2:1: w.cpus: " + cpus_problem(0));
    BOOST_TEST(parse_error("[w]\ncpus = 5000\n") == "projects.toml:2:1: w.cpus: " + cpus_problem(5000));
    BOOST_TEST(parse_error("[w]\nmemory = \"8GB\"\n") == "projects.toml:2:1: w.memory: " + size_problem("8GB"));
    BOOST_TEST(parse_error("[w]\narch = \"arm64\"\n") == "projects.toml:2:1: w.arch: " + arch_problem("arm64"));
    BOOST_TEST(parse_error("[w]\narch = 64\n").find("projects.toml:2:1: w.arch: ") == 0);
    BOOST_TEST(arch_problem("aarch64").empty());
    BOOST_TEST(arch_problem("x86_64").empty());
    BOOST_TEST(parse("[w]\narch = \"aarch64\"\n").projects.at("w").arch.value_or("") == "aarch64");
    BOOST_TEST(!parse("[w]\ncpus = 2\n").projects.at("w").arch);
    for (const auto* fine : {"git@github.com:a/b.git", "https://h/x.git"}) BOOST_TEST(repo_problem(fine).empty());
    BOOST_TEST(shell_problem("zsh").empty());
    BOOST_TEST(cpus_problem(1).empty());
    BOOST_TEST(size_problem("512MiB").empty());
    BOOST_TEST(size_problem("8").empty());
}

BOOST_AUTO_TEST_CASE(a_table_loads_back_with_the_values_written) {
    const std::string text = project_table_text(full_draft());
    BOOST_TEST(text == "[web]\n"
                       "repos = [ \"git@github.com:acme/web.git\", \"https://github.com/acme/api.git\" ]\n"
                       "profiles = [ \"base\", \"node\" ]\n"
                       "shell = \"bash\"\n"
                       "cpus = 6\n"
                       "memory = \"12GiB\"\n"
                       "disk = \"1.5TiB\"\n");
    const project p = parse(text).projects.at("web");
    const project_draft d = full_draft();
    BOOST_TEST(p.repos == d.repos, boost::test_tools::per_element());
    BOOST_TEST(p.profiles == *d.profiles, boost::test_tools::per_element());
    BOOST_TEST(p.shell == "bash");
    BOOST_TEST(p.cpus == 6);
    BOOST_TEST(p.memory == "12GiB");
    BOOST_TEST(p.disk == "1.5TiB");
    // What is left out is not written, and keeps following the defaults.
    const std::string bare = project_table_text({.name = "blog"});
    BOOST_TEST(bare == "[blog]\nrepos = []\n");
    const config c = parse("default_shell = \"bash\"\n" + bare);
    BOOST_TEST(c.projects.at("blog").shell == "bash");
    BOOST_TEST(c.projects.at("blog").builtin_profiles);
    BOOST_TEST(c.projects.at("blog").cpus == 4);
    // `profiles = []` is written: none, even with a default_profile.
    project_draft none{.name = "bare"};
    none.profiles = std::vector<std::string>{};
    BOOST_TEST(parse("default_profile = \"node\"\n" + project_table_text(none)).projects.at("bare").profiles.empty());
    BOOST_CHECK_THROW(project_table_text({.name = "Bad]"}), usage_error);
}

// Quotes, backslashes, newlines and `]` in a value stay inside its string: no key or table of
// the user's making appears, and a TOML parser reads each value back byte for byte.
BOOST_AUTO_TEST_CASE(hostile_values_are_escaped_strings_that_read_back) {
    const std::vector<std::string> hostile{"x\"]\n[evil]\ncpus = 99\n#", "a'b\\c]d\"\"\"", "\n[[web.secrets]]\ncommand = [\"sh\"]",
                                           "caf\xc3\xa9\x01\x1b[2J\x7f"};
    const project_draft d{.name = "web", .repos = hostile, .shell = hostile[0]};
    const std::string text = project_table_text(d);
    BOOST_TEST(std::count(text.begin(), text.end(), '\n') == 3);  // [web], repos, shell
    BOOST_TEST(std::all_of(text.begin(), text.end(), [](char c) { return c == '\n' || (c >= 0x20 && c < 0x7f); }));
    const toml::table doc = toml::parse(text);
    BOOST_TEST(doc.size() == 1u);
    const toml::table& web = *doc["web"].as_table();
    BOOST_TEST(web.size() == 2u);
    const toml::array& repos = *web["repos"].as_array();
    BOOST_REQUIRE(repos.size() == hostile.size());
    for (std::size_t i = 0; i < hostile.size(); ++i) BOOST_TEST(repos[i].value<std::string>().value() == hostile[i]);
    BOOST_TEST(web["shell"].value<std::string>().value() == hostile[0]);
    // The loader reads them as those strings too, and refuses them by its own rules.
    BOOST_TEST(parse_error(text).rfind("projects.toml:2:11: web.repos[0]: must not contain whitespace", 0) == 0, parse_error(text));
    // A value that passes the rules yet holds TOML's special characters is added and loads back.
    temp_dir tmp;
    const fs::path file = tmp.path / "projects.toml";
    const project_draft odd{.name = "odd", .repos = {"git@h:a/b\"c]d#e'f\\g.git"}};
    add_project(file, odd);
    const config c = load_projects_file(file, big_host);
    BOOST_TEST(c.projects.size() == 1u);
    BOOST_TEST(c.projects.at("odd").repos == odd.repos, boost::test_tools::per_element());
}

// Several `machine create` at once, each adding its own projects: every table ends up in the
// file (without the lock, two read the same text and the later rename drops the other's table).
BOOST_AUTO_TEST_CASE(concurrent_adds_lose_no_project) {
    temp_dir tmp;
    const fs::path file = tmp.path / "projects.toml";
    add_project(file, {.name = "first"});
    constexpr int writers = 6, each = 15;
    std::vector<pid_t> pids;
    for (int w = 0; w < writers; ++w) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            int status = 0;
            try {
                for (int i = 0; i < each; ++i)
                    add_project(file, {.name = "w" + std::to_string(w) + "-p" + std::to_string(i)});
            } catch (...) {
                status = 1;
            }
            ::_exit(status);
        }
        BOOST_REQUIRE(pid > 0);
        pids.push_back(pid);
    }
    for (const pid_t pid : pids) {
        int status = -1;
        ::waitpid(pid, &status, 0);
        BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    }
    const config c = load_projects_file(file, big_host);
    BOOST_TEST(c.projects.size() == static_cast<std::size_t>(1 + writers * each));
}

BOOST_AUTO_TEST_CASE(a_new_projects_toml_opens_with_the_documented_header) {
    temp_dir tmp;
    const fs::path file = tmp.path / "config" / "machine" / "projects.toml";
    const added_project added = add_project(file, full_draft());
    BOOST_TEST(added.created);
    BOOST_TEST(added.file == file);
    const std::string text = read_all(file);
    BOOST_TEST(text == std::string(projects_example()) + "\n" + project_table_text(full_draft()));
    BOOST_TEST(text.rfind("# machine: your projects, one VM each.", 0) == 0);
    const project p = load_projects_file(file, big_host).projects.at("web");
    BOOST_TEST(p.cpus == 6);
    BOOST_TEST(p.repos == full_draft().repos, boost::test_tools::per_element());
    BOOST_TEST(std::distance(fs::directory_iterator(file.parent_path()), fs::directory_iterator{}) == 1);  // no leftovers
}

BOOST_AUTO_TEST_CASE(an_existing_projects_toml_keeps_every_byte_and_its_mode) {
    temp_dir tmp;
    const fs::path file = tmp.path / "projects.toml";
    // No newline at the end, a comment, settings, a project, CRLF: all kept as they are.
    const std::string before = "# mine\r\ndefault_shell = \"bash\"\n\n[blog]\nrepos = []  # later";
    write(file, before);
    fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
    const added_project added = add_project(file, {.name = "web", .repos = {"https://h/web.git"}});
    BOOST_TEST(!added.created);
    const std::string after = read_all(file);
    BOOST_TEST(after.substr(0, before.size()) == before);
    BOOST_TEST(after.substr(before.size()) == "\n\n[web]\nrepos = [ \"https://h/web.git\" ]\n");
    BOOST_TEST(static_cast<unsigned>(fs::status(file).permissions() & fs::perms::mask) == 0600u);
    const config c = load_projects_file(file, big_host);
    BOOST_TEST(c.projects.size() == 2u);
    BOOST_TEST(c.projects.at("web").shell == "bash");  // the file's default_shell, not written
    BOOST_TEST(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator{}) == 1);
}

BOOST_AUTO_TEST_CASE(never_over_an_existing_project_nor_into_a_file_that_does_not_load) {
    temp_dir tmp;
    const fs::path file = tmp.path / "projects.toml";
    for (const std::string before : {"[web]\ncpus = 2\n", "[[web.secrets]]\nop_environment = \"abc\"\n"}) {
        write(file, before);
        BOOST_TEST(add_error(file, full_draft()) ==
                   file.string() + ": there is a project [web] already; edit it there, or choose another name");
        BOOST_TEST(read_all(file) == before);
    }
    // A broken file: its own error (the user fixes it first), and it is left as it was.
    write(file, "[blog\n");
    BOOST_TEST(add_error(file, full_draft()).rfind(file.string() + ":1:", 0) == 0, add_error(file, full_draft()));
    BOOST_TEST(read_all(file) == "[blog\n");
    BOOST_TEST(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator{}) == 1);
}

BOOST_AUTO_TEST_CASE(a_symlinked_projects_toml_stays_a_link) {
    temp_dir tmp;
    const fs::path target = tmp.path / "dotfiles" / "projects.toml";
    write(target, "[blog]\n");
    const fs::path file = tmp.path / "config" / "projects.toml";
    fs::create_directories(file.parent_path());
    fs::create_symlink("../dotfiles/projects.toml", file);
    const added_project added = add_project(file, {.name = "web"});
    BOOST_TEST(fs::is_symlink(file));
    BOOST_TEST(added.file == file.parent_path() / "../dotfiles/projects.toml");
    BOOST_TEST(read_all(target) == "[blog]\n\n[web]\nrepos = []\n");
}

// `agent_auth`: which host logins (machine login) a project's VM may receive; absent = every one.
BOOST_AUTO_TEST_CASE(agent_auth_lists_known_tools_once) {
    const config cfg = parse("[web]\nagent_auth = [\"claude\", \"gh\"]\n[none]\nagent_auth = []\n[blog]\n");
    BOOST_TEST(cfg.projects.at("web").agent_auth.has_value());
    BOOST_TEST(*cfg.projects.at("web").agent_auth == (std::vector<std::string>{"claude", "gh"}),
               boost::test_tools::per_element());
    BOOST_TEST(cfg.projects.at("none").agent_auth->empty());
    BOOST_TEST(!cfg.projects.at("blog").agent_auth.has_value());  // default: every tool logged in
    const std::pair<const char*, const char*> bad[] = {
        {"[web]\nagent_auth = \"claude\"",
         "projects.toml:2:1: web.agent_auth: expected an array of strings, got \"claude\""},
        {"[web]\nagent_auth = [\"claude\", \"copilot\"]",
         "projects.toml:2:25: web.agent_auth[1]: unknown tool \"copilot\" (expected one of \"claude\", \"codex\", \"gh\")"},
        {"[web]\nagent_auth = [\"gh\", \"gh\"]", "projects.toml:2:21: web.agent_auth[1]: \"gh\" is listed twice"},
        {"[web]\nagent_auth = [1]", "projects.toml:2:15: web.agent_auth[0]: expected a string, got 1"},
        {"[web]\nagent_auth = [\"\\u001b[31mx\"]", "web.agent_auth[0]: unknown tool \"\\u001B[31mx\""},
    };
    for (const auto& [text, message] : bad)
        BOOST_TEST_CONTEXT(text) { BOOST_TEST(parse_error(text).find(message) != std::string::npos, parse_error(text)); }
    // A project's own sets may not take the names that carry the agents' logins in the VM.
    BOOST_TEST(parse_error("[web]\n[[web.secrets]]\nset = \"machine-cred-gh-1\"\nop_reference = \"op://v/i/f\"\n"
                           "variable = \"X\"\n")
                   .find("web.secrets[0].set: set name \"machine-cred-gh-1\" is reserved") != std::string::npos,
               parse_error("[web]\n[[web.secrets]]\nset = \"machine-cred-gh-1\"\nop_reference = \"op://v/i/f\"\nvariable = \"X\"\n"));
}

// A cloned repository's .machine.toml may only narrow the logins projects.toml lets its VM
// receive: without agent_auth it gets the table's list, not every tool; a longer list is cut
// down to the table's. Without a table (or agent_auth in it), projects.toml allows every tool.
BOOST_AUTO_TEST_CASE(a_repository_may_only_narrow_agent_auth) {
    temp_dir tmp;
    const auto auth_of = [&](const std::string& table, const std::string& local) {
        write(tmp.path / "config" / "projects.toml", table);
        write(tmp.path / "app" / ".machine.toml", local);
        return load(options_in(tmp, tmp.path / "app")).resolve("app").agent_auth;
    };
    using list = std::vector<std::string>;
    const std::string claude_only = "[app]\nagent_auth = [\"claude\"]\n";
    BOOST_TEST((auth_of(claude_only, "") == list{"claude"}));
    BOOST_TEST((auth_of(claude_only, "agent_auth = [\"claude\", \"codex\", \"gh\"]\n") == list{"claude"}));
    BOOST_TEST((auth_of(claude_only, "agent_auth = [\"gh\"]\n") == list{}));
    BOOST_TEST((auth_of(claude_only, "agent_auth = []\n") == list{}));
    BOOST_TEST((auth_of("[app]\nagent_auth = [\"claude\", \"gh\"]\n", "agent_auth = [\"gh\"]\n") == list{"gh"}));
    BOOST_TEST((auth_of("[app]\ncpus = 1\n", "agent_auth = [\"gh\"]\n") == list{"gh"}));
    BOOST_TEST(!auth_of("[app]\ncpus = 1\n", "").has_value());
    BOOST_TEST(!auth_of("", "").has_value());
}

BOOST_AUTO_TEST_SUITE_END()
