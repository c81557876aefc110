// QEMU's monitor client (src/lima/qmp.cpp) against a QMP server played by a thread on a Unix
// socket: the exchange, QEMU's errors, events between replies, and a hostile or wedged monitor
// (no greeting, a line that never ends, a flood of messages), each bounded in size and time.
#include <boost/test/unit_test.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <thread>

#include "machine/lima.hpp"
#include "error_message.hpp"
#include "test_support.hpp"

namespace lima = machine::lima;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// One connection served by `script(fd)` on a socket in a temp dir; joined on destruction.
struct fake_monitor {
    machine::test::temp_dir dir;
    fs::path path = dir.path / "qmp.sock";
    int listener = -1;
    std::thread thread;
    std::vector<std::string> received;  // the lines the client sent

    explicit fake_monitor(std::function<void(fake_monitor&, int)> script) {
        listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
        BOOST_REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
        BOOST_REQUIRE(::listen(listener, 4) == 0);
        thread = std::thread([this, script = std::move(script)] {
            const int fd = ::accept(listener, nullptr, nullptr);
            if (fd < 0) return;
            script(*this, fd);
            ::close(fd);
        });
    }
    ~fake_monitor() {
        ::shutdown(listener, SHUT_RDWR);
        thread.join();
        ::close(listener);
    }

    // MSG_NOSIGNAL: the client may close first (that is what some tests check).
    static void send(int fd, const std::string& text) { (void)!::send(fd, text.data(), text.size(), MSG_NOSIGNAL); }
    // Reads one line from the client (empty at EOF).
    std::string line(int fd) {
        std::string l;
        char c;
        while (::read(fd, &c, 1) == 1) {
            if (c == '\n') break;
            l += c;
        }
        received.push_back(l);
        return l;
    }
};

const std::string greeting = R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}})" "\n";

} // namespace

BOOST_AUTO_TEST_SUITE(lima_qmp)

BOOST_AUTO_TEST_CASE(query_status_skips_events_between_replies) {
    fake_monitor m([](fake_monitor& m, int fd) {
        fake_monitor::send(fd, greeting);
        m.line(fd);
        fake_monitor::send(fd, "{\"return\": {}}\r\n");
        m.line(fd);
        fake_monitor::send(fd, R"({"timestamp": {"seconds": 1}, "event": "STOP"})" "\n"
                               R"({"return": {"status": "paused", "singlestep": false, "running": false}})" "\n");
    });
    const std::string r = lima::qmp_execute(m.path, R"({"execute":"query-status"})", 2000ms);
    BOOST_TEST(lima::parse_qmp_status(r) == "paused");
    BOOST_TEST(m.received.size() == 2u);
    BOOST_TEST(m.received[0] == R"({"execute":"qmp_capabilities"})");
    BOOST_TEST(m.received[1] == R"({"execute":"query-status"})");
}

BOOST_AUTO_TEST_CASE(qemus_error_is_a_qmp_error_with_its_desc_escaped) {
    fake_monitor m([](fake_monitor& m, int fd) {
        fake_monitor::send(fd, greeting);
        m.line(fd);
        fake_monitor::send(fd, "{\"return\": {}}\n");
        m.line(fd);
        fake_monitor::send(fd, R"({"error": {"class": "GenericError", "desc": "nope \u001b[31m"}})" "\n");
    });
    const std::string e = machine::test::message_of<lima::qmp_error>([&] { lima::qmp_execute(m.path, R"({"execute":"cont"})", 2000ms); });
    BOOST_TEST(e.find("QEMU: nope ") == 0u, e);
    BOOST_TEST(e.find('\x1b') == std::string::npos, e);
}

BOOST_AUTO_TEST_CASE(a_silent_monitor_times_out) {
    fake_monitor m([](fake_monitor&, int fd) {
        char c;
        (void)!::read(fd, &c, 1);  // until the client gives up and closes
    });
    const auto t0 = std::chrono::steady_clock::now();
    const std::string e = machine::test::message_of<lima::qmp_error>([&] { lima::qmp_execute(m.path, R"({"execute":"stop"})", 300ms); });
    BOOST_TEST(e.find("did not answer within 300 ms") != std::string::npos, e);
    const bool quick = std::chrono::steady_clock::now() - t0 < 2s;
    BOOST_TEST(quick);
}

BOOST_AUTO_TEST_CASE(a_line_that_never_ends_is_cut_at_64_KiB) {
    fake_monitor m([](fake_monitor&, int fd) {
        const std::string chunk(16 * 1024, 'x');
        for (int i = 0; i < 64; ++i)  // 1 MiB without a newline, as long as the client reads
            if (::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0) break;
    });
    const std::string e = machine::test::message_of<lima::qmp_error>([&] { lima::qmp_execute(m.path, R"({"execute":"stop"})", 5000ms); });
    BOOST_TEST(e == "QEMU's monitor sent a line over 64 KiB");
}

BOOST_AUTO_TEST_CASE(a_flood_of_events_is_cut_off) {
    fake_monitor m([](fake_monitor& m, int fd) {
        fake_monitor::send(fd, greeting);
        m.line(fd);
        std::string flood;
        for (std::size_t i = 0; i < lima::qmp_max_lines + 10; ++i) flood += R"({"event": "RTC_CHANGE"})" "\n";
        fake_monitor::send(fd, flood);
    });
    const std::string e = machine::test::message_of<lima::qmp_error>([&] { lima::qmp_execute(m.path, R"({"execute":"stop"})", 5000ms); });
    BOOST_TEST(e == "QEMU's monitor sent more than 256 messages");
}

BOOST_AUTO_TEST_CASE(not_a_monitor) {
    machine::test::temp_dir dir;
    std::ofstream(dir.path / "qmp.sock") << "";  // what the fake limactl leaves while Running
    BOOST_TEST(machine::test::message_of<lima::qmp_error>([&] { lima::qmp_execute(dir.path / "qmp.sock", "{}", 300ms); }).find("is not a socket") !=
               std::string::npos);
    BOOST_TEST(machine::test::message_of<lima::qmp_error>([&] { lima::qmp_execute(dir.path / "missing.sock", "{}", 300ms); }).find("no QEMU monitor at") == 0u);
    fake_monitor m([](fake_monitor&, int fd) { fake_monitor::send(fd, "{\"hello\": 1}\n"); });
    BOOST_TEST(machine::test::message_of<lima::qmp_error>([&] { lima::qmp_execute(m.path, "{}", 1000ms); }).find("(no QMP greeting)") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(reader_and_parsers) {
    lima::qmp_reader r;
    r.feed("{\"a\":1}\r\n{\"b\"");
    BOOST_TEST(*r.next() == "{\"a\":1}");
    BOOST_TEST(!r.next());
    r.feed(":2}\n");
    BOOST_TEST(*r.next() == "{\"b\":2}");
    BOOST_CHECK_THROW(lima::parse_qmp_status(R"({"running": true})"), lima::protocol_error);
    BOOST_CHECK_THROW(lima::parse_qmp_status("not json"), lima::protocol_error);
    BOOST_TEST(lima::parse_snapshot_tags("base\n\nsnap-1\n") == (std::vector<std::string>{"base", "snap-1"}),
               boost::test_tools::per_element());
    BOOST_TEST(lima::qmp_socket("/l/web") == fs::path("/l/web/qmp.sock"));
}

BOOST_AUTO_TEST_SUITE_END()
