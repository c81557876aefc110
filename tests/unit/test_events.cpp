#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include "machine/events.hpp"

using namespace machine;
using namespace std::chrono_literals;

namespace {
struct recording_sink : events::sink {
    std::vector<events::event> seen;
    void write(const events::event& e) override { seen.push_back(e); }
};
} // namespace

BOOST_AUTO_TEST_SUITE(events_envelope)

BOOST_AUTO_TEST_CASE(bus_numbers_and_stamps_events) {
    events::bus bus;
    auto rec = std::make_shared<recording_sink>();
    bus.add(rec);
    bus.emit(events::vm_state("web", "starting"));
    bus.emit(events::vm_state("web", "running"));
    BOOST_REQUIRE(rec->seen.size() == 2u);
    BOOST_TEST(rec->seen[0].seq == 1u);
    BOOST_TEST(rec->seen[1].seq == 2u);
    BOOST_TEST(rec->seen[0].ts.time_since_epoch().count() > 0);
}

BOOST_AUTO_TEST_CASE(json_line_has_the_envelope_first) {
    auto e = events::step_finished("web", "create", true, 1234ms);
    e.seq = 7;
    e.ts = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795780801234));
    BOOST_TEST(events::to_json_line(e) ==
               R"({"v":1,"seq":7,"ts":"2026-11-27T12:00:01.234Z","vm":"web","type":"step.finished","step":"create","ok":true,"duration_ms":1234})");
}

BOOST_AUTO_TEST_CASE(json_survives_hostile_text) {
    auto e = events::error("web", "bad \xff byte", "line1\nline2 \x1b[31m");
    const auto parsed = nlohmann::json::parse(events::to_json_line(e));
    BOOST_TEST(parsed["type"] == "error");
    BOOST_TEST(parsed["diagnostics"].get<std::string>().find("line1\nline2") == 0u);
}

BOOST_AUTO_TEST_CASE(terminal_rendering) {
    BOOST_TEST(events::terminal_sink::render(events::vm_state("web", "starting", "booting")) ==
               "starting: booting");
    BOOST_TEST(events::terminal_sink::render(events::step_finished("web", "boot", false, 2500ms, "timeout")) ==
               "failed: boot (2.5s) — timeout");
    BOOST_TEST(events::terminal_sink::render(events::vm_done("web", "ready", 61000ms)) == "ready in 61.0s");
}

BOOST_AUTO_TEST_CASE(terminal_sink_strips_escape_sequences) {
    char buf[256] = {};
    std::FILE* f = ::fmemopen(buf, sizeof buf, "w");
    events::terminal_sink sink(f, false);
    auto e = events::message("web", "info", "\x1b]0;pwned\x07hello\x1b[2J");
    sink.write(e);
    std::fclose(f);
    BOOST_TEST(std::string(buf) == "[web] hello\n");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(events_guest)

BOOST_AUTO_TEST_CASE(guest_events_render_and_serialize) {
    // A hostile agent's fields cannot shadow the envelope.
    auto e = events::guest_event("web", "boot.finished", 42,
                                 {{"state", std::string("running")}, {"pid", std::int64_t(7)},
                                  {"seq", std::int64_t(1)}, {"vm", std::string("other")}, {"type", std::string("x")}});
    e.seq = 9;
    BOOST_TEST(events::terminal_sink::render(e) == "agent: boot.finished state=running pid=7");
    const auto j = nlohmann::json::parse(events::to_json_line(e));
    BOOST_TEST(j["type"] == "guest.event");
    BOOST_TEST(j["event"] == "boot.finished");
    BOOST_TEST(j["seq"] == 9);
    BOOST_TEST(j["agent_seq"] == 42);
    BOOST_TEST(j["vm"] == "web");
    BOOST_TEST(j["state"] == "running");
}

BOOST_AUTO_TEST_CASE(session_events_read_as_sentences) {
    const auto started = events::guest_event("web", "session.started", 1,
                                             {{"name", std::string("claude")}, {"agent", std::string("claude")},
                                              {"user", std::string("dev")}, {"pid", std::int64_t(812)}});
    BOOST_TEST(events::terminal_sink::render(started) == "session claude (claude) started as dev, pid 812");
    const auto ended = events::guest_event("web", "session.ended", 2,
                                           {{"name", std::string("review")}, {"agent", std::string("codex")},
                                            {"reason", std::string("exit")}, {"exit_code", std::int64_t(3)},
                                            {"duration_ms", std::int64_t(61500)}});
    BOOST_TEST(events::terminal_sink::render(ended) == "session review (codex) ended: exited with status 3 after 61.5s");
    // A field of the wrong type from a hostile agent is left out, not a crash.
    const auto odd = events::guest_event("web", "session.ended", 3,
                                         {{"name", std::string("x")}, {"agent", std::string("claude")},
                                          {"reason", std::string("signal")}, {"signal", std::string("KILL")},
                                          {"duration_ms", std::string("soon")}});
    BOOST_TEST(events::terminal_sink::render(odd) == "session x (claude) ended: killed by signal  after ");
}

BOOST_AUTO_TEST_SUITE_END()
