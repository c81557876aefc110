// machine/platform.hpp on Linux: pipe2, SOCK_CLOEXEC, pidfds, posix_spawn with glibc's
// closefrom, /proc and prctl. (platform_posix.cpp is the same seam without them.)
#include "machine/platform.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "replaced_executable.hpp"

namespace machine::platform {

namespace {

class spawn_attributes {
public:
    spawn_attributes() {
        posix_spawn_file_actions_init(&actions);
        posix_spawnattr_init(&attr);
    }
    ~spawn_attributes() {
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
    }
    spawn_attributes(const spawn_attributes&) = delete;
    spawn_attributes& operator=(const spawn_attributes&) = delete;
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
};

} // namespace

const char* name() { return "linux"; }

bool open_pipe(int fds[2]) { return ::pipe2(fds, O_CLOEXEC) == 0; }

int open_socket(int domain, int type, bool nonblocking) {
    return ::socket(domain, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
}

pid_t spawn(const spawn_request& r, int& error) {
    error = 0;
    if (r.argv.empty()) {
        error = EINVAL;
        return -1;
    }
    spawn_attributes sa;
    for (int target = 0; target < 3; ++target) {
        const int from = r.stdio[static_cast<std::size_t>(target)];
        if (from == stdio_null)
            posix_spawn_file_actions_addopen(&sa.actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0);
        else if (from >= 0)
            posix_spawn_file_actions_adddup2(&sa.actions, from, target);
    }
    // Only fds 0-2 reach the child, whatever this process has open (Asio's sockets and
    // pipes are not CLOEXEC).
    posix_spawn_file_actions_addclosefrom_np(&sa.actions, 3);
    if (r.cwd) posix_spawn_file_actions_addchdir_np(&sa.actions, r.cwd->c_str());

    // Start the child with default dispositions and an empty mask, whatever this process
    // ignores or blocks.
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int s : {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGPIPE, SIGCHLD, SIGTSTP, SIGTTIN, SIGTTOU})
        sigaddset(&defaults, s);
    sigset_t empty;
    sigemptyset(&empty);
    posix_spawnattr_setsigdefault(&sa.attr, &defaults);
    posix_spawnattr_setsigmask(&sa.attr, &empty);
    short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    if (r.new_process_group) {
        flags |= POSIX_SPAWN_SETPGROUP;
        posix_spawnattr_setpgroup(&sa.attr, 0);
    }
    posix_spawnattr_setflags(&sa.attr, flags);

    std::vector<char*> argv = c_string_array(r.argv);
    std::vector<char*> envp = c_string_array(r.env);

    pid_t pid = -1;
    const int rc = ::posix_spawnp(&pid, argv[0], &sa.actions, &sa.attr, argv.data(), envp.data());
    if (rc != 0) {
        error = rc;
        return -1;
    }
    return pid;
}

int open_exit_watch(pid_t pid) {
    const long pidfd = ::syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) return -1;  // Linux < 5.3
    ::fcntl(static_cast<int>(pidfd), F_SETFD, FD_CLOEXEC);
    return static_cast<int>(pidfd);
}

bool signal_if(pid_t pid, int sig, const std::function<bool()>& still_it) {
    if (pid <= 0) return false;
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) return false;
    const bool send = still_it();
    if (send) ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0);
    ::close(pidfd);
    return send;
}

pid_t peer_pid(int socket_fd) {
    ucred cred{};
    socklen_t len = sizeof cred;
    return ::getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0 ? cred.pid : 0;
}

std::string process_arguments(pid_t pid) {
    if (pid <= 0) return {};
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::filesystem::path self_executable() {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink("/proc/self/exe", ec);
    struct stat running{};
    if (ec || ::stat("/proc/self/exe", &running) != 0) return target;
    return detail::replaced_executable(target, running);
}

long long available_memory() {
    long long available = 0;
    std::ifstream meminfo("/proc/meminfo");
    for (std::string key; meminfo >> key;) {
        long long kib = 0;
        meminfo >> kib;
        if (key == "MemAvailable:") available = kib * 1024;
        meminfo.ignore(64, '\n');
    }
    return available > 0 ? available : 0;
}

std::string forbid_attach() {
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return std::string("prctl(PR_SET_DUMPABLE, 0): ") + std::strerror(errno);
    return {};
}

void wipe_memory(void* p, std::size_t n) noexcept { ::explicit_bzero(p, n); }

} // namespace machine::platform
