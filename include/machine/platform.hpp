// The host's operating-system interfaces that are not the same on Linux and on other POSIX
// systems (macOS): the one seam between machine and the kernel's extensions. Chosen at build
// time: src/core/platform_linux.cpp on Linux (pipe2, pidfd, posix_spawn with glibc's closefrom,
// /proc, prctl), src/core/platform_posix.cpp elsewhere or with -DMACHINE_POSIX_ONLY=ON (pipe and
// fcntl, a SIGCHLD handler, vfork and exec closing every other descriptor, sysctl on macOS).
// Everything else in machine is plain POSIX. The guest agent runs in the Linux VM and may use
// Linux directly.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace machine::platform {

/// "linux" or "posix": which implementation this build has.
const char* name();

/// A pipe whose two ends are close-on-exec (fds[0] reads). False, with errno set, on failure.
bool open_pipe(int fds[2]);

/// A close-on-exec socket(domain, type, 0), non-blocking when asked; -1 (errno set) on failure.
int open_socket(int domain, int type, bool nonblocking);

/// What a child's descriptor 0, 1 or 2 is: one of these, or a descriptor of ours to dup there.
inline constexpr int stdio_inherit = -1;
inline constexpr int stdio_null = -2;

struct spawn_request {
    std::vector<std::string> argv;  ///< argv[0] is looked up in PATH
    std::vector<std::string> env;   ///< the child's whole environment, NAME=value
    std::optional<std::filesystem::path> cwd;
    std::array<int, 3> stdio{stdio_inherit, stdio_inherit, stdio_inherit};
    bool new_process_group = true;  ///< the child leads a process group of its own
};

/// `strings` as the null-terminated array of C strings execve takes for argv and envp (the
/// strings must outlive it).
inline std::vector<char*> c_string_array(const std::vector<std::string>& strings) {
    std::vector<char*> out;
    out.reserve(strings.size() + 1);
    for (const auto& s : strings) out.push_back(const_cast<char*>(s.c_str()));
    out.push_back(nullptr);
    return out;
}

/// Starts a child that has only descriptors 0-2 open (whatever this process has open, CLOEXEC or
/// not), the usual stop and job-control signals and SIGPIPE/SIGCHLD at their defaults, and an
/// empty signal mask. Returns its pid, or -1 with `error` set to the errno value (e.g. ENOENT).
pid_t spawn(const spawn_request& request, int& error);

/// A descriptor (close-on-exec, the caller's to close) that polls readable once the child `pid`
/// has exited; the child stays a zombie until it is reaped. Linux: a pidfd. POSIX: the read end
/// of a pipe whose write end a SIGCHLD handler closes when waitid says the child has exited.
/// -1 when none can be had: poll with waitid(WNOHANG | WNOWAIT) then.
int open_exit_watch(pid_t pid);

/// Sends `sig` to `pid` only if `still_it()`, asked once the process is pinned down, says it is
/// the process meant. Linux: through a pidfd, so a process that got the pid after the check is
/// never hit. POSIX: the check just before kill(2) (a pid reused in between would be hit).
/// False when nothing was sent.
bool signal_if(pid_t pid, int sig, const std::function<bool()>& still_it);

/// The pid of the process at the other end of a connected Unix socket; 0 when unknown.
pid_t peer_pid(int socket_fd);

/// Process `pid`'s arguments, each ended by a NUL (as /proc/PID/cmdline); empty when unknown.
std::string process_arguments(pid_t pid);

/// The path of this executable; empty when it cannot be found.
std::filesystem::path self_executable();

/// Memory the host can give to new VMs, in bytes (Linux: MemAvailable); 0 when unknown.
long long available_memory();

/// No other unprivileged process of the user may attach to this one or read its memory, and no
/// core dump through the kernel's pipe (Linux: PR_SET_DUMPABLE 0; macOS: PT_DENY_ATTACH; other
/// systems: nothing beyond RLIMIT_CORE, which hygiene.cpp sets everywhere). Returns what failed.
std::string forbid_attach();

/// Overwrites `n` bytes at `p` with zeros the compiler may not elide.
void wipe_memory(void* p, std::size_t n) noexcept;

} // namespace machine::platform
