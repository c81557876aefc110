// Which SSH agent a project's VM may reach: none (forward_agent = false), the user's whole
// agent, or, with `agent_keys`, a filtering proxy (src/agent_proxy) that offers only those keys.
// Internal to the CLI module.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "cli.hpp"
#include "machine/config.hpp"
#include "machine/lima.hpp"

namespace spdlog {
class logger;
}

namespace machine::cli {

/// The environment of every ssh or limactl process that connects to the VM: the agent a VM can
/// use is the one in SSH_AUTH_SOCK of whichever process opens the SSH connection (including
/// Lima's ControlMaster, which outlives the command that started it).
struct agent_environment {
    bool forward = false;  ///< ssh -o ForwardAgent=…
    lima::environment env;
};

/// Decides and prepares the project's agent forwarding: with `agent_keys`, makes sure its
/// filter runs (started detached, it ends after the VM stops). The choice applies from the VM's
/// next start (`inst` not running, or null); for a running VM started with another choice it
/// says so (Lima's host agent keeps the agent it was started with).
/// With `speak`, says once per project when the whole agent is forwarded and warns when no
/// agent answers (`run` stays quiet: its output is the remote command's).
asio::awaitable<agent_environment> prepare_agent_forwarding(context& ctx, const config::project& p,
                                                            const lima::instance* inst, bool speak);

/// `machine agent-proxy` (hidden; started by prepare_agent_forwarding): serves the filter on
/// `listen` until the VM whose Lima directory is `vm_dir` has stopped.
int run_agent_proxy(const std::string& listen, const std::string& upstream, const std::string& vm_dir,
                    const std::vector<std::string>& allowed);

/// The agent filter's log: `file` (a project's agent-filter.log) holds at most 1 MiB, then
/// becomes agent-filter.1.log (replacing the previous one) and a new file starts, so the
/// filter never keeps more than 2 MiB of log whatever the VM sends. Throws spdlog::spdlog_ex
/// when the file cannot be opened.
std::shared_ptr<spdlog::logger> agent_filter_logger(const std::filesystem::path& file);

} // namespace machine::cli
