// Starting a command as a given user: fork, then in the child setsid, setgroups, setgid,
// setuid, chdir and execvp. argv only, never a shell.
//
// fork rather than posix_spawn: posix_spawn cannot change credentials. The agent is
// single-threaded and small, so fork is cheap and the child may do anything before exec.
#pragma once

#include <sys/types.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "users.hpp"

namespace machine::agent {

struct spawn_spec {
    std::vector<std::string> argv;   ///< argv[0] is looked up in the PATH of `env`
    std::vector<std::string> env;    ///< "NAME=value", the child's whole environment
    std::string cwd = "/";
    std::optional<user_info> as_user;  ///< nullopt: keep the agent's own credentials
    bool pipe_stdin = false;           ///< else stdin is /dev/null
    bool pipe_stderr = true;           ///< else stderr is /dev/null
};

/// The parent's side of a started child. Every fd is CLOEXEC and owned by the caller.
struct child_process {
    pid_t pid = -1;
    int pidfd = -1;       ///< -1 when the kernel has no pidfd_open (poll with waitpid then)
    int stdin_fd = -1;    ///< write end, when pipe_stdin
    int stdout_fd = -1;   ///< read end
    int stderr_fd = -1;   ///< read end, when pipe_stderr
};

/// For a forked child about to exec: every signal's default disposition (SIG_IGN would survive
/// exec) and none blocked. Async-signal-safe.
void reset_signals_for_exec();

/// The command did not start; what() names the step: "exec 'nosuch': No such file or directory".
class spawn_failure : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Starts the child in its own session (so its whole process group can be signalled), with
/// default signal dispositions, an empty signal mask, umask 022 and only fds 0-2 open.
/// Returns once the exec has succeeded; throws spawn_failure otherwise (the child is reaped).
child_process spawn(const spawn_spec& spec);

/// Base environment for a user: HOME, USER, LOGNAME, SHELL, PATH, LANG, XDG_RUNTIME_DIR.
std::vector<std::pair<std::string, std::string>> base_environment(const user_info& user,
                                                                  const std::string& runtime_dir_root);

/// The base environment with `extra` added (a name already there is replaced), as "NAME=value".
std::vector<std::string> child_environment(const user_info& user, const std::string& runtime_dir_root,
                                           const std::vector<std::pair<std::string, std::string>>& extra);

/// The user's home directory when it exists, else "/": a command's default cwd.
std::string home_or_root(const user_info& user);

// Waiting for the child, reaping it and stopping it: machine/supervise.hpp (proc).

} // namespace machine::agent
