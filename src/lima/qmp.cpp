// QEMU's monitor (QMP) over an instance's qmp.sock: a bounded reader and one synchronous
// exchange with a deadline for the whole of it (poll() between non-blocking calls, as the SSH
// agent probe does), so a wedged or busy QEMU cannot hang machine. Also the files of the
// stand-in's hibernation in the instance directory, and snapshot tags.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "machine/fd.hpp"
#include "machine/lima.hpp"
#include "machine/platform.hpp"
#include "machine/text.hpp"

namespace machine::lima {

namespace {

using json = nlohmann::json;
using clock = std::chrono::steady_clock;


class exchange {
public:
    exchange(const std::filesystem::path& socket, std::chrono::milliseconds timeout)
        : path_(socket.string()), timeout_(timeout), deadline_(clock::now() + timeout) {
        struct stat sb {};
        if (::stat(path_.c_str(), &sb) != 0)
            throw qmp_error("no QEMU monitor at " + path_ + ": " + std::strerror(errno));
        if (!S_ISSOCK(sb.st_mode)) throw qmp_error(path_ + " is not a socket (no QEMU monitor)");
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        if (path_.size() >= sizeof(sa.sun_path)) throw qmp_error("QMP socket path too long: " + path_);
        std::memcpy(sa.sun_path, path_.c_str(), path_.size() + 1);
        fd_.fd = platform::open_socket(AF_UNIX, SOCK_STREAM, true);
        if (fd_.fd < 0) throw qmp_error(std::string("socket: ") + std::strerror(errno));
        if (::connect(fd_.fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
            const int e = errno;
            if (e == ECONNREFUSED) throw qmp_error("QEMU's monitor at " + path_ + " does not accept connections");
            throw qmp_error("cannot connect to QEMU's monitor at " + path_ + ": " + std::strerror(e));
        }
    }

    void send(std::string_view text) {
        std::string line(text);
        line += '\n';
        switch (send_all(fd_.fd, line, deadline_)) {
        case send_outcome::sent: return;
        case send_outcome::timed_out: timed_out();
        case send_outcome::failed:
            throw qmp_error("cannot write to QEMU's monitor: " + std::string(std::strerror(errno)));
        }
    }

    json receive() {
        for (;;) {
            if (auto line = reader_.next()) {
                json j = json::parse(*line, nullptr, false);
                if (j.is_discarded() || !j.is_object())
                    throw qmp_error("QEMU's monitor sent something that is not a JSON object: " +
                                    text::escape_for_terminal(line->substr(0, 200)));
                return j;
            }
            char buf[4096];
            const auto n = ::recv(fd_.fd, buf, sizeof buf, 0);
            if (n > 0) {
                reader_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
            } else if (n == 0) {
                throw qmp_error("QEMU's monitor closed the connection");
            } else if (errno == EAGAIN || errno == EINTR) {
                if (!poll_until(fd_.fd, POLLIN, deadline_)) timed_out();
            } else {
                throw qmp_error("cannot read from QEMU's monitor: " + std::string(std::strerror(errno)));
            }
        }
    }

    // The reply to the last command: events in between are skipped; an error is thrown.
    json reply() {
        for (;;) {
            json j = receive();
            if (j.contains("return")) return j["return"];
            if (j.contains("error")) {
                const json& e = j["error"];
                std::string desc = e.is_object() && e.contains("desc") && e["desc"].is_string()
                                       ? e["desc"].get<std::string>()
                                       : e.dump();
                throw qmp_error("QEMU: " + text::escape_for_terminal(desc.substr(0, 500)));
            }
        }
    }

private:
    [[noreturn]] void timed_out() {
        throw qmp_error("QEMU's monitor at " + path_ + " did not answer within " + std::to_string(timeout_.count()) +
                        " ms (busy with another client, or QEMU is wedged)");
    }

    std::string path_;
    std::chrono::milliseconds timeout_;
    clock::time_point deadline_;
    fd_closer fd_;
    qmp_reader reader_;
};

} // namespace

std::filesystem::path qmp_socket(const std::filesystem::path& instance_dir) { return instance_dir / "qmp.sock"; }

void qmp_reader::feed(std::string_view bytes) {
    buf_.append(bytes);
    // a line without its newline yet must stay under the limit too
    const auto nl = buf_.find('\n');
    if ((nl == std::string::npos ? buf_.size() : nl) > qmp_max_line)
        throw qmp_error("QEMU's monitor sent a line over " + std::to_string(qmp_max_line / 1024) + " KiB");
}

std::optional<std::string> qmp_reader::next() {
    const auto nl = buf_.find('\n');
    if (nl == std::string::npos) return std::nullopt;
    if (nl > qmp_max_line)
        throw qmp_error("QEMU's monitor sent a line over " + std::to_string(qmp_max_line / 1024) + " KiB");
    if (++lines_ > qmp_max_lines)
        throw qmp_error("QEMU's monitor sent more than " + std::to_string(qmp_max_lines) + " messages");
    std::string line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return line;
}

std::string qmp_execute(const std::filesystem::path& socket, std::string_view command,
                        std::chrono::milliseconds timeout) {
    exchange x(socket, timeout);
    const json greeting = x.receive();
    if (!greeting.contains("QMP")) throw qmp_error("not a QEMU monitor at " + socket.string() + " (no QMP greeting)");
    x.send(R"({"execute":"qmp_capabilities"})");
    x.reply();
    x.send(command);
    return x.reply().dump();
}

std::string parse_qmp_status(std::string_view return_json) {
    const json j = json::parse(return_json, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("status") || !j["status"].is_string())
        throw protocol_error("query-status returned no status: " + text::escape_for_terminal(std::string(return_json.substr(0, 200))));
    return j["status"].get<std::string>();
}

std::filesystem::path hibernate_state(const std::filesystem::path& instance_dir) {
    return instance_dir / "hibernate.state";
}

void discard_hibernate_state(const std::filesystem::path& instance_dir) {
    std::error_code ec;
    std::filesystem::remove(instance_dir / "hibernate.state", ec);
    std::filesystem::remove(instance_dir / "hibernate.json", ec);
}

std::optional<hibernate_outcome> read_hibernate_outcome(const std::filesystem::path& instance_dir) {
    std::ifstream in(instance_dir / "hibernate.outcome", std::ios::binary);
    if (!in) return std::nullopt;
    std::string text(4097, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (text.size() > 4096) return std::nullopt;
    return parse_hibernate_outcome(text);
}

std::vector<std::string> parse_snapshot_tags(std::string_view text) {
    std::vector<std::string> tags;
    for (const auto& line : text::split_lines(text)) {
        const std::string tag = text::trim(line);
        if (!tag.empty()) tags.push_back(tag);
    }
    return tags;
}

} // namespace machine::lima
