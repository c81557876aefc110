// `machine-agent session ...`: agent sessions (Claude Code, Codex) in tmux, run as the VM user.
//
//   session attach --name S --agent claude|codex [--dir D]   what the host runs through `ssh -t`:
//       refreshes ~/.ssh/agent.sock, then execs `tmux new-session -A` (start or reattach)
//   session run --name S --agent claude|codex                the process in the tmux pane: registers
//       the session with the agent daemon and runs the agent CLI through the login shell
//   session list                                             the live sessions, one per line
//
// Blocking code, no event loop: each is a short-lived or single-purpose process.
#pragma once

#include <string>

namespace machine::agent {

/// argv[1] is "session". `socket` is the daemon's socket ($MACHINE_AGENT_SOCKET or the default);
/// `--socket PATH` overrides it. Returns the exit status: 2 for a bad command line or name.
int session_command(int argc, char** argv, const std::string& socket);

/// What `session run` gives the login shell `shell` (`$SHELL -l -c COMMAND`) to start `agent`:
/// for bash and zsh, the working directory's direnv environment first (`direnv export`, as the
/// interactive hook would load it, when direnv is installed), then `exec AGENT`.
std::string agent_command(const std::string& shell, const std::string& agent);

} // namespace machine::agent
