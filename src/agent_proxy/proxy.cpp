// The agent proxy's server: one io_context on the calling thread, one coroutine per client
// connection, each with its own lazily opened connection to the real agent.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <memory>
#include <system_error>

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <spdlog/spdlog.h>

#include "filter.hpp"
#include "machine/agent_proxy.hpp"
#include "machine/paths.hpp"
#include "machine/async.hpp"
#include "machine/error.hpp"

namespace machine::agent_proxy {

namespace {

using asio::awaitable;
using asio::use_awaitable;
using asio::experimental::as_tuple;
using namespace asio::experimental::awaitable_operators;
using unix_socket = asio::local::stream_protocol::socket;
using unix_acceptor = asio::local::stream_protocol::acceptor;
using unix_endpoint = asio::local::stream_protocol::endpoint;

// Errors are values on every I/O path here: EOF, resets and our own timeouts are expected.
constexpr auto nothrow = as_tuple(use_awaitable);

// Each client costs two descriptors; a VM opening connections without end must not exhaust
// the host's. Connections beyond this are closed at once.
constexpr std::size_t max_clients = 128;

struct server {
    allow_list allowed;
    unix_endpoint upstream;
    std::chrono::milliseconds upstream_timeout;
    std::size_t clients = 0;
    std::uint64_t next_client = 0;
    bool warned_full = false; // one warning per episode of too many clients
    // Connections closed for bad framing, across clients: a guest can open and break
    // connections about as fast as it sends messages, so one limiter per client would not do.
    log_limiter closed{"closed", "connection"};
};

// The lines one client's messages can cause, each at most once a second whatever it sends
// (see log_limiter): refusals, and requests the real agent did not answer well.
class client_log {
public:
    explicit client_log(std::uint64_t id) : id_(id) {}

    std::uint64_t id() const { return id_; }
    void refused(const decision& d) {
        if (auto line = refused_.note(type_name(d.type), "refused " + d.reason, log_limiter::clock::now()))
            spdlog::info("agent-proxy: client {}: {}", id_, *line);
    }
    void failed(std::string_view kind, std::string_view problem) {
        if (auto line = failed_.note(kind, problem, log_limiter::clock::now()))
            spdlog::warn("agent-proxy: client {}: {}", id_, *line);
    }
    // When the client leaves: what was counted but not yet said.
    void flush() {
        const auto now = log_limiter::clock::now();
        if (auto line = refused_.flush(now)) spdlog::info("agent-proxy: client {}: {}", id_, *line);
        if (auto line = failed_.flush(now)) spdlog::warn("agent-proxy: client {}: {}", id_, *line);
    }

private:
    std::uint64_t id_;
    log_limiter refused_{"refused", "request"};
    log_limiter failed_{"got no good answer from the agent for", "request"};
};

void log_closed(server& srv, std::uint64_t id, std::string_view kind, const std::string& why) {
    const auto detail = "client " + std::to_string(id) + ": closed: " + why;
    if (auto line = srv.closed.note(kind, detail, log_limiter::clock::now())) spdlog::info("agent-proxy: {}", *line);
}

// Asio 1.22 opens and accepts sockets without CLOEXEC (house style §3.9): a process embedding
// the proxy must not leak them into its children.
void set_cloexec(int fd) {
    if (fd >= 0) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

enum class read_status { ok, eof, error, bad_length };

struct read_result {
    read_status status = read_status::error;
    std::uint32_t length = 0; // the announced length (for bad_length)
    std::string body;
    std::error_code ec;
};

// One framed message. The length is checked before the body is allocated, so nothing larger
// than max_message_length is ever held.
awaitable<read_result> read_message(unix_socket& s) {
    read_result out;
    std::array<unsigned char, 4> header{};
    auto [ec, n] = co_await asio::async_read(s, asio::buffer(header), nothrow);
    if (ec) {
        out.status = ec == asio::error::eof && n == 0 ? read_status::eof : read_status::error;
        out.ec = ec;
        co_return out;
    }
    out.length = frame_length(header.data());
    if (!acceptable_length(out.length)) {
        out.status = read_status::bad_length;
        co_return out;
    }
    out.body.resize(out.length);
    auto [ec2, n2] = co_await asio::async_read(s, asio::buffer(out.body), nothrow);
    if (ec2) {
        out.status = read_status::error;
        out.ec = ec2;
        co_return out;
    }
    out.status = read_status::ok;
    co_return out;
}

struct exchange_result {
    std::optional<std::string> answer; // a body, when all went well
    std::string problem;               // otherwise, for the log
};

// Connect (if needed), send, read one answer. Takes `up` by reference: ask_upstream() awaits
// it at once and owns the socket for longer.
awaitable<exchange_result> talk_to_upstream(unix_socket& up, unix_endpoint ep, std::string request) {
    exchange_result out;
    if (!up.is_open()) {
        std::error_code ec;
        up.open(asio::local::stream_protocol(), ec);
        if (ec) {
            out.problem = "cannot create a socket: " + ec.message();
            co_return out;
        }
        set_cloexec(up.native_handle());
        auto [cec] = co_await up.async_connect(ep, nothrow);
        if (cec) {
            out.problem = "cannot connect to " + ep.path() + ": " + cec.message();
            co_return out;
        }
    }
    auto [wec, wn] = co_await asio::async_write(up, asio::buffer(request), nothrow);
    if (wec) {
        out.problem = "cannot send to the agent: " + wec.message();
        co_return out;
    }
    auto answer = co_await read_message(up);
    switch (answer.status) {
    case read_status::ok: out.answer = std::move(answer.body); break;
    case read_status::eof: out.problem = "the agent closed the connection"; break;
    case read_status::error: out.problem = "cannot read from the agent: " + answer.ec.message(); break;
    case read_status::bad_length:
        out.problem = "the agent announced a " + std::to_string(answer.length) + "-byte answer";
        break;
    }
    co_return out;
}

// One request/answer with the real agent, within the server's upstream_timeout. On any
// problem the upstream connection is dropped (the next request opens a fresh one) and the
// result says what went wrong; the caller answers SSH_AGENT_FAILURE.
awaitable<exchange_result> ask_upstream(unix_socket& up, std::shared_ptr<server> srv, std::string request) {
    // Ends with whichever finishes first and cancels the other (a socket read/connect or the
    // sleep; both honour cancellation). Named before the co_await: g++ 12 (house style §4).
    auto talk = talk_to_upstream(up, srv->upstream, std::move(request));
    auto expiry = sleep_for(srv->upstream_timeout);
    auto r = co_await first_of(std::move(talk), std::move(expiry));
    exchange_result out;
    if (r.index() == 0) out = std::move(std::get<0>(r));
    else out.problem = "the agent did not answer within " + std::to_string(srv->upstream_timeout.count()) + " ms";
    if (!out.answer) {
        std::error_code ignored;
        up.close(ignored);
    }
    co_return out;
}

// What the client gets for a request the filter lets through: the real agent's answer as
// check_answer() passes it, or SSH_AGENT_FAILURE. Takes `up` and `log` by reference:
// serve_client() awaits it at once and owns both for longer.
awaitable<std::string> forward(unix_socket& up, std::shared_ptr<server> srv, std::uint8_t type, std::string request,
                               client_log& log) {
    auto got = co_await ask_upstream(up, srv, std::move(request));
    if (!got.answer) {
        log.failed(got.problem, got.problem);
        co_return failure_frame();
    }
    const std::string& answer = *got.answer;
    std::size_t kept = 0, total = 0;
    const auto checked = check_answer(type, answer, srv->allowed, &kept, &total);
    if (!checked) {
        log.failed("malformed or unexpected answer",
                   "malformed or unexpected answer from the agent to " + type_name(type) + " (answer type " +
                       std::to_string(static_cast<unsigned char>(answer[0])) + ", " + std::to_string(answer.size()) +
                       " bytes)");
        // An agent that answers nonsense may be out of step: start afresh next time.
        std::error_code ignored;
        up.close(ignored);
        co_return failure_frame();
    }
    if (type == msg::request_identities && kept != total)
        spdlog::debug("agent-proxy: client {}: listing {} of {} identities", log.id(), kept, total);
    co_return frame(*checked);
}

awaitable<void> serve_client(unix_socket client, std::shared_ptr<server> srv, std::uint64_t id) {
    unix_socket upstream(client.get_executor());
    client_log log(id);
    for (;;) {
        auto msg = co_await read_message(client);
        if (msg.status == read_status::eof) break;
        if (msg.status == read_status::error) {
            spdlog::debug("agent-proxy: client {}: {}", id, msg.ec.message());
            break;
        }
        if (msg.status == read_status::bad_length) {
            log_closed(*srv, id, "message length",
                       "message length " + std::to_string(msg.length) + " (limit " +
                           std::to_string(max_message_length) + ")");
            break;
        }

        const auto d = inspect_request(msg.body, srv->allowed);
        if (d.what == action::close) {
            log_closed(*srv, id, d.reason, d.reason);
            break;
        }

        std::string reply;
        if (d.what == action::refuse) {
            log.refused(d);
            reply = failure_frame();
        } else {
            spdlog::debug("agent-proxy: client {}: forwarding {}", id, d.reason);
            auto request = frame(msg.body);
            msg.body.clear();
            reply = co_await forward(upstream, srv, d.type, std::move(request), log);
        }
        auto [ec, n] = co_await asio::async_write(client, asio::buffer(reply), nothrow);
        if (ec) break;
    }
    log.flush();
    std::error_code ignored;
    upstream.close(ignored);
    client.close(ignored);
}

awaitable<void> accept_clients(unix_acceptor& acceptor, std::shared_ptr<server> srv) {
    auto ex = co_await asio::this_coro::executor;
    for (;;) {
        auto [ec, sock] = co_await acceptor.async_accept(nothrow);
        if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
        if (ec) {
            // EMFILE and friends: back off instead of spinning on a ready listener.
            spdlog::warn("agent-proxy: accept: {}", ec.message());
            asio::steady_timer pause(ex, std::chrono::milliseconds(100));
            co_await pause.async_wait(nothrow);
            continue;
        }
        set_cloexec(sock.native_handle());
        if (srv->clients >= max_clients) {
            if (!srv->warned_full)
                spdlog::warn("agent-proxy: {} clients connected; closing new connections until some end", srv->clients);
            srv->warned_full = true;
            continue; // `sock` closes here
        }
        ++srv->clients;
        const auto id = ++srv->next_client;
        auto done = [srv, id](std::exception_ptr e) {
            if (--srv->clients < max_clients / 2) srv->warned_full = false;
            if (!e) return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& x) {
                spdlog::warn("agent-proxy: client {}: {}", id, x.what());
            } catch (...) {
                spdlog::warn("agent-proxy: client {}: unknown exception", id);
            }
        };
        asio::co_spawn(ex, serve_client(std::move(sock), srv, id), std::move(done));
    }
}

// Ends the server once nobody is connected and the owner no longer wants it.
awaitable<void> watch_idle(unix_acceptor& acceptor, std::shared_ptr<server> srv, std::function<bool()> still_wanted,
                           std::chrono::milliseconds every) {
    asio::steady_timer t(co_await asio::this_coro::executor);
    for (;;) {
        t.expires_after(every);
        auto [ec] = co_await t.async_wait(nothrow);
        if (ec || !acceptor.is_open()) co_return;
        if (srv->clients == 0 && !still_wanted()) {
            spdlog::debug("agent-proxy: no longer wanted; stopping");
            std::error_code ignored;
            acceptor.close(ignored);
            co_return;
        }
    }
}

} // namespace

int run(const options& opt) {
    try {
        if (opt.upstream.empty()) throw error("agent proxy: no upstream agent socket given");
        if (opt.allowed.empty()) spdlog::warn("agent-proxy: no key is allowed; every request will be refused");
        if (paths::prepare_socket_path(opt.listen, "agent proxy"))
            spdlog::debug("agent-proxy: removed stale socket {}", opt.listen.string());

        auto srv = std::make_shared<server>();
        srv->allowed = allow_list(opt.allowed.begin(), opt.allowed.end());
        srv->upstream = unix_endpoint(opt.upstream.string()); // throws when the path is too long
        srv->upstream_timeout = opt.upstream_timeout;

        asio::io_context ctx(1);
        unix_acceptor acceptor(ctx);
        acceptor.open(asio::local::stream_protocol());
        set_cloexec(acceptor.native_handle());
        acceptor.bind(unix_endpoint(opt.listen.string()));
        const paths::owned_socket_file file(opt.listen, "agent proxy");  // removed on every way out
        acceptor.listen();
        spdlog::debug("agent-proxy: serving {} for {} ({} allowed key(s))", opt.listen.string(),
                      opt.upstream.string(), srv->allowed.size());

        std::exception_ptr failure;
        auto on_end = [&failure](std::exception_ptr e) {
            if (e && !failure) failure = e;
        };
        asio::co_spawn(ctx, accept_clients(acceptor, srv), on_end);
        if (opt.still_wanted) {
            const auto every = std::max(opt.idle_check, std::chrono::milliseconds(1));
            asio::co_spawn(ctx, watch_idle(acceptor, srv, opt.still_wanted, every), on_end);
        }
        ctx.run();
        if (auto line = srv->closed.flush(log_limiter::clock::now())) spdlog::info("agent-proxy: {}", *line);
        if (failure) std::rethrow_exception(failure);
        return 0;
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
    }
}

} // namespace machine::agent_proxy
