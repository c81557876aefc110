// machine/platform.hpp with POSIX alone (macOS, the BSDs; on Linux with -DMACHINE_POSIX_ONLY=ON,
// which is how CI tests it): pipe and fcntl, vfork and exec, a SIGCHLD handler for child exits.
// What POSIX has no call for is read from macOS's sysctl, else from /proc when there is one,
// else reported as unknown.
#include "machine/platform.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#ifdef __APPLE__
#include <mach-o/dyld.h>
#include <sys/ptrace.h>
#include <sys/sysctl.h>
#endif

#include "replaced_executable.hpp"

extern char** environ;

namespace machine::platform {

namespace {

bool set_fd_flags(int fd, bool nonblocking) {
    if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) return false;
    if (nonblocking) {
        const int fl = ::fcntl(fd, F_GETFL);
        if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) return false;
    }
    return true;
}

// --- child exits: a SIGCHLD handler closes the write end of each waiter's pipe -----------------
//
// open_exit_watch registers (pid, write end) in a fixed table. On every SIGCHLD the handler
// asks waitid(WNOHANG | WNOWAIT) about each registered pid (async-signal-safe, and it leaves the
// child a zombie: its owner reaps it) and closes the write end of each that has exited or is no
// longer a child of ours: its read end then polls readable (EOF), as a pidfd does. Whoever
// takes a slot's write end (exchange to -1) closes it and frees the slot: the handler, or
// open_exit_watch itself when the child had already exited before the slot was filled.

struct exit_slot {
    std::atomic<pid_t> pid{0};      // 0: free
    std::atomic<int> write_fd{-1};  // -1: not armed (yet, or any more)
};
constexpr std::size_t exit_slots = 512;
exit_slot g_exit_slots[exit_slots];
struct sigaction g_previous_sigchld;

bool child_gone(pid_t pid) {
    siginfo_t info;
    std::memset(&info, 0, sizeof info);
    for (;;) {
        const int r = ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
        if (r == 0) return info.si_pid == pid;
        if (errno != EINTR) return true;  // ECHILD: reaped already, or never ours
    }
}

void disarm(exit_slot& slot) {
    const int fd = slot.write_fd.exchange(-1);
    if (fd >= 0) {
        ::close(fd);
        slot.pid.store(0);
    }
}

void on_sigchld(int sig, siginfo_t* info, void* context) {
    const int saved = errno;
    for (auto& slot : g_exit_slots) {
        const pid_t pid = slot.pid.load();
        if (pid > 0 && slot.write_fd.load() >= 0 && child_gone(pid)) disarm(slot);
    }
    // Whatever handled SIGCHLD before us still does.
    if (g_previous_sigchld.sa_flags & SA_SIGINFO) {
        if (g_previous_sigchld.sa_sigaction) g_previous_sigchld.sa_sigaction(sig, info, context);
    } else if (g_previous_sigchld.sa_handler != SIG_DFL && g_previous_sigchld.sa_handler != SIG_IGN) {
        g_previous_sigchld.sa_handler(sig);
    }
    errno = saved;
}

bool install_sigchld_handler() {
    static const bool installed = [] {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigchld;
        sigemptyset(&sa.sa_mask);
        // SA_RESTART: a child's exit does not interrupt the reads and writes of the rest of
        // machine; SA_NOCLDSTOP: stopped children are not exits.
        sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NOCLDSTOP;
        return ::sigaction(SIGCHLD, &sa, &g_previous_sigchld) == 0;
    }();
    return installed;
}

// --- spawning: fork, then only async-signal-safe calls until exec -----------------------------

// The highest descriptor open now (the child closes 3 up to it); its soft limit when /dev/fd
// cannot be listed. machine's host process runs one thread, so nothing opens a descriptor
// between this and fork.
int highest_open_fd() {
    int highest = -1;
    if (DIR* d = ::opendir("/dev/fd")) {
        while (const dirent* e = ::readdir(d)) {
            char* end = nullptr;
            const long fd = std::strtol(e->d_name, &end, 10);
            if (end != e->d_name && *end == '\0' && fd > highest) highest = static_cast<int>(fd);
        }
        ::closedir(d);
        if (highest >= 0) return highest;
    }
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < (1u << 20))
        return static_cast<int>(lim.rlim_cur) - 1;
    return 1 << 16;
}

// Where execvp would look for `program`, in order (the parent's PATH, as posix_spawnp does).
std::vector<std::string> exec_candidates(const std::string& program) {
    if (program.find('/') != std::string::npos) return {program};
    const char* env_path = std::getenv("PATH");
    const std::string path = env_path && *env_path ? env_path : "/usr/local/bin:/usr/bin:/bin";
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= path.size()) {
        auto end = path.find(':', start);
        if (end == std::string::npos) end = path.size();
        std::string dir = path.substr(start, end - start);
        out.push_back((dir.empty() ? std::string(".") : dir) + "/" + program);
        start = end + 1;
    }
    return out;
}

[[noreturn]] void child_fail(int report_fd, int err) {
    while (::write(report_fd, &err, sizeof err) < 0 && errno == EINTR) {
    }
    ::_exit(127);
}

// What the child of spawn() does between vfork and exec: only async-signal-safe calls, nothing
// written to memory the parent uses (the two share it until the exec).
struct child_plan {
    const std::vector<std::string>* candidates;
    char* const* argv;
    char* const* envp;
    const char* cwd;
    std::array<int, 3> stdio;
    bool new_group;
    int last_fd;
    int report_fd;
};

[[noreturn]] void run_child(const child_plan& p) {
    if (p.new_group) ::setpgid(0, 0);
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int s : {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGPIPE, SIGCHLD, SIGTSTP, SIGTTIN, SIGTTOU})
        ::sigaction(s, &dfl, nullptr);
    for (int target = 0; target < 3; ++target) {
        const int from = p.stdio[static_cast<std::size_t>(target)];
        if (from == stdio_null) {
            const int null_fd = ::open("/dev/null", target == 0 ? O_RDONLY : O_WRONLY);
            if (null_fd < 0) child_fail(p.report_fd, errno);
            if (null_fd != target) {
                if (::dup2(null_fd, target) < 0) child_fail(p.report_fd, errno);
                ::close(null_fd);
            }
        } else if (from == target) {
            ::fcntl(target, F_SETFD, 0);  // dup2 onto itself would keep FD_CLOEXEC
        } else if (from >= 0) {
            if (::dup2(from, target) < 0) child_fail(p.report_fd, errno);
        }
    }
    // Only 0-2 stay open (and the report pipe until exec).
    for (int fd = 3; fd <= p.last_fd; ++fd)
        if (fd != p.report_fd) ::close(fd);
    if (p.cwd && ::chdir(p.cwd) != 0) child_fail(p.report_fd, errno);
    sigset_t empty;
    sigemptyset(&empty);
    ::sigprocmask(SIG_SETMASK, &empty, nullptr);
    // execvp's rules: go on past a candidate that is missing or not permitted, report the
    // permission problem if nothing runs.
    int failure = ENOENT;
    for (const auto& c : *p.candidates) {
        ::execve(c.c_str(), p.argv, p.envp);
        if (errno == EACCES) failure = EACCES;
        else if (errno != ENOENT && errno != ENOTDIR) {
            failure = errno;
            break;
        }
    }
    child_fail(p.report_fd, failure);
}

} // namespace

const char* name() { return "posix"; }

bool open_pipe(int fds[2]) {
    if (::pipe(fds) != 0) return false;
    if (set_fd_flags(fds[0], false) && set_fd_flags(fds[1], false)) return true;
    const int saved = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    errno = saved;
    return false;
}

int open_socket(int domain, int type, bool nonblocking) {
    const int fd = ::socket(domain, type, 0);
    if (fd < 0) return -1;
    if (set_fd_flags(fd, nonblocking)) return fd;
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
}

pid_t spawn(const spawn_request& r, int& error) {
    error = 0;
    if (r.argv.empty()) {
        error = EINVAL;
        return -1;
    }
    // Everything the child uses is made before vfork: it may only make async-signal-safe calls.
    const std::vector<std::string> candidates = exec_candidates(r.argv[0]);
    std::vector<char*> argv = c_string_array(r.argv);
    std::vector<char*> envp = c_string_array(r.env);

    // The child reports a failed exec here (its errno); a successful exec closes it (CLOEXEC).
    int report[2];
    if (!open_pipe(report)) {
        error = errno;
        return -1;
    }
    const child_plan plan{&candidates, argv.data(), envp.data(), r.cwd ? r.cwd->c_str() : nullptr, r.stdio,
                          r.new_process_group, highest_open_fd(), report[1]};

    // No handler of ours may run in the child before its dispositions are reset.
    sigset_t all, previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous);
    // vfork: the parent waits (suspended) until the child has exec'd or failed, as posix_spawn does;
    // under load a fork's child can wait long for a CPU while the parent blocks on `report`.
    const pid_t pid = ::vfork();
    if (pid == 0) run_child(plan);
    const int fork_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    ::close(report[1]);
    if (pid < 0) {
        ::close(report[0]);
        error = fork_errno;
        return -1;
    }
    int child_errno = 0;
    ssize_t n;
    while ((n = ::read(report[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR) {
    }
    ::close(report[0]);
    if (n == static_cast<ssize_t>(sizeof child_errno)) {
        // It never ran the program: reap it here, the caller has no child.
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        error = child_errno;
        return -1;
    }
    return pid;
}

int open_exit_watch(pid_t pid) {
    if (pid <= 0 || !install_sigchld_handler()) return -1;
    exit_slot* slot = nullptr;
    for (auto& s : g_exit_slots) {
        pid_t expected = 0;
        if (s.pid.compare_exchange_strong(expected, pid)) {
            slot = &s;
            break;
        }
    }
    if (!slot) return -1;  // full: the caller polls
    int fds[2];
    if (!open_pipe(fds)) {
        slot->pid.store(0);
        return -1;
    }
    slot->write_fd.store(fds[1]);
    // It may have exited before the slot was armed, and its SIGCHLD gone by.
    if (child_gone(pid)) disarm(*slot);
    return fds[0];
}

bool signal_if(pid_t pid, int sig, const std::function<bool()>& still_it) {
    if (pid <= 0 || ::kill(pid, 0) != 0) return false;
    if (!still_it()) return false;
    return ::kill(pid, sig) == 0;
}

pid_t peer_pid(int socket_fd) {
#if defined(__APPLE__) && defined(LOCAL_PEERPID)
    pid_t pid = 0;
    socklen_t len = sizeof pid;
    if (::getsockopt(socket_fd, SOL_LOCAL, LOCAL_PEERPID, &pid, &len) == 0 && pid > 0) return pid;
#elif defined(SO_PEERCRED)
    // Linux and the BSDs that copied it (the POSIX build on Linux, where CI runs it).
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0) return cred.pid;
#else
    (void)socket_fd;
#endif
    return 0;
}

std::string process_arguments(pid_t pid) {
    if (pid <= 0) return {};
#ifdef __APPLE__
    // KERN_PROCARGS2: argc, the executable's path, NUL padding, then argv, each NUL-ended.
    int mib[3] = {CTL_KERN, KERN_PROCARGS2, static_cast<int>(pid)};
    std::string buf(1 << 16, '\0');
    size_t size = buf.size();
    if (::sysctl(mib, 3, buf.data(), &size, nullptr, 0) != 0 || size < sizeof(int)) return {};
    int argc = 0;
    std::memcpy(&argc, buf.data(), sizeof argc);
    std::size_t at = sizeof argc;
    at = buf.find('\0', at);  // end of the executable's path
    if (at == std::string::npos || at >= size) return {};
    while (at < size && buf[at] == '\0') ++at;
    std::string out;
    for (int i = 0; i < argc && at < size; ++i) {
        const auto end = buf.find('\0', at);
        if (end == std::string::npos || end >= size) break;
        out.append(buf, at, end - at + 1);
        at = end + 1;
    }
    return out;
#else
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
#endif
}

std::filesystem::path self_executable() {
    std::error_code ec;
#ifdef __APPLE__
    uint32_t size = 0;
    ::_NSGetExecutablePath(nullptr, &size);
    std::string buf(size, '\0');
    if (::_NSGetExecutablePath(buf.data(), &size) != 0) return {};
    buf.resize(std::strlen(buf.c_str()));
    auto p = std::filesystem::canonical(buf, ec);
    return ec ? std::filesystem::path(buf) : p;
#else
    const auto target = std::filesystem::read_symlink("/proc/self/exe", ec);
    struct stat running{};
    if (ec || ::stat("/proc/self/exe", &running) != 0) return target;
    return detail::replaced_executable(target, running);
#endif
}

long long available_memory() {
#ifdef __APPLE__
    // macOS keeps most memory in caches it gives back on demand: half of it is the estimate.
    int64_t total = 0;
    size_t len = sizeof total;
    if (::sysctlbyname("hw.memsize", &total, &len, nullptr, 0) == 0 && total > 0) return total / 2;
    return 0;
#elif defined(_SC_AVPHYS_PAGES)
    const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<long long>(pages) * page : 0;
#else
    return 0;
#endif
}

std::string forbid_attach() {
#ifdef __APPLE__
    if (::ptrace(PT_DENY_ATTACH, 0, nullptr, 0) != 0) return std::string("ptrace(PT_DENY_ATTACH): ") + std::strerror(errno);
#endif
    return {};
}

void wipe_memory(void* p, std::size_t n) noexcept {
    // Through a volatile pointer: a plain fill of a dying buffer may be optimised away.
    volatile unsigned char* v = static_cast<unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) v[i] = 0;
}

} // namespace machine::platform
