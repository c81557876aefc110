// When `machine watch` renders secrets again after a boot (src/vm/render_gate.cpp): a boot Lima
// reports, or a guest boot_id not rendered for; once per boot, never twice in 30 s per VM, and
// never because a guest repeats or invents `user.ready`.
#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <ostream>
#include <string>

#include "render_gate.hpp"

namespace machine::vm {
// Boost.Test prints outcomes when a check fails.
inline std::ostream& operator<<(std::ostream& os, render_gate::outcome o) { return os << to_string(o); }
} // namespace machine::vm

namespace vm = machine::vm;
using gate = vm::render_gate;
using namespace std::chrono_literals;

namespace {

const std::string boot_a = "6f0c2a0e-9f7e-4d5c-9b1a-3c2d1e0f9a8b";
const std::string boot_b = "11111111-2222-3333-4444-555555555555";

// The n-th well-formed boot_id.
std::string boot_id(unsigned n) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%08x-0000-4000-8000-000000000000", n);
    return buf;
}

// A test clock: starts at an arbitrary point, moves only when told.
struct fixture {
    gate g;
    gate::time_point now = gate::time_point{} + 1000h;
    int renders = 0;
    void advance(gate::clock::duration d) { now += d; }
    // The watch loop's poll: renders when the gate says so.
    void poll() { renders += g.take(now) ? 1 : 0; }
};

} // namespace

BOOST_AUTO_TEST_SUITE(cli_render_gate)

BOOST_FIXTURE_TEST_CASE(a_guest_repeating_user_ready_for_one_boot_renders_once, fixture) {
    BOOST_TEST(g.guest_ready(boot_a, now) == gate::outcome::owed);
    poll();
    for (int i = 0; i < 600; ++i) {  // every second for ten minutes
        advance(1s);
        BOOST_TEST(g.guest_ready(boot_a, now) == gate::outcome::same_boot);
        poll();
    }
    BOOST_TEST(renders == 1);
}

BOOST_FIXTURE_TEST_CASE(a_new_boot_id_every_second_renders_at_most_once_per_30_s, fixture) {
    gate::time_point last{};
    bool any = false;
    for (unsigned i = 0; i < 300; ++i) {  // five minutes of invented boots
        g.guest_ready(boot_id(i), now);
        if (g.take(now)) {
            if (any) BOOST_TEST(std::chrono::duration_cast<std::chrono::seconds>(now - last).count() >= 30);
            last = now;
            any = true;
            ++renders;
        }
        advance(1s);
    }
    BOOST_TEST(renders >= 1);
    BOOST_TEST(renders <= 10);  // 300 s / 30 s
}

BOOST_FIXTURE_TEST_CASE(a_boot_lima_reports_renders, fixture) {
    BOOST_TEST(g.lima_booted(now) == gate::outcome::owed);
    poll();
    BOOST_TEST(renders == 1);
    // A second report while Lima already says it runs is the same boot.
    advance(60s);
    BOOST_TEST(g.lima_booted(now) == gate::outcome::same_boot);
    poll();
    BOOST_TEST(renders == 1);
    // Stopped and booted again: a new boot.
    g.lima_stopped();
    advance(5s);
    BOOST_TEST(g.lima_booted(now) == gate::outcome::owed);
    poll();
    BOOST_TEST(renders == 2);
}

BOOST_FIXTURE_TEST_CASE(lima_then_the_guest_for_the_same_boot_render_once, fixture) {
    g.lima_booted(now);
    poll();
    advance(3s);
    BOOST_TEST(g.guest_ready(boot_a, now) == gate::outcome::same_boot);
    poll();
    // Even when the agent is reached long after (its user.ready replayed on reconnection).
    advance(5min);
    BOOST_TEST(g.guest_ready(boot_a, now) == gate::outcome::same_boot);
    poll();
    BOOST_TEST(renders == 1);
}

BOOST_FIXTURE_TEST_CASE(the_guest_then_lima_for_the_same_boot_render_once, fixture) {
    BOOST_TEST(g.guest_ready(boot_a, now) == gate::outcome::owed);
    poll();
    advance(2s);
    BOOST_TEST(g.lima_booted(now) == gate::outcome::same_boot);
    poll();
    advance(40s);
    poll();
    BOOST_TEST(renders == 1);
}

BOOST_FIXTURE_TEST_CASE(a_guest_reboot_lima_does_not_see_renders_once_the_window_allows, fixture) {
    g.lima_booted(now);
    poll();
    g.guest_ready(boot_a, now);
    advance(10s);
    // The guest rebooted itself: a boot_id not rendered for. Inside the window: owed, not now.
    BOOST_TEST(g.guest_ready(boot_b, now) == gate::outcome::deferred);
    poll();
    BOOST_TEST(renders == 1);
    BOOST_TEST((g.due() == now + 20s));
    advance(19s);
    poll();
    BOOST_TEST(renders == 1);
    advance(1s);
    poll();
    BOOST_TEST(renders == 2);
    advance(1h);
    poll();
    BOOST_TEST(renders == 2);
}

BOOST_FIXTURE_TEST_CASE(a_missing_malformed_or_oversized_boot_id_renders_nothing, fixture) {
    const std::string bad[] = {"",
                               "unknown",
                               boot_a + "0",                             // oversized
                               std::string(4096, 'a'),                   // oversized
                               "6F0C2A0E-9F7E-4D5C-9B1A-3C2D1E0F9A8B",  // not as the kernel writes it
                               "6f0c2a0e-9f7e-4d5c-9b1a-3c2d1e0f9a8\n",
                               "6f0c2a0e_9f7e_4d5c_9b1a_3c2d1e0f9a8b",
                               std::string("6f0c2a0e-9f7e-4d5c-9b1a-3c2d1e0f9a8") + '\0'};
    for (const auto& id : bad) {
        BOOST_TEST(g.guest_ready(id, now) == gate::outcome::invalid_boot_id);
        advance(31s);
        poll();
    }
    BOOST_TEST(renders == 0);
    BOOST_TEST(!g.due());
}

BOOST_FIXTURE_TEST_CASE(lima_boots_inside_the_window_render_when_it_ends, fixture) {
    g.lima_booted(now);
    poll();
    g.guest_ready(boot_a, now);
    advance(5s);
    g.lima_stopped();
    advance(5s);
    BOOST_TEST(g.lima_booted(now) == gate::outcome::deferred);
    poll();
    BOOST_TEST(renders == 1);
    // The guest's report of that second boot pairs with it: still one render owed, not two.
    advance(5s);
    BOOST_TEST(g.guest_ready(boot_b, now) == gate::outcome::same_boot);
    advance(15s);
    poll();
    BOOST_TEST(renders == 2);
    advance(1h);
    poll();
    BOOST_TEST(renders == 2);
}

BOOST_FIXTURE_TEST_CASE(a_stop_drops_an_owed_render, fixture) {
    g.lima_booted(now);
    poll();
    g.guest_ready(boot_a, now);
    advance(5s);
    g.guest_ready(boot_b, now);  // owed until the window ends
    BOOST_TEST(g.due().has_value());
    g.lima_stopped();  // ...but the VM is gone
    BOOST_TEST(!g.due());
    advance(1min);
    poll();
    BOOST_TEST(renders == 1);
}

BOOST_FIXTURE_TEST_CASE(many_invented_boot_ids_stay_bounded_and_rate_limited, fixture) {
    for (unsigned i = 0; i < 10000; ++i) g.guest_ready(boot_id(i), now);
    poll();
    poll();
    BOOST_TEST(renders == 1);
}

BOOST_AUTO_TEST_SUITE_END()
