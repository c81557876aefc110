// The egress proxy's server (net::run_proxy): one io_context on the calling thread, one
// coroutine per connection the VM's bridge opens. Each connection starts with the bridge's
// PROXY line naming the guest's destination; the proxy then decides, in this order: DNS
// (destination port 53) is answered per question; the open policy dials the destination unless
// it is the host (only `host_ports` on its loopback) or a local class of address; an allowlist
// reads the name from the guest's first bytes, resolves it on the host and dials that, never
// the address the guest chose. Every connection and DNS question becomes one audit record.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <memory>
#include <sstream>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ip/udp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include "audit_writer.hpp"
#include "machine/error.hpp"
#include "machine/net.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"
#include "proxy_io.hpp"
#include "sniff.hpp"

namespace machine::net {

namespace {

using asio::awaitable;
using io::nothrow;
using tcp = asio::ip::tcp;
using udp = asio::ip::udp;
using unix_socket = asio::local::stream_protocol::socket;
using unix_acceptor = asio::local::stream_protocol::acceptor;
using unix_endpoint = asio::local::stream_protocol::endpoint;
using std::chrono::milliseconds;

// The bridge's PROXY v1 line is at most 107 bytes (HAProxy's spec).
constexpr std::size_t max_proxy_line = 107;
// DNS over TCP from the guest: bounded per connection and per message.
constexpr std::size_t max_dns_queries = 512;
constexpr std::size_t max_dns_message = 4096;

// New connections per second, refilled continuously, at most `burst` saved up.
class token_bucket {
public:
    token_bucket(double rate, double burst) : rate_(rate), burst_(burst), tokens_(burst) {}
    bool take(steady_clock::time_point now) {
        const std::chrono::duration<double> dt = now - last_;
        last_ = now;
        tokens_ = std::min(burst_, tokens_ + dt.count() * rate_);
        if (tokens_ < 1) return false;
        tokens_ -= 1;
        return true;
    }

private:
    double rate_, burst_, tokens_;
    steady_clock::time_point last_ = steady_clock::now();
};

struct server {
    proxy_options opt;
    std::unique_ptr<audit_writer> audit;
    udp::endpoint dns_upstream;
    std::vector<std::string> host_addresses;  // refreshed every idle_check
    std::size_t open = 0;
    token_bucket rate;
    // Connections closed unserved (caps), and refusals: a guest can cause either as fast as it
    // connects, so each is said at most once a second, the rest counted.
    text::log_limiter capped{"closed", "connection"};
    text::log_limiter refused{"refused", "connection"};
    text::log_limiter failed{"could not reach the destination of", "connection"};
    text::log_limiter unrecorded{"could not write the audit record of", "connection"};

    explicit server(const proxy_options& o)
        : opt(o), rate(o.caps.connections_per_second, o.caps.connection_burst) {}
};

void say(text::log_limiter& limiter, std::string_view kind, const std::string& detail, bool warn) {
    if (auto line = limiter.note(kind, detail, text::log_limiter::clock::now())) {
        if (warn) spdlog::warn("net-proxy: {}", *line);
        else spdlog::info("net-proxy: {}", *line);
    }
}

// ---- the audit record of one connection ---------------------------------------------------

struct outcome {
    audit_record rec;
    steady_clock::time_point started = steady_clock::now();

    void refuse(std::string why) {
        rec.allowed = false;
        rec.reason = std::move(why);
    }
    void allow() {
        rec.allowed = true;
        rec.reason.clear();
    }
};

void finish(server& srv, outcome& o) {
    o.rec.ts = std::chrono::system_clock::now();
    o.rec.duration_ms = since(o.started).count();
    if (!o.rec.allowed)
        say(srv.refused, o.rec.reason,
            o.rec.kind + " " + text::escape_for_terminal(o.rec.host) + ":" + std::to_string(o.rec.port) + ": " +
                o.rec.reason,
            false);
    // The writer escapes and caps every field, and keeps to max_events_per_second.
    if (srv.audit->record(std::move(o.rec), audit_writer::clock::now()) == audit_writer::outcome::failed)
        say(srv.unrecorded, "audit log", "cannot write the audit log " + srv.audit->path().string(), true);
}

// ---- deciding ----------------------------------------------------------------------------

bool is_host_port(const server& srv, int port) {
    const auto& ports = srv.opt.rules.host_ports;
    return std::find(ports.begin(), ports.end(), port) != ports.end();
}

bool name_allowed(const server& srv, const std::string& name) {
    if (!srv.opt.rules.allow) return true;
    for (const auto& pattern : *srv.opt.rules.allow)
        if (host_matches(pattern, name)) return true;
    return false;
}

// Why the proxy never connects to an address of this class ("" when it may).
std::string local_reason(address_class c) {
    switch (c) {
    case address_class::loopback: return "host loopback";
    case address_class::host: return "host address";
    case address_class::link_local: return "link-local address";
    case address_class::unspecified: return "unspecified address";
    case address_class::multicast: return "multicast address";
    case address_class::other: return "";
    }
    return "unknown address";
}

// ---- connecting out ----------------------------------------------------------------------

struct dialled {
    std::optional<tcp::socket> socket;
    std::string problem;
};

// Connects to the first of `addresses` (with `port`) that answers before `deadline`; the
// test redirect, when set, says where each really is.
awaitable<dialled> dial(const server& srv, std::vector<std::string> addresses, int port,
                        steady_clock::time_point deadline) {
    dialled out;
    auto ex = co_await asio::this_coro::executor;
    for (const auto& chosen : addresses) {
        auto [address, real_port] =
            srv.opt.redirect ? srv.opt.redirect(chosen, port) : std::pair<std::string, int>(chosen, port);
        std::error_code ec;
        const auto ip = asio::ip::make_address(address, ec);
        if (ec) {
            out.problem = "bad address " + address;
            continue;
        }
        tcp::socket s(ex);
        const tcp::endpoint ep(ip, static_cast<unsigned short>(real_port));
        s.open(ep.protocol(), ec);
        if (ec) {
            out.problem = "socket: " + ec.message();
            continue;
        }
        io::set_cloexec(s.native_handle());
        auto connecting = s.async_connect(ep, nothrow);
        auto expiry = sleep_until(deadline);
        auto r = co_await first_of(std::move(connecting), std::move(expiry));
        if (r.index() == 1) {
            out.problem = "connect timed out";
            break;
        }
        auto [cec] = std::get<0>(r);
        if (!cec) {
            s.set_option(tcp::no_delay(true), ec);
            out.socket.emplace(std::move(s));
            co_return out;
        }
        out.problem = cec.message();
    }
    if (addresses.empty()) out.problem = "no address";
    co_return out;
}

struct resolved {
    std::vector<std::string> usable;  // the addresses the proxy may dial
    std::string problem;              // when none
};

// The name's addresses as the host resolves them, without the ones the guest must never reach
// through a name (a name resolving to 127.0.0.1 or the host is DNS rebinding).
awaitable<resolved> resolve(server& srv, const std::string& name) {
    std::vector<std::string> all;
    std::string problem;
    if (srv.opt.resolve) {
        all = srv.opt.resolve(name);
    } else {
        // Asio runs getaddrinfo on a thread of its own: the loop goes on meanwhile.
        tcp::resolver resolver(co_await asio::this_coro::executor);
        auto [ec, results] = co_await resolver.async_resolve(name, "", nothrow);
        if (ec) problem = ec.message();
        for (const auto& entry : results) {
            auto a = entry.endpoint().address().to_string();
            if (std::find(all.begin(), all.end(), a) == all.end()) all.push_back(std::move(a));
        }
    }
    resolved out;
    std::string dropped;
    for (auto& a : all) {
        const std::string why = local_reason(classify(a, srv.host_addresses));
        if (why.empty()) out.usable.push_back(std::move(a));
        else if (dropped.empty()) dropped = why;
    }
    if (out.usable.empty())
        out.problem = !dropped.empty() ? "resolves to a " + dropped
                      : !problem.empty() ? "does not resolve: " + problem
                                         : "does not resolve";
    co_return out;
}

// ---- DNS ---------------------------------------------------------------------------------

// One exchange with the upstream resolver: the reply whose id matches the query's, or nullopt
// when none came within dns_timeout.
awaitable<std::optional<std::string>> ask_upstream_dns(server& srv, const std::string& query) {
    auto ex = co_await asio::this_coro::executor;
    udp::socket s(ex);
    std::error_code ec;
    s.open(srv.dns_upstream.protocol(), ec);
    if (ec) co_return std::nullopt;
    io::set_cloexec(s.native_handle());
    s.connect(srv.dns_upstream, ec);
    if (ec) co_return std::nullopt;
    auto [sec, sent] = co_await s.async_send(asio::buffer(query), nothrow);
    if (sec) co_return std::nullopt;
    const auto deadline = steady_clock::now() + srv.opt.caps.dns_timeout;
    std::string reply(max_dns_message, '\0');
    for (;;) {
        auto receiving = s.async_receive(asio::buffer(reply), nothrow);
        auto expiry = sleep_until(deadline);
        auto r = co_await first_of(std::move(receiving), std::move(expiry));
        if (r.index() == 1) co_return std::nullopt;
        auto [rec, n] = std::get<0>(r);
        if (rec == asio::error::connection_refused) co_return std::nullopt;
        if (rec) continue;  // (a datagram larger than the buffer is dropped: not an answer we pass on)
        // Only the answer to this question: same id (the first two bytes).
        if (n >= 12 && reply[0] == query[0] && reply[1] == query[1]) {
            reply.resize(n);
            co_return reply;
        }
    }
}

// DNS over TCP (RFC 7766 framing), as the bridge turns each guest datagram into. Each question
// is checked against the policy and is one audit record.
awaitable<void> serve_dns(server& srv, unix_socket& guest, std::string buf, const destination& dst) {
    for (std::size_t count = 0; count < max_dns_queries; ++count) {
        // Between questions the connection may rest for as long as a guest may take to name a
        // host; then it is closed (the bridge opens a new one).
        const auto deadline = steady_clock::now() + srv.opt.caps.first_bytes_timeout;
        const bool have_length = co_await io::read_at_least(guest, buf, 2, deadline);
        if (!have_length) co_return;
        const std::size_t length = (static_cast<unsigned char>(buf[0]) << 8) | static_cast<unsigned char>(buf[1]);
        if (length == 0 || length > max_dns_message) {
            say(srv.capped, "dns message size", "closed a DNS connection: a " + std::to_string(length) + "-byte message",
                true);
            co_return;
        }
        const bool have_message = co_await io::read_at_least(guest, buf, 2 + length, deadline);
        if (!have_message) co_return;
        const std::string query = buf.substr(2, length);
        buf.erase(0, 2 + length);

        outcome o;
        o.rec.kind = "dns";
        o.rec.port = dst.port;
        o.rec.bytes_up = static_cast<std::int64_t>(length);
        const auto question = parse_dns_query(query);
        std::string answer;
        if (!question) {
            o.rec.host = dst.address;
            o.refuse("malformed DNS query");
            finish(srv, o);
            co_return;  // nothing sensible to answer; the guest's resolver retries
        }
        o.rec.host = question->name;
        if (!name_allowed(srv, question->name)) {
            o.refuse("not in egress");
            answer = dns_error_response(query, 3);  // NXDOMAIN
        } else {
            o.allow();
            auto reply = co_await ask_upstream_dns(srv, query);
            if (reply) {
                answer = std::move(*reply);
            } else {
                o.rec.reason = "no answer from the resolver";
                answer = dns_error_response(query, 2);  // SERVFAIL
            }
        }
        std::string framed;
        framed.reserve(answer.size() + 2);
        framed.push_back(static_cast<char>(answer.size() >> 8));
        framed.push_back(static_cast<char>(answer.size() & 0xff));
        framed += answer;
        auto [wec, written] = co_await asio::async_write(guest, asio::buffer(framed), nothrow);
        o.rec.bytes_down = static_cast<std::int64_t>(written);
        finish(srv, o);
        if (wec) co_return;
    }
}

// ---- TCP ---------------------------------------------------------------------------------

std::string http_refusal(int status, std::string_view title, const std::string& reason) {
    const std::string body = reason + "\n";
    return "HTTP/1.1 " + std::to_string(status) + " " + std::string(title) +
           "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nConnection: close\r\n\r\n" + body;
}

// A refused HTTP request or CONNECT gets a short 403 saying why; anything else is closed.
awaitable<void> tell_refused(unix_socket& guest, first_bytes::kind what, const std::string& reason) {
    if (what != first_bytes::kind::http && what != first_bytes::kind::http_connect) co_return;
    const std::string reply = http_refusal(403, "Forbidden", "machine: egress refused: " + reason);
    auto deadline = sleep_for(milliseconds(500));
    auto writing = asio::async_write(guest, asio::buffer(reply), nothrow);
    co_await first_of(std::move(writing), std::move(deadline));
}

struct plan {
    std::vector<std::string> addresses;  // to dial, in order
    int port = 0;
    first_bytes found;                   // what the guest's first bytes said (allowlist)
};

// The allowlist's decision: the name the guest's first bytes carry, checked and resolved.
// Leaves the bytes read in `buf`. nullopt (with `o` refused) when refused.
awaitable<std::optional<plan>> decide_by_name(server& srv, unix_socket& guest, std::string& buf, const destination& dst,
                                              outcome& o, first_bytes& found) {
    const std::size_t max = srv.opt.caps.max_header_bytes;
    const auto deadline = steady_clock::now() + srv.opt.caps.first_bytes_timeout;
    sniff_result s = sniff(buf, max);
    while (s.state == parse_state::need_more) {
        // One byte past the cap lets sniff() say "too long" itself.
        const io::got g = co_await io::read_more(guest, buf, max + 1, deadline);
        if (g == io::got::timeout) {
            o.refuse("no host name within " + std::to_string(srv.opt.caps.first_bytes_timeout.count()) + " ms");
            co_return std::nullopt;
        }
        if (g != io::got::data) {
            o.refuse(g == io::got::full ? "first bytes over " + std::to_string(max) + " bytes"
                                        : "closed before naming a host");
            co_return std::nullopt;
        }
        s = sniff(buf, max);
    }
    if (s.state == parse_state::bad) {
        o.refuse(s.problem.empty() ? "unreadable first bytes" : text::escape_for_terminal(s.problem));
        co_return std::nullopt;
    }
    found = s.found;
    if (found.host.empty()) {
        o.refuse(found.what == first_bytes::kind::tls ? "TLS without a server name (SNI)" : "no host name");
        co_return std::nullopt;
    }
    o.rec.host = found.host;
    if (!name_allowed(srv, found.host)) {
        o.refuse("not in egress");
        co_return std::nullopt;
    }
    plan p;
    p.found = found;
    p.port = found.port > 0 ? found.port : dst.port;
    o.rec.port = p.port;
    auto r = co_await resolve(srv, found.host);
    if (r.usable.empty()) {
        o.refuse(r.problem);
        co_return std::nullopt;
    }
    p.addresses = std::move(r.usable);
    co_return p;
}

awaitable<void> serve_tcp(server& srv, unix_socket& guest, std::string buf, const destination& dst) {
    outcome o;
    o.rec.kind = "tcp";
    o.rec.host = dst.address;
    o.rec.port = dst.port;
    const address_class dst_class = classify(dst.address, srv.host_addresses);
    first_bytes found;
    std::optional<plan> p;

    if (dst_class == address_class::loopback && is_host_port(srv, dst.port)) {
        // The guest's gateway on a port the project opened: the host's own 127.0.0.1, by port
        // alone (no name needed, in either policy).
        p.emplace();
        p->addresses = {"127.0.0.1"};
        p->port = dst.port;
    } else if (!srv.opt.rules.allow) {
        const std::string why = local_reason(dst_class);
        if (why.empty()) {
            p.emplace();
            p->addresses = {dst.address};
            p->port = dst.port;
        } else {
            o.refuse(why);
        }
    } else {
        p = co_await decide_by_name(srv, guest, buf, dst, o, found);
    }

    if (!p) {
        co_await tell_refused(guest, found.what, o.rec.reason);
        finish(srv, o);
        co_return;
    }

    o.allow();
    const auto deadline = steady_clock::now() + srv.opt.caps.connect_timeout;
    auto d = co_await dial(srv, p->addresses, p->port, deadline);
    const bool connect = found.what == first_bytes::kind::http_connect;
    if (!d.socket) {
        o.rec.reason = "unreachable: " + d.problem;
        say(srv.failed, d.problem, o.rec.host + ":" + std::to_string(p->port) + ": " + d.problem, false);
        if (connect) {
            const std::string reply = http_refusal(502, "Bad Gateway", "machine: cannot reach " + o.rec.host);
            co_await asio::async_write(guest, asio::buffer(reply), nothrow);
        }
        finish(srv, o);
        co_return;
    }
    tcp::socket& upstream = *d.socket;
    if (connect) {
        // The request head is for us; what follows it is already the tunnel.
        buf.erase(0, found.head_bytes);
        static const std::string established = "HTTP/1.1 200 Connection established\r\n\r\n";
        auto [wec, n] = co_await asio::async_write(guest, asio::buffer(established), nothrow);
        if (wec) {
            finish(srv, o);
            co_return;
        }
    }
    if (!buf.empty()) {
        auto [wec, n] = co_await asio::async_write(upstream, asio::buffer(buf), nothrow);
        o.rec.bytes_up += static_cast<std::int64_t>(n);
        if (wec) {
            finish(srv, o);
            co_return;
        }
        buf.clear();
    }
    const auto counts = co_await io::splice(guest, upstream, srv.opt.caps.idle_timeout);
    o.rec.bytes_up += counts.up;
    o.rec.bytes_down += counts.down;
    if (counts.idle_timeout) {
        const auto idle = srv.opt.caps.idle_timeout.count();
        o.rec.reason = "idle for " + (idle % 1000 ? std::to_string(idle) + " ms" : std::to_string(idle / 1000) + " s");
    }
    std::error_code ignored;
    upstream.close(ignored);
    finish(srv, o);
}

awaitable<void> serve(unix_socket guest, std::shared_ptr<server> srv) {
    // The bridge's PROXY line, then (maybe) the guest's first bytes already behind it.
    std::string buf;
    const auto deadline = steady_clock::now() + srv->opt.caps.proxy_header_timeout;
    proxy_header_result h = parse_proxy_header(buf);
    while (h.state == parse_state::need_more) {
        const io::got g = co_await io::read_more(guest, buf, max_proxy_line + 1, deadline);
        if (g != io::got::data) {
            if (g == io::got::timeout) say(srv->capped, "no PROXY line", "closed a connection: no PROXY line in time", true);
            co_return;
        }
        h = parse_proxy_header(buf);
    }
    if (h.state == parse_state::bad) {
        say(srv->capped, "bad PROXY line", "closed a connection: bad PROXY line: " + text::escape_for_terminal(h.problem),
            true);
        co_return;
    }
    buf.erase(0, h.consumed);
    if (h.dst.port == 53) co_await serve_dns(*srv, guest, std::move(buf), h.dst);
    else co_await serve_tcp(*srv, guest, std::move(buf), h.dst);
}

// ---- the server --------------------------------------------------------------------------

awaitable<void> accept_connections(unix_acceptor& acceptor, std::shared_ptr<server> srv) {
    auto ex = co_await asio::this_coro::executor;
    for (;;) {
        auto [ec, sock] = co_await acceptor.async_accept(nothrow);
        if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
        if (ec) {
            // EMFILE and friends: back off instead of spinning on a ready listener.
            say(srv->capped, "accept failed", "accept: " + ec.message(), true);
            co_await sleep_for(milliseconds(100));
            continue;
        }
        io::set_cloexec(sock.native_handle());
        const auto now = steady_clock::now();
        if (srv->open >= srv->opt.caps.max_connections) {
            say(srv->capped, "over max_connections",
                "closed a connection: " + std::to_string(srv->open) + " open (max_connections)", true);
            continue;  // `sock` closes here
        }
        if (!srv->rate.take(now)) {
            say(srv->capped, "over the connection rate", "closed a connection: over the connection rate", true);
            continue;
        }
        ++srv->open;
        auto done = [srv](std::exception_ptr e) {
            --srv->open;
            if (!e) return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& x) {
                spdlog::warn("net-proxy: connection: {}", x.what());
            } catch (...) {
                spdlog::warn("net-proxy: connection: unknown exception");
            }
        };
        asio::co_spawn(ex, serve(std::move(sock), srv), std::move(done));
    }
}

// Ends the server once nobody is connected and the owner no longer wants it (asked every
// idle_check); meanwhile, about once a second, keeps the host's addresses current and writes
// the audit records the rate limit held back.
awaitable<void> tend(unix_acceptor& acceptor, std::shared_ptr<server> srv) {
    const auto check_every = std::max(srv->opt.idle_check, milliseconds(1));
    const auto tick = std::min(check_every, milliseconds(1000));
    auto next_check = steady_clock::now() + check_every;
    for (;;) {
        const bool slept = co_await sleep_for(tick);
        if (!slept || !acceptor.is_open()) co_return;
        srv->host_addresses = host_interface_addresses();
        srv->audit->flush(audit_writer::clock::now());
        if (steady_clock::now() < next_check) continue;
        next_check = steady_clock::now() + check_every;
        if (srv->open == 0 && srv->opt.still_wanted && !srv->opt.still_wanted()) {
            spdlog::info("net-proxy: no longer wanted; stopping");
            std::error_code ignored;
            acceptor.close(ignored);
            co_return;
        }
    }
}

// The first `nameserver` in /etc/resolv.conf (the resolver the host itself uses).
std::string system_nameserver() {
    std::ifstream in("/etc/resolv.conf");
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string key, value;
        if (words >> key >> value && key == "nameserver") return value;
    }
    return "127.0.0.1";
}

void flush_logs(server& srv) {
    const auto now = text::log_limiter::clock::now();
    for (auto* l : {&srv.capped, &srv.refused, &srv.failed, &srv.unrecorded})
        if (auto line = l->flush(now)) spdlog::info("net-proxy: {}", *line);
}

} // namespace

int run_proxy(const proxy_options& opt) {
    try {
        paths::prepare_socket_path(opt.listen, "net proxy");
        auto srv = std::make_shared<server>(opt);
        srv->audit = std::make_unique<audit_writer>(opt.audit_log, opt.audit_log_max_bytes, opt.caps.max_events_per_second);
        srv->host_addresses = host_interface_addresses();
        const std::string dns = opt.dns_server.empty() ? system_nameserver() : opt.dns_server;
        srv->dns_upstream = udp::endpoint(asio::ip::make_address(dns), static_cast<unsigned short>(opt.dns_port));

        asio::io_context ctx(1);
        unix_acceptor acceptor(ctx);
        acceptor.open(asio::local::stream_protocol());
        io::set_cloexec(acceptor.native_handle());
        acceptor.bind(unix_endpoint(opt.listen.string()));
        const paths::owned_socket_file file(opt.listen, "net proxy");  // removed on every way out
        acceptor.listen();
        spdlog::info("net-proxy: serving {} for {} ({}; DNS to {})", opt.listen.string(), opt.vm,
                     opt.rules.allow ? std::to_string(opt.rules.allow->size()) + " allowed name pattern(s)"
                                     : std::string("open internet"),
                     dns);

        std::exception_ptr failure;
        auto on_end = [&failure](std::exception_ptr e) {
            if (e && !failure) failure = e;
        };
        asio::co_spawn(ctx, accept_connections(acceptor, srv), on_end);
        asio::co_spawn(ctx, tend(acceptor, srv), on_end);
        ctx.run();
        flush_logs(*srv);
        srv->audit->flush(audit_writer::clock::now());
        if (failure) std::rethrow_exception(failure);
        return 0;
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
    }
}

} // namespace machine::net
