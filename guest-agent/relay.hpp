// `machine-agent relay [--socket PATH]`: how the host reaches the agent.
#pragma once

#include <string>

namespace machine::agent {

/// Exit statuses of the relay (the host tells "no agent" from "the agent hung up" by them).
inline constexpr int relay_done = 0;       ///< the agent or the host ended the connection
inline constexpr int relay_no_agent = 69;  ///< EX_UNAVAILABLE: nothing listens on the socket
inline constexpr int relay_io_error = 74;  ///< EX_IOERR

/// Joins this process's stdin and stdout to a connection to the agent's socket until the agent
/// closes it or the host goes away. An EOF on stdin is passed on as a half close, as sshd does
/// for a direct-streamlocal channel.
int relay_command(const std::string& socket_path);

} // namespace machine::agent
