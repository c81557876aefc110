// Helper processes machine starts detached for a VM and that end with it: the agent filter
// (`machine agent-proxy`) and the egress proxy (`machine net-proxy`). How they are started,
// where they log, and how they tell that their VM is gone.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/logger.h>

namespace machine::vm {

/// The environment variable spawn_detached() names the child's log file in.
inline constexpr const char* detached_log_variable = "MACHINE_DETACHED_LOG";

/// Starts `argv` (argv[0] a path, no shell) in its own session, detached from machine (double
/// fork: nobody has to reap it), stdin from /dev/null, stdout and stderr appended to `log`
/// (created 0600), with `log` in the environment as detached_log_variable. An exec that fails
/// is said in `log` ("cannot run ARGV0: exec failed with errno N"). Throws machine::error when
/// `log` cannot be opened or fork fails.
void spawn_detached(const std::vector<std::string>& argv, const std::filesystem::path& log);

/// A logger writing to `file`, capped: at 1 MiB it becomes `<stem>.1<ext>` (replacing the
/// previous one) and a new file starts, so a helper keeps at most 2 MiB of log whatever the VM
/// sends. Lines are flushed at once. Throws spdlog::spdlog_ex when the file cannot be opened.
std::shared_ptr<spdlog::logger> detached_logger(const std::string& name, const std::filesystem::path& file);

/// Makes `logger` (on `log`) the process's only output: the default spdlog logger, with stdout
/// and stderr (which spawn_detached pointed at the same file) sent to /dev/null. False (said on
/// stderr) when the file cannot be opened.
bool log_only_to(const std::string& name, const std::filesystem::path& log);

/// For a helper's still_wanted: true while `socket` exists and, after a first 10 minutes (time
/// for the VM to boot), while the Lima host agent of the instance in `vm_dir` (its ha.pid) lives.
std::function<bool()> while_vm_lives(const std::filesystem::path& vm_dir, const std::filesystem::path& socket);

} // namespace machine::vm
