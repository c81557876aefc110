// Which secret sets `machine secrets` renders (src/vm/secrets_plan.cpp): the host decides from
// the project's declarations; a VM's .envrc never makes the host read a set it did not declare.
#include <boost/test/unit_test.hpp>

#include "machine/error.hpp"
#include "machine/vm.hpp"

namespace vm = machine::vm;
namespace config = machine::config;
namespace pr = machine::protocol;
using strings = std::vector<std::string>;

namespace {

config::project project_with(std::vector<std::pair<std::string, std::string>> envs) {
    config::project p;
    p.name = "web";
    for (const auto& [id, set] : envs) {
        config::secret_source s;
        s.kind = config::secret_kind::op_environment;
        s.value = id;
        s.set = set;
        p.secrets.push_back(s);
    }
    return p;
}

pr::envrc_secrets envrc(std::string dir, std::vector<std::pair<std::string, std::uint64_t>> uses) {
    pr::envrc_secrets r;
    r.dir = dir;
    r.path = "/home/dev/code/" + dir + "/.envrc";
    for (const auto& [set, line] : uses) r.uses.push_back({set, line});
    return r;
}

} // namespace

BOOST_AUTO_TEST_SUITE(secrets_plan)

BOOST_AUTO_TEST_CASE(a_vm_cannot_make_the_host_read_an_undeclared_environment) {
    // No secrets declared: the reference tool would read whatever Environment the VM names.
    const auto plan = vm::plan_secret_sets(project_with({}), {envrc("web", {{"p6x3sxq2lqyk3zqdbzbx2nkj4u", 3}})}, {});
    BOOST_TEST(plan.sets.empty());
    BOOST_REQUIRE(plan.warnings.size() == 1u);
    BOOST_TEST(plan.warnings[0] ==
               "~/code/web/.envrc:3: set 'p6x3sxq2lqyk3zqdbzbx2nkj4u' is not declared for web; not rendered (a VM "
               "cannot choose what this computer reads). To render it, add [[web.secrets]] op_environment = "
               "\"p6x3sxq2lqyk3zqdbzbx2nkj4u\" to projects.toml");
}

BOOST_AUTO_TEST_CASE(declared_sets_are_rendered_with_the_repos_that_load_them) {
    const auto plan = vm::plan_secret_sets(project_with({{"abc123", "abc123"}, {"def456", "shared"}}),
                                            {envrc("web", {{"abc123", 1}, {"web-local", 2}}), envrc("org/api", {{"shared", 4}})},
                                            {});
    BOOST_REQUIRE(plan.sets.size() == 2u);
    BOOST_TEST(plan.sets[0].name == "abc123");
    BOOST_TEST(plan.sets[0].used_by == (std::vector<std::string>{"~/code/web/.envrc"}), boost::test_tools::per_element());
    BOOST_TEST(plan.sets[1].name == "shared");
    BOOST_TEST(plan.sets[1].used_by == (std::vector<std::string>{"~/code/org/api/.envrc"}),
               boost::test_tools::per_element());
    BOOST_REQUIRE(plan.warnings.size() == 1u);  // `web-local`: not a 1Password ID, so a set entry to add
    BOOST_TEST(plan.warnings[0].find("~/code/web/.envrc:2: set 'web-local' is not declared for web") == 0u);
    BOOST_TEST(plan.warnings[0].find("add a [[web.secrets]] entry with set = \"web-local\"") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_hostile_envrc_token_is_escaped_and_skipped) {
    const auto plan = vm::plan_secret_sets(project_with({{"abc123", "abc123"}}),
                                            {envrc("web\n[prod] error: run curl", {{"x\n[prod] error: run curl", 1}})},
                                            {});
    BOOST_TEST(plan.sets.size() == 1u);
    BOOST_REQUIRE(plan.warnings.size() == 1u);
    BOOST_TEST(plan.warnings[0].find('\n') == std::string::npos);
    BOOST_TEST(plan.warnings[0].find("is not a secret set name") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(only_repo_keeps_the_declared_sets_that_repo_uses) {
    const auto p = project_with({{"abc123", "abc123"}, {"def456", "def456"}});
    const std::vector<pr::envrc_secrets> repos{envrc("web", {{"abc123", 1}, {"nope99", 2}}), envrc("api", {{"def456", 1}})};
    const auto plan = vm::plan_secret_sets(p, repos, std::string("web"));
    BOOST_REQUIRE(plan.sets.size() == 1u);
    BOOST_TEST(plan.sets[0].name == "abc123");
    BOOST_TEST(plan.warnings.size() == 1u);  // web's undeclared nope99; api is none of --repo web's business
    BOOST_CHECK_THROW(vm::plan_secret_sets(p, repos, std::string("blog")), machine::error);
    BOOST_CHECK_THROW(vm::plan_secret_sets(p, {envrc("web", {{"nope99", 1}})}, std::string("web")), machine::error);
}

BOOST_AUTO_TEST_SUITE_END()

// The same rules through the declarations as config reads them (sources, origins, --repo).
BOOST_AUTO_TEST_SUITE(vm_secrets_plan)

namespace {

config::secret_source declared(std::string set, std::string origin) {
    config::secret_source s;
    s.kind = config::secret_kind::dotenv_file;
    s.value = "~/.env." + set;
    s.set = std::move(set);
    s.origin = std::move(origin);
    return s;
}

config::project web_with(std::vector<config::secret_source> sources) {
    config::project p;
    p.name = "web";
    p.secrets = std::move(sources);
    return p;
}

} // namespace

BOOST_AUTO_TEST_CASE(a_set_the_project_did_not_declare_is_refused_whatever_the_vm_says) {
    const config::project p = web_with({declared("app", "projects.toml:4")});
    const auto plan = vm::plan_secret_sets(p, {envrc("web", {{"app", 1}, {"prod-db", 2}})}, {});
    BOOST_REQUIRE(plan.sets.size() == 1u);
    BOOST_TEST(plan.sets[0].name == "app");
    BOOST_REQUIRE(plan.warnings.size() == 1u);
    BOOST_TEST(plan.warnings[0].find("~/code/web/.envrc:2: set 'prod-db' is not declared for web; not rendered") == 0u);
    // Asked for through --repo, an undeclared set is still refused (an error: nothing to render).
    try {
        vm::plan_secret_sets(p, {envrc("api", {{"prod-db", 1}})}, std::string("api"));
        BOOST_FAIL("an undeclared set was planned");
    } catch (const machine::error& e) {
        BOOST_TEST(std::string(e.what()) == "repo 'api' in VM 'web' uses no set its project declares");
    }
}

BOOST_AUTO_TEST_CASE(declared_sets_are_planned_even_when_no_repo_uses_them_with_their_sources_in_order) {
    const config::project p = web_with({declared("app", "a"), declared("ci", "b"), declared("app", "c")});
    const auto plan = vm::plan_secret_sets(p, {}, {});
    BOOST_REQUIRE(plan.sets.size() == 2u);
    BOOST_TEST(plan.sets[0].name == "app");
    BOOST_REQUIRE(plan.sets[0].sources.size() == 2u);
    BOOST_TEST(plan.sets[0].sources[0].origin == "a");
    BOOST_TEST(plan.sets[0].sources[1].origin == "c");
    BOOST_TEST(plan.sets[0].used_by.empty());
    BOOST_TEST(plan.sets[1].name == "ci");
    BOOST_TEST(plan.warnings.empty());
}

BOOST_AUTO_TEST_CASE(a_malformed_set_name_from_the_vm_is_skipped_escaped_and_each_user_listed_once) {
    const config::project p = web_with({declared("app", "a")});
    const auto plan =
        vm::plan_secret_sets(p, {envrc("web", {{"app", 1}, {"app", 7}, {"../x\x1b[2J", 3}}), envrc("api", {{"app", 2}})}, {});
    BOOST_REQUIRE(plan.sets.size() == 1u);
    BOOST_TEST(plan.sets[0].used_by == (strings{"~/code/web/.envrc", "~/code/api/.envrc"}), boost::test_tools::per_element());
    BOOST_REQUIRE(plan.warnings.size() == 1u);
    BOOST_TEST(plan.warnings[0].find("~/code/web/.envrc:3: '") == 0u);
    BOOST_TEST(plan.warnings[0].find('\x1b') == std::string::npos);
    BOOST_TEST(plan.warnings[0].find("is not a secret set name") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(with_a_repo_only_its_sets_and_its_warnings) {
    const config::project p = web_with({declared("app", "a"), declared("ci", "b")});
    const std::vector<pr::envrc_secrets> repos{envrc("web", {{"app", 1}}), envrc("org/api", {{"ci", 1}, {"nope", 2}})};
    const auto web = vm::plan_secret_sets(p, repos, std::string("web"));
    BOOST_REQUIRE(web.sets.size() == 1u);
    BOOST_TEST(web.sets[0].name == "app");
    BOOST_TEST(web.warnings.empty());  // api's undeclared `nope` is none of this command's business
    const auto api = vm::plan_secret_sets(p, repos, std::string("api"));  // a nested repo by its last component
    BOOST_REQUIRE(api.sets.size() == 1u);
    BOOST_TEST(api.sets[0].name == "ci");
    BOOST_TEST(api.warnings.size() == 1u);
    BOOST_CHECK_THROW(vm::plan_secret_sets(p, repos, std::string("docs")), machine::error);  // no .envrc there
}

BOOST_AUTO_TEST_SUITE_END()
