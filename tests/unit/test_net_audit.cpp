// The audit trail: its line format, the writer the proxy uses (escaping, caps, rotation, rate
// limit with counted suppression) and the reader `machine net` uses (torn, foreign and huge
// files).
#include <boost/test/unit_test.hpp>

#include <sys/stat.h>

#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "audit_writer.hpp"
#include "machine/net.hpp"
#include "test_support.hpp"

using namespace machine::net;
using namespace std::chrono_literals;
using machine::test::temp_dir;

namespace {

audit_record make(std::string host, bool allowed = true, int port = 443) {
    audit_record r;
    r.ts = std::chrono::system_clock::time_point(std::chrono::milliseconds(1764990000123));  // 2025-12-06T03:00:00.123Z
    r.allowed = allowed;
    r.kind = "tcp";
    r.host = std::move(host);
    r.port = port;
    r.bytes_up = 517;
    r.bytes_down = 4096;
    r.duration_ms = 250;
    if (!allowed) r.reason = "not in egress";
    return r;
}

std::vector<std::string> lines_of(const std::filesystem::path& p) {
    std::vector<std::string> out;
    std::ifstream in(p);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

void append(const std::filesystem::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::app | std::ios::binary);
    out << text;
}

std::uintmax_t size_or_zero(const std::filesystem::path& p) {
    std::error_code ec;
    const auto n = std::filesystem::file_size(p, ec);
    return ec ? 0 : n;
}

unsigned mode_of(const std::filesystem::path& p) {
    struct stat st {};
    BOOST_REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 0777;
}

std::filesystem::path rotated(std::filesystem::path p) { return p += ".1"; }

} // namespace

BOOST_AUTO_TEST_SUITE(net_audit)

BOOST_AUTO_TEST_CASE(line_format_round_trips) {
    const auto r = make("github.com");
    const auto line = to_json_line(r);
    BOOST_TEST(line ==
               R"({"v":1,"ts":"2025-12-06T03:00:00.123Z","type":"net.allowed","kind":"tcp","host":"github.com",)"
               R"("port":443,"bytes_up":517,"bytes_down":4096,"duration_ms":250})");
    const auto back = parse_audit_line(line);
    BOOST_REQUIRE(back);
    BOOST_TEST((back->ts == r.ts));
    BOOST_TEST(back->allowed);
    BOOST_TEST(back->host == "github.com");
    BOOST_TEST(back->port == 443);
    BOOST_TEST(back->bytes_up == 517);
    BOOST_TEST(back->bytes_down == 4096);
    BOOST_TEST(back->duration_ms == 250);

    auto refused = make("evil.example", false, 80);
    refused.kind = "dns";
    refused.suppressed = 12;
    const auto again = parse_audit_line(to_json_line(refused));
    BOOST_REQUIRE(again);
    BOOST_TEST(!again->allowed);
    BOOST_TEST(again->kind == "dns");
    BOOST_TEST(again->reason == "not in egress");
    BOOST_TEST(again->suppressed == 12);
}

BOOST_AUTO_TEST_CASE(torn_and_foreign_lines_are_skipped) {
    const auto line = to_json_line(make("github.com"));
    for (std::size_t n = 0; n < line.size(); ++n) BOOST_TEST(!parse_audit_line(line.substr(0, n)), n);
    BOOST_TEST(parse_audit_line(line + "\r").has_value());
    auto with = [&](const std::string& from, const std::string& to) {
        std::string s = line;
        const auto at = s.find(from);
        BOOST_REQUIRE(at != std::string::npos);
        return s.replace(at, from.size(), to);
    };
    for (const auto& foreign : std::vector<std::string>{
             "",
             "not json",
             "[1,2,3]",
             R"({"v":1})",
             R"({"level":"info","msg":"hello"})",
             with(R"("v":1)", R"("v":2)"),
             with(R"("v":1)", R"("v":"1")"),
             with("net.allowed", "vm.state"),
             with("2025-12-06T03:00:00.123Z", "yesterday"),
             with("2025-12-06T03:00:00.123Z", "2025-13-06T03:00:00.123Z"),
             with(R"("port":443)", R"("port":70000)"),
             with(R"("port":443)", R"("port":-1)"),
             with(R"("port":443)", R"("port":4.5)"),
             with(R"("bytes_up":517)", R"("bytes_up":-517)"),
             with(R"("host":"github.com")", R"("host":"evil\u001b[2J.com")"),  // a raw ESC: not ours
             with(R"("host":"github.com")", R"("host":")" + std::string(254, 'a') + "\""),
             with(R"("host":"github.com")", R"("host":7)"),
             with(R"("duration_ms":250)", R"("duration_ms":250,"reason":"x\ny")"),
             "{" + std::string(5000, ' ') + line.substr(1),
         }) {
        BOOST_TEST(!parse_audit_line(foreign), foreign);
    }
}

BOOST_AUTO_TEST_CASE(fields_are_escaped_and_capped) {
    auto r = make("evil\x1b]0;pwned\x07\n.com", false);
    r.reason = std::string(1000, 'r') + "\x1b";
    r.kind = "tcp\r\nfake";
    const auto s = sanitized(r);
    BOOST_TEST(s.host == "evil\\x1b]0;pwned\\x07\\n.com");
    BOOST_TEST(s.kind.size() <= audit_max_kind);
    BOOST_TEST(s.kind.find('\n') == std::string::npos);
    BOOST_TEST(s.reason.size() == audit_max_reason);
    // A long name of multi-byte characters is cut at a character boundary.
    const std::string e_acute = "\xc3\xa9";
    std::string wide;
    for (int i = 0; i < 300; ++i) wide += e_acute;
    const auto cut = sanitized(make(wide)).host;
    BOOST_TEST(cut.size() <= audit_max_host);
    BOOST_TEST(cut.size() % 2 == 0u);
    BOOST_TEST(cut.substr(0, 4) == e_acute + e_acute);
    // Bidi and escape bytes become visible text, so a line shows what came.
    const auto bidi = sanitized(make("a\xe2\x80\xae" "b.com")).host;
    BOOST_TEST(bidi == "a\\u202eb.com");
    // Whatever the guest sent, the line the writer makes parses back.
    BOOST_TEST(parse_audit_line(to_json_line(s)).has_value());
}

BOOST_AUTO_TEST_CASE(writer_appends_0600_lines) {
    temp_dir dir;
    const auto log = dir.path / "net.log";
    audit_writer w(log, 1 << 20, 20);
    auto now = audit_writer::clock::now();
    BOOST_TEST((w.record(make("a.example"), now) == audit_writer::outcome::written));
    BOOST_TEST((w.record(make("b\x1b.example", false), now) == audit_writer::outcome::written));
    BOOST_TEST(mode_of(log) == 0600u);
    const auto lines = lines_of(log);
    BOOST_REQUIRE(lines.size() == 2u);
    BOOST_TEST(lines[1].find("\\\\x1b") != std::string::npos);  // escaped, then JSON-quoted
    const auto back = read_audit_log(log, 10);
    BOOST_REQUIRE(back.size() == 2u);
    BOOST_TEST(back[0].host == "a.example");
    BOOST_TEST(back[1].host == "b\\x1b.example");
    BOOST_TEST(!back[1].allowed);

    // A log someone made readable to others is made private again.
    ::chmod(log.c_str(), 0644);
    w.record(make("c.example"), now + 1s);
    BOOST_TEST(mode_of(log) == 0600u);
}

BOOST_AUTO_TEST_CASE(writer_never_follows_a_symlink) {
    temp_dir dir;
    const auto target = dir.path / "elsewhere";
    append(target, "precious\n");
    const auto log = dir.path / "net.log";
    std::filesystem::create_symlink(target, log);
    audit_writer w(log, 1 << 20, 20);
    BOOST_TEST((w.record(make("a.example"), audit_writer::clock::now()) == audit_writer::outcome::failed));
    BOOST_TEST(lines_of(target) == std::vector<std::string>{"precious"});
}

BOOST_AUTO_TEST_CASE(rotation_keeps_the_file_under_its_cap) {
    temp_dir dir;
    const auto log = dir.path / "net.log";
    const std::size_t cap = 2000;
    audit_writer w(log, cap, 1000000);
    auto now = audit_writer::clock::now();
    for (int i = 0; i < 200; ++i) {
        now += 1ms;
        BOOST_TEST((w.record(make("host" + std::to_string(i) + ".example"), now) == audit_writer::outcome::written));
        BOOST_TEST(size_or_zero(log) <= cap, "after record " << i);
        BOOST_TEST(size_or_zero(rotated(log)) <= cap, "after record " << i);
    }
    BOOST_TEST(mode_of(rotated(log)) == 0600u);
    BOOST_TEST(!std::filesystem::exists(dir.path / "net.log.2"));  // one kept
    // The reader sees the rotated file then the live one, oldest first, ending at the last.
    const auto all = read_audit_log(log, 1000);
    BOOST_TEST(all.size() == lines_of(log).size() + lines_of(rotated(log)).size());
    BOOST_TEST(all.size() > lines_of(log).size());
    BOOST_TEST(all.back().host == "host199.example");
    for (std::size_t i = 1; i < all.size(); ++i) {
        BOOST_TEST(std::stoi(all[i].host.substr(4)) == std::stoi(all[i - 1].host.substr(4)) + 1);
    }
    const auto last3 = read_audit_log(log, 3);
    BOOST_REQUIRE(last3.size() == 3u);
    BOOST_TEST(last3[0].host == "host197.example");
}

BOOST_AUTO_TEST_CASE(rate_limit_counts_what_it_does_not_write) {
    temp_dir dir;
    const auto log = dir.path / "net.log";
    audit_writer w(log, 1 << 20, 5);
    const auto t0 = audit_writer::clock::now();
    int written = 0, suppressed = 0;
    // A guest opening connections in a loop: 1000 records in the same second.
    for (int i = 0; i < 1000; ++i) {
        const auto o = w.record(make("h" + std::to_string(i) + ".example", false), t0 + std::chrono::microseconds(i));
        (o == audit_writer::outcome::written ? written : suppressed) += 1;
    }
    BOOST_TEST(written == 5);
    BOOST_TEST(suppressed == 995);
    BOOST_TEST(w.pending() == 995);
    BOOST_TEST(lines_of(log).size() == 5u);
    // A second later the next record is written and carries the count.
    BOOST_TEST((w.record(make("next.example"), t0 + 1s) == audit_writer::outcome::written));
    auto back = read_audit_log(log, 100);
    BOOST_REQUIRE(back.size() == 6u);
    BOOST_TEST(back.back().host == "next.example");
    BOOST_TEST(back.back().suppressed == 995);
    BOOST_TEST(w.pending() == 0);
    BOOST_TEST(!w.flush(t0 + 2s));  // nothing to say

    // Suppressed records with no record after them: the caller's timer flushes them, the last
    // one written with the others counted in it, whatever the rate.
    for (int i = 0; i < 20; ++i) w.record(make("burst" + std::to_string(i) + ".example", false), t0 + 3s);
    BOOST_TEST(w.pending() == 15);
    const auto flushed = w.flush(t0 + 3s);
    BOOST_REQUIRE(flushed);
    BOOST_TEST((*flushed == audit_writer::outcome::written));
    back = read_audit_log(log, 100);
    BOOST_TEST(back.back().host == "burst19.example");
    BOOST_TEST(back.back().suppressed == 14);
    BOOST_TEST(w.pending() == 0);
    // Every record is accounted for: a line each, or counted in one.
    const auto total = std::accumulate(back.begin(), back.end(), std::int64_t{0},
                                       [](std::int64_t n, const audit_record& r) { return n + 1 + r.suppressed; });
    BOOST_TEST(total == 1000 + 1 + 20);
}

BOOST_AUTO_TEST_CASE(reader_copes_with_what_it_finds) {
    temp_dir dir;
    const auto log = dir.path / "net.log";
    BOOST_TEST(read_audit_log(log, 10).empty());  // neither file
    BOOST_TEST(read_audit_log(dir.path, 10).empty());  // a directory

    // No .1, foreign lines between ours, a line torn by a crash at the end.
    const auto good = to_json_line(make("a.example"));
    append(log, "garbage\n" + good + "\n{\"msg\":\"another tool\"}\n\n" + good + "\n" + good.substr(0, 40));
    auto got = read_audit_log(log, 10);
    BOOST_TEST(got.size() == 2u);
    // ... and a line after the torn one (the writer appended after a crash).
    append(log, "\n" + to_json_line(make("b.example")) + "\n");
    got = read_audit_log(log, 10);
    BOOST_REQUIRE(got.size() == 3u);
    BOOST_TEST(got.back().host == "b.example");

    // A file of another format entirely (binary).
    append(rotated(log), std::string("\x7f" "ELF\0\0\xff\n\xfe", 9));
    BOOST_TEST(read_audit_log(log, 10).size() == 3u);
}

BOOST_AUTO_TEST_CASE(reader_reads_only_the_tail_of_a_huge_file) {
    temp_dir dir;
    const auto log = dir.path / "net.log";
    // One of our lines at the very start, then 8 MiB that are not ours, then 3 of ours: only the
    // tail is read, so the first is not seen (and the read is bounded whatever the file's size).
    append(log, to_json_line(make("first.example")) + "\n");
    const std::string junk = std::string(1000, 'x') + "\n";
    {
        std::ofstream out(log, std::ios::app | std::ios::binary);
        for (int i = 0; i < 8 * 1024; ++i) out << junk;
    }
    for (int i = 0; i < 3; ++i) append(log, to_json_line(make("tail" + std::to_string(i) + ".example")) + "\n");
    const auto got = read_audit_log(log, 100);
    BOOST_REQUIRE(got.size() == 3u);
    BOOST_TEST(got.front().host == "tail0.example");
}

BOOST_AUTO_TEST_SUITE_END()
