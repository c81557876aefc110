// The workflows (src/vm) on a fake Lima (fake_lima_driver): which limactl calls bring-up, down and
// destroy make for a VM in each state, the events they emit, the decision to clone from a cached
// base, and which secret sets are planned. No process is started: no limactl, git or ssh.
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <fstream>

#include "bake.hpp"
#include "fake_lima_driver.hpp"
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

// A private state directory ($MACHINE_STATE_DIR) for the test's projects, restored afterwards.
struct state_dir {
    machine::test::temp_dir dir;
    std::optional<std::string> previous;
    state_dir() {
        if (const char* v = std::getenv("MACHINE_STATE_DIR")) previous = v;
        ::setenv("MACHINE_STATE_DIR", (dir.path / "state").c_str(), 1);
    }
    ~state_dir() {
        if (previous) ::setenv("MACHINE_STATE_DIR", previous->c_str(), 1);
        else ::unsetenv("MACHINE_STATE_DIR");
    }
    fs::path of(const std::string& name) const { return dir.path / "state" / name; }
};

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
