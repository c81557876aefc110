// Which secret sets `machine secrets` renders (src/vm/secrets_plan.cpp): the host decides from
// the project's declarations; a VM's .envrc never makes the host read a set it did not declare.
#include <boost/test/unit_test.hpp>

#include "machine/error.hpp"
#include "machine/vm.hpp"

namespace vm = machine::vm;
namespace config = machine::config;
namespace pr = machine::protocol;

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
