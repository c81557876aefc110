// `machine-agent emit EVENT [key=value | key:=json]...`: a one-shot client for scripts in the
// VM (provisioning steps report progress this way). Blocking I/O: it sends one request and
// waits for its final message.
#include "emit_client.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "files.hpp"
#include "machine/protocol.hpp"

namespace machine::agent {

namespace {

namespace proto = machine::protocol;

int fail(const std::string& message) {
    std::fprintf(stderr, "machine-agent emit: %s\n", message.c_str());
    return 1;
}

} // namespace

std::optional<protocol::json> parse_emit_fields(const std::vector<std::string>& args, std::string& error) {
    proto::json fields = proto::json::object();
    for (const auto& arg : args) {
        const auto typed = arg.find(":=");
        const auto eq = arg.find('=');
        if (eq == std::string::npos || eq == 0) {
            error = "'" + arg + "' is not key=value or key:=json";
            return std::nullopt;
        }
        if (typed != std::string::npos && typed + 1 == eq) {
            const std::string key = arg.substr(0, typed);
            const std::string text = arg.substr(eq + 1);
            auto value = proto::json::parse(text, nullptr, false);
            if (value.is_discarded() || key.empty()) {
                error = "'" + arg + "': the value after := is not JSON";
                return std::nullopt;
            }
            fields[key] = std::move(value);
        } else {
            fields[arg.substr(0, eq)] = arg.substr(eq + 1);
        }
    }
    return fields;
}

int emit_command(const std::string& socket_path, const std::string& event, const std::vector<std::string>& args) {
    std::string error;
    const auto fields = parse_emit_fields(args, error);
    if (!fields) return fail(error);
    proto::emit_request req{event, *fields};
    // Check locally first: a clear message without a round trip.
    if (const auto checked = proto::parse_emit_request(proto::make_emit_request(1, req)); !checked)
        return fail(checked.error);

    std::string error_text;
    const int fd = connect_unix(socket_path, error_text);
    if (fd < 0) return fail(error_text);
    timeval timeout{30, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    if (!write_all(fd, proto::encode(proto::make_emit_request(1, req)))) {
        const int e = errno;
        ::close(fd);
        return fail(std::string("send: ") + std::strerror(e));
    }

    proto::decoder dec({.max_line = proto::max_line_bytes, .require_id = false});
    std::vector<proto::decoded> items;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int e = n < 0 ? errno : 0;
            ::close(fd);
            return fail(e ? std::string("receive: ") + std::strerror(e) : "the agent closed the connection");
        }
        items.clear();
        dec.feed(std::string_view(buf, static_cast<std::size_t>(n)), items);
        for (auto& item : items) {
            if (auto* e = std::get_if<proto::decode_error>(&item)) {
                ::close(fd);
                return fail("bad reply from the agent: " + e->message);
            }
            auto& m = std::get<proto::message>(item);
            if (m.type == proto::type::error) {
                ::close(fd);
                const auto err = proto::parse_error(m.body);
                return fail(err ? err->code + ": " + err->message : "error");
            }
            if (m.id == 1u && m.type == proto::type::result) {
                ::close(fd);
                return 0;
            }
        }
    }
}

} // namespace machine::agent
