#include "sshd.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace machine::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_all(const fs::path& p, const std::string& content, bool append = false) {
    std::ofstream out(p, append ? std::ios::binary | std::ios::app : std::ios::binary | std::ios::trunc);
    out << content;
    if (!out) throw std::runtime_error("sshd fixture: cannot write " + p.string());
}

int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error("sshd fixture: socket() failed");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        ::close(fd);
        throw std::runtime_error("sshd fixture: cannot find a free port");
    }
    ::close(fd);
    return ntohs(a.sin_port);
}

// posix_spawn with a clean signal state, fds 0-2 given, everything else closed.
pid_t spawn(const std::vector<std::string>& argv, int in, int out, int err, bool new_group) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&fa, in, 0);
    posix_spawn_file_actions_adddup2(&fa, out, 1);
    posix_spawn_file_actions_adddup2(&fa, err, 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    sigset_t defaults, empty;
    sigemptyset(&defaults);
    for (int s : {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGPIPE, SIGCHLD}) sigaddset(&defaults, s);
    sigemptyset(&empty);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setsigmask(&attr, &empty);
    short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    if (new_group) {
        flags |= POSIX_SPAWN_SETPGROUP;
        posix_spawnattr_setpgroup(&attr, 0);
    }
    posix_spawnattr_setflags(&attr, flags);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = -1;
    const int rc = ::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
    return pid;
}

} // namespace

std::string run_sync(const std::vector<std::string>& argv) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
        throw std::runtime_error("run_sync: pipe2 failed");
    const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t pid = -1;
    try {
        pid = spawn(argv, devnull, out[1], err[1], false);
    } catch (...) {
        for (int fd : {out[0], out[1], err[0], err[1], devnull}) ::close(fd);
        throw;
    }
    for (int fd : {out[1], err[1], devnull}) ::close(fd);
    std::string so, se;
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_streams = 2;
    char buf[65536];
    while (open_streams > 0) {
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n > 0) {
                (i == 0 ? so : se).append(buf, static_cast<std::size_t>(n));
            } else if (n == 0 || errno != EINTR) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_streams;
            }
        }
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw std::runtime_error(argv[0] + " failed: " + se);
    return so;
}

std::optional<std::string> unprivileged_user() {
    if (::geteuid() != 0) {
        if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name) return pw->pw_name;
        return std::nullopt;
    }
    ::setpwent();
    std::optional<std::string> found;
    while (const passwd* pw = ::getpwent()) {
        const std::string shell = pw->pw_shell ? pw->pw_shell : "";
        if (pw->pw_uid >= 1000 && pw->pw_uid < 60000 &&
            (shell == "/bin/sh" || shell == "/bin/bash" || shell == "/usr/bin/bash" ||
             shell == "/bin/dash" || shell == "/usr/bin/zsh")) {
            found = pw->pw_name;
            break;
        }
    }
    ::endpwent();
    return found;
}

std::vector<pid_t> descendants(pid_t root) {
    std::multimap<pid_t, pid_t> children;  // ppid -> pid
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/proc", ec)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
        const std::string stat = read_all(entry.path() / "stat");
        // "pid (comm) state ppid ...": comm may contain anything, so parse after the last ')'.
        const auto close = stat.rfind(')');
        if (close == std::string::npos) continue;
        std::istringstream rest(stat.substr(close + 1));
        std::string state;
        pid_t ppid = 0;
        rest >> state >> ppid;
        if (state == "Z") continue;
        children.emplace(ppid, static_cast<pid_t>(std::stoi(name)));
    }
    std::vector<pid_t> out;
    std::vector<pid_t> todo{root};
    while (!todo.empty()) {
        const pid_t p = todo.back();
        todo.pop_back();
        auto [b, e] = children.equal_range(p);
        for (auto it = b; it != e; ++it) {
            out.push_back(it->second);
            todo.push_back(it->second);
        }
    }
    return out;
}

sshd_server::sshd_server() : sshd_server(options{}) {}

sshd_server::sshd_server(options opt) : opt_(std::move(opt)) {
    std::string tmpl = (fs::temp_directory_path() / "machine-sshd-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("sshd fixture: mkdtemp failed");
    dir_ = tmpl;
    if (!opt_.user.empty()) {
        user_ = opt_.user;
    } else if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name) {
        user_ = pw->pw_name;
    } else {
        throw std::runtime_error("sshd fixture: no passwd entry for the current user");
    }
    try {
        const bool other_user = !opt_.user.empty() && ::getpwnam(opt_.user.c_str()) &&
                                ::getpwnam(opt_.user.c_str())->pw_uid != ::geteuid();
        // sshd reads authorized_keys with the target user's privileges.
        if (other_user) ::chmod(dir_.c_str(), 0755);
        regenerate_host_key();
        run_sync({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "machine-test-user", "-f",
                  identity_file().string()});
        write_all(dir_ / "authorized_keys", "");
        if (other_user) ::chmod((dir_ / "authorized_keys").c_str(), 0644);
        authorize(identity_file().string() + ".pub");
        port_ = free_port();
        if (opt_.start) start();
    } catch (...) {
        stop();
        std::error_code ec;
        fs::remove_all(dir_, ec);
        throw;
    }
}

sshd_server::~sshd_server() {
    stop();
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

void sshd_server::write_config() const {
    std::ostringstream c;
    c << "Port " << port_ << "\n"
      << "ListenAddress 127.0.0.1\n"
      << "AddressFamily inet\n"
      << "HostKey " << (dir_ / "host_key").string() << "\n"
      << "PidFile none\n"
      << "AuthorizedKeysFile " << (dir_ / "authorized_keys").string() << "\n"
      << "StrictModes no\n"
      << "UsePAM " << (opt_.use_pam ? "yes" : "no") << "\n"
      << "PermitRootLogin prohibit-password\n"
      << "PubkeyAuthentication yes\n"
      << "PasswordAuthentication no\n"
      << "KbdInteractiveAuthentication no\n"
      // machine reaches the guest agent through `machine-agent relay`, never a stream-local
      // channel: refused here, as an sshd may, so that a test fails if one comes back.
      << "AllowStreamLocalForwarding no\n"
      << "AllowTcpForwarding yes\n"
      << "AllowAgentForwarding yes\n"
      << "PrintMotd no\n"
      << "PrintLastLog no\n"
      << "UseDNS no\n"
      << "MaxStartups 200\n"
      << "MaxSessions 100\n"
      << "LoginGraceTime 30\n"
      << "LogLevel " << opt_.log_level << "\n"
      << "Subsystem sftp internal-sftp\n"
      // bash sources ~/.bashrc when it runs a command for sshd (Debian builds it with
      // SSH_SOURCE_BASHRC) unless it is nested: keep the host account's dotfiles (pyenv,
      // prompts, locks...) out of the commands the tests run.
      << "SetEnv SHLVL=1\n";
    for (const auto& line : opt_.extra_config) c << line << "\n";
    write_all(dir_ / "sshd_config", c.str());
}

void sshd_server::start() {
    if (running()) return;
    // sshd refuses to start without its privilege-separation directory.
    std::error_code ec;
    if (!fs::exists("/run/sshd", ec)) {
        fs::create_directories("/run/sshd", ec);
        ::chmod("/run/sshd", 0755);
    }
    for (int attempt = 0;; ++attempt) {
        write_config();
        const fs::path log_file = dir_ / "sshd.log";
        const auto log_start = fs::exists(log_file, ec) ? fs::file_size(log_file, ec) : 0;
        const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        const int log = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        const std::string config = (dir_ / "sshd_config").string();
        const char* argv[] = {"/usr/sbin/sshd", "-D", "-e", "-f", config.c_str(), nullptr};
        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ == 0) {
            // Only async-signal-safe calls until exec. The server dies with the test process,
            // even when that one crashes and never runs the destructor.
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
            ::setpgid(0, 0);
            ::dup2(devnull, 0);
            ::dup2(log, 1);
            ::dup2(log, 2);
            ::close_range(3, ~0U, 0);
            sigset_t none;
            sigemptyset(&none);
            ::sigprocmask(SIG_SETMASK, &none, nullptr);
            for (int sig : {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGPIPE, SIGCHLD}) ::signal(sig, SIG_DFL);
            ::execv(argv[0], const_cast<char* const*>(argv));
            ::_exit(127);
        }
        const int fork_errno = errno;
        ::close(devnull);
        ::close(log);
        if (pid_ < 0) {
            pid_ = -1;
            throw std::runtime_error(std::string("sshd fixture: fork failed: ") + std::strerror(fork_errno));
        }

        const std::string ready = "Server listening on 127.0.0.1 port " + std::to_string(port_);
        const auto deadline = std::chrono::steady_clock::now() + 15s;
        for (;;) {
            const std::string text = read_all(log_file);
            if (text.find(ready, log_start) != std::string::npos) {
                started_once_ = true;
                return;
            }
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                const std::string tail = text.substr(std::min<std::size_t>(log_start, text.size()));
                // Another process took the port between free_port() and now: try another one,
                // but only before anyone relies on the port.
                if (attempt < 3 && !started_once_ &&
                    tail.find("Address already in use") != std::string::npos) {
                    port_ = free_port();
                    break;
                }
                throw std::runtime_error("sshd did not start: " + tail);
            }
            if (std::chrono::steady_clock::now() > deadline) {
                stop();
                throw std::runtime_error("sshd did not start listening within 15 s: " + text);
            }
            std::this_thread::sleep_for(10ms);
        }
    }
}

void sshd_server::stop() {
    if (pid_ <= 0) return;
    // Freeze the whole tree first (no new connections or forks), then kill it, so no
    // connection process escapes by being re-parented while we look.
    ::kill(pid_, SIGSTOP);
    std::set<pid_t> all;
    for (int round = 0; round < 50; ++round) {
        bool grew = false;
        for (pid_t p : descendants(pid_)) {
            if (all.insert(p).second) {
                ::kill(p, SIGSTOP);
                grew = true;
            }
        }
        if (!grew) break;
    }
    for (pid_t p : all) ::kill(p, SIGKILL);
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
}

void sshd_server::restart() {
    stop();
    start();
}

void sshd_server::regenerate_host_key() {
    std::error_code ec;
    fs::remove(dir_ / "host_key", ec);
    fs::remove(dir_ / "host_key.pub", ec);
    run_sync({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "machine-test-host", "-f",
              (dir_ / "host_key").string()});
}

void sshd_server::restart_with_new_host_key() {
    stop();
    regenerate_host_key();
    start();
}

std::string sshd_server::host_fingerprint() const {
    // "256 SHA256:... comment (ED25519)"
    std::istringstream in(run_sync({"ssh-keygen", "-lf", host_public_key().string()}));
    std::string bits, fingerprint;
    in >> bits >> fingerprint;
    return fingerprint;
}

ssh::endpoint sshd_server::endpoint() const {
    ssh::endpoint ep;
    ep.host = "127.0.0.1";
    ep.port = port_;
    ep.user = user_;
    ep.identity_file = identity_file();
    return ep;
}

ssh::host_key_pin sshd_server::pin(const std::string& vm_name, bool record_if_absent) const {
    ssh::host_key_pin p;
    p.file = dir_ / "pins" / (vm_name + ".host_key");
    p.vm_name = vm_name;
    p.record_if_absent = record_if_absent;
    return p;
}

fs::path sshd_server::make_key(const std::string& name) const {
    const fs::path key = dir_ / name;
    run_sync({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key.string()});
    return key;
}

void sshd_server::authorize(const fs::path& public_key) const {
    write_all(dir_ / "authorized_keys", read_all(public_key), true);
}

std::string sshd_server::log() const { return read_all(dir_ / "sshd.log"); }

} // namespace machine::test
