// The platform seam (machine/platform.hpp), against real children. The same cases run in both
// builds: build/ has the Linux implementation, build-posix/ (-DMACHINE_POSIX_ONLY=ON) the POSIX
// one (fork and exec, a SIGCHLD handler); MACHINE_EXPECTED_PLATFORM says which this binary has.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../../src/core/replaced_executable.hpp"
#include "machine/platform.hpp"
#include "test_support.hpp"

using namespace machine;
using namespace std::chrono_literals;

namespace {

// The child `argv` with stdin on a pipe (returned in `stdin_fd`) and stdout/stderr to /dev/null.
pid_t start(std::vector<std::string> argv, int* stdin_fd = nullptr) {
    platform::spawn_request r;
    r.argv = std::move(argv);
    r.env = {"PATH=/usr/bin:/bin"};
    r.stdio = {platform::stdio_null, platform::stdio_null, platform::stdio_null};
    int p[2] = {-1, -1};
    if (stdin_fd) {
        BOOST_REQUIRE(platform::open_pipe(p));
        r.stdio[0] = p[0];
    }
    int error = 0;
    const pid_t pid = platform::spawn(r, error);
    BOOST_REQUIRE_MESSAGE(pid > 0, "spawn failed: " << std::strerror(error));
    if (stdin_fd) {
        ::close(p[0]);
        *stdin_fd = p[1];
    }
    return pid;
}

bool readable_within(int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    for (;;) {
        const int rc = ::poll(&p, 1, ms);
        if (rc >= 0) return rc > 0;
        if (errno != EINTR) return false;  // SIGCHLD (POSIX build) interrupts poll
    }
}

// Whether `pid` has exited and is not reaped yet (a zombie of ours).
bool is_zombie(pid_t pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

int reap(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

bool cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }
bool nonblocking(int fd) { return (::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0; }

} // namespace

BOOST_AUTO_TEST_SUITE(platform_seam)

BOOST_AUTO_TEST_CASE(the_build_has_the_implementation_it_asked_for) {
    BOOST_TEST(std::string(platform::name()) == MACHINE_EXPECTED_PLATFORM);
}

BOOST_AUTO_TEST_CASE(pipes_and_sockets_are_close_on_exec) {
    int p[2];
    BOOST_REQUIRE(platform::open_pipe(p));
    BOOST_TEST(cloexec(p[0]));
    BOOST_TEST(cloexec(p[1]));
    BOOST_TEST(!nonblocking(p[0]));
    ::close(p[0]);
    ::close(p[1]);
    const int blocking = platform::open_socket(AF_UNIX, SOCK_STREAM, false);
    const int nb = platform::open_socket(AF_UNIX, SOCK_STREAM, true);
    BOOST_REQUIRE(blocking >= 0);
    BOOST_REQUIRE(nb >= 0);
    BOOST_TEST(cloexec(blocking));
    BOOST_TEST(!nonblocking(blocking));
    BOOST_TEST(cloexec(nb));
    BOOST_TEST(nonblocking(nb));
    ::close(blocking);
    ::close(nb);
}

BOOST_AUTO_TEST_CASE(the_child_gets_descriptors_0_to_2_only) {
    // Open without CLOEXEC (as Asio 1.22 opens its pipes and sockets): still not inherited.
    int leaky[2];
    BOOST_REQUIRE(::pipe(leaky) == 0);
    int out[2];
    BOOST_REQUIRE(platform::open_pipe(out));
    platform::spawn_request r;
    r.argv = {"/bin/sh", "-c", "ls /proc/$$/fd"};
    r.env = {"PATH=/usr/bin:/bin"};
    r.stdio = {platform::stdio_null, out[1], platform::stdio_null};
    int error = 0;
    const pid_t pid = platform::spawn(r, error);
    BOOST_REQUIRE(pid > 0);
    ::close(out[1]);
    std::string listing;
    char buf[256];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) != 0;) {
        if (n > 0) listing.append(buf, static_cast<std::size_t>(n));
        else if (errno != EINTR) break;
    }
    reap(pid);
    ::close(out[0]);
    ::close(leaky[0]);
    ::close(leaky[1]);
    BOOST_TEST(listing == "0\n1\n2\n");
}

BOOST_AUTO_TEST_CASE(an_exit_watch_turns_readable_when_the_child_exits_and_leaves_it_a_zombie) {
    int in = -1;
    const pid_t pid = start({"/bin/sh", "-c", "read line"}, &in);
    const int watch = platform::open_exit_watch(pid);
    BOOST_REQUIRE(watch >= 0);
    BOOST_TEST(cloexec(watch));
    BOOST_TEST(!readable_within(watch, 300));  // still waiting for its line
    BOOST_REQUIRE(::write(in, "go\n", 3) == 3);
    BOOST_TEST(readable_within(watch, 10'000));
    BOOST_TEST(is_zombie(pid));  // not reaped by the watch: its pid stays ours to signal
    const int status = reap(pid);
    BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    ::close(watch);
    ::close(in);
}

BOOST_AUTO_TEST_CASE(an_exit_watch_on_a_child_that_has_already_exited_is_readable_at_once) {
    const pid_t pid = start({"/bin/sh", "-c", "exit 3"});
    for (int i = 0; i < 500 && !is_zombie(pid); ++i) std::this_thread::sleep_for(10ms);
    BOOST_REQUIRE(is_zombie(pid));  // its SIGCHLD has come and gone
    const int watch = platform::open_exit_watch(pid);
    BOOST_REQUIRE(watch >= 0);
    BOOST_TEST(readable_within(watch, 2000));
    const int status = reap(pid);
    BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 3));
    ::close(watch);
}

BOOST_AUTO_TEST_CASE(each_of_many_children_wakes_its_own_watch_only) {
    constexpr int n = 24;
    std::vector<int> in(n, -1), watch(n, -1);
    std::vector<pid_t> pid(n);
    for (int i = 0; i < n; ++i) {
        pid[i] = start({"/bin/sh", "-c", "read line"}, &in[i]);
        watch[i] = platform::open_exit_watch(pid[i]);
        BOOST_REQUIRE(watch[i] >= 0);
    }
    // The odd ones go first: the even ones' watches stay quiet meanwhile.
    for (int i = 1; i < n; i += 2) BOOST_REQUIRE(::write(in[i], "go\n", 3) == 3);
    for (int i = 1; i < n; i += 2) BOOST_TEST(readable_within(watch[i], 10'000));
    for (int i = 0; i < n; i += 2) BOOST_TEST(!readable_within(watch[i], 0));
    for (int i = 0; i < n; i += 2) BOOST_REQUIRE(::write(in[i], "go\n", 3) == 3);
    for (int i = 0; i < n; i += 2) BOOST_TEST(readable_within(watch[i], 10'000));
    for (int i = 0; i < n; ++i) {
        reap(pid[i]);
        ::close(watch[i]);
        ::close(in[i]);
    }
}

BOOST_AUTO_TEST_CASE(a_program_that_cannot_run_is_an_errno_and_leaves_no_child) {
    machine::test::temp_dir dir;
    const auto not_executable = dir.path / "script";
    std::ofstream(not_executable) << "#!/bin/sh\n";
    ::chmod(not_executable.c_str(), 0644);
    for (const auto& [program, expected] : {std::pair{std::string("/nonexistent/limactl"), ENOENT},
                                            std::pair{std::string("machine-no-such-program-in-path"), ENOENT},
                                            std::pair{not_executable.string(), EACCES}}) {
        platform::spawn_request r;
        r.argv = {program};
        int error = 0;
        BOOST_TEST(platform::spawn(r, error) == -1);
        BOOST_TEST(error == expected, program << ": " << std::strerror(error));
        int status = 0;
        errno = 0;
        BOOST_TEST(::waitpid(-1, &status, WNOHANG) == -1);  // nothing left to reap
        BOOST_TEST(errno == ECHILD);
    }
}

BOOST_AUTO_TEST_CASE(the_child_leads_its_group_with_default_signals_and_nothing_blocked) {
    // This process ignores SIGINT and blocks SIGTERM; the child must do neither.
    struct sigaction ignore {}, old_int{};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGINT, &ignore, &old_int);
    sigset_t term, old_mask;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    ::pthread_sigmask(SIG_BLOCK, &term, &old_mask);
    int in = -1;
    const pid_t pid = start({"/bin/sh", "-c", "read line"}, &in);
    ::sigaction(SIGINT, &old_int, nullptr);
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    BOOST_TEST(::getpgid(pid) == pid);
    ::kill(pid, SIGINT);  // default disposition: it dies of it
    const int status = reap(pid);
    BOOST_TEST((WIFSIGNALED(status) && WTERMSIG(status) == SIGINT));
    ::close(in);
}

BOOST_AUTO_TEST_CASE(signal_if_sends_only_when_the_process_is_still_the_one_meant) {
    int in = -1;
    const pid_t pid = start({"/bin/sh", "-c", "read line"}, &in);
    BOOST_TEST(!platform::signal_if(pid, SIGTERM, [] { return false; }));
    BOOST_TEST(!is_zombie(pid));
    std::this_thread::sleep_for(100ms);
    BOOST_TEST(!is_zombie(pid));
    BOOST_TEST(platform::signal_if(pid, SIGTERM, [] { return true; }));
    const int status = reap(pid);
    BOOST_TEST((WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM));
    BOOST_TEST(!platform::signal_if(pid, SIGTERM, [] { return true; }));  // gone
    ::close(in);
}

BOOST_AUTO_TEST_CASE(a_processes_arguments_and_this_executable) {
    int in = -1;
    const pid_t pid = start({"/bin/sh", "-c", "read line", "named"}, &in);
    // The kernel lets the parent go during the exec, a moment before the new arguments are in place.
    std::string args;
    for (int i = 0; i < 500 && (args = platform::process_arguments(pid)).empty(); ++i) std::this_thread::sleep_for(10ms);
    BOOST_TEST(args == std::string("/bin/sh\0-c\0read line\0named\0", 27));
    BOOST_REQUIRE(::write(in, "go\n", 3) == 3);
    reap(pid);
    ::close(in);
    const auto self = platform::self_executable();
    BOOST_TEST(self.is_absolute());
    BOOST_TEST(self.filename() == "machine_tests");
    BOOST_TEST(platform::available_memory() > 0);
}

BOOST_AUTO_TEST_CASE(the_peer_of_a_unix_socket) {
    int sv[2];
    BOOST_REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    // Both builds say who here: Linux, and the POSIX one through SO_PEERCRED where the system has
    // it (macOS's LOCAL_PEERPID is not built here).
    BOOST_TEST(platform::peer_pid(sv[0]) == ::getpid());
    ::close(sv[0]);
    ::close(sv[1]);
}

BOOST_AUTO_TEST_CASE(wipe_memory_zeroes_every_byte) {
    std::string s(100, 'x');
    platform::wipe_memory(s.data(), s.size());
    BOOST_TEST(s == std::string(100, '\0'));
}

BOOST_AUTO_TEST_SUITE_END()

// What a process's /proc/PID/exe reads as, and its stat (the running binary).
namespace {
struct exe_link {
    std::filesystem::path target;
    struct stat running{};
};

exe_link exe_of(pid_t pid) {
    const std::string link = "/proc/" + std::to_string(pid) + "/exe";
    exe_link e;
    e.target = std::filesystem::read_symlink(link);
    BOOST_REQUIRE(::stat(link.c_str(), &e.running) == 0);
    return e;
}

// Waits (at most 2 s) until `pid` runs `path`: its exec is done.
void wait_for_exec(pid_t pid, const std::filesystem::path& path) {
    for (int i = 0; i < 200 && exe_of(pid).target != path; ++i) std::this_thread::sleep_for(10ms);
    BOOST_REQUIRE(exe_of(pid).target == path);
}

// A child of this test, killed (by its pid) and reaped however the test ends.
struct stopped_at_exit {
    pid_t pid;
    ~stopped_at_exit() {
        ::kill(pid, SIGKILL);
        reap(pid);
    }
};
} // namespace

BOOST_AUTO_TEST_SUITE(replaced_executable)

// A helper machine starts from itself (the egress proxy) must start after an upgrade or a
// rebuild replaced the binary under a running `machine up`: the kernel then names the running
// one "PATH (deleted)", and exec of that name fails.
BOOST_AUTO_TEST_CASE(a_binary_replaced_on_disk_is_run_again_from_its_path) {
    if (!std::filesystem::exists("/proc/self/exe")) {
        BOOST_TEST_MESSAGE("no /proc: self_executable asks the system (macOS) and this does not apply");
        return;
    }
    test::temp_dir dir;
    const auto tool = dir.path / "tool";
    std::filesystem::copy_file("/bin/sleep", tool);
    const pid_t pid = start({tool.string(), "30"});
    const stopped_at_exit child{pid};
    wait_for_exec(pid, tool);
    std::filesystem::remove(tool);
    std::filesystem::copy_file("/bin/sleep", tool);  // the upgrade
    const exe_link e = exe_of(pid);
    BOOST_TEST(e.target.string() == tool.string() + " (deleted)");
    BOOST_TEST(platform::detail::replaced_executable(e.target, e.running).string() == tool.string());

    // Removed and not replaced: the kernel's name stays (exec of it fails, and says so).
    std::filesystem::remove(tool);
    BOOST_TEST(platform::detail::replaced_executable(e.target, e.running).string() == tool.string() + " (deleted)");
}

BOOST_AUTO_TEST_CASE(a_path_that_still_leads_to_the_running_binary_is_kept) {
    if (!std::filesystem::exists("/proc/self/exe")) return;
    const exe_link self{std::filesystem::read_symlink("/proc/self/exe"), {}};
    struct stat running{};
    BOOST_REQUIRE(::stat("/proc/self/exe", &running) == 0);
    BOOST_TEST(platform::detail::replaced_executable(self.target, running) == self.target);
    BOOST_TEST(platform::self_executable() == self.target);

    // Even when its real name ends the way the kernel marks a deleted one, and another file
    // has the shorter name.
    test::temp_dir dir;
    const auto odd = dir.path / "tool (deleted)";
    std::filesystem::copy_file("/bin/sleep", odd);
    std::filesystem::copy_file("/bin/true", dir.path / "tool");
    const pid_t pid = start({odd.string(), "30"});
    const stopped_at_exit child{pid};
    wait_for_exec(pid, odd);
    const exe_link e = exe_of(pid);
    BOOST_TEST(e.target.string() == odd.string());
    BOOST_TEST(platform::detail::replaced_executable(e.target, e.running).string() == odd.string());
}

BOOST_AUTO_TEST_SUITE_END()
