// The guest protocol codec (machine::protocol): transcripts decoded in every chunking, the
// decoder's bounds, the encoder and the typed messages. No I/O beyond reading fixtures.
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <random>
#include <sstream>

#include "machine/paths.hpp"
#include "machine/protocol.hpp"

using namespace machine;
namespace proto = machine::protocol;

namespace machine::protocol {
// Boost.Test prints both sides of a failed comparison.
std::ostream& operator<<(std::ostream& out, errc code) { return out << to_string(code); }
} // namespace machine::protocol

namespace {

const std::filesystem::path guest_fixtures = std::filesystem::path(MACHINE_FIXTURES_DIR) / "guest";

// One decoded item as a line of the .expected format.
std::string summary(const proto::decoded& d) {
    auto id_text = [](const std::optional<std::uint64_t>& id) { return id ? std::to_string(*id) : std::string("-"); };
    if (const auto* e = std::get_if<proto::decode_error>(&d))
        return "error " + std::string(proto::to_string(e->code)) + " id=" + id_text(e->id);
    const auto& m = std::get<proto::message>(d);
    return "message " + m.type + " id=" + id_text(m.id);
}

// The full content, so chunkings are compared on bodies too, not only on summaries.
std::string full(const std::vector<proto::decoded>& items) {
    std::string out;
    for (const auto& d : items) {
        out += summary(d);
        if (const auto* m = std::get_if<proto::message>(&d)) out += " " + m->body.dump();
        else out += " " + std::get<proto::decode_error>(d).message;
        out += '\n';
    }
    return out;
}

struct transcript {
    std::string bytes;
    proto::decoder_options options;
    std::vector<std::string> expected;
};

transcript load(const std::string& name) {
    transcript t;
    t.bytes = paths::read_file(guest_fixtures / (name + ".jsonl"));
    std::istringstream in(paths::read_file(guest_fixtures / (name + ".expected")));
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        if (line[0] == '#') {
            std::istringstream opts(line.substr(1));
            std::string kv;
            while (opts >> kv) {
                const auto eq = kv.find('=');
                const auto key = kv.substr(0, eq), value = kv.substr(eq + 1);
                if (key == "require_id") t.options.require_id = value == "true";
                else if (key == "max_line") t.options.max_line = std::stoul(value);
            }
            continue;
        }
        t.expected.push_back(line);
    }
    return t;
}

std::vector<proto::decoded> decode_in_chunks(const transcript& t, const std::vector<std::size_t>& sizes) {
    proto::decoder dec(t.options);
    std::vector<proto::decoded> out;
    std::size_t pos = 0, k = 0;
    while (pos < t.bytes.size()) {
        const std::size_t n = std::min(sizes[k++ % sizes.size()], t.bytes.size() - pos);
        dec.feed(std::string_view(t.bytes).substr(pos, n), out);
        BOOST_TEST(dec.buffered() <= t.options.max_line);
        pos += n;
    }
    dec.finish(out);
    return out;
}

std::vector<proto::decoded> decode_all_at_once(const transcript& t) {
    return decode_in_chunks(t, {t.bytes.size() + 1});
}

std::vector<proto::decoded> decode_byte_by_byte(const transcript& t) { return decode_in_chunks(t, {1}); }

void check_transcript(const std::string& name) {
    BOOST_TEST_CONTEXT("transcript " << name) {
        const transcript t = load(name);
        BOOST_REQUIRE(!t.bytes.empty());
        const auto whole = decode_all_at_once(t);
        std::vector<std::string> got;
        for (const auto& d : whole) got.push_back(summary(d));
        BOOST_TEST(got == t.expected, boost::test_tools::per_element());

        const std::string reference = full(whole);
        BOOST_TEST(full(decode_byte_by_byte(t)) == reference);
        std::mt19937 rng(42);
        for (int round = 0; round < 20; ++round) {
            std::vector<std::size_t> sizes;
            for (int i = 0; i < 16; ++i) sizes.push_back(std::uniform_int_distribution<std::size_t>(1, 97)(rng));
            BOOST_TEST(full(decode_in_chunks(t, sizes)) == reference);
        }
    }
}

proto::message decode_one(const std::string& line, proto::decoder_options opt = {}) {
    auto d = proto::decode_line(line, opt);
    BOOST_REQUIRE(d.has_value());
    BOOST_REQUIRE(std::holds_alternative<proto::message>(*d));
    return std::get<proto::message>(std::move(*d));
}

} // namespace

BOOST_AUTO_TEST_SUITE(protocol_transcripts)

BOOST_AUTO_TEST_CASE(requests) { check_transcript("requests"); }
BOOST_AUTO_TEST_CASE(responses) { check_transcript("responses"); }
BOOST_AUTO_TEST_CASE(malformed) { check_transcript("malformed"); }
BOOST_AUTO_TEST_CASE(overlong) { check_transcript("overlong"); }

BOOST_AUTO_TEST_CASE(responses_parse_into_typed_messages) {
    const transcript t = load("responses");
    proto::decoder dec(t.options);
    const auto items = dec.feed(t.bytes);
    std::size_t outputs = 0, events = 0;
    for (const auto& d : items) {
        const auto& m = std::get<proto::message>(d);
        if (m.type == proto::type::output) {
            const auto o = proto::parse_output(m.body);
            BOOST_TEST_REQUIRE(bool(o), o.error);
            ++outputs;
            if (*m.id == 3) BOOST_TEST(o->data == std::string("\x00\x01\x02\x03\xfe\xffhello\n", 12));
        } else if (m.type == proto::type::event) {
            const auto e = proto::parse_event(m.body);
            BOOST_TEST_REQUIRE(bool(e), e.error);
            ++events;
            if (e->seq == 43) {
                BOOST_TEST(e->event == "step.finished");
                BOOST_TEST(e->fields["duration_ms"] == 8123);
                BOOST_TEST(!e->fields.contains("seq"));
                BOOST_TEST(!e->fields.contains("type"));
            }
        } else if (m.type == proto::type::result && *m.id == 1) {
            const auto h = proto::parse_hello_result(m.body);
            BOOST_TEST_REQUIRE(bool(h), h.error);
            BOOST_TEST(h->journal.last_seq == 42u);
            BOOST_TEST(h->capabilities.size() == 5u);
        } else if (m.type == proto::type::result && *m.id == 3) {
            const auto r = proto::parse_run_result(m.body);
            BOOST_TEST_REQUIRE(bool(r), r.error);
            BOOST_TEST(*r->signal == 15);
            BOOST_TEST(r->cancelled);
        } else if (m.type == proto::type::result && *m.id == 5) {
            BOOST_TEST(bool(proto::parse_health_result(m.body)));
        } else if (m.type == proto::type::error && !m.id) {
            const auto e = proto::parse_error(m.body);
            BOOST_TEST(e->code == "invalid_json");
            BOOST_TEST((proto::errc_from_string(e->code) == proto::errc::invalid_json));
        } else if (m.type == proto::type::gap) {
            const auto g = proto::parse_gap(m.body);
            BOOST_TEST(g->from_seq == 1u);
            BOOST_TEST(g->to_seq == 40u);
        }
    }
    BOOST_TEST(outputs == 3u);
    BOOST_TEST(events == 2u);
}

BOOST_AUTO_TEST_CASE(requests_parse_into_typed_messages) {
    const transcript t = load("requests");
    proto::decoder dec(t.options);
    const auto items = dec.feed(t.bytes);
    const auto run = proto::parse_run_request(std::get<proto::message>(items[1]).body);
    BOOST_TEST_REQUIRE(bool(run), run.error);
    BOOST_TEST(run->argv.size() == 5u);
    BOOST_TEST(run->argv[4] == "a b; $(rm -rf /) `x` | & > *");  // verbatim, never a shell string
    BOOST_TEST(run->env.size() == 2u);
    BOOST_TEST(run->env[1].first == "EMPTY");
    BOOST_TEST(!run->stdin_data.has_value());
    const auto cat = proto::parse_run_request(std::get<proto::message>(items[2]).body);
    BOOST_TEST(*cat->stdin_data == std::string("\x00\x01\x02\x03\xfe\xffhello\n", 12));
    BOOST_TEST(*cat->grace_ms == 100u);
    BOOST_TEST(proto::parse_cancel_request(std::get<proto::message>(items[3]).body)->target == 3u);
    BOOST_TEST(proto::parse_subscribe_request(std::get<proto::message>(items[5]).body)->from_seq == 41u);
    const auto emit = proto::parse_emit_request(std::get<proto::message>(items[6]).body);
    BOOST_TEST_REQUIRE(bool(emit), emit.error);
    BOOST_TEST(emit->fields["detail"] == "caf\u00e9 \u2713");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_decoder)

BOOST_AUTO_TEST_CASE(never_buffers_more_than_a_line) {
    proto::decoder dec({.max_line = 1000, .require_id = true});
    std::vector<proto::decoded> out;
    const std::string junk(4096, 'x');
    for (int i = 0; i < 2560; ++i) {  // 10 MiB without a newline
        dec.feed(junk, out);
        BOOST_TEST_REQUIRE(dec.buffered() <= 1000u);
    }
    BOOST_TEST(out.size() == 1u);  // reported once, as soon as it passed the limit
    BOOST_TEST(dec.discarding());
    dec.feed("tail\n{\"v\":1,\"id\":1,\"type\":\"hello\"}\n", out);
    BOOST_REQUIRE(out.size() == 2u);
    BOOST_TEST(summary(out[1]) == "message hello id=1");
    BOOST_TEST(!dec.discarding());
}

BOOST_AUTO_TEST_CASE(line_at_the_limit_is_accepted) {
    std::string line = R"({"v":1,"id":1,"type":"hello","client":")";
    line += std::string(proto::max_line_bytes - line.size() - 2, 'c');
    line += "\"}";
    BOOST_REQUIRE(line.size() == proto::max_line_bytes);
    proto::decoder dec;
    auto out = dec.feed(line + "\n");
    BOOST_REQUIRE(out.size() == 1u);
    BOOST_TEST(summary(out[0]) == "message hello id=1");
    out = dec.feed("x" + line + "\n");
    BOOST_TEST(summary(out[0]) == "error line_too_long id=-");
}

BOOST_AUTO_TEST_CASE(finish_reports_an_unfinished_line_once) {
    proto::decoder dec;
    std::vector<proto::decoded> out;
    dec.feed(R"({"v":1,"id":1,"type":"hel)", out);
    BOOST_TEST(out.empty());
    dec.finish(out);
    BOOST_REQUIRE(out.size() == 1u);
    BOOST_TEST(summary(out[0]) == "error truncated id=-");
    dec.finish(out);
    BOOST_TEST(out.size() == 1u);
    BOOST_TEST(dec.buffered() == 0u);
}

BOOST_AUTO_TEST_CASE(errors_keep_the_id_when_there_is_one) {
    auto d = proto::decode_line(R"({"v":3,"id":12,"type":"hello"})");
    BOOST_TEST(summary(*d) == "error bad_version id=12");
    const auto reply = proto::make_error(std::get<proto::decode_error>(*d));
    BOOST_TEST(reply["id"] == 12);
    BOOST_TEST(reply["code"] == "bad_version");
}

BOOST_AUTO_TEST_CASE(id_null_is_accepted_only_without_require_id) {
    const std::string line = R"({"v":1,"id":null,"type":"error","code":"invalid_json","message":"x"})";
    BOOST_TEST(summary(*proto::decode_line(line, {.require_id = true})) == "error bad_id id=-");
    BOOST_TEST(summary(*proto::decode_line(line, {.require_id = false})) == "message error id=-");
}

BOOST_AUTO_TEST_CASE(blank_lines_are_not_messages) {
    BOOST_TEST(!proto::decode_line("").has_value());
    BOOST_TEST(!proto::decode_line(" \t\r").has_value());
    proto::decoder dec;
    BOOST_TEST(dec.feed("\n\r\n  \n").empty());
    BOOST_TEST(dec.lines() == 3u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_encoder)

BOOST_AUTO_TEST_CASE(one_line_per_message_with_the_envelope_first) {
    const auto line = proto::encode(proto::make_run_result(7, {.exit_code = 0, .duration_ms = 3}));
    BOOST_TEST(line == "{\"v\":1,\"id\":7,\"type\":\"result\",\"exit_code\":0,\"cancelled\":false,\"duration_ms\":3}\n");
    BOOST_TEST(proto::encode(proto::make_error(std::nullopt, proto::errc::line_too_long, "too long")) ==
               "{\"v\":1,\"id\":null,\"type\":\"error\",\"code\":\"line_too_long\",\"message\":\"too long\"}\n");
}

BOOST_AUTO_TEST_CASE(newlines_inside_strings_stay_escaped) {
    proto::run_request r{.argv = {"printf", "a\nb\r\n"}, .user = "alice"};
    const auto line = proto::encode(proto::make_run_request(1, r));
    BOOST_TEST(std::count(line.begin(), line.end(), '\n') == 1);
    const auto back = proto::parse_run_request(decode_one(line.substr(0, line.size() - 1)).body);
    BOOST_TEST(back->argv[1] == "a\nb\r\n");
}

BOOST_AUTO_TEST_CASE(invalid_utf8_is_repaired_not_thrown) {
    proto::json j = proto::make_result(1, proto::json{{"text", std::string("bad \xff byte")}});
    std::string line;
    BOOST_CHECK_NO_THROW(line = proto::encode(j));
    BOOST_TEST(proto::decode_line(line.substr(0, line.size() - 1)).has_value());
}

BOOST_AUTO_TEST_CASE(a_message_over_the_limit_throws) {
    proto::json j = proto::make_result(1, proto::json{{"big", std::string(proto::max_line_bytes, 'x')}});
    BOOST_CHECK_THROW(proto::encode(j), std::length_error);
}

BOOST_AUTO_TEST_CASE(largest_output_chunk_fits_a_line) {
    const std::string chunk(proto::output_chunk_bytes, '\xff');
    const auto line = proto::encode(proto::make_output(proto::max_id, "stderr", chunk));
    BOOST_TEST(line.size() < proto::max_line_bytes / 16);
    const auto o = proto::parse_output(decode_one(line.substr(0, line.size() - 1)).body);
    BOOST_TEST(o->data == chunk);
}

BOOST_AUTO_TEST_CASE(every_builder_round_trips) {
    auto round = [](const proto::json& j, bool require_id = false) {
        const auto line = proto::encode(j);
        return decode_one(line.substr(0, line.size() - 1), {.require_id = require_id}).body;
    };
    proto::run_request run{.argv = {"ls", "-l"},
                           .user = "alice",
                           .cwd = "/tmp",
                           .env = {{"A", "1"}},
                           .stdin_data = std::string("\0in", 3),
                           .grace_ms = 250};
    const auto r = proto::parse_run_request(round(proto::make_run_request(1, run), true));
    BOOST_TEST_REQUIRE(bool(r), r.error);
    BOOST_TEST(r->argv == run.argv);
    BOOST_TEST(*r->cwd == "/tmp");
    BOOST_TEST(*r->stdin_data == *run.stdin_data);
    BOOST_TEST(*r->grace_ms == 250u);

    proto::hello_result h{.agent_version = "9.9", .capabilities = {"run"}, .boot_id = "b", .journal = {"j", 3, 9}};
    const auto hb = proto::parse_hello_result(round(proto::make_hello_result(2, h)));
    BOOST_TEST(hb->journal.id == "j");
    BOOST_TEST(hb->journal.first_seq == 3u);

    proto::event_record e{.seq = 5, .ts = "2026-11-27T12:00:00.000Z", .event = "user.ready",
                          .fields = {{"user", "alice"}, {"uid", 1000}}};
    const auto eb = proto::parse_event(round(proto::make_event(3, e)));
    BOOST_TEST(eb->seq == 5u);
    BOOST_TEST(eb->fields == e.fields);

    // The journal's spliced form is the same message as the built one.
    const auto spliced = proto::event_message_from_journal_line(3, proto::journal_line(e));
    BOOST_TEST(spliced == proto::encode(proto::make_event(3, e)));

    const auto emit = proto::parse_emit_request(round(proto::make_emit_request(4, {"a.b", {{"k", "v"}}}), true));
    BOOST_TEST(emit->event == "a.b");
    BOOST_TEST(proto::parse_subscribe_request(round(proto::make_subscribe_request(5, {77}), true))->from_seq == 77u);
    BOOST_TEST(proto::parse_cancel_request(round(proto::make_cancel_request(6, {5}), true))->target == 5u);
    BOOST_TEST(proto::parse_gap(round(proto::make_gap(5, {1, 2})))->to_seq == 2u);
    BOOST_TEST(proto::parse_hello_request(round(proto::make_hello_request(8, {"host"}), true))->client == "host");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_messages)

BOOST_AUTO_TEST_CASE(run_request_validation_names_the_field) {
    auto check = [](const std::string& line, const std::string& expected) {
        const auto r = proto::parse_run_request(decode_one(line).body);
        BOOST_TEST_CONTEXT(line) {
            BOOST_TEST(!r);
            BOOST_TEST(r.error.find(expected) != std::string::npos, r.error);
            BOOST_TEST(r.code == proto::errc::bad_request);
        }
    };
    check(R"({"v":1,"id":1,"type":"run","user":"a"})", "missing 'argv'");
    check(R"({"v":1,"id":1,"type":"run","argv":"ls -l","user":"a"})", "'argv' must be an array");
    check(R"({"v":1,"id":1,"type":"run","argv":[],"user":"a"})", "must not be empty");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls",3],"user":"a"})", "argv[1] must be a string");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls","a\u0000b"],"user":"a"})", "NUL");
    check(R"({"v":1,"id":1,"type":"run","argv":[""],"user":"a"})", "argv[0]");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls"]})", "missing 'user'");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls"],"user":"a","cwd":"rel"})", "absolute");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls"],"user":"a","env":{"A=B":"x"}})", "invalid variable");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls"],"user":"a","env":{"A":1}})", "'A' must be a string");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls"],"user":"a","stdin_b64":"abc"})", "base64");
    check(R"({"v":1,"id":1,"type":"run","argv":["ls"],"user":"a","grace_ms":-5})", "grace_ms");
}

BOOST_AUTO_TEST_CASE(emit_request_checks_name_reserved_keys_and_size) {
    auto parse = [](const proto::json& j) { return proto::parse_emit_request(j); };
    BOOST_TEST(!parse(proto::make_emit_request(1, {"Bad Name", {}})));
    BOOST_TEST(!parse(proto::make_emit_request(1, {".dot", {}})));
    BOOST_TEST(!parse(proto::make_emit_request(1, {std::string(65, 'a'), {}})));
    BOOST_TEST(bool(parse(proto::make_emit_request(1, {std::string(64, 'a'), {}}))));
    for (const char* reserved : {"v", "id", "type", "seq", "ts", "event"}) {
        const auto r = parse(proto::make_emit_request(1, {"x", {{reserved, 1}}}));
        BOOST_TEST(!r, reserved);
    }
    const auto big = parse(proto::make_emit_request(1, {"x", {{"pad", std::string(proto::max_event_bytes, 'p')}}}));
    BOOST_TEST(!big);
    BOOST_TEST(big.code == proto::errc::too_large);
}

BOOST_AUTO_TEST_CASE(run_result_has_exit_code_or_signal) {
    BOOST_TEST(!proto::parse_run_result(decode_one(R"({"v":1,"id":1,"type":"result"})").body));
    BOOST_TEST(!proto::parse_run_result(
        decode_one(R"({"v":1,"id":1,"type":"result","exit_code":0,"signal":9})").body));
}

BOOST_AUTO_TEST_CASE(error_codes_round_trip) {
    for (int c = 0; c <= static_cast<int>(proto::errc::internal); ++c) {
        const auto code = static_cast<proto::errc>(c);
        BOOST_TEST((proto::errc_from_string(proto::to_string(code)) == code));
    }
    BOOST_TEST(!proto::errc_from_string("made_up").has_value());
}

BOOST_AUTO_TEST_CASE(provision_request_round_trips) {
    proto::provision_request q;
    q.plan = "web";
    q.force = true;
    q.steps.push_back({.name = "base.packages",
                       .user = "root",
                       .env = {{"DEBIAN_FRONTEND", "noninteractive"}, {"A", "1"}},
                       .check = {"dpkg", "-s", "git"},
                       .run = {"apt-get", "install", "-y", "git"},
                       .timeout_ms = 1234,
                       .hash = std::string(64, 'a')});
    q.steps.push_back({.name = "2nd", .user = "alice", .run = {"true"}, .hash = "0"});
    const auto line = proto::encode(proto::make_provision_request(9, q));
    const auto m = decode_one(line.substr(0, line.size() - 1));
    BOOST_TEST(m.type == "provision");
    const auto r = proto::parse_provision_request(m.body);
    BOOST_TEST_REQUIRE(bool(r), r.error);
    BOOST_TEST(r->plan == "web");
    BOOST_TEST(r->force);
    BOOST_TEST_REQUIRE(r->steps.size() == 2u);
    const auto& a = r->steps[0];
    BOOST_TEST(a.name == "base.packages");
    BOOST_TEST(a.user == "root");
    BOOST_TEST((a.env == q.steps[0].env));
    BOOST_TEST(a.check == q.steps[0].check, boost::test_tools::per_element());
    BOOST_TEST(a.run == q.steps[0].run, boost::test_tools::per_element());
    BOOST_TEST(a.timeout_ms == 1234u);
    BOOST_TEST(a.hash == std::string(64, 'a'));
    const auto& b = r->steps[1];
    BOOST_TEST(b.check.empty());  // no check: no "check" key, not an empty array
    BOOST_TEST(!m.body["steps"][1].contains("check"));
    BOOST_TEST(b.timeout_ms == proto::default_step_timeout_ms);

    // Defaults: force false, timeout 600000.
    const auto d = proto::parse_provision_request(decode_one(
        R"({"v":1,"id":1,"type":"provision","plan":"p","steps":[{"name":"s","user":"u","run":["x"],"hash":"ab"}]})").body);
    BOOST_TEST_REQUIRE(bool(d), d.error);
    BOOST_TEST(!d->force);
    BOOST_TEST(d->steps[0].timeout_ms == 600000u);
}

BOOST_AUTO_TEST_CASE(provision_request_validation_names_the_field) {
    const std::string ok_step = R"({"name":"s","user":"u","run":["x"],"hash":"ab"})";
    auto with_steps = [](const std::string& steps, const std::string& extra = "", const std::string& plan = "p") {
        return R"({"v":1,"id":1,"type":"provision","plan":")" + plan + "\"," + extra + R"("steps":)" + steps + "}";
    };
    auto accepted = [](const std::string& line) {
        const auto r = proto::parse_provision_request(decode_one(line).body);
        BOOST_TEST(bool(r), line << ": " << r.error);
    };
    auto numbered_steps = [](int n, const std::string& fields) {
        std::string out = "[";
        for (int i = 0; i < n; ++i) out += (i ? "," : "") + std::string(R"({"name":"s)") + std::to_string(i) + "\"," + fields + "}";
        return out + "]";
    };
    auto step = [](const std::string& fields) { return "[{" + fields + "}]"; };
    auto check = [](const std::string& line, const std::string& expected) {
        const auto r = proto::parse_provision_request(decode_one(line).body);
        BOOST_TEST_CONTEXT(line) {
            BOOST_TEST(!r);
            BOOST_TEST(r.error.find(expected) != std::string::npos, r.error);
            BOOST_TEST(r.code == proto::errc::bad_request);
        }
    };
    const std::string base = R"("user":"u","run":["x"],"hash":"ab")";
    // plan
    check(R"({"v":1,"id":1,"type":"provision","steps":[]})", "missing 'plan'");
    check(R"({"v":1,"id":1,"type":"provision","plan":"","steps":[]})", "'plan'");
    check(R"({"v":1,"id":1,"type":"provision","plan":3,"steps":[]})", "'plan' must be a string");
    check(with_steps("[" + ok_step + "]", "", std::string(65, 'p')), "'plan' must be 1-64 characters");
    accepted(with_steps("[" + ok_step + "]", "", std::string(64, 'p')));
    accepted(with_steps("[" + ok_step + "]", "", "Ã©tÃ©"));  // characters, not bytes
    // force
    check(with_steps("[" + ok_step + "]", R"("force":"yes",)"), "'force'");
    // steps
    check(R"({"v":1,"id":1,"type":"provision","plan":"p"})", "missing 'steps'");
    check(with_steps("{}"), "'steps' must be an array");
    check(with_steps("[]"), "'steps' must not be empty");
    check(with_steps(numbered_steps(513, base)), "'steps' has more than 512 items");
    accepted(with_steps(numbered_steps(512, base)));
    check(with_steps("[3]"), "steps[0] must be an object");
    // name
    check(with_steps(step(base)), "steps[0]: missing 'name'");
    check(with_steps(step(R"("name":"Bad",)" + base)), "steps[0]: 'name'");
    check(with_steps(step(R"("name":".dot",)" + base)), "steps[0]: 'name'");
    check(with_steps(step(R"("name":"a b",)" + base)), "steps[0]: 'name'");
    check(with_steps(step(R"("name":")" + std::string(65, 'a') + "\"," + base)), "steps[0]: 'name'");
    check(with_steps("[" + ok_step + "," + ok_step + "]"), "steps[1]: 'name' 's' is already used by steps[0]");
    // user
    check(with_steps(step(R"("name":"s","run":["x"],"hash":"ab")")), "steps[0]: missing 'user'");
    check(with_steps(step(R"("name":"s","user":"","run":["x"],"hash":"ab")")), "steps[0]: 'user'");
    // env
    check(with_steps(step(R"("name":"s","env":{"A=B":"x"},)" + base)), "steps[0]: env: invalid variable");
    check(with_steps(step(R"("name":"s","env":{"A":1},)" + base)), "steps[0]: env: 'A' must be a string");
    check(with_steps(step(R"("name":"s","env":[],)" + base)), "steps[0]: 'env' must be an object");
    // check
    check(with_steps(step(R"("name":"s","check":[],)" + base)), "steps[0]: 'check' must not be empty");
    check(with_steps(step(R"("name":"s","check":"true",)" + base)), "steps[0]: 'check' must be an array");
    check(with_steps(step(R"("name":"s","check":["a",1],)" + base)), "steps[0]: check[1] must be a string");
    // run
    check(with_steps(step(R"("name":"s","user":"u","hash":"ab")")), "steps[0]: missing 'run'");
    check(with_steps(step(R"("name":"s","user":"u","run":[],"hash":"ab")")), "steps[0]: 'run' must not be empty");
    check(with_steps(step(R"("name":"s","user":"u","run":[""],"hash":"ab")")), "steps[0]: run[0] must not be empty");
    check(with_steps(step(R"("name":"s","user":"u","run":"ls","hash":"ab")")), "steps[0]: 'run' must be an array");
    // timeout_ms
    check(with_steps(step(R"("name":"s","timeout_ms":0,)" + base)), "steps[0]: 'timeout_ms'");
    check(with_steps(step(R"("name":"s","timeout_ms":86400001,)" + base)), "steps[0]: 'timeout_ms'");
    check(with_steps(step(R"("name":"s","timeout_ms":-1,)" + base)), "steps[0]: 'timeout_ms'");
    check(with_steps(step(R"("name":"s","timeout_ms":1.5,)" + base)), "steps[0]: 'timeout_ms'");
    accepted(with_steps(step(R"("name":"s","timeout_ms":86400000,)" + base)));
    accepted(with_steps(step(R"("name":"0.a_b-c",)" + base)));
    // hash
    check(with_steps(step(R"("name":"s","user":"u","run":["x"])")), "steps[0]: missing 'hash'");
    check(with_steps(step(R"("name":"s","user":"u","run":["x"],"hash":"")")), "steps[0]: 'hash'");
    check(with_steps(step(R"("name":"s","user":"u","run":["x"],"hash":"ABCD")")), "steps[0]: 'hash'");
    check(with_steps(step(R"("name":"s","user":"u","run":["x"],"hash":"xyz")")), "steps[0]: 'hash'");
    check(with_steps(step(R"("name":"s","user":"u","run":["x"],"hash":")" + std::string(129, 'f') + "\"")),
          "steps[0]: 'hash'");
    check(with_steps(step(R"("name":"s","user":"u","run":["x"],"hash":7)")), "steps[0]: 'hash' must be a string");
    // The index is the failing step's, not the first one's.
    check(with_steps("[" + ok_step + R"(,{"name":"t","user":"u","run":["x"]}])"), "steps[1]: missing 'hash'");
}

BOOST_AUTO_TEST_CASE(provision_result_round_trips) {
    proto::provision_result q;
    q.ok = false;
    q.cancelled = true;
    q.duration_ms = 1500;
    q.steps.push_back({.name = "a", .outcome = "unchanged"});
    q.steps.push_back({.name = "b", .outcome = "satisfied", .duration_ms = 12});
    q.steps.push_back({.name = "c",
                       .outcome = "failed",
                       .duration_ms = 900,
                       .reason = "exit",
                       .exit_code = 3,
                       .tail = {"line 1", "bad \xff byte"},
                       .error = ""});
    q.steps.push_back({.name = "d", .outcome = "failed", .reason = "timeout", .signal = 15});
    q.steps.push_back({.name = "e", .outcome = "failed", .reason = "state_write_failed", .exit_code = 0,
                       .error = "No space left on device"});
    q.steps.push_back({.name = "f", .outcome = "not_run"});
    const auto line = proto::encode(proto::make_provision_result(4, q));
    const auto m = decode_one(line.substr(0, line.size() - 1));
    BOOST_TEST(!m.body["steps"][0].contains("tail"));    // only failed steps carry a tail
    BOOST_TEST(!m.body["steps"][0].contains("reason"));
    BOOST_TEST(m.body["steps"][3]["tail"].is_array());
    const auto r = proto::parse_provision_result(m.body);
    BOOST_TEST_REQUIRE(bool(r), r.error);
    BOOST_TEST(!r->ok);
    BOOST_TEST(r->cancelled);
    BOOST_TEST(r->duration_ms == 1500u);
    BOOST_TEST_REQUIRE(r->steps.size() == 6u);
    BOOST_TEST(r->steps[1].outcome == "satisfied");
    BOOST_TEST(r->steps[1].duration_ms == 12u);
    BOOST_TEST(r->steps[2].reason == "exit");
    BOOST_TEST(*r->steps[2].exit_code == 3);
    BOOST_TEST(!r->steps[2].signal.has_value());
    BOOST_TEST(r->steps[2].tail.size() == 2u);
    BOOST_TEST(r->steps[2].tail[1] == "bad \xEF\xBF\xBD byte");  // repaired by encode, not thrown
    BOOST_TEST(*r->steps[3].signal == 15);
    BOOST_TEST(r->steps[4].error == "No space left on device");
    BOOST_TEST(r->steps[5].outcome == "not_run");

    auto bad = [](const std::string& line, const std::string& expected) {
        const auto p = proto::parse_provision_result(decode_one(line).body);
        BOOST_TEST_CONTEXT(line) {
            BOOST_TEST(!p);
            BOOST_TEST(p.error.find(expected) != std::string::npos, p.error);
        }
    };
    bad(R"({"v":1,"id":1,"type":"result","steps":[]})", "missing 'ok'");
    bad(R"({"v":1,"id":1,"type":"result","ok":true})", "missing 'steps'");
    bad(R"({"v":1,"id":1,"type":"result","ok":true,"steps":[{"name":"a","outcome":"maybe"}]})", "steps[0]: 'outcome'");
    bad(R"({"v":1,"id":1,"type":"result","ok":true,"steps":[{"outcome":"ran"}]})", "steps[0]: missing 'name'");
    bad(R"({"v":1,"id":1,"type":"result","ok":false,"steps":[{"name":"a","outcome":"failed"}]})", "'reason'");
    bad(R"({"v":1,"id":1,"type":"result","ok":false,"steps":[{"name":"a","outcome":"ran","tail":[1]}]})", "'tail'");
}

BOOST_AUTO_TEST_CASE(provision_pending_round_trips_and_refuses_what_is_not_a_step) {
    proto::provision_pending_request q;
    q.steps = {{.name = "base.packages", .hash = "9f86"}, {.name = "node.install", .hash = "4e07"}};
    const auto line = proto::encode(proto::make_provision_pending_request(6, q));
    const auto m = decode_one(line.substr(0, line.size() - 1));
    BOOST_TEST(m.type == "provision.pending");
    const auto back = proto::parse_provision_pending_request(m.body);
    BOOST_TEST_REQUIRE(bool(back), back.error);
    BOOST_TEST_REQUIRE(back->steps.size() == 2u);
    BOOST_TEST(back->steps[1].name == "node.install");
    BOOST_TEST(back->steps[1].hash == "4e07");

    proto::provision_pending_result r;
    r.pending = {"node.install"};
    const auto rline = proto::encode(proto::make_provision_pending_result(6, r));
    const auto parsed = proto::parse_provision_pending_result(decode_one(rline.substr(0, rline.size() - 1)).body);
    BOOST_TEST_REQUIRE(bool(parsed), parsed.error);
    BOOST_TEST(parsed->pending == std::vector<std::string>{"node.install"}, boost::test_tools::per_element());

    auto bad_request = [](const std::string& line, const std::string& expected) {
        const auto p = proto::parse_provision_pending_request(decode_one(line).body);
        BOOST_TEST_CONTEXT(line) {
            BOOST_TEST(!p);
            BOOST_TEST(p.error.find(expected) != std::string::npos, p.error);
        }
    };
    bad_request(R"({"v":1,"id":1,"type":"provision.pending"})", "missing 'steps'");
    bad_request(R"({"v":1,"id":1,"type":"provision.pending","steps":[{"name":"a b","hash":"ab"}]})", "steps[0]: 'name'");
    bad_request(R"({"v":1,"id":1,"type":"provision.pending","steps":[{"name":"a","hash":"AB"}]})", "steps[0]: 'hash'");
    bad_request(R"({"v":1,"id":1,"type":"provision.pending","steps":[{"name":"a","hash":"ab"},{"name":"a","hash":"cd"}]})",
                "steps[1]: 'name' 'a' is already used by steps[0]");
    auto bad_result = [](const std::string& line, const std::string& expected) {
        const auto p = proto::parse_provision_pending_result(decode_one(line).body);
        BOOST_TEST_CONTEXT(line) {
            BOOST_TEST(!p);
            BOOST_TEST(p.error.find(expected) != std::string::npos, p.error);
        }
    };
    bad_result(R"({"v":1,"id":1,"type":"result"})", "missing 'pending'");
    bad_result(R"({"v":1,"id":1,"type":"result","pending":["ok","\u001b[2J"]})", "'pending[1]' is not a step name");
    bad_result(R"({"v":1,"id":1,"type":"result","pending":[7]})", "'pending[0]' is not a step name");
    std::string many = R"({"v":1,"id":1,"type":"result","pending":[)";
    for (int i = 0; i < 513; ++i) many += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\"";
    bad_result(many + "]}", "more than 512");
}

BOOST_AUTO_TEST_CASE(busy_is_a_known_code) {
    BOOST_TEST(proto::to_string(proto::errc::busy) == "busy");
    BOOST_TEST((proto::errc_from_string("busy") == proto::errc::busy));
    const auto line = proto::encode(proto::make_error(3, proto::errc::busy, "x"));
    BOOST_TEST(proto::parse_error(decode_one(line.substr(0, line.size() - 1)).body)->code == "busy");
}

BOOST_AUTO_TEST_CASE(unsafe_target_is_a_known_code) {
    BOOST_TEST(proto::to_string(proto::errc::unsafe_target) == "unsafe_target");
    BOOST_TEST((proto::errc_from_string("unsafe_target") == proto::errc::unsafe_target));
    const auto line = proto::encode(proto::make_error(4, proto::errc::unsafe_target, "not a tmpfs"));
    BOOST_TEST(proto::parse_error(decode_one(line.substr(0, line.size() - 1)).body)->code == "unsafe_target");
}

BOOST_AUTO_TEST_CASE(secrets_discover_round_trips) {
    const auto request = proto::encode(proto::make_secrets_discover_request(9));
    BOOST_TEST(request == "{\"v\":1,\"id\":9,\"type\":\"secrets.discover\"}\n");

    proto::secrets_discover_result r;
    r.repos.push_back({"org/api", "/home/u/code/org/api/.envrc", {{"api", 2}, {"Bad!", 5}}});
    r.repos.push_back({"web", "/home/u/code/web/.envrc", {{"web", 1}}});
    const auto line = proto::encode(proto::make_secrets_discover_result(9, r));
    BOOST_TEST(line.find("truncated") == std::string::npos);
    const auto back = proto::parse_secrets_discover_result(decode_one(line.substr(0, line.size() - 1)).body);
    BOOST_TEST_REQUIRE(bool(back), back.error);
    BOOST_REQUIRE(back->repos.size() == 2u);
    BOOST_TEST(back->repos[0].dir == "org/api");
    BOOST_TEST(back->repos[0].path == "/home/u/code/org/api/.envrc");
    BOOST_REQUIRE(back->repos[0].uses.size() == 2u);
    BOOST_TEST(back->repos[0].uses[1].set == "Bad!");  // reported as written: the host says what is wrong
    BOOST_TEST(back->repos[0].uses[1].line == 5u);
    BOOST_TEST(!back->truncated);

    r.truncated = true;
    r.repos.clear();
    const auto empty = proto::encode(proto::make_secrets_discover_result(9, r));
    const auto eb = proto::parse_secrets_discover_result(decode_one(empty.substr(0, empty.size() - 1)).body);
    BOOST_TEST_REQUIRE(bool(eb), eb.error);
    BOOST_TEST(eb->repos.empty());
    BOOST_TEST(eb->truncated);
}

BOOST_AUTO_TEST_CASE(secrets_discover_result_rejects_hostile_input) {
    auto repo = [](const std::string& dir, const std::string& path, const proto::json& uses) {
        return proto::json{{"dir", dir}, {"path", path}, {"uses", uses}};
    };
    const proto::json one_use = proto::json::array({{{"set", "web"}, {"line", 1}}});
    auto result = [](const proto::json& repos) {
        proto::json j = proto::make_envelope(1, proto::type::result);
        j["repos"] = repos;
        return j;
    };
    auto bad = [&](const proto::json& body, const std::string& expected) {
        const auto r = proto::parse_secrets_discover_result(body);
        BOOST_TEST_CONTEXT(body.dump()) {
            BOOST_TEST(!r);
            BOOST_TEST(r.error.find(expected) != std::string::npos, r.error);
        }
    };
    const std::string home = "/home/u/code/";
    bad(proto::make_envelope(1, proto::type::result), "missing 'repos'");
    bad(result("x"), "'repos' must be an array");
    bad(result(proto::json::array({1})), "repos[0] must be an object");
    // dir: relative, one or two plain components, printable
    for (const std::string& dir : std::vector<std::string>{"", "/abs", "a/b/c", "..", "a/..", ".", "a//b", "a/", "new\nline", "esc\x1b[0m",
                                  "c1\xc2\x85", std::string(256, 'x')}) {
        bad(result(proto::json::array({repo(dir, home + dir + "/.envrc", one_use)})), "'dir'");
    }
    BOOST_TEST(proto::is_valid_repo_dir(std::string(255, 'x') + "/" + std::string(255, 'y')));
    BOOST_TEST(proto::is_valid_repo_dir("café/.hidden"));
    // path: the dir's .envrc under some ~/code, absolute, printable
    bad(result(proto::json::array({repo("web", "/home/u/code/other/.envrc", one_use)})), "'path'");
    bad(result(proto::json::array({repo("web", "home/u/code/web/.envrc", one_use)})), "'path'");
    bad(result(proto::json::array({repo("web", "/etc/passwd", one_use)})), "'path'");
    bad(result(proto::json::array({repo("web", "/x\n/code/web/.envrc", one_use)})), "'path'");
    bad(result(proto::json::array({repo("web", "/" + std::string(5000, 'x') + "/code/web/.envrc", one_use)})), "'path'");
    bad(result(proto::json::array({proto::json{{"dir", "web"}, {"uses", one_use}}})), "missing 'path'");
    // uses: 1-64 objects, set 1-128 printable bytes, line 1-65536 in order
    const std::string p = home + "web/.envrc";
    bad(result(proto::json::array({repo("web", p, proto::json::array())})), "'uses'");
    bad(result(proto::json::array({repo("web", p, "web")})), "'uses' must be an array");
    proto::json many = proto::json::array();
    for (int i = 1; i <= 65; ++i) many.push_back({{"set", "s"}, {"line", i}});
    bad(result(proto::json::array({repo("web", p, many)})), "'uses'");
    bad(result(proto::json::array({repo("web", p, proto::json::array({"web"}))})), "uses[0] must be an object");
    for (const proto::json& u : std::vector<proto::json>{proto::json{{"set", ""}, {"line", 1}}, proto::json{{"set", std::string(129, 't')}, {"line", 1}},
                                 proto::json{{"set", "a\x1b[2Jb"}, {"line", 1}}, proto::json{{"set", 5}, {"line", 1}},
                                 proto::json{{"line", 1}}}) {
        bad(result(proto::json::array({repo("web", p, proto::json::array({u}))})), "uses[0]: ");
    }
    for (const proto::json& line : std::vector<proto::json>{proto::json(0), proto::json(-1), proto::json(65537), proto::json("1"), proto::json(1.5)})
        bad(result(proto::json::array({repo("web", p, proto::json::array({{{"set", "web"}, {"line", line}}}))})), "'line'");
    bad(result(proto::json::array({repo("web", p, proto::json::array({{{"set", "a"}, {"line", 5}}, {{"set", "b"}, {"line", 2}}}))})),
        "uses[1]: 'line'");
    // repos: at most 256, sorted, each once
    proto::json repos = proto::json::array();
    for (int i = 0; i < 257; ++i) {
        char dir[8];
        std::snprintf(dir, sizeof dir, "r%03d", i);
        repos.push_back(repo(dir, home + dir + "/.envrc", one_use));
    }
    bad(result(repos), "more than 256");
    repos.erase(repos.end() - 1);
    BOOST_TEST(bool(proto::parse_secrets_discover_result(result(repos))));
    bad(result(proto::json::array({repo("web", p, one_use), repo("api", home + "api/.envrc", one_use)})), "repos[1]: 'dir'");
    bad(result(proto::json::array({repo("web", p, one_use), repo("web", p, one_use)})), "repos[1]: 'dir'");
    // a hostile dir never comes back in the error
    const auto r = proto::parse_secrets_discover_result(result(proto::json::array({repo("\x1b]0;pwned\x07", "/x", one_use)})));
    BOOST_TEST(r.error.find("pwned") == std::string::npos);
    proto::json t = result(proto::json::array());
    t["truncated"] = "yes";
    bad(t, "'truncated'");
}

// Every capped array of objects (one reader, read_objects, serves them all): one item too many
// fails naming the field; exactly the cap gets past the count (to the first item's own check).
BOOST_AUTO_TEST_CASE(capped_arrays_name_the_field_when_too_long) {
    auto empties = [](std::size_t n) {
        proto::json a = proto::json::array();
        for (std::size_t i = 0; i < n; ++i) a.push_back(proto::json::object());
        return a;
    };
    auto expect = [](const auto& parsed, const std::string& expected) {
        BOOST_TEST_CONTEXT(expected) {
            BOOST_TEST(!parsed);
            BOOST_TEST(parsed.error.find(expected) != std::string::npos, parsed.error);
        }
    };
    auto more_than = [](const char* field, std::size_t max) {
        return std::string("'") + field + "' has more than " + std::to_string(max) + " items";
    };
    auto steps = [&](std::size_t n) {
        proto::json b = proto::make_request(1, proto::type::provision);
        b["plan"] = "p";
        b["steps"] = empties(n);
        return proto::parse_provision_request(b);
    };
    expect(steps(proto::max_provision_steps + 1), more_than("steps", proto::max_provision_steps));
    expect(steps(proto::max_provision_steps), "steps[0]: missing 'name'");

    auto sessions = [&](std::size_t n) {
        proto::json b = proto::make_envelope(1, proto::type::result);
        b["sessions"] = empties(n);
        return proto::parse_session_list_result(b);
    };
    expect(sessions(proto::max_sessions + 1), more_than("sessions", proto::max_sessions));
    expect(sessions(proto::max_sessions), "sessions[0]: missing 'name'");

    auto variables = [&](std::size_t n) {
        proto::json b = proto::make_request(1, proto::type::secrets_render);
        b["set"] = "web";
        b["variables"] = empties(n);
        return proto::parse_secrets_render_request(b);
    };
    expect(variables(proto::max_secret_variables + 1), more_than("variables", proto::max_secret_variables));
    expect(variables(proto::max_secret_variables), "variables[0]: missing 'name'");

    auto sets = [&](std::size_t n) {
        proto::json b = proto::make_envelope(1, proto::type::result);
        b["sets"] = empties(n);
        return proto::parse_secrets_list_result(b);
    };
    expect(sets(proto::max_secret_sets + 1), more_than("sets", proto::max_secret_sets));
    expect(sets(proto::max_secret_sets), "sets[0]: missing 'set'");

    auto repos = [&](std::size_t n) {
        proto::json b = proto::make_envelope(1, proto::type::result);
        b["repos"] = empties(n);
        return proto::parse_secrets_discover_result(b);
    };
    expect(repos(proto::max_discovered_repos + 1), more_than("repos", proto::max_discovered_repos));
    expect(repos(proto::max_discovered_repos), "repos[0]: missing 'dir'");

    auto uses = [&](std::size_t n) {
        proto::json repo = {{"dir", "web"}, {"path", "/home/u/code/web/.envrc"}, {"uses", empties(n)}};
        proto::json b = proto::make_envelope(1, proto::type::result);
        b["repos"] = proto::json::array({repo});
        return proto::parse_secrets_discover_result(b);
    };
    expect(uses(proto::max_envrc_uses + 1),
           "repos[0]: 'uses' must have 1 to " + std::to_string(proto::max_envrc_uses) + " items");
    expect(uses(proto::max_envrc_uses), "repos[0]: uses[0]: missing 'set'");
}

BOOST_AUTO_TEST_CASE(finality) {
    BOOST_TEST(proto::is_final("result"));
    BOOST_TEST(proto::is_final("error"));
    BOOST_TEST(!proto::is_final("output"));
    BOOST_TEST(!proto::is_final("event"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(protocol_base64)

BOOST_AUTO_TEST_CASE(rfc4648_vectors) {
    const std::pair<const char*, const char*> vectors[] = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    for (const auto& [plain, encoded] : vectors) {
        BOOST_TEST(proto::base64_encode(plain) == encoded);
        BOOST_TEST(*proto::base64_decode(encoded) == plain);
    }
}

BOOST_AUTO_TEST_CASE(all_bytes_round_trip) {
    std::string all;
    for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
    for (std::size_t n = 0; n < all.size(); n += 7)
        BOOST_TEST(*proto::base64_decode(proto::base64_encode(all.substr(0, n))) == all.substr(0, n));
}

BOOST_AUTO_TEST_CASE(rejects_non_canonical_input) {
    for (const char* bad : {"Zg", "Zg=", "Z===", "Zh==", "Zm9=", "Zm 9", "Zm9v\n", "=Zm9", "Zg==Zg==", "Zm-_"})
        BOOST_TEST(!proto::base64_decode(bad).has_value(), bad);
}

BOOST_AUTO_TEST_SUITE_END()
