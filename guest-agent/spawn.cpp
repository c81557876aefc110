#include "spawn.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <utility>


#include "files.hpp"
#include "machine/platform.hpp"

extern char** environ;

namespace machine::agent {

void reset_signals_for_exec() {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; ++s)
        if (s != SIGKILL && s != SIGSTOP) ::sigaction(s, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

namespace {

enum class step : int { stdio, session, groups, gid, uid, chdir, exec };

const char* step_name(step s) {
    switch (s) {
    case step::stdio: return "set up stdio";
    case step::session: return "setsid";
    case step::groups: return "setgroups";
    case step::gid: return "setgid";
    case step::uid: return "setuid";
    case step::chdir: return "chdir";
    case step::exec: return "exec";
    }
    return "start";
}

struct failure_report {
    int what;
    int err;
};

struct fd_closer {
    int& fd;
    ~fd_closer() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
};

void make_pipe(int fds[2]) {
    if (::pipe2(fds, O_CLOEXEC) != 0) throw spawn_failure("pipe: " + errno_text(errno));
}

// Runs in the child between fork and exec: only async-signal-safe calls, no allocation.
[[noreturn]] void child_main(int report_fd, int in_fd, int out_fd, int err_fd, const spawn_spec& spec,
                             char* const* argv, char** envp, const gid_t* groups, std::size_t ngroups) {
    auto fail = [&](step s) {
        const failure_report r{static_cast<int>(s), errno};
        [[maybe_unused]] auto n = ::write(report_fd, &r, sizeof r);
        ::_exit(127);
    };

    // The parent blocked all signals around fork.
    reset_signals_for_exec();

    // Move the three sources out of the way first: any of them may already be 0, 1 or 2.
    const int src[3] = {in_fd, out_fd, err_fd};
    int high[3];
    for (int i = 0; i < 3; ++i) {
        high[i] = ::fcntl(src[i], F_DUPFD_CLOEXEC, 10);
        if (high[i] < 0) fail(step::stdio);
    }
    for (int i = 0; i < 3; ++i)
        if (::dup2(high[i], i) < 0) fail(step::stdio);  // dup2 clears CLOEXEC on 0-2
    // Everything else closes at exec (the report pipe included, which is how the parent
    // learns that exec succeeded).
    if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        for (int fd = 3; fd < 65536; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }

    if (::setsid() < 0) fail(step::session);
    if (spec.as_user && ::geteuid() == 0) {
        if (::setgroups(ngroups, groups) != 0) fail(step::groups);
        if (::setgid(spec.as_user->gid) != 0) fail(step::gid);
        if (::setuid(spec.as_user->uid) != 0) fail(step::uid);
    }
    ::umask(022);
    if (::chdir(spec.cwd.c_str()) != 0) fail(step::chdir);
    environ = envp;
    ::execvp(argv[0], argv);
    fail(step::exec);
    ::_exit(127);
}

} // namespace

child_process spawn(const spawn_spec& spec) {
    if (spec.argv.empty()) throw spawn_failure("empty argv");
    if (spec.as_user && ::geteuid() != 0 && spec.as_user->uid != ::geteuid()) {
        throw spawn_failure("the agent does not run as root, so it can only run commands as uid " +
                            std::to_string(::geteuid()));
    }

    // Everything the child needs is built before fork: the child must not allocate.
    std::vector<char*> argv = platform::c_string_array(spec.argv);
    std::vector<char*> envp = platform::c_string_array(spec.env);
    std::vector<gid_t> groups;
    if (spec.as_user) groups = spec.as_user->groups;

    int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, report[2] = {-1, -1};
    int null_in = -1, null_err = -1;
    fd_closer c1{in_pipe[0]}, c2{in_pipe[1]}, c3{out_pipe[0]}, c4{out_pipe[1]}, c5{err_pipe[0]},
        c6{err_pipe[1]}, c7{report[0]}, c8{report[1]}, c9{null_in}, c10{null_err};
    if (spec.pipe_stdin) make_pipe(in_pipe);
    else if ((null_in = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
        throw spawn_failure("open /dev/null: " + errno_text(errno));
    make_pipe(out_pipe);
    if (spec.pipe_stderr) make_pipe(err_pipe);
    else if ((null_err = ::open("/dev/null", O_WRONLY | O_CLOEXEC)) < 0)
        throw spawn_failure("open /dev/null: " + errno_text(errno));
    make_pipe(report);

    // No signal handler may run in the child before exec (Asio's would write to our own
    // signal pipe), so fork with everything blocked.
    sigset_t all, old;
    sigfillset(&all);
    ::sigprocmask(SIG_SETMASK, &all, &old);
    const pid_t pid = ::fork();
    if (pid == 0) {
        child_main(report[1], spec.pipe_stdin ? in_pipe[0] : null_in, out_pipe[1],
                   spec.pipe_stderr ? err_pipe[1] : null_err, spec, argv.data(), envp.data(),
                   groups.data(), groups.size());
    }
    const int fork_errno = errno;
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) throw spawn_failure("fork: " + errno_text(fork_errno));

    // Drop the child's ends, then wait for exec: EOF on the report pipe means it happened.
    ::close(report[1]);
    report[1] = -1;
    failure_report r{};
    std::size_t got = 0;
    while (got < sizeof r) {
        const ssize_t n = ::read(report[0], reinterpret_cast<char*>(&r) + got, sizeof r - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    if (got == sizeof r) {
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        std::string what = step_name(static_cast<step>(r.what));
        if (static_cast<step>(r.what) == step::exec) what += " '" + spec.argv[0] + "'";
        else if (static_cast<step>(r.what) == step::chdir) what += " '" + spec.cwd + "'";
        throw spawn_failure(what + ": " + errno_text(r.err));
    }

    child_process child;
    child.pid = pid;
    const long pidfd = ::syscall(SYS_pidfd_open, pid, 0);
    if (pidfd >= 0) {
        child.pidfd = static_cast<int>(pidfd);
        ::fcntl(child.pidfd, F_SETFD, FD_CLOEXEC);
    }
    child.stdin_fd = std::exchange(in_pipe[1], -1);
    child.stdout_fd = std::exchange(out_pipe[0], -1);
    child.stderr_fd = std::exchange(err_pipe[0], -1);
    return child;
}

std::vector<std::pair<std::string, std::string>> base_environment(const user_info& user,
                                                                  const std::string& runtime_dir_root) {
    std::vector<std::pair<std::string, std::string>> env;
    env.emplace_back("HOME", user.home.empty() ? "/" : user.home);
    env.emplace_back("USER", user.name);
    env.emplace_back("LOGNAME", user.name);
    env.emplace_back("SHELL", user.shell.empty() ? "/bin/sh" : user.shell);
    // Debian's defaults (/etc/login.defs ENV_SUPATH and ENV_PATH).
    env.emplace_back("PATH", user.uid == 0 ? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                                           : "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games");
    env.emplace_back("LANG", "C.UTF-8");
    const std::string runtime = runtime_dir_root + "/" + std::to_string(user.uid);
    struct stat st {};
    if (::stat(runtime.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) env.emplace_back("XDG_RUNTIME_DIR", runtime);
    return env;
}

std::vector<std::string> child_environment(const user_info& user, const std::string& runtime_dir_root,
                                           const std::vector<std::pair<std::string, std::string>>& extra) {
    auto base = base_environment(user, runtime_dir_root);
    for (const auto& [k, v] : extra) {
        bool replaced = false;
        for (auto& [bk, bv] : base) {
            if (bk == k) {
                bv = v;
                replaced = true;
            }
        }
        if (!replaced) base.emplace_back(k, v);
    }
    std::vector<std::string> env;
    env.reserve(base.size());
    for (const auto& [k, v] : base) env.push_back(k + "=" + v);
    return env;
}

std::string home_or_root(const user_info& user) {
    struct stat sb {};
    return (!user.home.empty() && ::stat(user.home.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode)) ? user.home : "/";
}

} // namespace machine::agent
