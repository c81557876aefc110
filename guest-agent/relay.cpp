// `machine-agent relay`: the host runs it over an SSH session channel and talks to the agent
// through its stdin and stdout. It replaces a direct-streamlocal channel to the socket, which
// libssh before 0.11.2 (Debian 12's 0.10.6 on the host) refuses once it has misread OpenSSH 10's
// banner ("OpenSSH_10.0" parsed as no version: "We're not connected to an OpenSSH server!"), and
// which an sshd with `AllowStreamLocalForwarding no` refuses too; running a command is what every
// SSH server allows. The relay runs as the VM user, as sshd's end of the channel did, so the
// agent sees the same peer credentials.
//
// Blocking I/O in one poll loop: one connection, two directions, no buffering beyond one read.
#include "relay.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string_view>

#include "files.hpp"

namespace machine::agent {

namespace {

int fail(int status, const std::string& message) {
    std::fprintf(stderr, "machine-agent relay: %s\n", message.c_str());
    return status;
}

// One read from `from`, written whole to `to`. 0 at EOF, -1 on a read error, -2 when `to`
// cannot take it.
ssize_t pass_on(int from, int to) {
    char buf[64 * 1024];
    ssize_t n;
    do n = ::read(from, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return n;
    return write_all(to, std::string_view(buf, static_cast<std::size_t>(n))) ? n : -2;
}

} // namespace

int relay_command(const std::string& socket_path) {
    // The host going away shows as EPIPE on stdout, not as a signal that ends us mid-write.
    ::signal(SIGPIPE, SIG_IGN);
    std::string error;
    const int sock = connect_unix(socket_path, error);
    if (sock < 0) return fail(relay_no_agent, error);

    bool host_sending = true;
    for (;;) {
        // stdout is polled for nothing: POLLERR/POLLHUP say the host's side (sshd) closed it.
        pollfd fds[3] = {{sock, POLLIN, 0}, {STDIN_FILENO, static_cast<short>(host_sending ? POLLIN : 0), 0},
                         {STDOUT_FILENO, 0, 0}};
        if (::poll(fds, 3, -1) < 0) {
            if (errno == EINTR) continue;
            return fail(relay_io_error, "poll: " + errno_text(errno));
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            const ssize_t n = pass_on(sock, STDOUT_FILENO);
            if (n == 0 || n == -2) return relay_done;  // the agent hung up, or the host left
            if (n < 0) return fail(relay_io_error, "reading from the agent: " + errno_text(errno));
            continue;  // the agent's data first: stdout's state is read again on the next turn
        }
        if (host_sending && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            const ssize_t n = pass_on(STDIN_FILENO, sock);
            if (n == 0) {
                // The host sent EOF: the agent sees a half close and may still answer.
                ::shutdown(sock, SHUT_WR);
                host_sending = false;
            } else if (n == -2) {
                return relay_done;  // the agent stopped reading
            } else if (n < 0) {
                return fail(relay_io_error, "reading from the host: " + errno_text(errno));
            }
        }
        if (fds[2].revents & (POLLERR | POLLHUP)) return relay_done;  // the host left
    }
}

} // namespace machine::agent
