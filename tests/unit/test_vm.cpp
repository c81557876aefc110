// The workflows (src/vm) on a fake Lima (fake_lima_driver): which limactl calls bring-up, down and
// destroy make for a VM in each state, the events they emit, the decision to clone from a cached
// base, and which secret sets are planned. No limactl, git or ssh is started (spawn_detached's
// test forks a child whose exec fails, on purpose).
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>

#include "machine/async.hpp"

#include "audit_tail.hpp"
#include "bake.hpp"
#include "detached.hpp"
#include "fake_lima_driver.hpp"
#include "instance_edits.hpp"
#include "machine/error.hpp"
#include "machine/render.hpp"
#include "machine/vm.hpp"
#include "test_support.hpp"

namespace vm = machine::vm;
namespace lima = machine::lima;
namespace config = machine::config;
namespace fs = std::filesystem;
using machine::test::co_run;
using machine::test::fake_vm_context;
using strings = std::vector<std::string>;

namespace {

using state_dir = machine::test::state_dir;

// A project without repos or agent forwarding (nothing to check on the host, no agent to probe).
vm::up_target target(const std::string& name, std::string disk = "100GiB") {
    vm::up_target t;
    t.project.name = name;
    t.project.configured = true;
    t.project.forward_agent = false;
    t.project.disk = std::move(disk);
    return t;
}

// A target with one step that goes into a cached base.
vm::up_target with_base(vm::up_target t) {
    machine::provision::planned_step s;
    s.name = "node.install";
    s.profile = "node";
    s.hash = "4f2a";
    t.base.profiles = {"node"};
    t.base.steps = {s};
    return t;
}

bool contains(const strings& lines, const std::string& line) {
    return std::find(lines.begin(), lines.end(), line) != lines.end();
}

} // namespace

BOOST_AUTO_TEST_SUITE(vm_bring_up)

BOOST_AUTO_TEST_CASE(a_new_vm_is_created_from_its_rendered_template_by_one_start) {
    state_dir state;
    fake_vm_context f;
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));

    const fs::path tmpl = state.of("web") / "lima.yaml";
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "start_new web " + tmpl.string()}),
               boost::test_tools::per_element());
    BOOST_TEST(fs::exists(tmpl));
    // Its first connection pins its host key; the limactl calls reach no SSH agent.
    BOOST_TEST(vm::new_vm_key_expected("web"));
    BOOST_REQUIRE(f.lima.state().environments.size() == 1u);
    BOOST_TEST(f.lima.state().environments[0].unset == strings{"SSH_AUTH_SOCK"}, boost::test_tools::per_element());
    BOOST_TEST(f.events->lines() == (strings{"step.started web create+boot", "vm.state web running",
                                             "step.finished web create+boot ok", "vm.done web ready"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_stopped_vm_is_only_started) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped);
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));

    BOOST_TEST(f.lima.state().calls == (strings{"list web", "start web"}), boost::test_tools::per_element());
    BOOST_TEST(!vm::new_vm_key_expected("web"));  // its pin (if any) stays
    BOOST_TEST(f.events->lines() == (strings{"step.started web boot", "vm.state web running",
                                             "step.finished web boot ok", "vm.done web ready"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(the_host_agents_boot_events_become_vm_states) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped);
    lima::ha_event booting;
    booting.ssh_local_port = 60022;
    lima::ha_event running;
    running.running = true;
    f.lima.state().boot_events = {booting, running};
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));

    BOOST_TEST(f.events->lines() == (strings{"step.started web boot", "vm.state web booting ssh on 127.0.0.1:60022",
                                             "vm.state web running", "step.finished web boot ok", "vm.done web ready"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_running_vm_is_left_alone) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::running);
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));

    BOOST_TEST(f.lima.state().calls == strings{"list web"}, boost::test_tools::per_element());
    BOOST_TEST(f.events->lines() == (strings{"vm.state web running already running; nothing to do", "vm.done web ready"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_broken_vm_is_stopped_forcibly_then_started) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::broken).errors = {"the host agent is gone"};
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));

    BOOST_TEST(f.lima.state().calls == (strings{"list web", "stop web --force", "start web"}),
               boost::test_tools::per_element());
    BOOST_TEST(f.events->lines().front() ==
               "message web warning the VM is broken (the host agent is gone); stopping it forcibly before starting");
    BOOST_TEST((f.lima.state().instances["web"].state == lima::status::running));
}

BOOST_AUTO_TEST_CASE(a_stopped_vm_whose_forward_agent_changed_is_edited_before_it_starts) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped).forward_agent = true;
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));  // forward_agent = false

    BOOST_TEST(f.lima.state().calls == (strings{"list web", "edit web .ssh.forwardAgent = false", "start web"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_stopped_vm_with_the_same_forward_agent_is_not_edited) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped).forward_agent = false;
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));

    BOOST_TEST(f.lima.state().calls == (strings{"list web", "start web"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_failed_start_fails_the_bring_up_without_a_done_event) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped);
    f.lima.state().failing = {"start"};
    BOOST_CHECK_THROW(co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr)), lima::command_error);
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "start web"}), boost::test_tools::per_element());
    BOOST_TEST(!contains(f.events->lines(), "vm.done web ready"));
}

BOOST_AUTO_TEST_CASE(several_vms_come_up_each_with_its_outcome) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("api", lima::status::stopped);
    f.lima.add("web", lima::status::running);
    const auto outcomes = co_run(f.io, vm::up_many(f.ctx, {target("api"), target("web")}, 1, false));
    BOOST_REQUIRE(outcomes.size() == 2u);
    BOOST_TEST(outcomes[0].state == "ready");
    BOOST_TEST(outcomes[1].state == "ready");
    // One list for both before the locks; each then trusts it (nobody held its lock since).
    BOOST_TEST(f.lima.state().calls == (strings{"list api web", "start api"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(with_fail_fast_the_first_failure_cancels_the_vms_still_waiting) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("api", lima::status::stopped);
    f.lima.add("web", lima::status::stopped);
    f.lima.state().failing = {"start"};
    const auto outcomes = co_run(f.io, vm::up_many(f.ctx, {target("api"), target("web")}, 1, true));
    BOOST_REQUIRE(outcomes.size() == 2u);
    BOOST_TEST(outcomes[0].state == "failed");
    BOOST_TEST(outcomes[0].message == "fake limactl start failed");
    BOOST_TEST(outcomes[1].state == "cancelled");
    BOOST_TEST(f.lima.state().calls == (strings{"list api web", "start api"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(vm_cached_base)

BOOST_AUTO_TEST_CASE(a_vm_starts_from_a_base_only_with_the_agent_bake_profiles_and_a_disk_as_large) {
    const vm::up_target big = with_base(target("web", "100GiB"));
    BOOST_TEST(vm::starts_from_base(big, true));
    BOOST_TEST(vm::starts_from_base(with_base(target("web", vm::base_disk)), true));  // the same size
    BOOST_TEST(!vm::starts_from_base(big, false));                                    // no agent: no base
    BOOST_TEST(!vm::starts_from_base(with_base(target("web", "8GiB")), true));        // a clone cannot shrink
    BOOST_TEST(!vm::starts_from_base(target("web", "100GiB"), true));                 // no bake profiles
}

BOOST_AUTO_TEST_CASE(a_new_vm_is_cloned_from_a_fresh_base_with_the_clone_settings) {
    state_dir state;
    fake_vm_context f;
    f.ctx.agent = true;
    const vm::up_target t = with_base(target("web"));
    const std::string base = vm::base_name(t);
    f.lima.add(base, lima::status::stopped);
    fs::create_directories(state.of(base));
    std::ofstream(state.of(base) / "baked") << "{}\n";

    // The guest side (after the boot) is beyond the seam: it fails on the fake's missing ssh.config.
    BOOST_CHECK_THROW(co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr)), std::exception);
    const std::string settings = machine::render::clone_settings(t.project, machine::render::detect_host());
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "list " + base, "clone " + base + " web " + settings, "list web",
                                                "start web"}),
               boost::test_tools::per_element());
    BOOST_TEST(contains(f.events->lines(), "step.finished web create ok copy-on-write clone of " + base));
}

// A bake that fails after its VM was created (here: the guest side, beyond the seam) removes
// that VM and its state: nothing half-provisioned keeps running, or is taken for a base later.
BOOST_AUTO_TEST_CASE(a_failed_bake_removes_its_unfinished_base) {
    state_dir state;
    fake_vm_context f;
    f.ctx.agent = true;
    const vm::up_target t = with_base(target("web"));
    const std::string base = vm::base_name(t);
    BOOST_CHECK_THROW(co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr)), std::exception);
    const auto& calls = f.lima.state().calls;
    BOOST_TEST_REQUIRE(calls.size() >= 2u);
    BOOST_TEST(contains(calls, "start " + base));
    BOOST_TEST(calls.back() == "delete " + base + " --force");
    BOOST_TEST(!f.lima.state().instances.count(base));
    BOOST_TEST(!fs::exists(state.of(base)));
    const strings lines = f.events->lines();
    BOOST_TEST(std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
        return l.find("removed the unfinished cached base; the next up bakes it again") != std::string::npos;
    }));
}

BOOST_AUTO_TEST_CASE(a_vm_with_a_smaller_disk_is_created_from_its_template) {
    state_dir state;
    fake_vm_context f;
    f.ctx.agent = true;
    const vm::up_target t = with_base(target("web", "8GiB"));
    BOOST_CHECK_THROW(co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr)), std::exception);
    BOOST_TEST(f.lima.state().calls ==
                   (strings{"list web", "start_new web " + (state.of("web") / "lima.yaml").string(), "list web"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(vm_down_destroy)

BOOST_AUTO_TEST_CASE(down_stops_a_running_vm_gracefully_and_a_broken_one_forcibly) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::running);
    f.lima.add("api", lima::status::broken);
    co_run(f.io, vm::down(f.ctx, "web"));
    co_run(f.io, vm::down(f.ctx, "api"));
    co_run(f.io, vm::down(f.ctx, "web"));  // stopped now
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "stop web", "list api", "stop api --force", "list web"}),
               boost::test_tools::per_element());
    BOOST_TEST(f.events->lines().back() == "vm.state web stopped already stopped; nothing to do");
}

BOOST_AUTO_TEST_CASE(destroy_asks_first_and_refuses_a_protected_vm) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::running);
    BOOST_CHECK_THROW(co_run(f.io, vm::destroy(f.ctx, "web", [] { return false; })), machine::error);
    BOOST_TEST(f.lima.state().calls == strings{"list web"}, boost::test_tools::per_element());

    f.lima.state().instances["web"].is_protected = true;
    BOOST_CHECK_THROW(co_run(f.io, vm::destroy(f.ctx, "web", [] { return true; })), machine::error);
    BOOST_TEST(f.lima.state().instances.count("web") == 1u);

    f.lima.state().instances["web"].is_protected = false;
    fs::create_directories(state.of("web"));
    co_run(f.io, vm::destroy(f.ctx, "web", [] { return true; }));
    BOOST_TEST(f.lima.state().calls.back() == "delete web --force");
    BOOST_TEST(f.lima.state().instances.count("web") == 0u);
    BOOST_TEST(!fs::exists(state.of("web")));
}

BOOST_AUTO_TEST_SUITE_END()

// ---- The VM's network: its policy, its template key and its egress proxy ----------------------

namespace {

std::string read_text(const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A fake context whose egress proxy is recorded, not started.
struct network_context : fake_vm_context {
    std::vector<std::pair<std::string, machine::net::policy>> proxies;
    explicit network_context(bool isolating) {
        lima.state().isolates_network = isolating;
        ctx.egress_proxy = [this](std::string name, machine::net::policy rules) -> asio::awaitable<void> {
            proxies.emplace_back(std::move(name), std::move(rules));
            co_return;
        };
    }
};

vm::up_target with_allowlist(vm::up_target t, strings hosts) {
    t.project.egress = hosts;
    t.network.allow = hosts;
    return t;
}

} // namespace

BOOST_AUTO_TEST_SUITE(vm_network)

BOOST_AUTO_TEST_CASE(an_isolating_lima_gets_the_proxy_socket_in_the_template_and_the_proxy_first) {
    state_dir state;
    network_context f(true);
    vm::up_target t = target("web");
    t.network.host_ports = {5432};
    co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr));

    const std::string yaml = read_text(state.of("web") / "lima.yaml");
    const fs::path socket = vm::egress_socket("web");
    BOOST_TEST(yaml.find("\nmachineEgress:\n  socket: \"" + socket.string() + "\"\n") != std::string::npos, yaml);
    // Ensured before anything is created, and again right before the boot (a bake in between
    // can outlast the proxy's wait for its VM): the same VM and policy each time.
    BOOST_REQUIRE(f.proxies.size() == 2u);
    for (const auto& [vm_name, rules] : f.proxies) {
        BOOST_TEST(vm_name == "web");
        BOOST_TEST(!rules.allow.has_value());  // the open internet
        BOOST_TEST(rules.host_ports == (std::vector<int>{5432}), boost::test_tools::per_element());
    }
}

BOOST_AUTO_TEST_CASE(a_lima_that_cannot_isolate_gets_no_key_and_no_proxy) {
    state_dir state;
    network_context f(false);
    co_run(f.io, vm::up_one(f.ctx, target("web"), &f.cancel, nullptr));

    BOOST_TEST(read_text(state.of("web") / "lima.yaml").find("machineEgress") == std::string::npos);
    BOOST_TEST(f.proxies.empty());
}

BOOST_AUTO_TEST_CASE(a_clone_of_a_base_is_pointed_at_its_own_proxy) {
    state_dir state;
    network_context f(true);
    f.ctx.agent = true;  // a base is only used with the guest agent
    const vm::up_target t = with_base(target("web"));
    f.lima.add(vm::base_name(t), lima::status::stopped);
    fs::create_directories(state.of(vm::base_name(t)));
    std::ofstream(state.of(vm::base_name(t)) / "baked") << "{}\n";
    // The clone is made; the start after it fails (the fake has no guest), which is past what
    // this test looks at.
    f.lima.state().failing = {"start"};
    BOOST_CHECK_THROW(co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr)), std::exception);

    std::string clone_call;
    for (const auto& c : f.lima.state().calls)
        if (c.rfind("clone ", 0) == 0) clone_call = c;
    BOOST_TEST(clone_call.find(".machineEgress.socket = \"" + vm::egress_socket("web").string() + "\"") !=
                   std::string::npos,
               clone_call);
}

BOOST_AUTO_TEST_CASE(an_allowlist_on_a_lima_that_cannot_isolate_is_refused_before_anything_is_created) {
    state_dir state;
    network_context f(false);
    try {
        co_run(f.io, vm::up_one(f.ctx, with_allowlist(target("web"), {"github.com"}), &f.cancel, nullptr));
        BOOST_FAIL("an allowlist nobody can enforce was accepted");
    } catch (const config::config_error& e) {
        const std::string message = e.what();
        BOOST_TEST(message.find("project 'web': egress allowlists need a network machine can enforce outside the VM") == 0u,
                   message);
        BOOST_TEST((e.code() == machine::exit_code::usage));
    }
    BOOST_TEST(f.lima.state().calls == strings{"list web"}, boost::test_tools::per_element());
    BOOST_TEST(f.proxies.empty());
}

BOOST_AUTO_TEST_CASE(without_isolation_the_guest_firewall_notice_comes_once_per_project) {
    state_dir state;
    network_context f(false);
    f.ctx.agent = true;  // the firewall in the VM is the agent's to install
    const machine::net::policy open;
    BOOST_TEST(!co_run(f.io, vm::prepare_network(f.ctx, "web", open)).has_value());
    BOOST_TEST(!co_run(f.io, vm::prepare_network(f.ctx, "web", open)).has_value());
    const strings lines = f.events->lines();
    BOOST_REQUIRE(lines.size() == 1u);
    BOOST_TEST(lines[0].find("message web warning this Lima cannot keep the VM off the host's ports") == 0u, lines[0]);
    BOOST_TEST(lines[0].find("root in the VM can remove it") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(the_policy_lists_the_projects_hosts_then_its_profiles_then_machines_with_origins) {
    const auto cat = machine::provision::catalog::builtin();
    config::project p;
    p.name = "web";
    p.repos = {"git@github.com:acme/web.git", "https://GitLab.com/acme/api", "/srv/git/local.git", "ssh://git@10.0.0.5/x.git"};
    p.egress = strings{"api.anthropic.com", "registry.npmjs.org"};
    p.egress_origins = {"/home/u/.config/machine/projects.toml:4:11: web.egress[0]",
                        "/home/u/.config/machine/projects.toml:4:32: web.egress[1]"};
    p.host_ports = {5432};
    std::vector<machine::net::allow_entry> allowed;
    const auto rules = vm::egress_policy_of(p, cat, {"base", "node", "agents"}, &allowed);

    std::vector<std::string> shown;
    for (const auto& e : allowed) shown.push_back(e.pattern + " <- " + e.origin);
    BOOST_TEST(shown == (strings{"api.anthropic.com <- /home/u/.config/machine/projects.toml:4:11: web.egress[0]",
                                 "registry.npmjs.org <- /home/u/.config/machine/projects.toml:4:32: web.egress[1]",
                                 "deb.debian.org <- profile base",
                                 "security.debian.org <- profile base",
                                 // node's and agents' registry.npmjs.org: the project named it first
                                 "github.com <- machine's provisioning",
                                 "gitlab.com <- machine's provisioning",
                                 "registry.yarnpkg.com <- machine's provisioning"}),
               boost::test_tools::per_element());
    BOOST_REQUIRE(rules.allow.has_value());
    BOOST_TEST(rules.allow->size() == allowed.size());
    BOOST_TEST(rules.host_ports == (std::vector<int>{5432}), boost::test_tools::per_element());
    BOOST_TEST(vm::describe_egress(rules, allowed) ==
               "egress: 2 hosts from projects.toml, 2 hosts from profiles (base), 3 hosts for machine's provisioning "
               "(github.com, gitlab.com, registry.yarnpkg.com)");

    // Without `egress`: the open internet, whatever the profiles declare.
    p.egress.reset();
    const auto open = vm::egress_policy_of(p, cat, {"base", "node"}, &allowed);
    BOOST_TEST(!open.allow.has_value());
    BOOST_TEST(allowed.empty());
    BOOST_TEST(vm::describe_egress(open, allowed).empty());
}

BOOST_AUTO_TEST_CASE(repo_hosts_are_names_only) {
    BOOST_TEST(vm::repo_host("git@github.com:acme/web.git") == "github.com");
    BOOST_TEST(vm::repo_host("https://user:tok@Git.Example.com:8443/a/b") == "git.example.com");
    BOOST_TEST(vm::repo_host("ssh://git@[::1]:22/x") == "");
    BOOST_TEST(vm::repo_host("git://127.0.0.1/x") == "");
    BOOST_TEST(vm::repo_host("file:///srv/x.git") == "");
    BOOST_TEST(vm::repo_host("/srv/git/x.git") == "");
    BOOST_TEST(vm::repo_host("./x:y") == "");
    BOOST_TEST(vm::repo_host("localhost:x.git") == "");
}

BOOST_AUTO_TEST_CASE(the_proxy_is_kept_replaced_or_started_by_what_was_recorded) {
    using vm::proxy_action;
    auto seen = [](bool running, bool accepts, std::string fp) { return vm::proxy_seen{running, accepts, std::move(fp)}; };
    BOOST_TEST((vm::decide_proxy(seen(true, true, "abc"), "abc") == proxy_action::keep));
    BOOST_TEST((vm::decide_proxy(seen(true, true, "abc"), "def") == proxy_action::replace));  // policy changed
    BOOST_TEST((vm::decide_proxy(seen(true, false, "abc"), "abc") == proxy_action::replace)); // stopped accepting
    BOOST_TEST((vm::decide_proxy(seen(false, false, "abc"), "abc") == proxy_action::start));  // died, or a stale pid
    BOOST_TEST((vm::decide_proxy(seen(false, false, ""), "abc") == proxy_action::start));     // never started
}

BOOST_AUTO_TEST_CASE(only_that_vms_net_proxy_is_ever_signalled) {
    BOOST_TEST(vm::is_net_proxy_cmdline(std::string("/usr/bin/machine\0net-proxy\0--vm\0web\0--listen\0/s\0", 43), "web"));
    BOOST_TEST(!vm::is_net_proxy_cmdline(std::string("/usr/bin/machine\0net-proxy\0--vm\0web2\0", 37), "web"));
    BOOST_TEST(!vm::is_net_proxy_cmdline(std::string("/usr/bin/machine\0agent-proxy\0--vm\0web\0", 38), "web"));
    BOOST_TEST(!vm::is_net_proxy_cmdline(std::string("/bin/sh\0-c\0net-proxy --vm web\0", 30), "web"));
    BOOST_TEST(!vm::is_net_proxy_cmdline("", "web"));
    // This test process (a recycled pid would look like this) is no proxy.
    BOOST_TEST(!vm::is_net_proxy_for(static_cast<int>(::getpid()), "web"));
    BOOST_TEST(!vm::is_net_proxy_for(0, "web"));
}

BOOST_AUTO_TEST_CASE(the_proxy_argv_carries_the_policy_and_its_socket_fits_a_unix_address) {
    state_dir state;
    machine::net::policy rules;
    rules.allow = strings{"github.com", "*.npmjs.org"};
    rules.host_ports = {5432};
    const strings argv = vm::net_proxy_argv("/usr/bin/machine", "web", "/lima/web", rules);
    BOOST_TEST(argv == (strings{"/usr/bin/machine", "net-proxy", "--vm", "web", "--listen", vm::egress_socket("web").string(),
                                "--vm-dir", "/lima/web", "--audit-log", (state.of("web") / "net.jsonl").string(),
                                "--egress", "allowlist", "--allow", "github.com", "--allow", "*.npmjs.org",
                                "--host-port", "5432"}),
               boost::test_tools::per_element());
    const strings open = vm::net_proxy_argv("/usr/bin/machine", "web", "/lima/web", machine::net::policy{});
    BOOST_TEST(open.back() == "open");

    const std::string long_name(63, 'a');
    ::setenv("MACHINE_STATE_DIR", (state.dir.path / std::string(20, 's')).c_str(), 1);
    const fs::path hashed = vm::egress_socket(long_name);
    BOOST_TEST(hashed.native().size() <= 107u, hashed);
    BOOST_TEST(hashed.filename().string().size() == 16u + 5u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---- watch's view of a VM's network: its audit log followed -------------------------------------

namespace {

void append(const fs::path& file, const std::string& text) {
    std::ofstream out(file, std::ios::app | std::ios::binary);
    out << text;
}

} // namespace

BOOST_AUTO_TEST_SUITE(vm_watch_network)

BOOST_AUTO_TEST_CASE(a_tail_sees_new_lines_only_waits_for_a_torn_line_and_follows_rotation) {
    machine::test::temp_dir dir;
    const fs::path log = dir.path / "net.jsonl";
    append(log, "old 1\nold 2\n");
    vm::line_tail tail(log);
    BOOST_TEST(tail.poll().empty());  // its past is not news

    append(log, "new 1\nnew 2 is torn");
    BOOST_TEST(tail.poll() == strings{"new 1"}, boost::test_tools::per_element());
    append(log, " and ends here\n");
    BOOST_TEST(tail.poll() == strings{"new 2 is torn and ends here"}, boost::test_tools::per_element());

    // Rotation as the proxy does it: the last lines land in the old file, which is renamed; a
    // new file starts.
    append(log, "last of the old file\n");
    fs::rename(log, dir.path / "net.jsonl.1");
    append(log, "first of the new file\n");
    BOOST_TEST(tail.poll() == (strings{"last of the old file", "first of the new file"}),
               boost::test_tools::per_element());

    // Truncated in place: read again from its start.
    fs::resize_file(log, 0);
    append(log, "after truncation\n");
    BOOST_TEST(tail.poll() == strings{"after truncation"}, boost::test_tools::per_element());
}

// The VM appends (through its proxy) while watch follows: each record is one event, a torn
// line waits for its end, a foreign line is skipped, rotation loses nothing.
BOOST_AUTO_TEST_CASE(appended_records_become_net_events_as_they_come) {
    machine::test::temp_dir dir;
    const fs::path log = dir.path / "net.jsonl";
    machine::net::audit_record before;
    before.host = "old.example";
    append(log, machine::net::to_json_line(before) + "\n");  // before watch: not shown

    fake_vm_context f;
    auto stop = std::make_shared<machine::cancel_signal>(f.io.get_executor());
    machine::net::audit_record allowed;
    allowed.allowed = true;
    allowed.kind = "tcp";
    allowed.host = "github.com";
    allowed.port = 443;
    allowed.bytes_up = 517;
    allowed.bytes_down = 4096;
    allowed.duration_ms = 80;
    machine::net::audit_record refused;
    refused.kind = "tcp";
    refused.host = "evil.example";
    refused.port = 443;
    refused.reason = "not in egress";
    refused.suppressed = 7;
    const std::string torn = machine::net::to_json_line(refused);

    auto vm_side = [&]() -> asio::awaitable<void> {
        co_await machine::sleep_for(std::chrono::milliseconds(30));
        // A record with a raw control byte was not written by the proxy (it escapes what it
        // records): skipped like any foreign line.
        machine::net::audit_record forged = refused;
        forged.host = "\x1b]0;pwned\x07.example";
        append(log, machine::net::to_json_line(allowed) + "\nnot json\n" + machine::net::to_json_line(forged) + "\n" +
                        torn.substr(0, 10));
        co_await machine::sleep_for(std::chrono::milliseconds(30));
        append(log, torn.substr(10) + "\n");
        co_await machine::sleep_for(std::chrono::milliseconds(30));
        fs::rename(log, dir.path / "net.jsonl.1");
        append(log, machine::net::to_json_line(allowed) + "\n");
        co_await machine::sleep_for(std::chrono::milliseconds(30));
        stop->trigger(machine::cancel_signal::graceful);
    };
    asio::co_spawn(f.io, vm_side, asio::detached);
    co_run(f.io, vm::follow_connections(f.ctx, "web", log, stop, std::chrono::milliseconds(5)));

    strings types;
    for (const auto& e : f.events->seen) types.push_back(e.type + " " + e.vm);
    BOOST_TEST(types == (strings{"net.allowed web", "net.refused web", "net.allowed web"}), boost::test_tools::per_element());
    BOOST_REQUIRE(f.events->seen.size() == 3u);
    const auto& a = f.events->seen[0];
    BOOST_TEST(a.text("host") == "github.com");
    BOOST_TEST(std::get<std::int64_t>(*a.find("port")) == 443);
    BOOST_TEST(std::get<std::int64_t>(*a.find("bytes_up")) == 517);
    BOOST_TEST(std::get<std::int64_t>(*a.find("bytes_down")) == 4096);
    BOOST_TEST(std::get<std::int64_t>(*a.find("duration_ms")) == 80);
    const auto& r = f.events->seen[1];
    BOOST_TEST(r.text("reason") == "not in egress");
    BOOST_TEST(std::get<std::int64_t>(*r.find("suppressed")) == 7);
    // The human lines: short.
    BOOST_TEST(machine::events::terminal_sink::render(r) == "net: REFUSED tcp evil.example:443: not in egress (+7 like it)");
    BOOST_TEST(machine::events::terminal_sink::render(a) == "net: allowed tcp github.com:443 (517 B up, 4096 B down, 80 ms)");
}

BOOST_AUTO_TEST_CASE(a_tail_drops_an_overlong_line_whole_and_reads_in_bounded_chunks) {
    machine::test::temp_dir dir;
    const fs::path log = dir.path / "net.jsonl";
    vm::line_tail tail(log);  // no file yet: whatever appears is new
    BOOST_TEST(tail.poll().empty());
    append(log, std::string(vm::line_tail::max_line + 10, 'x') + "\nshort\n");
    std::vector<std::string> seen;
    for (int i = 0; i < 10; ++i)
        for (auto& l : tail.poll(16 * 1024)) seen.push_back(std::move(l));
    BOOST_TEST(seen == strings{"short"}, boost::test_tools::per_element());
    BOOST_TEST(tail.dropped_lines() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---- A VM's resources: cpus, memory and disk change at its next start --------------------------

namespace {

// A stopped or running VM as Lima lists it: 2 cpus, 4GiB of memory, a 30GiB disk, no agent
// forwarding, no egress socket.
lima::instance& small_vm(machine::test::fake_lima_driver& lima, lima::status s) {
    lima::instance& i = lima.add("web", s);
    i.cpus = 2;
    i.memory_bytes = 4LL << 30;
    i.disk_bytes = 30LL << 30;
    i.forward_agent = false;
    return i;
}

// The project asks for 4 cpus, 8GiB and a 40GiB disk.
vm::up_target bigger(vm::up_target t) {
    t.project.cpus = 4;
    t.project.memory = "8GiB";
    t.project.disk = "40GiB";
    return t;
}

} // namespace

BOOST_AUTO_TEST_SUITE(vm_resources)

BOOST_AUTO_TEST_CASE(a_stopped_vm_gets_its_resources_and_egress_in_one_edit_before_it_starts) {
    state_dir state;
    network_context f(true);
    small_vm(f.lima, lima::status::stopped).forward_agent = true;  // the project says false
    co_run(f.io, vm::up_one(f.ctx, bigger(target("web")), &f.cancel, nullptr));

    const std::string socket = vm::egress_socket("web").string();
    BOOST_TEST(f.lima.state().calls == (strings{"list web",
                                                "edit web .cpus = 4 .memory = \"8GiB\" .disk = \"40GiB\" "
                                                ".ssh.forwardAgent = false .machineEgress.socket = \"" + socket + "\"",
                                                "start web"}),
               boost::test_tools::per_element());
    BOOST_TEST(contains(f.events->lines(),
                        "message web info cpus 2 -> 4, memory 4GiB -> 8GiB, disk 30GiB -> 40GiB, applied at this start"));
    const lima::instance& after = f.lima.state().instances["web"];
    BOOST_TEST(after.cpus == 4);
    BOOST_TEST(after.memory_bytes == 8LL << 30);
    BOOST_TEST(after.disk_bytes == 40LL << 30);
}

BOOST_AUTO_TEST_CASE(only_what_changed_is_edited_and_said) {
    state_dir state;
    fake_vm_context f;
    small_vm(f.lima, lima::status::stopped);
    vm::up_target t = target("web", "30GiB");
    t.project.cpus = 2;
    t.project.memory = "6GiB";
    co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr));

    BOOST_TEST(f.lima.state().calls == (strings{"list web", "edit web .memory = \"6GiB\"", "start web"}),
               boost::test_tools::per_element());
    BOOST_TEST(contains(f.events->lines(), "message web info memory 4GiB -> 6GiB, applied at this start"));
}

BOOST_AUTO_TEST_CASE(a_vm_whose_resources_match_is_not_edited) {
    state_dir state;
    fake_vm_context f;
    small_vm(f.lima, lima::status::stopped);
    vm::up_target t = target("web", "30GiB");
    t.project.cpus = 2;
    t.project.memory = "4GiB";
    co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr));

    BOOST_TEST(f.lima.state().calls == (strings{"list web", "start web"}), boost::test_tools::per_element());
    for (const auto& line : f.events->lines()) BOOST_TEST(line.find("applied at this start") == std::string::npos, line);
}

BOOST_AUTO_TEST_CASE(a_running_vm_whose_resources_differ_is_told_the_restart_and_left_alone) {
    state_dir state;
    network_context f(true);
    small_vm(f.lima, lima::status::running);
    co_run(f.io, vm::up_one(f.ctx, bigger(target("web")), &f.cancel, nullptr));

    BOOST_TEST(f.lima.state().calls == strings{"list web"}, boost::test_tools::per_element());
    BOOST_TEST(f.events->lines() ==
                   (strings{"message web warning cpus 2 -> 4, memory 4GiB -> 8GiB, disk 30GiB -> 40GiB apply when the "
                            "VM restarts: machine down web && machine up web",
                            "vm.state web running already running; nothing to do", "vm.done web ready"}),
               boost::test_tools::per_element());
    BOOST_TEST(f.lima.state().instances["web"].cpus == 2);
}

// No start changes a VM's architecture: asking for another one is said at every up, with the
// way to get it, and the VM comes up as it is.
BOOST_AUTO_TEST_CASE(another_arch_is_said_to_need_a_new_vm) {
    for (const lima::status s : {lima::status::stopped, lima::status::running}) {
        state_dir state;
        network_context f(true);
        small_vm(f.lima, s).arch = "x86_64";
        vm::up_target t = target("web", "30GiB");
        t.project.cpus = 2;
        t.project.memory = "4GiB";
        t.project.arch = "aarch64";
        co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr));
        BOOST_TEST(contains(f.events->lines(), "message web warning the VM is x86_64; arch = \"aarch64\" applies only "
                                               "to a new VM: machine destroy web && machine up web (its disk starts over)"));
        BOOST_TEST(contains(f.events->lines(), "vm.done web ready"));
    }
    lima::instance inst;
    config::project p;
    p.name = "web";
    BOOST_TEST(vm::arch_change_warning(p, inst).empty());  // neither known
    p.arch = "aarch64";
    BOOST_TEST(vm::arch_change_warning(p, inst).empty());  // Lima listed none
    inst.arch = "aarch64";
    BOOST_TEST(vm::arch_change_warning(p, inst).empty());
}

BOOST_AUTO_TEST_CASE(a_smaller_disk_is_a_config_error_and_nothing_runs) {
    for (const lima::status s : {lima::status::stopped, lima::status::running}) {
        state_dir state;
        network_context f(true);
        small_vm(f.lima, s);
        vm::up_target t = bigger(target("web"));
        t.project.disk = "20GiB";
        t.project.source = "/home/u/.config/machine/projects.toml";
        try {
            co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr));
            BOOST_FAIL("a disk was asked to shrink and up went on");
        } catch (const config::config_error& e) {
            BOOST_TEST(std::string(e.what()) ==
                       "/home/u/.config/machine/projects.toml: web.disk: 20GiB is smaller than the VM's disk (30GiB); a "
                       "VM's disk only grows: set disk = \"30GiB\" or more, or start over with machine destroy web");
            BOOST_TEST((e.code() == machine::exit_code::usage));
        }
        BOOST_TEST(f.lima.state().calls == strings{"list web"}, boost::test_tools::per_element());
        BOOST_TEST(f.proxies.empty());
        BOOST_TEST(f.events->lines().empty());
    }
}

BOOST_AUTO_TEST_CASE(a_project_without_a_table_asks_for_no_resources) {
    state_dir state;
    fake_vm_context f;
    small_vm(f.lima, lima::status::stopped);
    vm::up_target t = bigger(target("web"));
    t.project.disk = "20GiB";  // a smaller disk too: not asked for either
    t.project.configured = false;
    co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr));
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "start web"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(values_lima_did_not_list_or_that_make_no_sense_are_left_alone) {
    lima::instance inst;
    inst.name = "web";
    config::project p = bigger(target("web")).project;
    BOOST_TEST(vm::resource_changes(p, inst).empty());  // cpus, memory and disk absent from the list
    inst.cpus = -3;
    inst.memory_bytes = -1;
    inst.disk_bytes = -(40LL << 30);
    BOOST_TEST(vm::resource_changes(p, inst).empty());
    // Within a KiB is Lima's float parsing of the same text, no change.
    inst.cpus = 4;
    inst.memory_bytes = (8LL << 30) - 1;
    inst.disk_bytes = (40LL << 30) + 1;
    BOOST_TEST(vm::resource_changes(p, inst).empty());
}

BOOST_AUTO_TEST_CASE(sizes_read_as_they_are_written) {
    BOOST_TEST(vm::size_text(4LL << 30) == "4GiB");
    BOOST_TEST(vm::size_text(3LL << 29) == "1.5GiB");
    BOOST_TEST(vm::size_text(512LL << 20) == "512MiB");
    BOOST_TEST(vm::size_text(2LL << 40) == "2TiB");
    BOOST_TEST(vm::size_text(1395864371) == "1.3GiB");  // "1.3GiB" as Lima lists it
    BOOST_TEST(vm::size_text(100) == "100B");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(vm_detached)

// A helper whose binary cannot be run (gone after an upgrade, say) leaves its reason in the log
// that the caller's error names, instead of an empty file.
BOOST_AUTO_TEST_CASE(an_exec_that_fails_is_said_in_the_log) {
    machine::test::temp_dir dir;
    const fs::path log = dir.path / "helper.log";
    const std::string missing = (dir.path / "no-such-helper").string();
    vm::spawn_detached({missing, "net-proxy"}, log);
    const std::string want = "cannot run " + missing + ": exec failed with errno " + std::to_string(ENOENT) + "\n";
    std::string got;
    for (int i = 0; i < 500 && got != want; ++i) {  // the grandchild writes it: at most 5 s
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        std::ifstream in(log);
        got.assign(std::istreambuf_iterator<char>(in), {});
    }
    BOOST_TEST(got == want);
    BOOST_TEST(((fs::status(log).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write)));
}

// The helper inherits nothing of machine's but its log and /dev/null: a descriptor left
// inheritable (Asio's pipes, libssh's sockets are) would keep a pipe's reader waiting for an
// end that never comes while the helper serves.
BOOST_AUTO_TEST_CASE(a_helper_inherits_no_descriptor_of_machines) {
    machine::test::temp_dir dir;
    const fs::path log = dir.path / "helper.log";
    const fs::path listed = dir.path / "fds";
    int ends[2];
    BOOST_REQUIRE(::pipe(ends) == 0);  // not close-on-exec, as Asio's are
    // Numbered apart from anything the helper opens itself.
    const int leak[2] = {::fcntl(ends[0], F_DUPFD, 200), ::fcntl(ends[1], F_DUPFD, 200)};
    ::close(ends[0]);
    ::close(ends[1]);
    BOOST_REQUIRE(leak[0] >= 200);
    BOOST_REQUIRE(leak[1] >= 200);
    const std::string script = "ls /proc/self/fd > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"";
    vm::spawn_detached({"/bin/sh", "-c", script, "sh", listed.string()}, log);
    std::string fds;
    for (int i = 0; i < 500 && fds.empty(); ++i) {  // the grandchild writes it: at most 5 s
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        std::ifstream in(listed);
        fds.assign(std::istreambuf_iterator<char>(in), {});
    }
    ::close(leak[0]);
    ::close(leak[1]);
    // ls's own directory descriptor is the one above 2.
    std::vector<int> open;
    std::istringstream in(fds);
    for (int fd; in >> fd;) open.push_back(fd);
    BOOST_TEST_REQUIRE(!open.empty());
    BOOST_TEST(std::count(open.begin(), open.end(), leak[0]) + std::count(open.begin(), open.end(), leak[1]) == 0);
    BOOST_TEST(open.size() <= 4u, "open in the helper: " << fds);
}

BOOST_AUTO_TEST_SUITE_END()
