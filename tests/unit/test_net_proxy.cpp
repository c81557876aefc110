// The egress proxy (net::run_proxy) over real sockets: a real Unix-socket proxy on its own
// thread, a test bridge that writes PROXY lines the way the VM's bridge does, real upstream TCP
// servers and a real UDP DNS server on 127.0.0.1 standing behind the resolve/redirect/DNS seams
// for public names and addresses. The guest side is hostile in the last suite.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include <boost/test/unit_test.hpp>

#include "machine/net.hpp"
#include "sniff.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using machine::net::audit_record;
using machine::test::seconds_since;

namespace {

// ---- blocking socket helpers (the test plays the bridge and the internet) -----------------

void set_timeouts(int fd, std::chrono::milliseconds t) {
    timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const auto n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n <= 0) return false;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

// Everything until EOF (or an error/timeout, then what came so far).
std::string read_to_eof(int fd) {
    std::string out;
    char buf[65536];
    for (;;) {
        const auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return out;
        out.append(buf, static_cast<std::size_t>(n));
    }
}

// Exactly `n` bytes, or fewer when the connection ends first.
std::string read_exactly(int fd, std::size_t n) {
    std::string out;
    char buf[65536];
    while (out.size() < n) {
        const auto got = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
        if (got <= 0) break;
        out.append(buf, static_cast<std::size_t>(got));
    }
    return out;
}

// True when the peer has closed (recv returns 0 or an error) within `within`.
bool closed_within(int fd, std::chrono::milliseconds within) {
    pollfd p{fd, POLLIN, 0};
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < within) {
        if (::poll(&p, 1, 50) > 0) {
            char c[4096];
            const auto n = ::recv(fd, c, sizeof c, MSG_DONTWAIT);
            if (n <= 0) return true;
        }
    }
    return false;
}

struct fd_guard {
    int fd = -1;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(fd_guard&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

// What the bridge sends first: the destination the guest asked for.
std::string proxy_line(const std::string& dst, int port) {
    const bool v6 = dst.find(':') != std::string::npos;
    return std::string("PROXY ") + (v6 ? "TCP6 fd00::15 " : "TCP4 192.168.5.15 ") + dst + " 40000 " +
           std::to_string(port) + "\r\n";
}

// A TLS 1.2-style ClientHello record carrying `sni` (none when empty).
std::string client_hello(const std::string& sni) {
    auto u16 = [](std::size_t v) { return std::string{static_cast<char>(v >> 8), static_cast<char>(v & 0xff)}; };
    std::string ext;
    if (!sni.empty()) {
        std::string list = std::string(1, '\0') + u16(sni.size()) + sni;
        std::string body = u16(list.size()) + list;
        ext = u16(0) + u16(body.size()) + body;
    }
    std::string hello = "\x03\x03" + std::string(32, 'r') + std::string(1, '\0') + u16(2) + "\x13\x01" +
                        std::string("\x01\x00", 2) + u16(ext.size()) + ext;
    std::string hs = "\x01" + std::string(1, '\0') + u16(hello.size()) + hello;
    return "\x16\x03\x01" + u16(hs.size()) + hs;
}

// ---- the internet, on 127.0.0.1 -----------------------------------------------------------

// An echo server: each connection gets back what it sends, and EOF after the client's EOF.
// Counts connections, and the most open at once.
class echo_server {
public:
    echo_server() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::listen(fd_, 512);
        socklen_t len = sizeof a;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~echo_server() {
        stop_ = true;
        thread_.join();
        for (auto& t : workers_) t.join();
        ::close(fd_);
    }
    int port() const { return port_; }
    int accepted() const { return accepted_; }
    int most_open() const { return most_open_; }

private:
    void serve() {
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) continue;
            ++accepted_;
            const int now = ++open_;
            if (now > most_open_) most_open_ = now;
            workers_.emplace_back([this, c] { echo(c); });
        }
    }
    void echo(int c) {
        set_timeouts(c, 100ms);
        char buf[65536];
        while (!stop_) {
            const auto n = ::recv(c, buf, sizeof buf, 0);
            if (n == 0) break;
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
                break;
            }
            if (!send_all(c, std::string_view(buf, static_cast<std::size_t>(n)))) break;
        }
        ::shutdown(c, SHUT_WR);
        ::close(c);
        --open_;
    }

    int fd_ = -1, port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> accepted_{0}, open_{0}, most_open_{0};
    std::thread thread_;
    std::vector<std::thread> workers_;
};

// A DNS server on UDP 127.0.0.1: answers each query with a fixed answer record (same id and
// question), or stays silent.
class dns_server {
public:
    explicit dns_server(bool silent) : silent_(silent) {
        fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
        socklen_t len = sizeof a;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~dns_server() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
    }
    int port() const { return port_; }
    int queries() const { return queries_; }

    // The answer it gives to `query`: the query with QR/RA set and one A record 192.0.2.1.
    static std::string answer_to(const std::string& query) {
        std::string a = query;
        a[2] = static_cast<char>(0x81);
        a[3] = static_cast<char>(0x80);
        a[7] = 1;  // ANCOUNT 1
        a += std::string("\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01", 16);
        return a;
    }

private:
    void serve() {
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            char buf[4096];
            sockaddr_in from{};
            socklen_t len = sizeof from;
            const auto n = ::recvfrom(fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
            if (n < 12) continue;
            ++queries_;
            if (silent_) continue;
            const auto reply = answer_to(std::string(buf, static_cast<std::size_t>(n)));
            ::sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), len);
        }
    }
    bool silent_;
    int fd_ = -1, port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> queries_{0};
    std::thread thread_;
};

std::string dns_query(std::uint16_t id, const std::string& name) {
    std::string q{static_cast<char>(id >> 8), static_cast<char>(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    std::size_t start = 0;
    while (start <= name.size()) {
        const auto dot = std::min(name.find('.', start), name.size());
        q.push_back(static_cast<char>(dot - start));
        q += name.substr(start, dot - start);
        start = dot + 1;
    }
    q += std::string("\x00\x00\x01\x00\x01", 5);
    return q;
}

std::string framed(const std::string& message) {
    return std::string{static_cast<char>(message.size() >> 8), static_cast<char>(message.size() & 0xff)} + message;
}

int rcode(const std::string& answer) { return answer.size() >= 4 ? answer[3] & 0x0f : -1; }

// ---- the proxy under test -------------------------------------------------------------------

// Names the tests resolve, and the public address each stands for.
constexpr const char* allowed_address = "203.0.113.10";   // api.example.com
constexpr const char* public_address = "93.184.216.34";   // the open internet

struct proxy_fixture {
    machine::test::temp_dir dir;
    fs::path socket, audit;
    machine::net::proxy_options opt;
    echo_server upstream;  // every public destination is really this server
    std::atomic<bool> wanted{true};
    std::thread thread;
    int exit_code = -1;

    proxy_fixture() {
        fs::permissions(dir.path, fs::perms::owner_all, fs::perm_options::replace);
        socket = dir.path / "net.sock";
        audit = dir.path / "audit.jsonl";
        opt.vm = "test";
        opt.listen = socket;
        opt.audit_log = audit;
        opt.idle_check = 20ms;
        opt.still_wanted = [this] { return wanted.load(); };
        opt.caps.max_events_per_second = 100000;
        opt.dns_server = "127.0.0.1";
        opt.dns_port = 9;  // nothing there unless a test starts a dns_server
        opt.resolve = [](const std::string& name) -> std::vector<std::string> {
            if (name == "api.example.com" || name == "www.example.com") return {allowed_address};
            if (name == "local.example.com") return {"127.0.0.1"};
            if (name == "meta.example.com") return {"169.254.169.254"};
            return {};
        };
        const int port = upstream.port();
        opt.redirect = [port](const std::string& address, int p) -> std::pair<std::string, int> {
            if (address == allowed_address || address == public_address) return {"127.0.0.1", port};
            return {address, p};
        };
    }
    ~proxy_fixture() { stop(); }

    void allow(std::vector<std::string> patterns) { opt.rules.allow = std::move(patterns); }

    void start() {
        thread = std::thread([this] { exit_code = machine::net::run_proxy(opt); });
        for (int i = 0; i < 200 && !fs::exists(socket); ++i) std::this_thread::sleep_for(5ms);
        BOOST_REQUIRE(fs::exists(socket));
    }
    void stop() {
        wanted = false;
        if (thread.joinable()) thread.join();
    }

    // A connection from the bridge, its PROXY line sent.
    fd_guard connect(const std::string& dst, int port) {
        fd_guard c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, socket.c_str(), sizeof a.sun_path - 1);
        // The socket file appears at bind(), a moment before listen(): retry meanwhile.
        int rc = -1;
        for (int i = 0; i < 100 && (rc = ::connect(c.fd, reinterpret_cast<sockaddr*>(&a), sizeof a)) != 0 &&
                        errno == ECONNREFUSED;
             ++i)
            std::this_thread::sleep_for(5ms);
        BOOST_REQUIRE(rc == 0);
        set_timeouts(c.fd, 5s);
        // (may fail: a connection over the caps is closed at once)
        if (!dst.empty()) send_all(c.fd, proxy_line(dst, port));
        return c;
    }

    // Sends `data`, half-closes, and returns everything that comes back.
    std::string exchange(const std::string& dst, int port, const std::string& data) {
        auto c = connect(dst, port);
        send_all(c.fd, data);
        ::shutdown(c.fd, SHUT_WR);
        return read_to_eof(c.fd);
    }

    // The audit trail, once the proxy has stopped (and flushed it).
    std::vector<audit_record> records() {
        stop();
        return machine::net::read_audit_log(audit, 100000);
    }
};

const audit_record* find_record(const std::vector<audit_record>& rs, const std::string& host) {
    for (const auto& r : rs)
        if (r.host == host) return &r;
    return nullptr;
}

std::string payload(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) & 0xff);
    return s;
}

} // namespace

BOOST_AUTO_TEST_SUITE(net_proxy_open)

BOOST_AUTO_TEST_CASE(reaches_a_public_address_with_bytes_intact) {
    proxy_fixture f;
    f.start();
    const std::string data = payload(300 * 1024);
    const auto back = f.exchange(public_address, 80, data);
    BOOST_TEST(back.size() == data.size());
    BOOST_TEST((back == data));
    const auto rs = f.records();
    const auto* r = find_record(rs, public_address);
    BOOST_REQUIRE(r);
    BOOST_TEST(r->allowed);
    BOOST_TEST(r->kind == "tcp");
    BOOST_TEST(r->port == 80);
    BOOST_TEST(r->bytes_up == static_cast<std::int64_t>(data.size()));
    BOOST_TEST(r->bytes_down == static_cast<std::int64_t>(data.size()));
    BOOST_TEST(f.exit_code == 0);
    BOOST_TEST(!fs::exists(f.socket));
}

BOOST_AUTO_TEST_CASE(refuses_the_host_loopback_on_any_port) {
    proxy_fixture f;
    f.start();
    // A real service on the host's 127.0.0.1: the guest's gateway must not lead there.
    auto c = f.connect("127.0.0.1", f.upstream.port());
    send_all(c.fd, "hello");
    BOOST_TEST(closed_within(c.fd, 1000ms));
    BOOST_TEST(f.upstream.accepted() == 0);
    ::close(std::exchange(c.fd, -1));  // the proxy stops once no connection is open
    const auto rs = f.records();
    const auto* r = find_record(rs, "127.0.0.1");
    BOOST_REQUIRE(r);
    BOOST_TEST(!r->allowed);
    BOOST_TEST(r->reason == "host loopback");
}

BOOST_AUTO_TEST_CASE(refuses_link_local_and_host_addresses) {
    proxy_fixture f;
    // Both would reach the echo server if the proxy dialled them.
    const int port = f.upstream.port();
    const auto host_addresses = machine::net::host_interface_addresses();
    std::string host_address;
    for (const auto& a : host_addresses)
        if (a != "127.0.0.1" && a != "::1" && a.find(':') == std::string::npos) host_address = a;
    f.opt.redirect = [port](const std::string&, int) { return std::pair<std::string, int>("127.0.0.1", port); };
    f.start();
    {
        auto c = f.connect("169.254.169.254", 80);
        BOOST_TEST(closed_within(c.fd, 1000ms));
    }
    if (!host_address.empty()) {
        auto c = f.connect(host_address, 22);
        BOOST_TEST(closed_within(c.fd, 1000ms));
    } else {
        BOOST_TEST_MESSAGE("no non-loopback IPv4 address on this host: host-address case not run");
    }
    {
        auto c = f.connect("0.0.0.0", 80);
        BOOST_TEST(closed_within(c.fd, 1000ms));
    }
    BOOST_TEST(f.upstream.accepted() == 0);
    const auto rs = f.records();
    const auto* meta = find_record(rs, "169.254.169.254");
    BOOST_REQUIRE(meta);
    BOOST_TEST(meta->reason == "link-local address");
    if (!host_address.empty()) {
        const auto* host = find_record(rs, host_address);
        BOOST_REQUIRE(host);
        BOOST_TEST(host->reason == "host address");
    }
}

BOOST_AUTO_TEST_CASE(host_ports_open_exactly_the_named_port) {
    proxy_fixture f;
    echo_server other;  // another host service (another VM's forwarded port, say)
    f.opt.rules.host_ports = {f.upstream.port()};
    f.start();
    BOOST_TEST(f.exchange("127.0.0.1", f.upstream.port(), "to the database") == "to the database");
    {
        auto c = f.connect("127.0.0.1", other.port());
        send_all(c.fd, "hello");
        BOOST_TEST(closed_within(c.fd, 1000ms));
    }
    BOOST_TEST(other.accepted() == 0);
    BOOST_TEST(f.upstream.accepted() == 1);
}

BOOST_AUTO_TEST_CASE(a_connection_idle_both_ways_is_closed) {
    proxy_fixture f;
    f.opt.caps.idle_timeout = 300ms;
    f.start();
    auto c = f.connect(public_address, 80);
    send_all(c.fd, "ping");
    BOOST_TEST(read_exactly(c.fd, 4) == "ping");
    const auto t0 = std::chrono::steady_clock::now();
    BOOST_TEST(closed_within(c.fd, 2000ms));
    BOOST_TEST(seconds_since(t0) >= 0.25);
    ::close(std::exchange(c.fd, -1));  // the proxy stops once no connection is open
    const auto rs = f.records();
    const auto* r = find_record(rs, public_address);
    BOOST_REQUIRE(r);
    BOOST_TEST(r->allowed);
    BOOST_TEST(r->bytes_up == 4);
    BOOST_TEST(r->bytes_down == 4);
    BOOST_TEST(r->reason.find("idle") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(net_proxy_allowlist)

BOOST_AUTO_TEST_CASE(allowed_sni_passes_with_bytes_intact_and_counted) {
    proxy_fixture f;
    f.allow({"api.example.com"});
    f.start();
    const std::string data = client_hello("api.example.com") + payload(200 * 1024);
    // The guest dialled some address; the proxy dials the name's (resolved on the host).
    const auto back = f.exchange("198.51.100.99", 443, data);
    BOOST_TEST(back.size() == data.size());
    BOOST_TEST((back == data));
    const auto rs = f.records();
    const auto* r = find_record(rs, "api.example.com");
    BOOST_REQUIRE(r);
    BOOST_TEST(r->allowed);
    BOOST_TEST(r->port == 443);
    BOOST_TEST(r->bytes_up == static_cast<std::int64_t>(data.size()));
    BOOST_TEST(r->bytes_down == static_cast<std::int64_t>(data.size()));
}

BOOST_AUTO_TEST_CASE(refused_sni_closes_within_a_second_even_to_an_allowed_address) {
    proxy_fixture f;
    f.allow({"api.example.com"});
    f.start();
    // The address is api.example.com's; the name the guest's TLS asks for is not allowed.
    auto c = f.connect(allowed_address, 443);
    const auto t0 = std::chrono::steady_clock::now();
    send_all(c.fd, client_hello("evil.test"));
    BOOST_TEST(closed_within(c.fd, 1000ms));
    BOOST_TEST(seconds_since(t0) < 1.0);
    BOOST_TEST(f.upstream.accepted() == 0);
    ::close(std::exchange(c.fd, -1));  // the proxy stops once no connection is open
    const auto rs = f.records();
    const auto* r = find_record(rs, "evil.test");
    BOOST_REQUIRE(r);
    BOOST_TEST(!r->allowed);
    BOOST_TEST(r->reason == "not in egress");
    BOOST_TEST(r->port == 443);
}

BOOST_AUTO_TEST_CASE(tls_without_sni_is_refused) {
    proxy_fixture f;
    f.allow({"api.example.com"});
    f.start();
    auto c = f.connect(allowed_address, 443);
    send_all(c.fd, client_hello(""));
    BOOST_TEST(closed_within(c.fd, 1000ms));
    BOOST_TEST(f.upstream.accepted() == 0);
    ::close(std::exchange(c.fd, -1));  // the proxy stops once no connection is open
    const auto rs = f.records();
    const auto* r = find_record(rs, allowed_address);
    BOOST_REQUIRE(r);
    BOOST_TEST(!r->allowed);
}

BOOST_AUTO_TEST_CASE(http_host_allowed_or_refused_with_403) {
    proxy_fixture f;
    f.allow({"*.example.com"});
    f.start();
    const std::string get = "GET /x HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
    BOOST_TEST(f.exchange("198.51.100.1", 80, get) == get);  // the echo server answers with the request
    const auto refused = f.exchange(allowed_address, 80, "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n");
    BOOST_TEST(refused.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    BOOST_TEST(refused.find("not in egress") != std::string::npos);
    BOOST_TEST(f.upstream.accepted() == 1);
}

BOOST_AUTO_TEST_CASE(connect_allowed_tunnels_and_refused_gets_403) {
    proxy_fixture f;
    f.allow({"api.example.com"});
    f.start();
    const std::string tunnel = client_hello("api.example.com") + payload(5000);
    const auto back =
        f.exchange("192.168.5.2", 3128, "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n" + tunnel);
    const std::string ok = "HTTP/1.1 200 Connection established\r\n\r\n";
    BOOST_TEST(back.starts_with(ok));
    BOOST_TEST((back.substr(std::min(back.size(), ok.size())) == tunnel));
    const auto refused = f.exchange("192.168.5.2", 3128, "CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n");
    BOOST_TEST(refused.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    BOOST_TEST(f.upstream.accepted() == 1);
    const auto rs = f.records();
    const auto* r = find_record(rs, "api.example.com");
    BOOST_REQUIRE(r);
    BOOST_TEST(r->port == 443);  // CONNECT's port, not the proxy port the guest dialled
    BOOST_TEST(r->bytes_up == static_cast<std::int64_t>(tunnel.size()));
}

BOOST_AUTO_TEST_CASE(a_name_resolving_to_a_local_address_is_refused) {
    proxy_fixture f;
    f.allow({"local.example.com", "meta.example.com"});
    // Were the resolved address dialled, it would reach the echo server.
    const int port = f.upstream.port();
    f.opt.redirect = [port](const std::string&, int) { return std::pair<std::string, int>("127.0.0.1", port); };
    f.start();
    for (const char* name : {"local.example.com", "meta.example.com"}) {
        const auto back =
            f.exchange("198.51.100.1", 80, std::string("GET / HTTP/1.1\r\nHost: ") + name + "\r\n\r\n");
        BOOST_TEST(back.starts_with("HTTP/1.1 403"));
    }
    BOOST_TEST(f.upstream.accepted() == 0);
    const auto rs = f.records();
    const auto* r = find_record(rs, "local.example.com");
    BOOST_REQUIRE(r);
    BOOST_TEST(!r->allowed);
    BOOST_TEST(r->reason.find("loopback") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(host_ports_need_no_name) {
    proxy_fixture f;
    f.allow({"api.example.com"});
    f.opt.rules.host_ports = {f.upstream.port()};
    f.start();
    // A database protocol says no name: the port alone opens it.
    const std::string hello("\x00\x00\x00\x08pg", 6);
    BOOST_TEST((f.exchange("127.0.0.1", f.upstream.port(), hello) == hello));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(net_proxy_dns)

BOOST_AUTO_TEST_CASE(allowed_name_is_forwarded_refused_gets_nxdomain) {
    proxy_fixture f;
    dns_server dns(false);
    f.allow({"api.example.com"});
    f.opt.dns_port = dns.port();
    f.start();
    auto c = f.connect("192.168.5.3", 53);
    const auto q1 = dns_query(0x1234, "api.example.com");
    send_all(c.fd, framed(q1));
    const auto len1 = read_exactly(c.fd, 2);
    BOOST_REQUIRE(len1.size() == 2u);
    const auto a1 = read_exactly(c.fd, (static_cast<unsigned char>(len1[0]) << 8) | static_cast<unsigned char>(len1[1]));
    BOOST_TEST((a1 == dns_server::answer_to(q1)));

    // Same connection, a second question: refused without asking upstream.
    const auto q2 = dns_query(0x4321, "evil.test");
    send_all(c.fd, framed(q2));
    const auto len2 = read_exactly(c.fd, 2);
    BOOST_REQUIRE(len2.size() == 2u);
    const auto a2 = read_exactly(c.fd, (static_cast<unsigned char>(len2[0]) << 8) | static_cast<unsigned char>(len2[1]));
    BOOST_TEST(rcode(a2) == 3);
    BOOST_TEST(a2.substr(0, 2) == q2.substr(0, 2));
    BOOST_TEST(dns.queries() == 1);
    ::close(std::exchange(c.fd, -1));
    const auto rs = f.records();
    const auto* ok = find_record(rs, "api.example.com");
    const auto* no = find_record(rs, "evil.test");
    BOOST_REQUIRE(ok);
    BOOST_REQUIRE(no);
    BOOST_TEST(ok->allowed);
    BOOST_TEST(ok->kind == "dns");
    BOOST_TEST(!no->allowed);
    BOOST_TEST(no->kind == "dns");
}

BOOST_AUTO_TEST_CASE(silent_upstream_gets_servfail_within_dns_timeout) {
    proxy_fixture f;
    dns_server dns(true);
    f.opt.dns_port = dns.port();
    f.opt.caps.dns_timeout = 300ms;
    f.start();
    auto c = f.connect("192.168.5.3", 53);
    const auto t0 = std::chrono::steady_clock::now();
    send_all(c.fd, framed(dns_query(7, "anything.example.org")));
    const auto len = read_exactly(c.fd, 2);
    BOOST_REQUIRE(len.size() == 2u);
    const auto a = read_exactly(c.fd, (static_cast<unsigned char>(len[0]) << 8) | static_cast<unsigned char>(len[1]));
    const double took = seconds_since(t0);
    BOOST_TEST(rcode(a) == 2);
    BOOST_TEST(took >= 0.25);
    BOOST_TEST(took < 1.0);
    BOOST_TEST(dns.queries() == 1);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(net_proxy_hostile)

BOOST_AUTO_TEST_CASE(an_unfinished_proxy_line_is_closed_at_the_deadline) {
    proxy_fixture f;
    f.opt.caps.proxy_header_timeout = 300ms;
    f.start();
    auto c = f.connect("", 0);
    send_all(c.fd, "PROXY TCP4 192.168.5.15 93.18");
    const auto t0 = std::chrono::steady_clock::now();
    BOOST_TEST(closed_within(c.fd, 2000ms));
    BOOST_TEST(seconds_since(t0) >= 0.25);
    BOOST_TEST(f.upstream.accepted() == 0);
}

BOOST_AUTO_TEST_CASE(a_megabyte_header_without_its_end_is_refused_at_the_cap) {
    proxy_fixture f;
    f.allow({"api.example.com"});
    f.opt.caps.max_header_bytes = 16 * 1024;
    f.start();
    auto c = f.connect(allowed_address, 80);
    std::string head = "GET / HTTP/1.1\r\nHost: api.example.com\r\nX-Pad: " + std::string(1024 * 1024, 'a');
    // The proxy stops reading at the cap and closes: the megabyte cannot all be sent.
    const bool sent_all = send_all(c.fd, head);
    BOOST_TEST(!sent_all);
    BOOST_TEST(f.upstream.accepted() == 0);
    ::close(std::exchange(c.fd, -1));  // the proxy stops once no connection is open
    const auto rs = f.records();
    const auto* r = find_record(rs, allowed_address);
    BOOST_REQUIRE(r);
    BOOST_TEST(!r->allowed);
    BOOST_TEST(r->reason.find("16384") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_slow_loris_first_byte_is_closed_at_first_bytes_timeout) {
    proxy_fixture f;
    f.allow({"api.example.com"});
    f.opt.caps.first_bytes_timeout = 500ms;
    f.start();
    auto c = f.connect(allowed_address, 443);
    const auto hello = client_hello("api.example.com");
    const auto t0 = std::chrono::steady_clock::now();
    bool closed = false;
    for (std::size_t i = 0; i < hello.size() && !closed && seconds_since(t0) < 3; ++i) {
        if (!send_all(c.fd, hello.substr(i, 1))) break;
        closed = closed_within(c.fd, 100ms);
    }
    if (!closed) closed = closed_within(c.fd, 1000ms);
    BOOST_TEST(closed);
    BOOST_TEST(seconds_since(t0) < 1.5);
    BOOST_TEST(f.upstream.accepted() == 0);
    ::close(std::exchange(c.fd, -1));  // the proxy stops once no connection is open
    const auto rs = f.records();
    const auto* r = find_record(rs, allowed_address);
    BOOST_REQUIRE(r);
    BOOST_TEST(r->reason.find("no host name within") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_oversized_or_malformed_dns_message_closes_the_connection) {
    proxy_fixture f;
    dns_server dns(false);
    f.opt.dns_port = dns.port();
    f.start();
    {
        // Announces 5000 bytes (over 4096): closed before the proxy holds them.
        auto c = f.connect("192.168.5.3", 53);
        send_all(c.fd, std::string("\x13\x88", 2) + std::string(100, 'q'));
        BOOST_TEST(closed_within(c.fd, 1000ms));
    }
    {
        // Not a query (no question): closed, nothing asked upstream.
        auto c = f.connect("192.168.5.3", 53);
        send_all(c.fd, framed(std::string(12, '\0')));
        BOOST_TEST(closed_within(c.fd, 1000ms));
    }
    BOOST_TEST(dns.queries() == 0);
}

// Process-wide descriptors now.
std::size_t open_fds() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

BOOST_AUTO_TEST_CASE(two_thousand_connections_in_a_loop_hit_the_caps) {
    // The test holds 2000 client descriptors at once.
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 4096 && rl.rlim_max >= 4096) {
        rl.rlim_cur = 4096;
        ::setrlimit(RLIMIT_NOFILE, &rl);
    }
    BOOST_REQUIRE(rl.rlim_cur >= 4096);
    proxy_fixture f;
    f.opt.caps.max_connections = 20;
    f.opt.caps.connections_per_second = 1000;
    f.opt.caps.connection_burst = 1000;
    f.start();
    const auto baseline = open_fds();
    std::vector<fd_guard> clients;
    std::size_t most_proxy_fds = 0;
    for (int i = 0; i < 2000; ++i) {
        fd_guard c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, f.socket.c_str(), sizeof a.sun_path - 1);
        if (::connect(c.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) continue;  // backlog full
        send_all(c.fd, proxy_line(public_address, 80));
        clients.push_back(std::move(c));
        if (i % 100 == 99) {
            std::this_thread::sleep_for(10ms);
            // What is open beyond the test's own client descriptors is the proxy's (and the
            // echo server's): bounded by the caps, not by the guest's loop.
            const auto now = open_fds();
            const auto ours = baseline + clients.size();
            most_proxy_fds = std::max(most_proxy_fds, now > ours ? now - ours : 0);
        }
    }
    std::this_thread::sleep_for(200ms);
    BOOST_TEST(f.upstream.most_open() <= 20);
    BOOST_TEST(f.upstream.accepted() >= 20);
    // Each served connection: the guest's, the upstream's, and the echo server's side of it.
    BOOST_TEST(most_proxy_fds <= 3u * 20 + 20);
    BOOST_TEST_MESSAGE("upstream saw " << f.upstream.accepted() << " connections, at most " << f.upstream.most_open()
                                       << " at once; proxy-side descriptors peaked at " << most_proxy_fds);
    clients.clear();
}

BOOST_AUTO_TEST_CASE(connections_over_the_rate_are_closed_at_once) {
    proxy_fixture f;
    f.opt.caps.connections_per_second = 1;
    f.opt.caps.connection_burst = 10;
    f.start();
    for (int i = 0; i < 100; ++i) {
        auto c = f.connect(public_address, 80);
        send_all(c.fd, "x");
        ::shutdown(c.fd, SHUT_WR);
        read_to_eof(c.fd);
    }
    // The burst, and what the rate refilled meanwhile.
    BOOST_TEST(f.upstream.accepted() >= 10);
    BOOST_TEST(f.upstream.accepted() <= 13);
}

BOOST_AUTO_TEST_CASE(a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced) {
    proxy_fixture f;
    f.start();
    // A second proxy on the same path must refuse to start while the first serves.
    machine::net::proxy_options second = f.opt;
    second.still_wanted = [] { return false; };
    BOOST_TEST(machine::net::run_proxy(second) == 1);
    BOOST_TEST(f.exchange(public_address, 80, "still served") == "still served");
    BOOST_TEST(((fs::status(f.socket).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write)));
}

BOOST_AUTO_TEST_SUITE_END()
