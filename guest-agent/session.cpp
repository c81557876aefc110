// Agent sessions, the VM user's side (PROTOCOL.md §4 `session.*`, §7).
//
// `attach` runs in the user's SSH connection and ends by exec'ing tmux; `run` is the process in
// the tmux pane for the session's whole life: it owns the agent CLI (its child) and one
// connection to the daemon that says the session is alive (closing it, even by dying, ends the
// registration).
#include "session.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <string_view>
#include <vector>

#include "files.hpp"
#include "machine/protocol.hpp"
#include "server.hpp"
#include "spawn.hpp"
#include "tmux.hpp"
#include "users.hpp"

namespace machine::agent {

namespace {

namespace proto = machine::protocol;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr const char* installed_binary = "/usr/local/bin/machine-agent";
constexpr auto first_reply_wait = 1000ms;   // before the agent CLI starts: for the note
constexpr auto final_reply_wait = 2000ms;   // session.end's acknowledgement
constexpr auto retry_first = 1000ms;        // reconnecting to a restarting daemon
constexpr auto retry_max = 10000ms;
constexpr auto kill_grace = 10s;            // after SIGHUP/SIGTERM, then SIGKILL

constexpr const char* usage_text =
    "usage: machine-agent session attach --name NAME --agent claude|codex [--dir DIR] [--socket PATH]\n"
    "       machine-agent session run --name NAME --agent claude|codex [--socket PATH] [--missing-dir DIR]\n"
    "       machine-agent session list [--socket PATH]\n"
    "\n"
    "NAME: 1-64 characters of A-Z a-z 0-9 _ -, not starting with '-'.\n";

// Input echoed to the terminal: control characters (escape sequences) shown as '?'.
std::string printable(std::string_view text) {
    std::string out(text);
    for (char& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return out;
}

void note(const std::string& message) { std::fprintf(stderr, "machine-agent session: %s\n", message.c_str()); }

int usage_error(const std::string& message) {
    note(message);
    std::fputs(usage_text, stderr);
    return 2;
}

struct session_args {
    std::string verb;
    std::string name;
    std::string agent;
    std::optional<std::string> dir;
    std::optional<std::string> missing_dir;  // run: the --dir attach could not use, for the pane's note
    std::string socket;
    bool socket_given = false;
    bool has_name = false;
};

std::optional<session_args> parse_args(int argc, char** argv, const std::string& socket, std::string& error) {
    session_args a;
    a.socket = socket;
    a.socket_given = socket != default_socket;
    if (argc < 3) {
        error = "missing subcommand";
        return std::nullopt;
    }
    a.verb = argv[2];
    for (int i = 3; i < argc; ++i) {
        std::string_view arg = argv[i];
        std::string value;
        std::string_view key = arg;
        if (const auto eq = arg.find('='); arg.substr(0, 2) == "--" && eq != std::string_view::npos) {
            key = arg.substr(0, eq);
            value = std::string(arg.substr(eq + 1));
        } else if (key == "--name" || key == "--agent" || key == "--dir" || key == "--socket" ||
                   key == "--missing-dir") {
            if (i + 1 >= argc) {
                error = std::string(key) + " needs a value";
                return std::nullopt;
            }
            value = argv[++i];
        }
        if (key == "--name") {
            a.name = value;
            a.has_name = true;
        } else if (key == "--agent") a.agent = value;
        else if (key == "--dir") a.dir = value;
        else if (key == "--missing-dir") a.missing_dir = value;
        else if (key == "--socket") {
            a.socket = value;
            a.socket_given = true;
        } else {
            error = "unknown argument '" + printable(arg) + "'";
            return std::nullopt;
        }
    }
    return a;
}

// The name and agent of attach and run; the message says what is wrong.
std::optional<std::string> check_session_args(const session_args& a) {
    if (!a.has_name) return "missing --name";
    if (!proto::is_valid_session_name(a.name))
        return "invalid session name '" + printable(a.name) +
               "': 1-64 characters of A-Z a-z 0-9 _ -, not starting with '-'";
    if (!proto::is_valid_agent_kind(a.agent)) return "--agent must be claude or codex";
    return std::nullopt;
}

bool is_directory(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// $HOME, else the passwd entry's, else "/".
std::string home_dir() {
    if (const char* h = std::getenv("HOME"); h && *h == '/') return h;
    if (const auto me = find_uid(::getuid()); me && !me->home.empty()) return me->home;
    return "/";
}

std::string agent_socket_link(const std::string& home) { return home + "/.ssh/agent.sock"; }

// ~/.ssh/agent.sock follows the SSH connection that attached last: a symlink to its forwarded
// agent, replaced atomically; removed when this connection forwards none. Never fatal.
void refresh_agent_socket(const std::string& home) {
    const std::string dir = home + "/.ssh";
    const std::string link = agent_socket_link(home);
    struct stat st {};
    const bool exists = ::lstat(link.c_str(), &st) == 0;
    if (exists && !S_ISLNK(st.st_mode)) {
        note(link + " is not a symlink: left as it is");
        return;
    }
    const char* forwarded = std::getenv("SSH_AUTH_SOCK");
    if (!forwarded || *forwarded != '/' || link == forwarded) {
        // No forwarding (or an unusable value, or already the stable path: a link to itself
        // would loop): sessions must not get a socket.
        if (exists && (!forwarded || link != forwarded) && ::unlink(link.c_str()) != 0 && errno != ENOENT)
            note("cannot remove " + link + ": " + errno_text(errno));
        return;
    }
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        note("cannot create " + dir + ": " + errno_text(errno));
        return;
    }
    const std::string tmp = link + ".tmp." + std::to_string(::getpid());
    ::unlink(tmp.c_str());
    if (::symlink(forwarded, tmp.c_str()) != 0) {
        note("cannot create " + tmp + ": " + errno_text(errno));
        return;
    }
    if (::rename(tmp.c_str(), link.c_str()) != 0) {
        note("cannot replace " + link + ": " + errno_text(errno));
        ::unlink(tmp.c_str());
    }
}

// This executable, for the pane's command: /usr/local/bin/machine-agent when installed.
std::string self_path() {
    char buf[PATH_MAX];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return installed_binary;
    std::string path(buf, static_cast<std::size_t>(n));
    if (path.size() > 10 && path.compare(path.size() - 10, 10, " (deleted)") == 0) return installed_binary;
    return path;
}

// --- a blocking connection to the daemon ----------------------------------------------------------

class agent_link {
public:
    explicit agent_link(std::string socket) : socket_(std::move(socket)) {}
    ~agent_link() { close(); }
    agent_link(const agent_link&) = delete;
    agent_link& operator=(const agent_link&) = delete;

    int fd() const { return fd_; }
    bool connected() const { return fd_ >= 0; }

    // Connects; false with `error` set when the daemon is not there.
    bool connect(std::string& error) {
        close();
        const int fd = connect_unix(socket_, error);
        if (fd < 0) return false;
        timeval timeout{2, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        fd_ = fd;
        decoder_ = proto::decoder({.max_line = proto::max_line_bytes, .require_id = false});
        pending_.clear();
        return true;
    }

    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    bool send(const proto::json& message) {
        if (fd_ < 0) return false;
        const std::string line = proto::encode(message);
        std::string_view rest = line;
        while (!rest.empty()) {
            const ssize_t n = ::send(fd_, rest.data(), rest.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                close();
                return false;
            }
            rest.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Reads what has arrived (call when poll says readable). False when the connection ended
    // (it is then closed); messages read before the end are still queued.
    bool read_available() {
        if (fd_ < 0) return false;
        char buf[16384];
        const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        if (n <= 0) {
            close();
            return false;
        }
        std::vector<proto::decoded> items;
        decoder_.feed(std::string_view(buf, static_cast<std::size_t>(n)), items);
        for (auto& item : items)
            if (auto* m = std::get_if<proto::message>(&item)) pending_.push_back(std::move(*m));
        return true;
    }

    std::optional<proto::message> next() {
        if (pending_.empty()) return std::nullopt;
        auto m = std::move(pending_.front());
        pending_.pop_front();
        return m;
    }

    // Waits for the final message of `id` (others are dropped); nullopt on timeout or end.
    std::optional<proto::message> wait_final(std::uint64_t id, std::chrono::milliseconds limit) {
        const auto deadline = steady::now() + limit;
        for (;;) {
            while (auto m = next())
                if (m->id == id && proto::is_final(m->type)) return m;
            if (fd_ < 0) return std::nullopt;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
            if (left.count() <= 0) return std::nullopt;
            pollfd p{fd_, POLLIN, 0};
            const int r = ::poll(&p, 1, static_cast<int>(left.count()));
            if (r < 0 && errno != EINTR) return std::nullopt;
            if (r > 0) read_available();
        }
    }

private:
    std::string socket_;
    int fd_ = -1;
    proto::decoder decoder_{{.max_line = proto::max_line_bytes, .require_id = false}};
    std::deque<proto::message> pending_;
};

std::string error_text(const proto::message& m) {
    const auto e = proto::parse_error(m.body);
    return e ? e->message + " (" + e->code + ")" : "malformed error";
}

// The session's registration: one connection kept open while the agent CLI runs. A daemon that
// is away (restarting, being upgraded) is retried in the background; once back, the session is
// registered again (`resumed`, so no second session.started).
class registration {
public:
    registration(std::string socket, proto::session_register_request base, steady::time_point t0)
        : link_(std::move(socket)), base_(std::move(base)), t0_(t0) {}

    int fd() const { return link_.fd(); }
    std::optional<steady::time_point> retry_at() const {
        if (state_ == state::idle) return retry_at_;
        return std::nullopt;
    }
    // Why the session is not registered, for the user (empty: registered, or still asking).
    const std::string& problem() const { return problem_; }

    void attempt() {
        if (state_ != state::idle) return;
        std::string error;
        if (!link_.connect(error)) {
            problem_ = "the machine agent is not reachable (" + error +
                       "): the session runs, and is registered when the agent is back";
            schedule_retry();
            return;
        }
        auto q = base_;
        q.running_ms = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0_).count());
        q.resumed = ever_registered_;
        register_id_ = next_id_++;
        if (!link_.send(proto::make_session_register_request(register_id_, q))) {
            problem_ = "the machine agent closed the connection";
            schedule_retry();
            return;
        }
        state_ = state::asking;
    }

    void on_readable() {
        const bool open = link_.read_available();
        while (auto m = link_.next()) handle(*m);
        if (!open && (state_ == state::asking || state_ == state::registered)) {
            // The daemon went away (a restart): register again when it is back.
            state_ = state::idle;
            backoff_ = retry_first;
            schedule_retry();
        }
    }

    // Before the agent CLI starts: waits a little for the first answer, so the note is right.
    void wait_first_answer() {
        const auto deadline = steady::now() + first_reply_wait;
        while (state_ == state::asking) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
            if (left.count() <= 0) return;
            pollfd p{link_.fd(), POLLIN, 0};
            const int r = ::poll(&p, 1, static_cast<int>(left.count()));
            if (r < 0 && errno != EINTR) return;
            if (r > 0) on_readable();
        }
    }

    // The agent CLI has ended: report it (registering first if the daemon came back late).
    void finish(const proto::session_end_request& end) {
        if (state_ == state::refused) return;
        if (state_ == state::idle) {
            retry_at_ = steady::now();
            attempt();
        }
        if (state_ == state::asking) {
            if (auto m = link_.wait_final(register_id_, final_reply_wait)) handle(*m);
        }
        if (state_ != state::registered) return;
        const std::uint64_t id = next_id_++;
        if (!link_.send(proto::make_session_end_request(id, end))) return;
        link_.wait_final(id, final_reply_wait);
        link_.close();
    }

private:
    enum class state { idle, asking, registered, refused };

    void handle(const proto::message& m) {
        if (m.id != register_id_ || state_ != state::asking) return;
        if (m.type == proto::type::result) {
            state_ = state::registered;
            ever_registered_ = true;
            backoff_ = retry_first;
            problem_.clear();
        } else if (m.type == proto::type::error) {
            const auto e = proto::parse_error(m.body);
            if (e && e->code == "shutting_down") {
                link_.close();
                state_ = state::idle;
                schedule_retry();
                return;
            }
            // Refused for good (a live session has this name, or a bug): run unregistered.
            problem_ = "the machine agent refused to register the session: " + error_text(m) +
                       "; it runs without being listed";
            state_ = state::refused;
            link_.close();
        }
    }

    void schedule_retry() {
        link_.close();
        state_ = state::idle;
        retry_at_ = steady::now() + backoff_;
        backoff_ = std::min<std::chrono::milliseconds>(backoff_ * 2, retry_max);
    }

    agent_link link_;
    proto::session_register_request base_;
    steady::time_point t0_;
    state state_ = state::idle;
    bool ever_registered_ = false;
    std::uint64_t next_id_ = 1;
    std::uint64_t register_id_ = 0;
    steady::time_point retry_at_ = steady::now();
    std::chrono::milliseconds backoff_ = retry_first;
    std::string problem_;
};

} // namespace

std::string agent_command(const std::string& shell, const std::string& agent) {
    // The repo's environment as an interactive shell there has it: direnv's hook runs
    // `direnv export` at each prompt, which a `-c` shell never shows, so it is run once here
    // (an .envrc not allowed is direnv's error on the pane, and the agent starts without it).
    // Only bash and zsh: direnv's export is in the shell's own syntax.
    const std::string_view base = std::string_view(shell).substr(shell.rfind('/') + 1);
    std::string out;
    if (base == "bash" || base == "zsh")
        out = "command -v direnv >/dev/null 2>&1 && eval \"$(direnv export " + std::string(base) + ")\"; ";
    return out + "exec " + agent;
}

namespace {

// Sends `sig` to the agent CLI's process group when it has its own (the terminal's foreground
// one), else to it alone.
void forward(pid_t pid, int sig) {
    if (::getpgid(pid) != pid || ::kill(-pid, sig) != 0) ::kill(pid, sig);
}

// --- subcommands ------------------------------------------------------------------------------

int attach(const session_args& a) {
    const std::string home = home_dir();
    std::string dir = home;
    tmux::attach_spec spec;
    if (a.dir) {
        // Relative to the home directory (where sshd starts a command anyway): `--dir code/repo`.
        const std::string wanted = !a.dir->empty() && a.dir->front() != '/' ? home + "/" + *a.dir : *a.dir;
        char resolved[PATH_MAX];
        if (is_directory(wanted) && ::realpath(wanted.c_str(), resolved)) dir = resolved;
        // Said by the pane's `session run`, in the session itself: a note on this terminal would
        // be hidden by tmux's screen at once, and may not even reach it (the tmux client flushes
        // its terminal's unread output, TCOFLUSH, as it starts).
        else spec.missing_dir = printable(*a.dir);
    }
    if (!is_directory(dir)) dir = "/";
    refresh_agent_socket(home);

    spec.name = a.name;
    spec.agent = a.agent;
    spec.dir = dir;
    spec.self = self_path();
    if (a.socket_given) spec.socket = a.socket;
    const auto args = tmux::attach_argv(spec);
    std::vector<char*> argv;
    for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    // The client's directory too: tmux falls back to it when -c cannot be used.
    [[maybe_unused]] const int cd = ::chdir(dir.c_str());
    ::execvp(argv[0], argv.data());
    note("cannot run " + args[0] + ": " + errno_text(errno));
    return 127;
}

int run(const session_args& a) {
    const auto t0 = steady::now();
    const auto me = find_uid(::getuid());
    const std::string shell = me && !me->shell.empty() ? me->shell : "/bin/sh";
    const std::string link = agent_socket_link(home_dir());
    struct stat st {};
    if (::lstat(link.c_str(), &st) == 0) ::setenv("SSH_AUTH_SOCK", link.c_str(), 1);
    else ::unsetenv("SSH_AUTH_SOCK");

    // Signals come through a signalfd; the terminal's job-control signals are not ours.
    sigset_t watched, old;
    sigemptyset(&watched);
    for (int s : {SIGCHLD, SIGHUP, SIGTERM, SIGINT}) sigaddset(&watched, s);
    ::sigprocmask(SIG_BLOCK, &watched, &old);
    const int sfd = ::signalfd(-1, &watched, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        note("signalfd: " + errno_text(errno));
        return 1;
    }
    for (int s : {SIGTTOU, SIGTTIN, SIGTSTP, SIGPIPE}) ::signal(s, SIG_IGN);

    proto::session_register_request base;
    base.name = a.name;
    base.agent = a.agent;
    base.pid = ::getpid();
    if (::isatty(STDIN_FILENO)) {
        if (const char* t = ::ttyname(STDIN_FILENO); t && std::strlen(t) <= proto::max_session_tty) base.tty = t;
    }
    // First, above the agent CLI's output: the directory asked for that the session could not
    // start in (attach passed it on; tmux's -c made the pane's directory the fallback).
    if (a.missing_dir) {
        char cwd[PATH_MAX];
        const std::string where = ::getcwd(cwd, sizeof cwd) ? cwd : home_dir();
        note("'" + printable(*a.missing_dir) + "' is not a directory: the session starts in " + where);
    }
    registration reg(a.socket, base, t0);
    reg.attempt();
    reg.wait_first_answer();
    if (!reg.problem().empty()) note(reg.problem());

    // The agent CLI through the login shell, so that PATH and the profile apply (the agents'
    // logins among them: /etc/profile.d/machine-credentials.sh). The command word comes from the
    // agent kind, never from input.
    const std::string command = agent_command(shell, a.agent);
    std::vector<char*> argv = {const_cast<char*>(shell.c_str()), const_cast<char*>("-l"), const_cast<char*>("-c"),
                               const_cast<char*>(command.c_str()), nullptr};
    const std::string exec_failed = "machine-agent session: cannot run " + shell + "\n";
    const bool foreground = ::isatty(STDIN_FILENO) && ::tcgetpgrp(STDIN_FILENO) == ::getpgrp();
    const pid_t pid = ::fork();
    if (pid < 0) {
        note("fork: " + errno_text(errno));
        return 1;
    }
    if (pid == 0) {
        // Its own process group, in the terminal's foreground (as a shell runs a job): the
        // terminal's signals go to it alone, and a forwarded signal reaches its whole group.
        // Without the terminal's foreground (a pipe, or run in the background) it stays in ours.
        if (foreground) {
            ::setpgid(0, 0);
            ::tcsetpgrp(STDIN_FILENO, ::getpid());
        }
        reset_signals_for_exec();
        ::execv(argv[0], argv.data());
        [[maybe_unused]] const auto w = ::write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
        ::_exit(127);
    }
    if (foreground) ::setpgid(pid, pid);  // both sides, as shells do: whichever runs first

    int status = 0;
    bool exited = false, killed = false;
    std::optional<steady::time_point> kill_at;
    while (!exited) {
        pollfd fds[2] = {{sfd, POLLIN, 0}, {reg.fd(), POLLIN, 0}};
        const nfds_t nfds = reg.fd() >= 0 ? 2 : 1;
        int timeout = -1;
        auto shorten = [&](steady::time_point t) {
            const auto ms = std::max<long long>(
                0, std::chrono::duration_cast<std::chrono::milliseconds>(t - steady::now()).count() + 1);
            if (timeout < 0 || ms < timeout) timeout = static_cast<int>(std::min<long long>(ms, INT_MAX));
        };
        if (kill_at && !killed) shorten(*kill_at);
        if (const auto r = reg.retry_at()) shorten(*r);
        const int n = ::poll(fds, nfds, timeout);
        if (n < 0 && errno != EINTR) break;
        if (n > 0 && fds[0].revents) {
            signalfd_siginfo si{};
            while (::read(sfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
                const int sig = static_cast<int>(si.ssi_signo);
                if (sig == SIGCHLD) continue;
                forward(pid, sig);
                if ((sig == SIGHUP || sig == SIGTERM) && !kill_at) kill_at = steady::now() + kill_grace;
            }
        }
        for (;;) {
            int ws = 0;
            const pid_t r = ::waitpid(pid, &ws, WNOHANG | WUNTRACED);
            if (r != pid) break;
            if (WIFSTOPPED(ws)) {
                // Ctrl-Z: nothing here does job control, so a stopped agent would hang the pane.
                // Other stops (SIGSTOP, a background read) are someone's intent: left alone.
                if (WSTOPSIG(ws) == SIGTSTP) forward(pid, SIGCONT);
                continue;
            }
            status = ws;
            exited = true;
            break;
        }
        if (exited) break;
        if (n > 0 && nfds == 2 && fds[1].revents) reg.on_readable();
        if (kill_at && !killed && steady::now() >= *kill_at) {
            forward(pid, SIGKILL);
            killed = true;
        }
        if (const auto r = reg.retry_at(); r && steady::now() >= *r) reg.attempt();
    }
    if (!exited) {
        note("poll: " + errno_text(errno));
        forward(pid, SIGKILL);
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    }

    proto::session_end_request end;
    if (WIFSIGNALED(status)) end.signal = WTERMSIG(status);
    else end.exit_code = WEXITSTATUS(status);
    end.duration_ms = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0).count());
    reg.finish(end);
    ::close(sfd);
    return end.signal ? 128 + *end.signal : *end.exit_code;
}

int list(const session_args& a) {
    agent_link link(a.socket);
    std::string error;
    if (!link.connect(error)) {
        note(error);
        return 1;
    }
    if (!link.send(proto::make_session_list_request(1))) {
        note("the machine agent closed the connection");
        return 1;
    }
    const auto m = link.wait_final(1, 10s);
    if (!m) {
        note("no answer from the machine agent");
        return 1;
    }
    if (m->type == proto::type::error) {
        note(error_text(*m));
        return 1;
    }
    const auto r = proto::parse_session_list_result(m->body);
    if (!r) {
        note("malformed answer: " + r.error);
        return 1;
    }
    for (const auto& s : r->sessions)
        std::printf("%s\t%s\t%lld\t%llu\t%s\n", s.name.c_str(), s.agent.c_str(), static_cast<long long>(s.pid),
                    static_cast<unsigned long long>(s.attached), s.started_at.c_str());
    return 0;
}

} // namespace

int session_command(int argc, char** argv, const std::string& socket) {
    std::string error;
    const auto a = parse_args(argc, argv, socket, error);
    if (!a) return usage_error(error);
    if (a->missing_dir && a->verb != "run") return usage_error("only run takes --missing-dir");
    if (a->verb == "list") return list(*a);
    if (a->verb != "attach" && a->verb != "run")
        return usage_error("unknown subcommand '" + printable(a->verb) + "'");
    if (const auto bad = check_session_args(*a)) return usage_error(*bad);
    if (a->verb == "attach") return attach(*a);
    if (a->dir) return usage_error("run takes no --dir (it runs in the pane's directory)");
    return run(*a);
}

} // namespace machine::agent
