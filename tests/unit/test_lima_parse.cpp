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

// `limactl info`: only an explicit `"machineEgress": true` (the stand-in with its network
// boundary) makes machine rely on isolation outside the VM.
BOOST_AUTO_TEST_CASE(info_says_whether_lima_isolates_the_network) {
    BOOST_TEST(lima::parse_info_isolates(R"({"version": "2.0.0", "machineEgress": true})"));
    BOOST_TEST(!lima::parse_info_isolates(R"({"version": "2.0.0"})"));  // Lima itself
    BOOST_TEST(!lima::parse_info_isolates(R"({"machineEgress": false})"));
    BOOST_TEST(!lima::parse_info_isolates(R"({"machineEgress": "true"})"));
    BOOST_TEST(!lima::parse_info_isolates("not json"));
    BOOST_TEST(!lima::parse_info_isolates("[true]"));
}

// `limactl info`'s machineGuestImage (the stand-in's): doctor says whether the image is built,
// and what building it needs; a real Lima has no such key.
BOOST_AUTO_TEST_CASE(info_says_how_the_stand_in_image_stands) {
    const auto ready = lima::parse_info_guest_image(
        R"({"machineGuestImage": {"ready": true, "image": "/c/guest/ab12", "cache": "/c/guest", "problems": []}})");
    BOOST_TEST_REQUIRE(ready.has_value());
    BOOST_TEST(ready->ready);
    BOOST_TEST(ready->image == "/c/guest/ab12");
    BOOST_TEST(ready->cache == "/c/guest");
    const auto missing = lima::parse_info_guest_image(
        R"({"machineGuestImage": {"ready": false, "cache": "/c/guest", "problems": ["mmdebstrap not found", 7]}})");
    BOOST_TEST_REQUIRE(missing.has_value());
    BOOST_TEST(!missing->ready);
    BOOST_TEST(missing->problems == (std::vector<std::string>{"mmdebstrap not found"}));
    BOOST_TEST(!lima::parse_info_guest_image(R"({"version": "2.0.0"})"));  // Lima itself
    BOOST_TEST(!lima::parse_info_guest_image(R"({"machineGuestImage": {"ready": "yes"}})"));
    BOOST_TEST(!lima::parse_info_guest_image("not json"));
}

BOOST_AUTO_TEST_CASE(list_running) {
    const auto list = lima::parse_list(fixture("list-running.jsonl"));
    BOOST_REQUIRE(list.size() == 1u);
    const auto& i = list[0];
    BOOST_TEST(i.name == "sbx1");
    BOOST_TEST(i.hostname == "lima-sbx1");
    BOOST_TEST((i.state == lima::status::running));
    BOOST_TEST(i.cpus == 2);
    BOOST_TEST(i.memory_bytes == 2147483648LL);
    BOOST_TEST(i.disk_bytes == 21474836480LL);
    BOOST_TEST(i.ssh_local_port == 41235);
    BOOST_TEST(i.ssh_config_file == "/home/alice/.lima/sbx1/ssh.config");
    BOOST_TEST(i.host_agent_pid == 23450);
    BOOST_TEST(i.driver_pid == 23457);
    BOOST_TEST(i.lima_version == "2.2.0");
    BOOST_TEST(!i.is_protected);
    BOOST_TEST(i.errors.empty());
    BOOST_TEST((i.forward_agent == std::optional<bool>(false)));  // config.ssh.forwardAgent
}

BOOST_AUTO_TEST_CASE(list_stopped_with_v_prefixed_version) {
    const auto list = lima::parse_list(fixture("list-stopped.jsonl"));
    BOOST_REQUIRE(list.size() == 1u);
    BOOST_TEST(list[0].name == "dev1");
    BOOST_TEST((list[0].state == lima::status::stopped));
    BOOST_TEST(list[0].lima_version == "2.2.0");  // "v2.2.0" in the file
    BOOST_TEST(list[0].ssh_local_port == 38127);
    BOOST_TEST(list[0].host_agent_pid == 0);
}

BOOST_AUTO_TEST_CASE(list_created_never_started_has_no_port) {
    const auto list = lima::parse_list(fixture("list-created-never-started.jsonl"));
    BOOST_REQUIRE(list.size() == 1u);
    BOOST_TEST(list[0].ssh_local_port == 0);
    BOOST_TEST((list[0].state == lima::status::stopped));
}

BOOST_AUTO_TEST_CASE(list_broken_in_both_error_encodings) {
    const auto list = lima::parse_list(fixture("list-broken.jsonl"));
    BOOST_REQUIRE(list.size() == 2u);
    BOOST_TEST((list[0].state == lima::status::broken));
    BOOST_TEST(list[0].errors.empty());  // "errors":[]
    BOOST_TEST(list[1].name == "probe");
    BOOST_TEST((list[1].state == lima::status::broken));
    BOOST_REQUIRE(list[1].errors.size() == 1u);  // an *fs.PathError object
    BOOST_TEST(list[1].errors[0].find("/home/alice/.lima/probe/lima.yaml") != std::string::npos);
    BOOST_TEST(list[1].lima_version == "");
}

BOOST_AUTO_TEST_CASE(list_all_in_directory_order) {
    const auto list = lima::parse_list(fixture("list-all.jsonl"));
    std::vector<std::string> names;
    for (const auto& i : list) names.push_back(i.name);
    BOOST_TEST(names == (std::vector<std::string>{"dev1", "probe", "sbx1", "sbx2"}));
}

BOOST_AUTO_TEST_CASE(list_accepts_pretty_printed_values_and_an_array) {
    const auto one = nlohmann::json::parse(fixture("list-running.jsonl"));
    const auto pretty = one.dump(4) + "\n" + one.dump(4) + "\n";
    BOOST_TEST(lima::parse_list(pretty).size() == 2u);
    const auto array = nlohmann::json::array({one, one, one}).dump();
    BOOST_TEST(lima::parse_list(array).size() == 3u);
    BOOST_TEST(lima::parse_list("").empty());
    BOOST_TEST(lima::parse_list("\n  \n").empty());
}

BOOST_AUTO_TEST_CASE(list_rejects_malformed_output) {
    BOOST_CHECK_THROW(lima::parse_list("{\"name\":\"sbx1\",\"status\":"), lima::protocol_error);
    BOOST_CHECK_THROW(lima::parse_list("not json\n"), lima::protocol_error);
    BOOST_CHECK_THROW(lima::parse_list("{\"status\":\"Running\"}\n"), lima::protocol_error);
    BOOST_CHECK_THROW(lima::parse_list("42\n"), lima::protocol_error);
    try {
        lima::parse_list(fixture("list-running.jsonl") + "{\"name\": tru");
        BOOST_FAIL("accepted");
    } catch (const lima::protocol_error& e) {
        BOOST_TEST(std::string(e.what()).find("value 2") != std::string::npos);
    }
}

BOOST_AUTO_TEST_CASE(every_cli_outcome_stderr_line_parses) {
    const auto outcomes = nlohmann::json::parse(fixture("cli-outcomes.json"));
    int parsed = 0;
    for (const auto& c : outcomes["cases"]) {
        BOOST_TEST_CONTEXT("case " << c["id"].get<std::string>()) {
            std::string all;
            for (const auto& l : c.value("stderr_lines", nlohmann::json::array())) {
                const auto line = l.get<std::string>();
                all += line + "\n";
                if (line.rfind("time=", 0) != 0 && line.rfind("{", 0) != 0) continue;  // elisions, plain lines
                const auto p = lima::parse_log_line(line);
                BOOST_TEST(p.has_value(), line);
                if (p) {
                    BOOST_TEST(!p->level.empty());
                    BOOST_TEST(!p->time.empty());
                    ++parsed;
                }
            }
            const bool failed = c["exit_code"].is_number() && c["exit_code"].get<int>() == 1;
            const auto& argv = c["argv"];
            const bool passthrough = argv.size() > 1 && (argv[1] == "shell" || argv[1] == "copy");
            bool has_fatal_line = false;
            for (const auto& l : c.value("stderr_lines", nlohmann::json::array()))
                has_fatal_line |= l.get<std::string>().find("fatal") != std::string::npos;
            if (failed && !passthrough && has_fatal_line) BOOST_TEST(!lima::fatal_message(all).empty());
        }
    }
    BOOST_TEST(parsed > 100);
}

BOOST_AUTO_TEST_CASE(fatal_messages_in_both_quoting_styles) {
    const std::string v22 =
        "time=\"2026-08-20T12:20:00+02:00\" level=fatal msg=\"instance `sbx2` already exists\"\n";
    const std::string v21 =
        "time=\"2026-08-20T12:20:00+02:00\" level=fatal msg=\"instance \\\"sbx2\\\" already exists\"\n";
    BOOST_TEST(lima::fatal_message(v22) == "instance `sbx2` already exists");
    BOOST_TEST(lima::fatal_message(v21) == "instance \"sbx2\" already exists");
    BOOST_TEST(lima::quoted_names(lima::fatal_message(v22)) == std::vector<std::string>{"sbx2"});
    BOOST_TEST(lima::quoted_names(lima::fatal_message(v21)) == std::vector<std::string>{"sbx2"});
    BOOST_TEST(lima::quoted_names("expected status `Running`, got `Stopped`") ==
               (std::vector<std::string>{"Running", "Stopped"}));
}

BOOST_AUTO_TEST_CASE(text_and_json_log_formats_agree) {
    const auto text_lines = text::split_lines(fixture("start-new.stderr.log"));
    const auto json_lines = text::split_lines(fixture("start-new.stderr.jsonl"));
    BOOST_REQUIRE(text_lines.size() == json_lines.size());
    for (std::size_t i = 0; i < text_lines.size(); ++i) {
        const auto a = lima::parse_log_line(text_lines[i]);
        const auto b = lima::parse_log_line(json_lines[i]);
        BOOST_REQUIRE(a && b);
        BOOST_TEST(a->msg == b->msg);
        BOOST_TEST(a->level == b->level);
        BOOST_TEST((a->fields == b->fields));
    }
    const auto download = lima::parse_log_line(text_lines[2]);
    BOOST_TEST(download->fields.at("arch") == "x86_64");
}

BOOST_AUTO_TEST_CASE(log_line_escapes) {
    const auto l = lima::parse_log_line(
        R"(time="t" level=error msg="[stderr=\"+ test -f x\\n\": exit status 1]" fields.level=fatal)");
    BOOST_REQUIRE(l.has_value());
    BOOST_TEST(l->msg == "[stderr=\"+ test -f x\\n\": exit status 1]");
    BOOST_TEST(l->fields.at("fields.level") == "fatal");
    BOOST_TEST(!lima::parse_log_line("limactl: must not run as the root user").has_value());
    BOOST_TEST(!lima::parse_log_line("").has_value());
}

BOOST_AUTO_TEST_CASE(host_agent_events) {
    const auto boot = text::split_lines(fixture("ha.stdout.log"));
    BOOST_REQUIRE(boot.size() == 3u);
    const auto e0 = lima::parse_ha_event(boot[0]), e1 = lima::parse_ha_event(boot[1]),
               e2 = lima::parse_ha_event(boot[2]);
    BOOST_TEST((e0 && !e0->running && e0->ssh_local_port == 41235));
    BOOST_TEST((e1 && e1->running && !e1->degraded));
    BOOST_TEST((e2 && e2->exiting && e2->ssh_local_port == 0));

    const auto degraded = text::split_lines(fixture("ha.stdout.degraded.log"));
    const auto d = lima::parse_ha_event(degraded.back());
    BOOST_TEST((d && d->running && d->degraded));
    BOOST_TEST(d->errors.size() == 1u);

    int forwards = 0;
    for (const auto& line : text::split_lines(fixture("ha.stdout.portforward.log"))) {
        const auto e = lima::parse_ha_event(line);
        BOOST_REQUIRE(e.has_value());
        if (e->forward) ++forwards;
    }
    BOOST_TEST(forwards == 8);

    const auto failed = lima::parse_ha_event(text::split_lines(fixture("ha.stdout.start-failed.log"))[0]);
    BOOST_TEST((failed && failed->exiting));

    for (const auto& line : text::split_lines(fixture("watch.jsonl"))) {
        const auto j = nlohmann::json::parse(line);
        BOOST_TEST(lima::parse_ha_event(j["event"].dump()).has_value());
    }
    BOOST_TEST(!lima::parse_ha_event("{\"time\":1}").has_value());
    BOOST_TEST(!lima::parse_ha_event("garbage").has_value());
}

BOOST_AUTO_TEST_CASE(timestamps) {
    const auto a = lima::parse_rfc3339("2026-08-20T12:15:49.118734021+02:00");
    const auto b = lima::parse_rfc3339("2026-08-20T10:15:49.118734021Z");
    BOOST_REQUIRE((a && b));
    BOOST_TEST((*a == *b));
    BOOST_TEST(lima::parse_rfc3339("2026-08-20T12:15:49+02:00").has_value());
    BOOST_TEST(!lima::parse_rfc3339("yesterday").has_value());
    BOOST_TEST(!lima::parse_rfc3339("2026-08-20T12:15:49").has_value());
}

BOOST_AUTO_TEST_CASE(versions) {
    BOOST_TEST(lima::normalize_version("limactl version 2.2.0\n") == "2.2.0");
    BOOST_TEST(lima::normalize_version("v2.1.4") == "2.1.4");
    BOOST_TEST(lima::normalize_version("2.2.0-153-g183a60d7") == "2.2.0-153-g183a60d7");
    BOOST_TEST(lima::normalize_version("<unknown>") == "<unknown>");
}

BOOST_AUTO_TEST_CASE(argv_vectors_never_shell_strings) {
    lima::argv_builder b{"limactl"};
    BOOST_TEST(b.create("web", "/s/web/lima.yaml", {".param.a = \"x; rm -rf ~\""}) ==
               (std::vector<std::string>{"limactl", "--tty=false", "create", "--name=web",
                                         "--set=.param.a = \"x; rm -rf ~\"", "/s/web/lima.yaml"}));
    BOOST_TEST(b.start("web", std::chrono::seconds(600)) ==
               (std::vector<std::string>{"limactl", "--tty=false", "start", "--timeout=600s", "web"}));
    BOOST_TEST(b.stop("web", true) == (std::vector<std::string>{"limactl", "--tty=false", "stop", "-f", "web"}));
    BOOST_TEST(b.remove("web", false) == (std::vector<std::string>{"limactl", "--tty=false", "delete", "web"}));
    BOOST_TEST(b.clone("base", "web") == (std::vector<std::string>{"limactl", "--tty=false", "clone", "base", "web"}));
    BOOST_TEST(b.clone("base", "web", {".cpus = 2 | .memory = \"4GiB\""}) ==
               (std::vector<std::string>{"limactl", "--tty=false", "clone", "--set=.cpus = 2 | .memory = \"4GiB\"",
                                         "base", "web"}));
    BOOST_TEST(b.edit("web", {".ssh.forwardAgent = false"}) ==
               (std::vector<std::string>{"limactl", "--tty=false", "edit", "--set=.ssh.forwardAgent = false", "web"}));
    BOOST_TEST(b.start_new("web", "/s/web/lima.yaml", std::chrono::seconds(600)) ==
               (std::vector<std::string>{"limactl", "--tty=false", "start", "--timeout=600s", "--name=web",
                                         "/s/web/lima.yaml"}));
    BOOST_TEST(b.shell("web", {"sh", "-c", "echo $HOME; exit 3"}, "/home/dev/code/x") ==
               (std::vector<std::string>{"limactl", "--tty=false", "shell", "--workdir", "/home/dev/code/x",
                                         "web", "--", "sh", "-c", "echo $HOME; exit 3"}));
    BOOST_TEST(b.list_json({"web"}) == (std::vector<std::string>{"limactl", "--tty=false", "list", "--json", "web"}));
    BOOST_TEST(b.info() == (std::vector<std::string>{"limactl", "info"}));
}

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
