// The Lima client's parsers against every sample in tests/fixtures/lima/, plus argv builders
// and the ha.stdout.log follower.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "machine/cancel.hpp"
#include "machine/lima.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"
#include "test_support.hpp"

using namespace machine;
namespace fs = std::filesystem;

namespace {
std::string fixture(const std::string& name) {
    return paths::read_file(fs::path(MACHINE_FIXTURES_DIR) / "lima" / name);
}
} // namespace

BOOST_AUTO_TEST_SUITE(lima_parse)

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(lima_follow)

BOOST_AUTO_TEST_CASE(follows_appends_and_truncation) {
    machine::test::temp_dir dir;
    const auto log = dir.path / "ha.stdout.log";
    asio::io_context ctx;
    std::vector<std::string> seen;
    // A writer thread plays the host agent: booting, then a new start truncates, then running.
    std::thread writer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        { std::ofstream(log) << R"({"time":"2026-08-20T12:15:10Z","status":{"sshLocalPort":1}})" << "\n"; }
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
        { std::ofstream(log, std::ios::trunc) << R"({"time":"2026-08-20T12:16:10Z","status":{"sshLocalPort":2}})"; }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        { std::ofstream(log, std::ios::app) << "\nnot json\n" << R"({"time":"2026-08-20T12:16:50Z","status":{"running":true,"sshLocalPort":2}})" << "\n"; }
    });
    auto on_event = [&](const lima::ha_event& e) {
        seen.push_back(e.running ? "running" : "booting:" + std::to_string(e.ssh_local_port));
        return !e.running;
    };
    machine::test::co_run(ctx, lima::follow_events(log, on_event, nullptr, {}, std::chrono::milliseconds(20)));
    writer.join();
    BOOST_TEST(seen == (std::vector<std::string>{"booting:1", "booting:2", "running"}));
}

BOOST_AUTO_TEST_CASE(skips_events_older_than_since) {
    machine::test::temp_dir dir;
    const auto log = dir.path / "ha.stdout.log";
    std::ofstream(log) << R"({"time":"2026-08-20T12:15:10Z","status":{"running":true,"sshLocalPort":1}})" << "\n"
                       << R"({"time":"2026-08-20T12:20:00Z","status":{"running":true,"sshLocalPort":2}})" << "\n";
    asio::io_context ctx;
    int port = 0;
    auto on_event = [&](const lima::ha_event& e) { port = e.ssh_local_port; return false; };
    machine::test::co_run(ctx, lima::follow_events(log, on_event, nullptr,
                                                  *lima::parse_rfc3339("2026-08-20T12:16:00Z"),
                                                  std::chrono::milliseconds(10)));
    BOOST_TEST(port == 2);
}

BOOST_AUTO_TEST_CASE(stops_when_cancelled) {
    machine::test::temp_dir dir;
    asio::io_context ctx;
    cancel_signal cancel(ctx.get_executor());
    asio::steady_timer t(ctx, std::chrono::milliseconds(50));
    t.async_wait([&](std::error_code) { cancel.trigger(cancel_signal::graceful); });
    auto on_event = [](const lima::ha_event&) { return true; };
    BOOST_CHECK_THROW(machine::test::co_run(ctx, lima::follow_events(dir.path / "missing.log", on_event, &cancel, {},
                                                                    std::chrono::milliseconds(10))),
                      interrupted_error);
}

BOOST_AUTO_TEST_SUITE_END()

// Issue 13, item 7: a guest grows ha.stdout.log at will; following it costs the same small
// memory however large it is.
BOOST_AUTO_TEST_SUITE(lima_follow_large)

namespace {

// An RFC 3339 time `index` nanoseconds after `second`.
std::string stamp(int index, const char* second = "2026-08-20T12:15:10") {
    char t[64];
    std::snprintf(t, sizeof t, "%s.%09dZ", second, index);
    return t;
}

// A port-forward event as Lima's host agent writes it, told apart by its sshLocalPort and
// stamped stamp(index, second), so a file of them is in time order.
std::string forward_event(int index, const char* second = "2026-08-20T12:15:10") {
    return R"({"time":")" + stamp(index, second) + R"(","status":{"running":true,"sshLocalPort":)" +
           std::to_string(index) +
           R"(,"portForward":{"type":"forwarding","protocol":"tcp","guestAddr":"0.0.0.0:8080","hostAddr":"127.0.0.1:8080"}}})";
}

// A log of `count` events numbered from 0 (about 190 bytes each).
void write_log(const fs::path& path, int count) {
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < count; ++i) out << forward_event(i) << '\n';
}

// Appends `path` to `log` through the kernel (sendfile), so the test itself never holds it.
void append_file(const fs::path& log, const fs::path& path) {
    const int in = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open(log.c_str(), O_WRONLY | O_CLOEXEC);
    BOOST_REQUIRE(in >= 0 && out >= 0);
    ::lseek(out, 0, SEEK_END);
    while (::sendfile(out, in, nullptr, 1 << 20) > 0) {
    }
    ::close(in);
    ::close(out);
}

std::size_t status_kib(const char* field) {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind(field, 0) == 0) return std::stoul(line.substr(std::strlen(field)));
    return 0;
}

// How much the process's peak resident memory grows while `body` runs (Linux resets the peak
// when "5" is written to clear_refs).
template <class F>
std::size_t peak_growth_mib(F&& body) {
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    const std::size_t before = status_kib("VmRSS:");
    BOOST_REQUIRE_MESSAGE(status_kib("VmHWM:") <= before + 1024, "cannot reset the peak RSS (/proc/self/clear_refs)");
    body();
    return (status_kib("VmHWM:") - before) / 1024;
}

// Follows `log` until `on_event` returns false; fails the test after 60 s instead of hanging.
void follow(const fs::path& log, std::function<bool(const lima::ha_event&)> on_event,
            std::chrono::system_clock::time_point since) {
    asio::io_context ctx;
    cancel_signal give_up(ctx.get_executor());
    asio::steady_timer deadline(ctx, std::chrono::seconds(60));
    deadline.async_wait([&](std::error_code ec) { if (!ec) give_up.trigger(cancel_signal::graceful); });
    auto following = [&]() -> asio::awaitable<void> {
        co_await lima::follow_events(log, on_event, &give_up, since, std::chrono::milliseconds(10));
        deadline.cancel();
    };
    machine::test::co_run(ctx, following());
}

constexpr int big = 350000;  // events: about 66 MB of log

} // namespace

BOOST_AUTO_TEST_CASE(a_huge_log_is_followed_from_near_its_end) {
    machine::test::temp_dir dir;
    const auto log = dir.path / "ha.stdout.log";
    write_log(log, big);
    // Watch started just before the last 50 events; three more arrive while it follows.
    const auto since = *lima::parse_rfc3339(stamp(big - 50));
    std::vector<int> seen;
    std::thread writer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        std::ofstream out(log, std::ios::app);
        for (int i = big; i < big + 3; ++i) out << forward_event(i, "2026-08-20T12:15:11") << '\n' << std::flush;
    });
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t growth = peak_growth_mib([&] {
        follow(log, [&](const lima::ha_event& e) {
            seen.push_back(e.ssh_local_port);
            return e.ssh_local_port < big + 2;
        }, since);
    });
    writer.join();
    std::vector<int> expected;
    for (int i = big - 50; i < big + 3; ++i) expected.push_back(i);
    BOOST_TEST(seen == expected);
    BOOST_TEST(growth < 8u, "peak RSS grew by " << growth << " MiB while following a 66 MB log");
    BOOST_TEST_MESSAGE("followed in " << machine::test::seconds_since(t0) << " s, peak RSS +" << growth << " MiB");
}

BOOST_AUTO_TEST_CASE(the_far_past_of_a_huge_log_is_not_read) {
    machine::test::temp_dir dir;
    const auto log = dir.path / "ha.stdout.log";
    write_log(log, big);
    // No `since`: the recent past is replayed, not the whole file.
    std::vector<int> seen;
    const std::size_t growth = peak_growth_mib([&] {
        follow(log, [&](const lima::ha_event& e) {
            seen.push_back(e.ssh_local_port);
            return e.ssh_local_port < big - 1;
        }, {});
    });
    BOOST_REQUIRE(!seen.empty());
    BOOST_TEST(seen.front() > big / 2, "replayed from event " << seen.front() << " of " << big);
    BOOST_TEST(seen.back() == big - 1);
    BOOST_TEST(seen.size() == std::size_t(seen.back() - seen.front() + 1), "every event of the window, in order");
    BOOST_TEST(growth < 8u, "peak RSS grew by " << growth << " MiB");
}

BOOST_AUTO_TEST_CASE(an_over_long_line_is_skipped_unbuffered_and_counted) {
    machine::test::temp_dir dir;
    const auto log = dir.path / "ha.stdout.log";
    const auto junk = dir.path / "junk";
    { std::ofstream(log) << forward_event(0) << '\n'; }
    {
        std::ofstream out(junk, std::ios::binary);
        const std::string block(1 << 20, 'x');
        for (int i = 0; i < 32; ++i) out << block;  // 32 MiB without a newline
        out << '\n' << forward_event(1, "2026-08-20T12:15:11") << '\n';
    }
    std::ostringstream warnings;
    const auto previous = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::ostream_sink_st>(warnings)));
    std::vector<int> seen;
    const std::size_t growth = peak_growth_mib([&] {
        follow(log, [&](const lima::ha_event& e) {
            seen.push_back(e.ssh_local_port);
            if (e.ssh_local_port == 0) append_file(log, junk);  // the follower is at the end now
            return e.ssh_local_port == 0;
        }, {});
    });
    spdlog::set_default_logger(previous);
    BOOST_TEST(seen == (std::vector<int>{0, 1}));
    BOOST_TEST(growth < 8u, "peak RSS grew by " << growth << " MiB over a 32 MiB line");
    BOOST_TEST(warnings.str().find("skipped 1 line(s) longer than 64 KiB") != std::string::npos, warnings.str());
}

BOOST_AUTO_TEST_SUITE_END()
