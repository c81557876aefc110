// The filtering SSH-agent proxy: the pure filter, then the proxy between real OpenSSH tools
// and a real ssh-agent, then hostile clients and a scriptable fake agent.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

#include <asio/io_context.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "filter.hpp"
#include "machine/agent_proxy.hpp"
#include "machine/vm.hpp"
#include "machine/proc.hpp"
#include "machine/protocol.hpp"
#include "machine/text.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace machine;
using namespace machine::agent_proxy;
using machine::test::seconds_since;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// Wire helpers

std::string u32(std::uint32_t v) {
    std::string s(4, '\0');
    s[0] = static_cast<char>(v >> 24);
    s[1] = static_cast<char>(v >> 16);
    s[2] = static_cast<char>(v >> 8);
    s[3] = static_cast<char>(v);
    return s;
}
std::string str(std::string_view s) { return u32(static_cast<std::uint32_t>(s.size())) + std::string(s); }
std::string byte(std::uint8_t b) { return std::string(1, static_cast<char>(b)); }

std::string sign_body(std::string_view blob, std::string_view data, std::uint32_t flags = 0) {
    return byte(msg::sign_request) + str(blob) + str(data) + u32(flags);
}
std::string extension_body(std::string_view name, std::string_view payload = {}) {
    return byte(msg::extension) + str(name) + std::string(payload);
}
std::string session_bind_payload() { return str("hostkey") + str("session-id") + str("signature") + byte(1); }
const std::string identities_request = byte(msg::request_identities);

// ---------------------------------------------------------------------------------------------
// Processes and files

proc::result run_cmd(std::vector<std::string> argv, std::vector<std::pair<std::string, std::string>> env = {},
                     std::optional<std::string> input = std::nullopt) {
    proc::command c;
    c.argv = std::move(argv);
    c.env_set = std::move(env);
    c.env_unset = {"SSH_AGENT_PID", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY"};
    if (input) {
        c.in = proc::stdio::pipe;
        c.stdin_data = std::move(*input);
    }
    proc::run_options o;
    o.limit.timeout = 20s;
    asio::io_context ctx;
    return machine::test::co_run(ctx, proc::run(std::move(c), std::move(o)));
}

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const fs::path& p, std::string_view text, fs::perms mode = fs::perms::owner_read | fs::perms::owner_write) {
    std::ofstream(p, std::ios::binary) << text;
    fs::permissions(p, mode);
}

// A temp directory made private (0700), as the proxy requires for its socket.
struct private_dir : machine::test::temp_dir {
    private_dir() { fs::permissions(path, fs::perms::owner_all); }
};

struct key {
    fs::path file;       // private key (may be deleted after ssh-add)
    fs::path pub;        // public key file
    std::string pub_line;
    std::string blob;    // wire form
    std::string fp;
};

key make_key(const fs::path& dir, const std::string& name) {
    key k;
    k.file = dir / name;
    k.pub = dir / (name + ".pub");
    const auto r = run_cmd({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name + "@test", "-f", k.file.string()});
    BOOST_REQUIRE_MESSAGE(r.ok(), "ssh-keygen: " + r.err);
    k.pub_line = text::trim(read_file(k.pub));
    std::istringstream words(k.pub_line);
    std::string type, b64;
    words >> type >> b64;
    const auto blob = protocol::base64_decode(b64);
    BOOST_REQUIRE(blob);
    k.blob = *blob;
    k.fp = fingerprint(k.blob);
    return k;
}

// A real `ssh-agent -D -a <socket>`, stopped at scope exit.
class real_agent {
public:
    explicit real_agent(fs::path socket) : socket_(std::move(socket)) {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addclosefrom_np(&fa, 3); // keep the proxy's sockets out of it
        std::string a0 = "ssh-agent", a1 = "-D", a2 = "-a", a3 = socket_.string();
        char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), nullptr};
        const int rc = ::posix_spawnp(&pid_, "ssh-agent", &fa, nullptr, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        BOOST_REQUIRE_MESSAGE(rc == 0, "cannot start ssh-agent");
        const auto t0 = std::chrono::steady_clock::now();
        while (probe(socket_, 1s).result == agent_probe::state::not_running && seconds_since(t0) < 10)
            std::this_thread::sleep_for(10ms);
    }
    ~real_agent() { stop(); }
    void stop() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGTERM);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
    }
    const fs::path& socket() const { return socket_; }

private:
    fs::path socket_;
    pid_t pid_ = -1;
};

// Sends the proxy's spdlog output to a buffer for the fixture's lifetime. Read text() only
// once the proxy thread has ended.
struct log_capture {
    std::ostringstream out;
    std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
    log_capture() {
        auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
        auto logger = std::make_shared<spdlog::logger>("agent-proxy-test", sink);
        logger->set_level(spdlog::level::debug);
        logger->set_pattern("%l: %v");
        spdlog::set_default_logger(logger);
    }
    ~log_capture() { spdlog::set_default_logger(previous); }
    std::string text() const { return out.str(); }
};

// Sends the proxy's spdlog output to `file` through the logger `machine agent-proxy` uses
// (capped, one rotated copy) for the guard's lifetime.
struct filter_log {
    std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
    explicit filter_log(const fs::path& file) { spdlog::set_default_logger(vm::agent_filter_logger(file)); }
    ~filter_log() { spdlog::set_default_logger(previous); }
    filter_log(const filter_log&) = delete;
    filter_log& operator=(const filter_log&) = delete;
};

// How many events the lines of `log` containing `marker` stand for: a summary ("... 48213
// requests in the last 1.0 s (...)") counts its number, any other line one.
struct counted {
    std::uint64_t events = 0;
    std::size_t lines = 0;
};
counted count_logged(const std::string& log, const std::string& marker) {
    static const std::regex summary(R"((\d+) \w+ in the last [0-9.]+ s \()");
    counted c;
    for (const auto& line : text::split_lines(log)) {
        if (line.find(marker) == std::string::npos) continue;
        ++c.lines;
        std::smatch m;
        c.events += std::regex_search(line, m, summary) ? std::stoull(m[1]) : 1;
    }
    return c;
}

// ---------------------------------------------------------------------------------------------
// Sockets

int connect_unix(const fs::path& p) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, p.c_str(), sizeof(sa.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// All of `bytes` on a blocking socket; false when the peer goes away.
bool send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const auto n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

// A blocking client with poll()-bounded reads: raw bytes in, framed messages out.
class raw_client {
public:
    explicit raw_client(const fs::path& p) : fd_(connect_unix(p)) { BOOST_REQUIRE_MESSAGE(fd_ >= 0, "connect " + p.string()); }
    ~raw_client() {
        if (fd_ >= 0) ::close(fd_);
    }
    raw_client(const raw_client&) = delete;
    raw_client& operator=(const raw_client&) = delete;

    bool send_raw(std::string_view bytes) { return send_all(fd_, bytes); }
    bool send_message(std::string_view body) { return send_raw(frame(body)); }

    // The next message body; nullopt on EOF, error or timeout.
    std::optional<std::string> recv_message(std::chrono::milliseconds timeout = 5s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            if (buf_.size() >= 4) {
                const auto len = frame_length(reinterpret_cast<const unsigned char*>(buf_.data()));
                if (buf_.size() >= 4 + len) {
                    std::string body = buf_.substr(4, len);
                    buf_.erase(0, 4 + len);
                    return body;
                }
            }
            if (!fill(deadline)) return std::nullopt;
        }
    }
    std::optional<std::string> ask(std::string_view body, std::chrono::milliseconds timeout = 5s) {
        if (!send_message(body)) return std::nullopt;
        return recv_message(timeout);
    }
    // True when the peer closes (EOF or reset) within `timeout` without sending anything.
    bool closed_by_peer(std::chrono::milliseconds timeout = 5s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        const auto before = buf_.size();
        while (fill(deadline)) {
        }
        return eof_ && buf_.size() == before;
    }

private:
    bool fill(std::chrono::steady_clock::time_point deadline) {
        if (eof_) return false;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        pollfd p{fd_, POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
        if (ready < 0 && errno == EINTR) return fill(deadline);  // a SIGCHLD (the POSIX build's handler)
        if (ready <= 0) return false;
        char tmp[65536];
        const auto n = ::recv(fd_, tmp, sizeof tmp, 0);
        if (n <= 0) {
            eof_ = true;
            return false;
        }
        buf_.append(tmp, static_cast<std::size_t>(n));
        return true;
    }
    int fd_;
    std::string buf_;
    bool eof_ = false;
};

const std::string failure_body = byte(msg::failure);

// The fingerprints a proxy (or agent) at `p` lists; nullopt when it does not answer with a
// well-formed identities answer.
std::optional<std::vector<std::string>> listed(const fs::path& p) {
    raw_client c(p);
    const auto answer = c.ask(identities_request);
    if (!answer) return std::nullopt;
    const auto ids = parse_identities(*answer);
    if (!ids) return std::nullopt;
    std::vector<std::string> fps;
    for (const auto& id : *ids) fps.push_back(fingerprint(id.key_blob));
    return fps;
}

// Reads SSH_AGENT_FAILURE answers from `fd` until `expected` have come, something else comes,
// the peer closes or `timeout` passes; how many came. Compares bytes as they arrive, so that
// hundreds of thousands of answers cost no parsing.
std::uint64_t read_failures(int fd, std::uint64_t expected, std::chrono::seconds timeout) {
    const std::string failure = failure_frame();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::uint64_t bytes = 0;
    char buf[65536];
    while (bytes < expected * failure.size()) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        pollfd p{fd, POLLIN, 0};
        if (left <= 0) break;
        const int ready = ::poll(&p, 1, static_cast<int>(left));
        if (ready < 0 && errno == EINTR) continue;  // a SIGCHLD (the POSIX build's handler)
        if (ready <= 0) break;
        const auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i, ++bytes)
            if (buf[i] != failure[bytes % failure.size()]) return bytes / failure.size();
    }
    return bytes / failure.size();
}

// ---------------------------------------------------------------------------------------------
// The proxy on a thread

class proxy_runner {
public:
    explicit proxy_runner(options o) : opt_(std::move(o)) {
        opt_.still_wanted = [this] { return !stop_.load(); };
        opt_.idle_check = 20ms;
        thread_ = std::thread([this] { rc_ = run(opt_); });
        const auto t0 = std::chrono::steady_clock::now();
        while (rc_ == running && seconds_since(t0) < 10) {
            const int fd = connect_unix(opt_.listen);
            if (fd >= 0) {
                ::close(fd);
                break;
            }
            std::this_thread::sleep_for(5ms);
        }
    }
    ~proxy_runner() { stop(); }
    int stop() {
        if (thread_.joinable()) {
            stop_ = true;
            thread_.join();
        }
        return rc_;
    }
    bool running_now() const { return rc_ == running; }
    const fs::path& socket() const { return opt_.listen; }

private:
    static constexpr int running = -1000;
    options opt_;
    std::atomic<bool> stop_{false};
    std::atomic<int> rc_{running};
    std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// A scriptable fake agent: answers per `mode`, records the message types it receives.

enum class fake_mode {
    good,             // identities: keys A and B; sign: a well-formed signature; extension: success
    count_too_large,  // identities answer announces 5 identities, carries 1
    huge_count,       // identities answer announces 0xFFFFFFFF identities
    truncated_blob,   // a key blob string longer than the message
    trailing_garbage, // a well-formed answer with bytes after it
    oversized_length, // header announces 1 MiB (and sends a little)
    max_u32_length,   // header announces 0xFFFFFFFF
    zero_length,      // header announces 0
    wrong_type,       // answers SSH_AGENT_SUCCESS to everything
    close_at_once,    // reads the request, closes
    silent,           // reads the request, never answers
};

class fake_agent {
public:
    fake_agent(fs::path socket, std::string blob_a, std::string blob_b)
        : socket_(std::move(socket)), a_(std::move(blob_a)), b_(std::move(blob_b)) {
        listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strncpy(sa.sun_path, socket_.c_str(), sizeof(sa.sun_path) - 1);
        BOOST_REQUIRE(::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) == 0);
        BOOST_REQUIRE(::listen(listen_fd_, 64) == 0);
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~fake_agent() {
        stop_ = true;
        acceptor_.join();
        for (auto& t : conns_) t.join();
        ::close(listen_fd_);
    }
    void set_mode(fake_mode m) { mode_ = m; }
    std::vector<std::uint8_t> received() {
        std::lock_guard lock(m_);
        return received_;
    }
    int connections() const { return connections_; }
    int closed_by_proxy() const { return closed_; }

private:
    void accept_loop() {
        while (!stop_) {
            pollfd p{listen_fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) continue;
            ++connections_;
            conns_.emplace_back([this, fd] { serve(fd); });
        }
    }
    void serve(int fd) {
        std::string buf;
        bool hold = false; // silent mode: keep reading, never answer
        while (!stop_) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            char tmp[4096];
            const auto n = ::recv(fd, tmp, sizeof tmp, 0);
            if (n <= 0) {
                ++closed_;
                break;
            }
            buf.append(tmp, static_cast<std::size_t>(n));
            while (!hold && buf.size() >= 4) {
                const auto len = frame_length(reinterpret_cast<const unsigned char*>(buf.data()));
                if (buf.size() < 4 + len) break;
                const auto type = len ? static_cast<std::uint8_t>(buf[4]) : 0;
                buf.erase(0, 4 + len);
                {
                    std::lock_guard lock(m_);
                    received_.push_back(type);
                }
                const auto m = mode_.load();
                if (m == fake_mode::silent) {
                    hold = true;
                    break;
                }
                if (m == fake_mode::close_at_once) {
                    ::close(fd);
                    return;
                }
                const std::string reply = answer(m, type);
                ::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
            }
        }
        ::close(fd);
    }
    std::string answer(fake_mode m, std::uint8_t type) const {
        const std::string good_ids = byte(msg::identities_answer) + u32(2) + str(a_) + str("key A") + str(b_) + str("key B");
        switch (m) {
        case fake_mode::count_too_large:
            return frame(byte(msg::identities_answer) + u32(5) + str(a_) + str("key A"));
        case fake_mode::huge_count: return frame(byte(msg::identities_answer) + u32(0xFFFFFFFF) + str(a_) + str("A"));
        case fake_mode::truncated_blob:
            return frame(byte(msg::identities_answer) + u32(1) + u32(100) + "only ten b");
        case fake_mode::trailing_garbage: return frame(good_ids + "garbage");
        case fake_mode::oversized_length: return u32(1 << 20) + byte(msg::identities_answer) + std::string(1000, 'x');
        case fake_mode::max_u32_length: return u32(0xFFFFFFFF) + byte(msg::identities_answer);
        case fake_mode::zero_length: return u32(0);
        case fake_mode::wrong_type: return frame(byte(msg::success));
        default: break;
        }
        if (type == msg::request_identities) return frame(good_ids);
        if (type == msg::sign_request) return frame(byte(msg::sign_response) + str(str("ssh-ed25519") + str("sig")));
        if (type == msg::extension) return frame(byte(msg::success));
        return frame(failure_body);
    }

    fs::path socket_;
    std::string a_, b_;
    int listen_fd_ = -1;
    std::atomic<bool> stop_{false};
    std::atomic<fake_mode> mode_{fake_mode::good};
    std::atomic<int> connections_{0};
    std::atomic<int> closed_{0};
    std::mutex m_;
    std::vector<std::uint8_t> received_;
    std::thread acceptor_;
    std::vector<std::thread> conns_; // touched by the acceptor thread only, joined after it
};

// ---------------------------------------------------------------------------------------------
// Fixtures

// A real agent holding keys A and B (private key files deleted after ssh-add, so anything
// that signs must go through an agent), key C on disk only, and a proxy allowing only A.
struct real_setup {
    private_dir dir;
    log_capture logs;
    key a = make_key(dir.path, "A");
    key b = make_key(dir.path, "B");
    key c = make_key(dir.path, "C");
    real_agent agent{dir.path / "agent.sock"};
    std::unique_ptr<proxy_runner> proxy;

    real_setup() {
        const auto added = run_cmd({"ssh-add", a.file.string(), b.file.string()}, agent_env());
        BOOST_REQUIRE_MESSAGE(added.ok(), "ssh-add: " + added.err);
        fs::remove(a.file);
        fs::remove(b.file);
        options o;
        o.listen = dir.path / "proxy.sock";
        o.upstream = agent.socket();
        o.allowed = {a.fp};
        proxy = std::make_unique<proxy_runner>(o);
        BOOST_REQUIRE(proxy->running_now());
    }
    std::vector<std::pair<std::string, std::string>> agent_env() const { return {{"SSH_AUTH_SOCK", agent.socket().string()}}; }
    std::vector<std::pair<std::string, std::string>> proxy_env() const {
        return {{"SSH_AUTH_SOCK", (dir.path / "proxy.sock").string()}};
    }
    // What the real agent holds, directly (a locked agent lists nothing).
    std::vector<std::string> agent_keys() const {
        const auto r = run_cmd({"ssh-add", "-l", "-E", "sha256"}, agent_env());
        std::vector<std::string> fps;
        for (const auto& line : text::split_lines(r.out)) {
            std::istringstream w(line);
            std::string bits, fp;
            w >> bits >> fp;
            fps.push_back(fp);
        }
        return fps;
    }
};

// Fake keys A and B (any bytes hash to a fingerprint), a fake agent, a proxy allowing A.
struct fake_setup {
    private_dir dir;
    log_capture logs;
    std::string blob_a = str("ssh-ed25519") + str("fake public key A, 32 bytes long");
    std::string blob_b = str("ssh-ed25519") + str("fake public key B, 32 bytes long");
    fake_agent fake{dir.path / "fake.sock", blob_a, blob_b};
    std::unique_ptr<proxy_runner> proxy;

    fake_setup() {
        options o;
        o.listen = dir.path / "proxy.sock";
        o.upstream = dir.path / "fake.sock";
        o.allowed = {fingerprint(blob_a)};
        o.upstream_timeout = 300ms;
        proxy = std::make_unique<proxy_runner>(o);
        BOOST_REQUIRE(proxy->running_now());
    }
    fs::path socket() const { return dir.path / "proxy.sock"; }
    // A well-behaved client is still served, and sees only A.
    void expect_serves() {
        fake.set_mode(fake_mode::good);
        const auto fps = listed(socket());
        BOOST_REQUIRE(fps);
        BOOST_TEST(*fps == std::vector<std::string>{fingerprint(blob_a)});
        BOOST_TEST(proxy->running_now());
    }
};

} // namespace

// =============================================================================================

BOOST_AUTO_TEST_SUITE(agent_proxy_filter)

BOOST_AUTO_TEST_CASE(fingerprint_of_a_known_key) {
    // ssh-keygen -lf: 256 SHA256:S5pPTNB3FetarUJU8Dt53ys3eahv1NHWhAjeysWaMSw known (ED25519)
    const auto blob = protocol::base64_decode("AAAAC3NzaC1lZDI1NTE5AAAAIGcJ3cUiWu/PvoM6dZp8lUvCv25TZ9r7axiGVwTW5k/q");
    BOOST_REQUIRE(blob);
    BOOST_TEST(fingerprint(*blob) == "SHA256:S5pPTNB3FetarUJU8Dt53ys3eahv1NHWhAjeysWaMSw");
}

BOOST_AUTO_TEST_CASE(fingerprint_matches_ssh_keygen) {
    private_dir dir;
    for (const char* type : {"ed25519", "ecdsa"}) {
        const auto file = dir.path / type;
        BOOST_REQUIRE(run_cmd({"ssh-keygen", "-q", "-t", type, "-N", "", "-f", file.string()}).ok());
        const auto r = run_cmd({"ssh-keygen", "-l", "-E", "sha256", "-f", file.string() + ".pub"});
        BOOST_REQUIRE(r.ok());
        std::istringstream out(r.out), pub(read_file(file.string() + ".pub"));
        std::string bits, expected, ktype, b64;
        out >> bits >> expected;
        pub >> ktype >> b64;
        BOOST_TEST(fingerprint(*protocol::base64_decode(b64)) == expected);
    }
}

BOOST_AUTO_TEST_CASE(request_identities_is_forwarded_only_when_well_formed) {
    const allow_list allowed{"SHA256:x"};
    BOOST_TEST((inspect_request(identities_request, allowed).what == action::forward));
    BOOST_TEST((inspect_request(identities_request + "x", allowed).what == action::close));
    BOOST_TEST((inspect_request("", allowed).what == action::close));
}

BOOST_AUTO_TEST_CASE(sign_requests_are_forwarded_only_for_allowed_keys) {
    const std::string a = "key blob A", b = "key blob B";
    const allow_list allowed{fingerprint(a)};
    const auto yes = inspect_request(sign_body(a, "data to sign", 4), allowed);
    BOOST_TEST((yes.what == action::forward));
    BOOST_TEST(yes.fingerprint == fingerprint(a));
    const auto no = inspect_request(sign_body(b, "SECRET data to sign"), allowed);
    BOOST_TEST((no.what == action::refuse));
    BOOST_TEST(no.type == msg::sign_request);
    BOOST_TEST(no.fingerprint == fingerprint(b));
    BOOST_TEST(no.reason.find(fingerprint(b)) != std::string::npos);
    BOOST_TEST(no.reason.find("SECRET") == std::string::npos);
    // The empty list allows nothing.
    BOOST_TEST((inspect_request(sign_body(a, "d"), allow_list{}).what == action::refuse));
}

BOOST_AUTO_TEST_CASE(malformed_sign_requests_close_the_connection) {
    const std::string a = "key blob A";
    const allow_list allowed{fingerprint(a)};
    const std::string good = sign_body(a, "data");
    for (std::size_t cut = 1; cut < good.size(); ++cut)
        BOOST_TEST((inspect_request(good.substr(0, cut), allowed).what == action::close), "cut at " << cut);
    BOOST_TEST((inspect_request(good + "x", allowed).what == action::close));
    // A string length past the end, up to the largest uint32.
    BOOST_TEST((inspect_request(byte(msg::sign_request) + u32(0xFFFFFFFF) + "abc", allowed).what == action::close));
    BOOST_TEST((inspect_request(byte(msg::sign_request) + str(a) + u32(1000) + "abc", allowed).what == action::close));
}

BOOST_AUTO_TEST_CASE(only_the_session_bind_extension_is_forwarded) {
    const allow_list allowed;
    BOOST_TEST((inspect_request(extension_body("session-bind@openssh.com", session_bind_payload()), allowed).what ==
                action::forward));
    // Malformed payloads are refused, not forwarded.
    BOOST_TEST((inspect_request(extension_body("session-bind@openssh.com"), allowed).what == action::refuse));
    BOOST_TEST((inspect_request(extension_body("session-bind@openssh.com", session_bind_payload() + "x"), allowed)
                    .what == action::refuse));
    for (const char* other : {"query", "restrict-destination-v00@openssh.com", "session-bind@openssh.co", ""})
        BOOST_TEST((inspect_request(extension_body(other), allowed).what == action::refuse), other);
    // The name string itself is framing: broken -> close.
    BOOST_TEST((inspect_request(byte(msg::extension) + u32(50) + "session-bind", allowed).what == action::close));
    BOOST_TEST((inspect_request(byte(msg::extension), allowed).what == action::close));
    // Control bytes in a refused name do not reach the log line.
    const auto d = inspect_request(extension_body("evil\x1b[2J\n"), allowed);
    BOOST_TEST(d.reason.find('\x1b') == std::string::npos);
    BOOST_TEST(d.reason.find('\n') == std::string::npos);
}

BOOST_AUTO_TEST_CASE(every_other_type_is_refused) {
    const allow_list allowed{"SHA256:x"};
    for (int t = 0; t < 256; ++t) {
        if (t == msg::request_identities || t == msg::sign_request || t == msg::extension) continue;
        const auto d = inspect_request(byte(static_cast<std::uint8_t>(t)) + "payload", allowed);
        BOOST_TEST((d.what == action::refuse), "type " << t);
        BOOST_TEST(d.type == t);
    }
    BOOST_TEST(type_name(17) == "add identity");
    BOOST_TEST(type_name(22) == "lock");
    BOOST_TEST(type_name(200) == "type 200");
}

BOOST_AUTO_TEST_CASE(identities_answers_are_filtered_and_recounted) {
    const std::string a = "blob A", b = "blob B", c = "blob C";
    const allow_list allowed{fingerprint(a), fingerprint(c)};
    const auto answer = byte(msg::identities_answer) + u32(3) + str(a) + str("a comment") + str(b) + str("b") + str(c) + str("");
    std::size_t kept = 0, total = 0;
    const auto out = check_answer(msg::request_identities, answer, allowed, &kept, &total);
    BOOST_REQUIRE(out);
    BOOST_TEST(*out == byte(msg::identities_answer) + u32(2) + str(a) + str("a comment") + str(c) + str(""));
    BOOST_TEST(kept == 2u);
    BOOST_TEST(total == 3u);
    // None allowed: a well-formed empty list.
    BOOST_TEST(*check_answer(msg::request_identities, answer, allow_list{}) == byte(msg::identities_answer) + u32(0));
    // A failure passes through as a plain failure.
    BOOST_TEST(*check_answer(msg::request_identities, byte(msg::failure) + "junk", allowed) == failure_body);
}

BOOST_AUTO_TEST_CASE(malformed_identities_answers_are_rejected) {
    const std::string a = "blob A";
    const allow_list allowed{fingerprint(a)};
    const auto good = byte(msg::identities_answer) + u32(1) + str(a) + str("c");
    BOOST_TEST(parse_identities(good).has_value());
    for (std::size_t cut = 0; cut < good.size(); ++cut)
        BOOST_TEST(!check_answer(msg::request_identities, good.substr(0, cut), allowed), "cut at " << cut);
    BOOST_TEST(!check_answer(msg::request_identities, good + "x", allowed));                          // trailing
    BOOST_TEST(!check_answer(msg::request_identities, byte(12) + u32(2) + str(a) + str("c"), allowed)); // count
    BOOST_TEST(!check_answer(msg::request_identities, byte(12) + u32(0xFFFFFFFF) + str(a) + str("c"), allowed));
    BOOST_TEST(!check_answer(msg::request_identities, byte(12) + u32(1) + u32(0xFFFFFFF0) + a, allowed));
    BOOST_TEST(!check_answer(msg::request_identities, byte(msg::success), allowed));
    BOOST_TEST(!check_answer(msg::request_identities, byte(msg::sign_response) + str("x"), allowed));
}

BOOST_AUTO_TEST_CASE(sign_and_extension_answers_are_checked) {
    const allow_list allowed;
    const auto sig = byte(msg::sign_response) + str(str("ssh-ed25519") + str("sig"));
    BOOST_TEST(*check_answer(msg::sign_request, sig, allowed) == sig);
    BOOST_TEST(*check_answer(msg::sign_request, failure_body, allowed) == failure_body);
    BOOST_TEST(!check_answer(msg::sign_request, sig + "x", allowed));
    BOOST_TEST(!check_answer(msg::sign_request, sig.substr(0, sig.size() - 1), allowed));
    BOOST_TEST(!check_answer(msg::sign_request, byte(msg::identities_answer) + u32(0), allowed));
    BOOST_TEST(*check_answer(msg::extension, byte(msg::success), allowed) == byte(msg::success));
    BOOST_TEST(*check_answer(msg::extension, byte(msg::extension_failure), allowed) == byte(msg::extension_failure));
    BOOST_TEST(!check_answer(msg::extension, byte(msg::success) + "x", allowed));
    BOOST_TEST(!check_answer(msg::extension, "", allowed));
    BOOST_TEST(!check_answer(22, byte(msg::success), allowed)); // never forwarded, never passed back
}

BOOST_AUTO_TEST_CASE(random_bytes_never_break_the_filter) {
    // Mutations of valid messages (so lengths and types are often almost right), run under
    // ASan/UBSan in the sanitizer build: no crash, no read past the input.
    const std::string a = "blob A";
    const allow_list allowed{fingerprint(a)};
    const std::vector<std::string> seeds{
        sign_body(a, "data"), extension_body("session-bind@openssh.com", session_bind_payload()), identities_request,
        byte(msg::identities_answer) + u32(2) + str(a) + str("c") + str("blob B") + str(""),
        byte(msg::sign_response) + str("sig")};
    std::mt19937 rng(42);
    for (int i = 0; i < 20000; ++i) {
        std::string m = seeds[rng() % seeds.size()];
        for (int k = rng() % 4; k >= 0; --k) {
            const auto pos = rng() % (m.size() + 1);
            switch (rng() % 3) {
            case 0: if (pos < m.size()) m[pos] = static_cast<char>(rng()); break;
            case 1: m.resize(pos); break;
            default: m.insert(pos, 1, static_cast<char>(rng())); break;
            }
        }
        const auto d = inspect_request(m, allowed);
        if (d.what == action::forward) BOOST_TEST((d.type == msg::request_identities || d.type == msg::sign_request ||
                                                   d.type == msg::extension));
        for (std::uint8_t t : {msg::request_identities, msg::sign_request, msg::extension})
            if (auto out = check_answer(t, m, allowed)) BOOST_TEST(out->size() <= m.size());
    }
}

BOOST_AUTO_TEST_CASE(frame_lengths) {
    BOOST_TEST(!acceptable_length(0));
    BOOST_TEST(acceptable_length(1));
    BOOST_TEST(acceptable_length(256 * 1024));
    BOOST_TEST(!acceptable_length(256 * 1024 + 1));
    BOOST_TEST(!acceptable_length(0xFFFFFFFF));
    BOOST_TEST(frame("ab") == u32(2) + "ab");
    BOOST_TEST(failure_frame() == u32(1) + failure_body);
    const std::string h = u32(0x01020304);
    BOOST_TEST(frame_length(reinterpret_cast<const unsigned char*>(h.data())) == 0x01020304u);
}

BOOST_AUTO_TEST_CASE(log_limiter_says_the_first_then_one_summary_a_second) {
    const log_limiter::clock::time_point t0{};
    log_limiter l("refused", "request");
    BOOST_TEST(*l.note("add identity", "refused add identity (not forwarded)", t0) == "refused add identity (not forwarded)");
    for (int i = 1; i < 1000; ++i) BOOST_TEST(!l.note("add identity", "d", t0 + i * 1ms), "at " << i << " ms");
    BOOST_TEST(*l.note("lock", "refused lock", t0 + 1s) == "refused 1000 requests in the last 1.0 s (add identity x999, lock x1)");
    BOOST_TEST(!l.flush(t0 + 1500ms)); // all said

    // After a quiet second a single event is said as it is; what follows waits for the flush.
    BOOST_TEST(*l.note("lock", "refused lock", t0 + 5s) == "refused lock");
    BOOST_TEST(!l.note("lock", "refused lock", t0 + 5500ms));
    BOOST_TEST(*l.flush(t0 + 5600ms) == "refused 1 request in the last 0.6 s (lock x1)");

    // Kinds come from the client: a summary names eight, then "other".
    for (int t = 0; t < 20; ++t) BOOST_TEST(!l.note("type " + std::to_string(t), "d", t0 + 5700ms));
    BOOST_TEST(*l.flush(t0 + 6s) == "refused 20 requests in the last 0.4 s (type 0 x1, type 1 x1, type 2 x1, type 3 x1, "
                                    "type 4 x1, type 5 x1, type 6 x1, type 7 x1, other x12)");
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

BOOST_AUTO_TEST_SUITE(agent_proxy_real)

BOOST_FIXTURE_TEST_CASE(ssh_add_lists_only_the_allowed_key, real_setup) {
    const auto r = run_cmd({"ssh-add", "-l", "-E", "sha256"}, proxy_env());
    BOOST_TEST_REQUIRE(r.ok(), r.err);
    const auto lines = text::split_lines(r.out);
    BOOST_TEST_REQUIRE(lines.size() == 1u, r.out);
    BOOST_TEST(lines[0].find(a.fp) != std::string::npos);
    BOOST_TEST(r.out.find(b.fp) == std::string::npos);
    // `ssh-add -L` (public keys) agrees.
    const auto pubs = run_cmd({"ssh-add", "-L"}, proxy_env());
    BOOST_TEST(text::trim(pubs.out) == a.pub_line);
    BOOST_TEST((agent_keys() == std::vector<std::string>{a.fp, b.fp}));
}

BOOST_FIXTURE_TEST_CASE(signing_works_only_with_the_allowed_key, real_setup) {
    const auto doc = dir.path / "doc.txt";
    write_file(doc, "a commit to sign\n");
    write_file(dir.path / "allowed_signers", "a@test " + a.pub_line + "\nb@test " + b.pub_line + "\n");

    // A through the proxy: `-f A.pub` makes ssh-keygen sign with the agent (A's private key
    // file is gone), and the signature verifies.
    const auto signed_a = run_cmd({"ssh-keygen", "-Y", "sign", "-f", a.pub.string(), "-n", "git", doc.string()}, proxy_env());
    BOOST_TEST_REQUIRE(signed_a.ok(), signed_a.err);
    const auto verified = run_cmd({"ssh-keygen", "-Y", "verify", "-f", (dir.path / "allowed_signers").string(), "-I",
                                   "a@test", "-n", "git", "-s", doc.string() + ".sig"},
                                  {}, read_file(doc));
    BOOST_TEST(verified.ok(), verified.out << verified.err);
    fs::remove(doc.string() + ".sig");

    // B through the proxy fails; directly against the agent it works (so the proxy refused).
    const auto signed_b = run_cmd({"ssh-keygen", "-Y", "sign", "-f", b.pub.string(), "-n", "git", doc.string()}, proxy_env());
    BOOST_TEST(!signed_b.ok());
    BOOST_TEST(!fs::exists(doc.string() + ".sig"));
    const auto direct_b = run_cmd({"ssh-keygen", "-Y", "sign", "-f", b.pub.string(), "-n", "git", doc.string()}, agent_env());
    BOOST_TEST(direct_b.ok(), direct_b.err);

    // The raw protocol, where ssh-keygen would not even ask: a sign request for B is refused
    // by the proxy while the agent itself would sign.
    raw_client via_proxy(dir.path / "proxy.sock");
    BOOST_TEST(*via_proxy.ask(sign_body(b.blob, "data")) == failure_body);
    const auto sig_a = via_proxy.ask(sign_body(a.blob, "data"));
    BOOST_REQUIRE(sig_a);
    BOOST_TEST(static_cast<int>((*sig_a)[0]) == msg::sign_response);
    raw_client direct(agent.socket());
    const auto sig_b = direct.ask(sign_body(b.blob, "data"));
    BOOST_REQUIRE(sig_b);
    BOOST_TEST(static_cast<int>((*sig_b)[0]) == msg::sign_response);
}

BOOST_FIXTURE_TEST_CASE(agent_management_is_refused, real_setup) {
    const auto askpass = dir.path / "askpass.sh";
    write_file(askpass, "#!/bin/sh\necho lockpassword\n", fs::perms::owner_all);
    auto env = proxy_env();
    env.insert(env.end(), {{"SSH_ASKPASS", askpass.string()}, {"SSH_ASKPASS_REQUIRE", "force"}, {"DISPLAY", ":0"}});

    BOOST_TEST(!run_cmd({"ssh-add", "-D"}, env).ok());                // remove all
    BOOST_TEST(!run_cmd({"ssh-add", c.file.string()}, env).ok());     // add a third key
    BOOST_TEST(!run_cmd({"ssh-add", "-d", a.pub.string()}, env).ok()); // remove A
    const auto lock = run_cmd({"ssh-add", "-x"}, env);
    BOOST_TEST(!lock.ok());
    BOOST_TEST(lock.err.find("ailed to lock") != std::string::npos, lock.err);
    BOOST_TEST(!run_cmd({"ssh-add", "-X"}, env).ok()); // unlock

    // The real agent still holds A and B, unlocked (a locked agent lists nothing), not C.
    BOOST_TEST((agent_keys() == std::vector<std::string>{a.fp, b.fp}));
    BOOST_TEST(run_cmd({"ssh-add", "-l"}, proxy_env()).ok());
}

BOOST_FIXTURE_TEST_CASE(refusals_are_logged_without_the_signed_data, real_setup) {
    {
        raw_client c1(dir.path / "proxy.sock");
        BOOST_TEST(*c1.ask(sign_body(b.blob, "SECRET-PAYLOAD-B")) == failure_body);
        BOOST_TEST(static_cast<int>((*c1.ask(sign_body(a.blob, "SECRET-PAYLOAD-A")))[0]) == msg::sign_response);
        BOOST_TEST(*c1.ask(byte(22) + str("SECRET-LOCK-PASSWORD")) == failure_body);
        BOOST_TEST(*c1.ask(byte(200)) == failure_body);
    }
    proxy->stop();
    const auto log = logs.text();
    // The first refusal in full, naming the type and, for sign requests, the fingerprint; the
    // others (within a second) counted by type when the client leaves.
    const auto lines = text::split_lines(log);
    const auto sign_line = std::find_if(lines.begin(), lines.end(), [&](const std::string& l) {
        return l.find("refused sign request for " + b.fp + " (not an allowed key)") != std::string::npos;
    });
    BOOST_REQUIRE(sign_line != lines.end());
    BOOST_TEST(sign_line->rfind("info: agent-proxy: client ", 0) == 0u);
    BOOST_TEST(log.find(": refused 2 requests in the last ") != std::string::npos, log);
    BOOST_TEST(log.find("(lock x1, type 200 x1)") != std::string::npos, log);
    BOOST_TEST(log.find("SECRET") == std::string::npos, log);
}

BOOST_AUTO_TEST_CASE(upstream_not_running_gives_failure_and_the_proxy_keeps_serving) {
    private_dir dir;
    log_capture logs;
    const auto agent_sock = dir.path / "agent.sock";
    const key a = make_key(dir.path, "A");
    options o;
    o.listen = dir.path / "proxy.sock";
    o.upstream = agent_sock;
    o.allowed = {a.fp};
    proxy_runner proxy(o);
    BOOST_REQUIRE(proxy.running_now());
    const std::vector<std::pair<std::string, std::string>> env{{"SSH_AUTH_SOCK", o.listen.string()}};

    const auto r = run_cmd({"ssh-add", "-l"}, env);
    BOOST_TEST(!r.ok());
    BOOST_TEST(proxy.running_now());
    {
        raw_client c(o.listen);
        for (int i = 0; i < 3; ++i) BOOST_TEST(*c.ask(identities_request) == failure_body);
        BOOST_TEST(*c.ask(sign_body(a.blob, "d")) == failure_body);
    }

    // The agent starts later: the same proxy now serves it.
    real_agent agent(agent_sock);
    BOOST_REQUIRE(run_cmd({"ssh-add", a.file.string()}, {{"SSH_AUTH_SOCK", agent_sock.string()}}).ok());
    const auto later = run_cmd({"ssh-add", "-l", "-E", "sha256"}, env);
    BOOST_TEST(later.ok(), later.err);
    BOOST_TEST(later.out.find(a.fp) != std::string::npos);

    // And it dies again: failure, not a hang or a crash.
    agent.stop();
    BOOST_TEST(!run_cmd({"ssh-add", "-l"}, env).ok());
    BOOST_TEST(proxy.running_now());
    BOOST_TEST(proxy.stop() == 0);
    BOOST_TEST(!fs::exists(o.listen)); // the proxy removed its socket
}

BOOST_AUTO_TEST_CASE(pipelined_messages_are_answered_in_order) {
    // 1000 messages in one write against the real agent: identities requests (forwarded) and
    // garbage types (refused) alternate; every answer arrives, in order.
    private_dir dir;
    log_capture logs;
    const key a = make_key(dir.path, "A");
    const key b = make_key(dir.path, "B");
    real_agent agent(dir.path / "agent.sock");
    BOOST_REQUIRE(run_cmd({"ssh-add", a.file.string(), b.file.string()}, {{"SSH_AUTH_SOCK", agent.socket().string()}}).ok());
    options o;
    o.listen = dir.path / "proxy.sock";
    o.upstream = agent.socket();
    o.allowed = {b.fp};
    proxy_runner proxy(o);

    std::string burst;
    for (int i = 0; i < 1000; ++i) burst += frame(i % 2 ? byte(static_cast<std::uint8_t>(100 + i % 100)) : identities_request);
    raw_client c(o.listen);
    std::thread writer([&] { c.send_raw(burst); }); // reads and writes overlap, as a real client's may
    int ok = 0;
    for (int i = 0; i < 1000; ++i) {
        const auto m = c.recv_message(10s);
        if (!m) break;
        if (i % 2) {
            ok += *m == failure_body;
        } else {
            const auto ids = parse_identities(*m);
            ok += ids && ids->size() == 1 && fingerprint(ids->front().key_blob) == b.fp;
        }
    }
    writer.join();
    BOOST_TEST(ok == 1000);
}

BOOST_AUTO_TEST_CASE(probe_reports_what_an_agent_offers) {
    private_dir dir;
    log_capture logs;
    using st = agent_probe::state;
    BOOST_TEST((probe("", 1s).result == st::not_set));
    BOOST_TEST((probe(dir.path / "none.sock", 1s).result == st::not_running));
    write_file(dir.path / "file", "x");
    BOOST_TEST((probe(dir.path / "file", 1s).result == st::broken));

    const key a = make_key(dir.path, "A");
    {
        real_agent agent(dir.path / "agent.sock");
        const auto empty = probe(agent.socket(), 2s);
        BOOST_TEST((empty.result == st::no_keys), empty.detail);
        BOOST_REQUIRE(run_cmd({"ssh-add", a.file.string()}, {{"SSH_AUTH_SOCK", agent.socket().string()}}).ok());
        const auto full = probe(agent.socket(), 2s);
        BOOST_TEST((full.result == st::ok), full.detail);
        BOOST_TEST(full.fingerprints == std::vector<std::string>{a.fp});
        BOOST_TEST(full.comments == std::vector<std::string>{"A@test"});
    }
    // ssh-agent removes its socket on SIGTERM; a leftover socket file nobody accepts on is
    // "not running" too.
    {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strncpy(sa.sun_path, (dir.path / "stale.sock").c_str(), sizeof(sa.sun_path) - 1);
        BOOST_REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) == 0);
        ::close(fd);
        const auto stale = probe(dir.path / "stale.sock", 1s);
        BOOST_TEST((stale.result == st::not_running), stale.detail);
    }
    // A fake agent that never answers, or answers garbage: broken, within the timeout.
    fake_agent fake(dir.path / "fake.sock", "A", "B");
    fake.set_mode(fake_mode::silent);
    const auto t0 = std::chrono::steady_clock::now();
    const auto hung = probe(dir.path / "fake.sock", 300ms);
    BOOST_TEST((hung.result == st::broken), hung.detail);
    BOOST_TEST(seconds_since(t0) < 2.0);
    for (auto m : {fake_mode::count_too_large, fake_mode::max_u32_length, fake_mode::zero_length, fake_mode::close_at_once,
                   fake_mode::wrong_type}) {
        fake.set_mode(m);
        BOOST_TEST((probe(dir.path / "fake.sock", 1s).result == st::broken), static_cast<int>(m));
    }
    fake.set_mode(fake_mode::good);
    BOOST_TEST((probe(dir.path / "fake.sock", 1s).fingerprints ==
                std::vector<std::string>{fingerprint("A"), fingerprint("B")}));
    BOOST_TEST(to_string(st::no_keys) == "no_keys");
}

BOOST_AUTO_TEST_CASE(the_listening_socket_is_private_and_checked) {
    private_dir dir;
    log_capture logs;
    options o;
    o.listen = dir.path / "proxy.sock";
    o.upstream = dir.path / "agent.sock";
    o.allowed = {"SHA256:x"};
    o.still_wanted = [] { return false; };
    o.idle_check = 1ms;

    // A regular file in the way: refused, and left alone.
    write_file(o.listen, "precious");
    BOOST_TEST(run(o) == 1);
    BOOST_TEST(read_file(o.listen) == "precious");
    fs::remove(o.listen);

    // A stale socket is replaced; the socket is 0600 while it serves.
    {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strncpy(sa.sun_path, o.listen.c_str(), sizeof(sa.sun_path) - 1);
        BOOST_REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) == 0);
        ::close(fd);
    }
    {
        proxy_runner proxy(o);
        BOOST_REQUIRE(proxy.running_now());
        struct stat st {};
        BOOST_REQUIRE(::stat(o.listen.c_str(), &st) == 0);
        BOOST_TEST(S_ISSOCK(st.st_mode));
        BOOST_TEST((st.st_mode & 0777) == 0600u);

        // A second proxy on a live socket is refused and does not steal it.
        BOOST_TEST(run(o) == 1);
        BOOST_TEST(proxy.running_now());
        raw_client c(o.listen);
        BOOST_TEST(*c.ask(identities_request) == failure_body); // no upstream: failure
    }
    BOOST_TEST(!fs::exists(o.listen));

    // A directory others can enter is refused.
    fs::permissions(dir.path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
    BOOST_TEST(run(o) == 1);
    BOOST_TEST(!fs::exists(o.listen));
    fs::permissions(dir.path, fs::perms::owner_all);

    // Paths a Unix socket cannot have are setup errors, not failures at the first request.
    options too_long = o;
    too_long.upstream = dir.path / std::string(200, 'u');
    BOOST_TEST(run(too_long) == 1);
    too_long = o;
    too_long.listen = dir.path / std::string(200, 'l');
    BOOST_TEST(run(too_long) == 1);
    BOOST_TEST(fs::is_empty(dir.path));
    const auto log = logs.text();
    BOOST_TEST(log.find("is not a socket") != std::string::npos, log);
    BOOST_TEST(log.find("in use") != std::string::npos, log);
    BOOST_TEST(log.find("private") != std::string::npos, log);
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

BOOST_AUTO_TEST_SUITE(agent_proxy_hostile)

BOOST_FIXTURE_TEST_CASE(bad_lengths_close_the_connection, fake_setup) {
    for (std::uint32_t len : {0u, 256u * 1024 + 1, 1u << 20, 0xFFFFFFFFu}) {
        raw_client c(socket());
        BOOST_REQUIRE(c.send_raw(u32(len) + "\x0b"));
        BOOST_TEST(c.closed_by_peer(), "length " << len);
        expect_serves();
    }
    // Exactly the limit is fine: a 256 KiB message of an unknown type gets a failure.
    raw_client c(socket());
    BOOST_TEST(*c.ask(byte(200) + std::string(256 * 1024 - 1, 'x')) == failure_body);
    BOOST_TEST(c.ask(identities_request)->substr(0, 1) == byte(msg::identities_answer));
    BOOST_TEST(fake.received() == std::vector<std::uint8_t>(fake.received().size(), msg::request_identities));
}

BOOST_FIXTURE_TEST_CASE(truncated_messages_then_close, fake_setup) {
    for (const std::string& partial : {std::string("\0\0", 2), u32(100) + "\x0d" + "abc", u32(5) + "\x0b"}) {
        raw_client c(socket());
        BOOST_REQUIRE(c.send_raw(partial));
        // (`c` closes mid-message here)
    }
    expect_serves();
}

BOOST_FIXTURE_TEST_CASE(malformed_requests_close_the_connection, fake_setup) {
    const std::vector<std::string> bodies{
        byte(msg::sign_request) + u32(0xFFFFFFFF) + "abc",              // string length past the end
        byte(msg::sign_request) + str(blob_a) + u32(100) + "short",     // data past the end
        byte(msg::sign_request) + str(blob_a) + str("data"),            // flags missing
        sign_body(blob_a, "data") + "trailing",                         // trailing garbage
        identities_request + "trailing",                                //
        byte(msg::extension) + u32(1000) + "session-bind@openssh.com", // name past the end
    };
    for (const auto& body : bodies) {
        raw_client c(socket());
        BOOST_REQUIRE(c.send_message(body));
        BOOST_TEST(c.closed_by_peer());
        expect_serves();
    }
    // None of them reached the agent (only expect_serves' identities requests did).
    BOOST_TEST(fake.received() == std::vector<std::uint8_t>(bodies.size(), msg::request_identities));
}

BOOST_FIXTURE_TEST_CASE(only_allowed_messages_reach_the_agent, fake_setup) {
    raw_client c(socket());
    for (int t : {1, 3, 7, 8, 9, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 0, 2, 5, 12, 14, 99, 255})
        BOOST_TEST(*c.ask(byte(static_cast<std::uint8_t>(t)) + str("x") + str("y")) == failure_body, "type " << t);
    BOOST_TEST(*c.ask(extension_body("query")) == failure_body);
    BOOST_TEST(*c.ask(extension_body("session-bind@openssh.com", "bad")) == failure_body);
    BOOST_TEST(*c.ask(sign_body(blob_b, "data")) == failure_body);
    BOOST_TEST(fake.received().empty());

    BOOST_TEST(*c.ask(extension_body("session-bind@openssh.com", session_bind_payload())) == byte(msg::success));
    BOOST_TEST(c.ask(sign_body(blob_a, "data"))->substr(0, 1) == byte(msg::sign_response));
    BOOST_TEST(c.ask(identities_request)->substr(0, 1) == byte(msg::identities_answer));
    BOOST_TEST((fake.received() == std::vector<std::uint8_t>{msg::extension, msg::sign_request, msg::request_identities}));
    BOOST_TEST(fake.connections() == 1); // one upstream connection per client connection
}

BOOST_FIXTURE_TEST_CASE(silent_and_excess_clients_do_not_block_others, fake_setup) {
    raw_client idle(socket());         // connects, sends nothing
    raw_client half(socket());         // sends half a header
    BOOST_REQUIRE(half.send_raw(std::string("\0\0", 2)));
    raw_client half_body(socket());    // header, half a body
    BOOST_REQUIRE(half_body.send_raw(u32(10) + "\x0d"));
    expect_serves();

    // Far more connections than the proxy takes: the excess is closed, nothing breaks.
    std::vector<std::unique_ptr<raw_client>> crowd;
    for (int i = 0; i < 200; ++i) crowd.push_back(std::make_unique<raw_client>(socket()));
    BOOST_TEST(crowd.back()->closed_by_peer());
    crowd.clear();
    const auto t0 = std::chrono::steady_clock::now();
    while (seconds_since(t0) < 5) { // the proxy notices the closed ones asynchronously
        if (listed(socket())) break;
        std::this_thread::sleep_for(20ms);
    }
    expect_serves();
}

BOOST_FIXTURE_TEST_CASE(bad_agent_answers_become_failure, fake_setup) {
    for (auto m : {fake_mode::count_too_large, fake_mode::huge_count, fake_mode::truncated_blob, fake_mode::trailing_garbage,
                   fake_mode::oversized_length, fake_mode::max_u32_length, fake_mode::zero_length, fake_mode::wrong_type,
                   fake_mode::close_at_once}) {
        raw_client c(socket());
        fake.set_mode(m);
        BOOST_TEST(*c.ask(identities_request) == failure_body, "mode " << static_cast<int>(m));
        BOOST_TEST(*c.ask(sign_body(blob_a, "data")) == failure_body, "mode " << static_cast<int>(m));
        // The same client connection keeps working once the agent behaves.
        fake.set_mode(fake_mode::good);
        const auto ids = c.ask(identities_request);
        BOOST_REQUIRE(ids);
        BOOST_TEST(parse_identities(*ids)->size() == 1u);
        expect_serves();
    }
    proxy->stop();
    BOOST_TEST(logs.text().find("malformed or unexpected answer") != std::string::npos);
}

BOOST_FIXTURE_TEST_CASE(a_silent_agent_times_out, fake_setup) {
    raw_client c(socket());
    fake.set_mode(fake_mode::silent);
    const auto t0 = std::chrono::steady_clock::now();
    BOOST_TEST(*c.ask(identities_request) == failure_body);
    const double took = seconds_since(t0);
    BOOST_TEST(took >= 0.25);
    BOOST_TEST(took < 2.0);
    // The proxy dropped that upstream connection...
    const auto t1 = std::chrono::steady_clock::now();
    while (fake.closed_by_proxy() < 1 && seconds_since(t1) < 5) std::this_thread::sleep_for(10ms);
    BOOST_TEST(fake.closed_by_proxy() == 1);
    // ...and the client's next request opens a fresh one.
    fake.set_mode(fake_mode::good);
    const auto ids = c.ask(identities_request);
    BOOST_REQUIRE(ids);
    BOOST_TEST(parse_identities(*ids)->size() == 1u);
    BOOST_TEST(fake.connections() == 2);
    expect_serves();
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

// Issue 13: a guest sent 627,000 refused "add identity" messages in 5 s, and every refusal took
// a line of agent-filter.log (47 MB). Whatever a client can repeat at will is now summarised,
// at most a line a second, and the file is capped.
BOOST_AUTO_TEST_SUITE(agent_proxy_flood)

BOOST_AUTO_TEST_CASE(a_refusal_flood_is_counted_in_a_small_log) {
    constexpr std::uint64_t flood = 600000;
    constexpr std::uintmax_t mib = 1024 * 1024;
    private_dir dir;
    const key a = make_key(dir.path, "A");
    real_agent agent(dir.path / "agent.sock");
    BOOST_REQUIRE(run_cmd({"ssh-add", a.file.string()}, {{"SSH_AUTH_SOCK", agent.socket().string()}}).ok());
    const auto log_file = dir.path / "agent-filter.log";
    const auto rotated = dir.path / "agent-filter.1.log";
    double took = 0;
    {
        filter_log logging(log_file);
        options o;
        o.listen = dir.path / "proxy.sock";
        o.upstream = agent.socket();
        o.allowed = {a.fp};
        proxy_runner proxy(o);
        BOOST_REQUIRE(proxy.running_now());

        // An ed25519 "add identity" (key type, public key, private key, comment), as fast as
        // one client can send, while it reads the answers.
        const std::string add =
            frame(byte(17) + str("ssh-ed25519") + str(std::string(32, 'p')) + str(std::string(64, 's')) + str("guest"));
        std::string chunk;
        for (int i = 0; i < 1000; ++i) chunk += add;
        const int fd = connect_unix(o.listen);
        BOOST_REQUIRE(fd >= 0);
        const auto t0 = std::chrono::steady_clock::now();
        std::thread writer([&] {
            for (std::uint64_t sent = 0; sent < flood && send_all(fd, chunk); sent += 1000) {
            }
        });
        const auto answered = read_failures(fd, flood, 300s);
        ::shutdown(fd, SHUT_RDWR); // ends the writer if the proxy stopped reading
        writer.join();
        took = seconds_since(t0);
        ::close(fd);
        BOOST_TEST(answered == flood);
        BOOST_TEST_MESSAGE(flood << " refusals in " << took << " s: " << static_cast<std::uint64_t>(flood / took) << "/s");

        // The filter still serves: a real signature with the allowed key.
        {
            raw_client c(o.listen);
            const auto sig = c.ask(sign_body(a.blob, "signed after the flood"));
            BOOST_REQUIRE(sig);
            BOOST_TEST(static_cast<int>((*sig)[0]) == msg::sign_response);
        }
        BOOST_TEST(proxy.stop() == 0);
    }
    const auto size = [](const fs::path& p) {
        std::error_code ec;
        const auto n = fs::file_size(p, ec);
        return ec ? std::uintmax_t{0} : n;
    };
    BOOST_TEST_MESSAGE("agent-filter.log: " << size(log_file) << " bytes, agent-filter.1.log: " << size(rotated));
    BOOST_TEST(size(log_file) <= mib);
    BOOST_TEST(size(rotated) <= mib);
    const auto log = read_file(rotated) + read_file(log_file);
    const auto refused = count_logged(log, ": refused ");
    BOOST_TEST(refused.events == flood);
    // A line at once, one a second while they come, one when the client leaves.
    BOOST_TEST(refused.lines <= took + 2);
    BOOST_TEST(log.find("(add identity x") != std::string::npos, log.substr(0, 2000));
}

BOOST_FIXTURE_TEST_CASE(a_flood_of_broken_connections_is_summarised, fake_setup) {
    // Closing a connection is a line too, and a guest can break connections as fast as it
    // opens them: those are summarised across clients.
    constexpr int connections = 2000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < connections; ++i) {
        raw_client c(socket());
        BOOST_REQUIRE(c.send_raw(u32(0xFFFFFFFF)));
        BOOST_REQUIRE(c.closed_by_peer());
    }
    const double took = seconds_since(t0);
    expect_serves();
    proxy->stop();
    const auto closed = count_logged(logs.text(), "closed");
    BOOST_TEST(closed.events == static_cast<std::uint64_t>(connections));
    BOOST_TEST(closed.lines <= took + 2);
    BOOST_TEST(logs.text().find("(message length x") != std::string::npos, logs.text());
}

BOOST_AUTO_TEST_CASE(an_unreachable_agent_is_summarised_too) {
    // With the user's agent gone, every forwarded request is a warning: as cheap to repeat as
    // a refusal.
    constexpr std::uint64_t requests = 5000;
    private_dir dir;
    log_capture logs;
    options o;
    o.listen = dir.path / "proxy.sock";
    o.upstream = dir.path / "no-agent.sock";
    o.allowed = {"SHA256:x"};
    proxy_runner proxy(o);
    BOOST_REQUIRE(proxy.running_now());
    std::string burst;
    for (std::uint64_t i = 0; i < requests; ++i) burst += frame(identities_request);
    const int fd = connect_unix(o.listen);
    BOOST_REQUIRE(fd >= 0);
    const auto t0 = std::chrono::steady_clock::now();
    std::thread writer([&] { send_all(fd, burst); });
    BOOST_TEST(read_failures(fd, requests, 60s) == requests);
    ::shutdown(fd, SHUT_RDWR);
    writer.join();
    const double took = seconds_since(t0);
    ::close(fd);
    proxy.stop();
    const auto failed = count_logged(logs.text(), "warning: agent-proxy: client ");
    BOOST_TEST(failed.events == requests);
    BOOST_TEST(failed.lines <= took + 2);
    BOOST_TEST(logs.text().find("no-agent.sock") != std::string::npos, logs.text());
}

BOOST_AUTO_TEST_CASE(the_filter_log_keeps_one_rotated_file_of_at_most_1_mib) {
    // Whatever gets past the summaries (many clients, each with its lines), the file stays
    // small: 1 MiB, then it becomes agent-filter.1.log and a new one starts.
    constexpr std::uintmax_t mib = 1024 * 1024;
    private_dir dir;
    const auto file = dir.path / "agent-filter.log";
    write_file(file, "from an earlier run\n");
    constexpr int lines = 40000; // about 5 MB
    {
        auto logger = vm::agent_filter_logger(file);
        for (int i = 0; i < lines; ++i) logger->info("agent-proxy: client {}: refused add identity (not forwarded) {}", i, std::string(60, 'x'));
    }
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    BOOST_TEST(names == (std::vector<std::string>{"agent-filter.1.log", "agent-filter.log"}));
    BOOST_TEST(fs::file_size(file) <= mib);
    BOOST_TEST(fs::file_size(dir.path / "agent-filter.1.log") <= mib);
    BOOST_TEST(fs::file_size(dir.path / "agent-filter.1.log") > mib / 2);
    // The newest lines are kept, in order across the two files.
    const auto kept = text::split_lines(read_file(dir.path / "agent-filter.1.log") + read_file(file));
    BOOST_REQUIRE(!kept.empty());
    BOOST_TEST(kept.back().find("client " + std::to_string(lines - 1) + ":") != std::string::npos);
    int expected = lines - static_cast<int>(kept.size());
    for (const auto& line : kept) BOOST_TEST(line.find("client " + std::to_string(expected++) + ":") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
