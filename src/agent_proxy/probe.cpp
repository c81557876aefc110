// probe(): asks an agent for its identities, synchronously, with one deadline for the whole
// exchange (poll() between non-blocking calls), so a hung agent cannot hang the caller.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "filter.hpp"
#include "machine/agent_proxy.hpp"
#include "machine/fd.hpp"
#include "machine/platform.hpp"

namespace machine::agent_proxy {

namespace {

using clock = std::chrono::steady_clock;

agent_probe make(agent_probe::state s, std::string detail) {
    agent_probe p;
    p.result = s;
    p.detail = std::move(detail);
    return p;
}

} // namespace

std::string_view to_string(agent_probe::state s) {
    switch (s) {
    case agent_probe::state::not_set: return "not_set";
    case agent_probe::state::not_running: return "not_running";
    case agent_probe::state::no_keys: return "no_keys";
    case agent_probe::state::ok: return "ok";
    case agent_probe::state::broken: return "broken";
    }
    return "broken";
}

agent_probe probe(const std::filesystem::path& socket, std::chrono::milliseconds timeout) {
    using st = agent_probe::state;
    if (socket.empty()) return make(st::not_set, "SSH_AUTH_SOCK is not set");
    const auto deadline = clock::now() + timeout;

    struct stat sb {};
    if (::stat(socket.c_str(), &sb) != 0) {
        const int e = errno;
        if (e == ENOENT) return make(st::not_running, "no agent socket at " + socket.string());
        return make(st::broken, "cannot use " + socket.string() + ": " + std::strerror(e));
    }
    if (!S_ISSOCK(sb.st_mode)) return make(st::broken, socket.string() + " is not a socket");

    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    const auto path = socket.string();
    if (path.size() >= sizeof(sa.sun_path)) return make(st::broken, "socket path too long: " + path);
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);

    fd_closer fd{platform::open_socket(AF_UNIX, SOCK_STREAM, true)};
    if (fd.fd < 0) return make(st::broken, std::string("socket: ") + std::strerror(errno));
    if (::connect(fd.fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
        const int e = errno;
        if (e == ECONNREFUSED) return make(st::not_running, "nothing accepts on " + path + " (stale socket)");
        if (e == EAGAIN || e == EINPROGRESS)
            return make(st::broken, "the agent at " + path + " does not accept connections (backlog full)");
        return make(st::broken, "cannot connect to " + path + ": " + std::strerror(e));
    }

    const std::string request("\0\0\0\1\x0b", 5); // SSH_AGENTC_REQUEST_IDENTITIES
    switch (send_all(fd.fd, request, deadline)) {
    case send_outcome::sent: break;
    case send_outcome::timed_out: return make(st::broken, "the agent at " + path + " does not read requests");
    case send_outcome::failed: return make(st::broken, std::string("cannot send to the agent: ") + std::strerror(errno));
    }

    // Header first, then exactly the announced body (bounded by max_message_length).
    std::string in;
    std::size_t want = 4;
    bool have_header = false;
    while (in.size() < want) {
        char buf[4096];
        const auto n = ::recv(fd.fd, buf, std::min(sizeof buf, want - in.size()), 0);
        if (n > 0) {
            in.append(buf, static_cast<std::size_t>(n));
        } else if (n == 0) {
            return make(st::broken, "the agent at " + path + " closed the connection without answering");
        } else if (errno == EAGAIN || errno == EINTR) {
            if (!poll_until(fd.fd, POLLIN, deadline))
                return make(st::broken, "the agent at " + path + " did not answer within " +
                                            std::to_string(timeout.count()) + " ms");
        } else {
            return make(st::broken, std::string("cannot read from the agent: ") + std::strerror(errno));
        }
        if (!have_header && in.size() == 4) {
            const auto len = frame_length(reinterpret_cast<const unsigned char*>(in.data()));
            if (!acceptable_length(len))
                return make(st::broken, "the agent at " + path + " sent a bad answer length (" + std::to_string(len) + ")");
            have_header = true;
            want = 4 + len;
        }
    }

    const std::string_view body = std::string_view(in).substr(4);
    if (!body.empty() && static_cast<std::uint8_t>(body[0]) == msg::failure)
        return make(st::broken, "the agent at " + path + " refused to list its keys");
    auto ids = parse_identities(body);
    if (!ids) return make(st::broken, "the agent at " + path + " sent a malformed identities answer");

    agent_probe p;
    p.result = ids->empty() ? st::no_keys : st::ok;
    for (const auto& id : *ids) {
        p.fingerprints.push_back(fingerprint(id.key_blob));
        p.comments.push_back(id.comment);
    }
    p.detail = ids->empty() ? "the agent at " + path + " holds no keys (or is locked)"
                            : "the agent at " + path + " offers " + std::to_string(ids->size()) + " key(s)";
    return p;
}

} // namespace machine::agent_proxy
