// Pause, resume and snapshots (src/vm/pause.cpp) on the fake Lima: which QMP commands and
// limactl snapshot calls each makes for a VM in each state, and the clear errors for what
// cannot be done (a stopped or vz VM, an unknown or bad tag, a disk-only snapshot online).
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <fstream>

#include "fake_lima_driver.hpp"
#include "machine/error.hpp"
#include "machine/vm.hpp"
#include "error_message.hpp"
#include "test_support.hpp"

namespace vm = machine::vm;
namespace lima = machine::lima;
namespace fs = std::filesystem;
using machine::test::co_run;
using machine::test::fake_vm_context;
using machine::test::state_dir;
using strings = std::vector<std::string>;

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

} // namespace

BOOST_AUTO_TEST_SUITE(vm_pause)

BOOST_AUTO_TEST_CASE(pause_and_resume_a_running_vm_through_its_monitor) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::running);
    co_run(f.io, vm::pause(f.ctx, "web"));
    BOOST_TEST(co_run(f.io, vm::shown_status(f.ctx, f.lima.state().instances["web"])) == "Paused");
    co_run(f.io, vm::pause(f.ctx, "web"));  // already
    co_run(f.io, vm::resume(f.ctx, "web"));
    BOOST_TEST(co_run(f.io, vm::shown_status(f.ctx, f.lima.state().instances["web"])) == "Running");
    co_run(f.io, vm::resume(f.ctx, "web"));  // not paused
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "qmp stop web", "list web", "list web", "qmp cont web", "list web"}),
               boost::test_tools::per_element());
    const auto lines = f.events->lines();
    BOOST_REQUIRE(lines.size() >= 5u);
    BOOST_TEST(starts_with(lines[0], "vm.state web paused in "));
    BOOST_TEST(lines[1] == "vm.state web paused already paused; nothing to do");
    BOOST_TEST(starts_with(lines.back(), "vm.state web running not paused (running)"));
}

BOOST_AUTO_TEST_CASE(what_cannot_pause_says_why) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped);
    f.lima.add("mac", lima::status::running).vm_type = "vz";
    BOOST_TEST(machine::test::message_of([&] { co_run(f.io, vm::pause(f.ctx, "web")); }) ==
               "VM 'web' is not running (Stopped): nothing to pause");
    BOOST_TEST(machine::test::message_of([&] { co_run(f.io, vm::pause(f.ctx, "mac")); }) ==
               "VM 'mac' runs on Lima's vz driver, which cannot pause (only QEMU VMs can)");
    BOOST_TEST(machine::test::message_of([&] { co_run(f.io, vm::resume(f.ctx, "nosuch")); }) ==
               "VM 'nosuch' does not exist (run 'machine up nosuch')");
    // vz: Lima's status, no monitor asked
    BOOST_TEST(co_run(f.io, vm::shown_status(f.ctx, f.lima.state().instances["mac"])) == "Running");
    for (const auto& c : f.lima.state().calls) BOOST_TEST(!starts_with(c, "qmp "), c);
}

BOOST_AUTO_TEST_CASE(a_monitor_that_cannot_be_asked_leaves_limas_status) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::running);
    f.lima.state().failing.insert("qmp");
    BOOST_TEST(co_run(f.io, vm::shown_status(f.ctx, f.lima.state().instances["web"])) == "Running");
}

BOOST_AUTO_TEST_CASE(down_and_up_continue_a_paused_vm_first) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::running);
    f.lima.state().run_states["web"] = "paused";
    co_run(f.io, vm::down(f.ctx, "web"));
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "qmp cont web", "stop web"}), boost::test_tools::per_element());

    f.lima.add("web", lima::status::running);
    f.lima.state().run_states["web"] = "paused";
    f.lima.state().calls.clear();
    vm::up_target t;
    t.project.name = "web";
    t.project.configured = true;
    t.project.forward_agent = false;
    co_run(f.io, vm::up_one(f.ctx, t, &f.cancel, nullptr));
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "qmp cont web"}), boost::test_tools::per_element());
    BOOST_TEST(f.lima.state().run_states["web"] == "running");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(vm_snapshots)

BOOST_AUTO_TEST_CASE(snapshot_list_restore_delete) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::running);
    co_run(f.io, vm::snapshot_create(f.ctx, "web", "before-agent"));
    BOOST_TEST(co_run(f.io, vm::snapshot_list(f.ctx, "web")) == strings{"before-agent"}, boost::test_tools::per_element());
    co_run(f.io, vm::restore(f.ctx, "web", "before-agent", nullptr));
    co_run(f.io, vm::snapshot_delete(f.ctx, "web", "before-agent"));
    BOOST_TEST(f.lima.state().calls ==
                   (strings{"list web", "snapshot list web", "snapshot create web before-agent", "snapshot list web",
                            "list web", "snapshot list web",
                            "list web", "snapshot list web", "snapshot apply web before-agent",
                            "list web", "snapshot list web", "snapshot delete web before-agent"}),
               boost::test_tools::per_element());
    BOOST_TEST(f.lima.state().snapshots["web"].empty());
    const auto lines = f.events->lines();
    BOOST_TEST(std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
        return starts_with(l, "step.finished web snapshot ok") && l.find("'before-agent' (disk and memory)") != std::string::npos;
    }));
    BOOST_TEST(std::any_of(lines.begin(), lines.end(),
                           [](const std::string& l) { return starts_with(l, "vm.state web running restored to 'before-agent' in "); }));
}

BOOST_AUTO_TEST_CASE(bad_input_is_refused_and_changes_nothing) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped);
    co_run(f.io, vm::snapshot_create(f.ctx, "web", "clean"));
    f.lima.state().calls.clear();
    // an unknown tag: named with the ones there are, before anything is applied
    BOOST_TEST(machine::test::message_of([&] { co_run(f.io, vm::restore(f.ctx, "web", "nope", nullptr)); }) ==
               "VM 'web' has no snapshot 'nope' (it has: clean); nothing was changed");
    BOOST_TEST(machine::test::message_of([&] { co_run(f.io, vm::snapshot_delete(f.ctx, "web", "nope")); }) ==
               "VM 'web' has no snapshot 'nope' (it has: clean)");
    // a tag taken twice
    BOOST_TEST(machine::test::message_of([&] { co_run(f.io, vm::snapshot_create(f.ctx, "web", "clean")); }) ==
               "VM 'web' already has a snapshot 'clean' (machine snapshot --delete web clean first)");
    for (const auto& c : f.lima.state().calls) BOOST_TEST(!starts_with(c, "snapshot apply"), c);
    for (const auto& c : f.lima.state().calls) BOOST_TEST(!starts_with(c, "snapshot create"), c);
    // bad tags: usage errors before Lima is asked anything
    f.lima.state().calls.clear();
    for (const char* bad : {"", "-x", "a b", "123", "a/b", "x;rm", "..", "\x1b[31m"}) {
        BOOST_TEST_CONTEXT(bad) {
            BOOST_CHECK_THROW(co_run(f.io, vm::snapshot_create(f.ctx, "web", bad)), machine::usage_error);
            BOOST_CHECK_THROW(co_run(f.io, vm::restore(f.ctx, "web", bad, nullptr)), machine::usage_error);
        }
    }
    BOOST_TEST(f.lima.state().calls.empty());
    BOOST_TEST(vm::is_valid_snapshot_tag("snap-20261206-153000"));
    BOOST_TEST(vm::is_valid_snapshot_tag("v1.2_b"));
    BOOST_TEST(vm::is_valid_snapshot_tag(std::string(64, 'a')));
    BOOST_TEST(!vm::is_valid_snapshot_tag(std::string(65, 'a')));
}

BOOST_AUTO_TEST_CASE(a_disk_only_snapshot_on_a_running_vm_says_to_stop_it) {
    state_dir state;
    fake_vm_context f;
    f.lima.add("web", lima::status::stopped);
    co_run(f.io, vm::snapshot_create(f.ctx, "web", "cold"));
    f.lima.state().instances["web"].state = lima::status::running;
    const std::string e = machine::test::message_of([&] { co_run(f.io, vm::restore(f.ctx, "web", "cold", nullptr)); });
    BOOST_TEST(starts_with(e, "VM 'web' was not restored to 'cold': Error: This is a disk-only snapshot."), e);
    BOOST_TEST(e.find("'machine down web', then 'machine restore web cold'") != std::string::npos, e);
    // QEMU left the guest stopped (restore-vm): it was continued, as it was
    BOOST_TEST(f.lima.state().run_states["web"] == "running");
    BOOST_TEST(f.lima.state().calls.back() == "qmp cont web");
    // stopped, it restores
    f.lima.state().instances["web"].state = lima::status::stopped;
    co_run(f.io, vm::restore(f.ctx, "web", "cold", nullptr));
    BOOST_TEST(f.events->lines().back() == "vm.state web stopped restored to 'cold'; 'machine up web' boots it");
}

BOOST_AUTO_TEST_CASE(default_tag_is_utc_time) {
    using namespace std::chrono;
    const sys_seconds t = sys_days{year{2026} / 12 / 6} + hours{15} + minutes{30} + seconds{7};
    BOOST_TEST(vm::default_snapshot_tag(t) == "snap-20261206-153007");
    BOOST_TEST(vm::is_valid_snapshot_tag(vm::default_snapshot_tag(system_clock::now())));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(vm_hibernate)

namespace {

// A running VM "name" whose Lima directory holds a lima.yaml, on a Lima that can hibernate.
struct hibernating_world {
    state_dir state;
    machine::test::temp_dir home;
    fake_vm_context f;
    explicit hibernating_world(const strings& names = {"web"}) {
        f.lima.state().lima_home = home.path;
        f.lima.state().can_hibernate = true;
        for (const auto& n : names) {
            f.lima.add(n, lima::status::running);  // resources not listed: up edits nothing
            fs::create_directories(home.path / n);
            std::ofstream(home.path / n / "lima.yaml") << "cpus: 2\nmemory: 2GiB\n";
        }
    }
    vm::up_target target(const std::string& name) {
        vm::up_target t;
        t.project.name = name;
        t.project.configured = true;
        t.project.forward_agent = false;
        return t;
    }
    bool event_starts(const std::string& prefix) const {
        const auto lines = f.events->lines();
        return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return starts_with(l, prefix); });
    }
};

} // namespace

BOOST_AUTO_TEST_CASE(hibernate_then_up_resumes) {
    hibernating_world w;
    auto& f = w.f;
    co_run(f.io, vm::hibernate(f.ctx, "web"));
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "hibernate web"}), boost::test_tools::per_element());
    const lima::instance inst = f.lima.state().instances["web"];
    BOOST_TEST(vm::hibernated_bytes(inst) == 5);
    BOOST_TEST(co_run(f.io, vm::shown_status(f.ctx, inst)) == "Hibernated");
    BOOST_TEST(w.event_starts("vm.state web hibernated 'machine up web' resumes it"));

    f.lima.state().calls.clear();
    std::string started;
    co_run(f.io, vm::up_one(f.ctx, w.target("web"), &f.cancel, nullptr, &started));
    BOOST_TEST(started == "resumed");
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "start web"}), boost::test_tools::per_element());
    BOOST_TEST(w.event_starts("message web info resuming from hibernation"));
    BOOST_TEST(w.event_starts("message web info resumed from hibernation in 1.5 s"));
    BOOST_TEST(vm::hibernated_bytes(f.lima.state().instances["web"]) == 0);
    BOOST_TEST(!fs::exists(w.state.of("web") / "hibernate.digest"));
}

BOOST_AUTO_TEST_CASE(a_changed_lima_yaml_boots_cold_and_says_why) {
    hibernating_world w;
    auto& f = w.f;
    co_run(f.io, vm::hibernate(f.ctx, "web"));
    std::ofstream(w.home.path / "web" / "lima.yaml") << "cpus: 4\nmemory: 2GiB\n";  // limactl edit, say
    std::string started;
    co_run(f.io, vm::up_one(f.ctx, w.target("web"), &f.cancel, nullptr, &started));
    BOOST_TEST(started == "booted");
    BOOST_TEST(w.event_starts("message web warning its hibernated state is dropped (its lima.yaml changed since it "
                              "was hibernated); booting it instead"));
    BOOST_TEST(!fs::exists(w.home.path / "web" / "hibernate.state"));
    BOOST_TEST(!fs::exists(w.home.path / "web" / "hibernate.outcome"));  // the start saw no state
}

BOOST_AUTO_TEST_CASE(a_state_the_start_cannot_load_boots_and_says_so) {
    hibernating_world w;
    auto& f = w.f;
    co_run(f.io, vm::hibernate(f.ctx, "web"));
    std::ofstream(w.home.path / "web" / "hibernate.state") << "cut";  // the fake's stand-in refuses it
    std::string started;
    co_run(f.io, vm::up_one(f.ctx, w.target("web"), &f.cancel, nullptr, &started));
    BOOST_TEST(started == "booted");
    BOOST_TEST(w.event_starts("message web warning the hibernated state could not be resumed (QEMU exited with "
                              "status 1); the VM booted instead"));
}

BOOST_AUTO_TEST_CASE(a_lima_that_cannot_hibernate_stops_the_vm_and_says_so) {
    hibernating_world w;
    auto& f = w.f;
    f.lima.state().can_hibernate = false;
    co_run(f.io, vm::hibernate(f.ctx, "web"));
    BOOST_TEST(f.lima.state().calls == (strings{"list web", "stop web"}), boost::test_tools::per_element());
    BOOST_TEST(w.event_starts("message web warning this Lima cannot hibernate a VM"));
    BOOST_TEST(co_run(f.io, vm::shown_status(f.ctx, f.lima.state().instances["web"])) == "Stopped");
    BOOST_TEST(machine::test::message_of([&] { co_run(f.io, vm::hibernate(f.ctx, "web")); }) ==
               "VM 'web' is not running (Stopped): nothing to hibernate");
}

BOOST_AUTO_TEST_CASE(up_many_starts_hibernated_vms_first_and_says_how_each_came_up) {
    hibernating_world w({"api", "web"});
    auto& f = w.f;
    co_run(f.io, vm::hibernate(f.ctx, "web"));
    co_run(f.io, vm::down(f.ctx, "api"));
    f.lima.state().calls.clear();
    const auto out = co_run(f.io, vm::up_many(f.ctx, {w.target("api"), w.target("web")}, 1, false));
    BOOST_TEST(f.lima.state().calls == (strings{"list api web", "start web", "start api"}),
               boost::test_tools::per_element());
    BOOST_REQUIRE(out.size() == 2u);
    BOOST_TEST(out[0].started == "booted");
    BOOST_TEST(out[1].started == "resumed");
    BOOST_TEST(out[0].state == "ready");
    BOOST_TEST(out[1].state == "ready");
}

BOOST_AUTO_TEST_CASE(restoring_a_hibernated_vms_disk_drops_its_state) {
    hibernating_world w;
    auto& f = w.f;
    co_run(f.io, vm::hibernate(f.ctx, "web"));
    co_run(f.io, vm::snapshot_create(f.ctx, "web", "cold"));
    BOOST_TEST(vm::hibernated_bytes(f.lima.state().instances["web"]) == 5);  // a snapshot leaves the disk as it is
    co_run(f.io, vm::restore(f.ctx, "web", "cold", nullptr));
    BOOST_TEST(vm::hibernated_bytes(f.lima.state().instances["web"]) == 0);
    BOOST_TEST(w.event_starts("message web warning the VM's hibernated state is dropped"));
}

BOOST_AUTO_TEST_SUITE_END()
