// What `up` and `bake` do inside a VM once it is booted: apply the project's provisioning plan
// through the guest agent, and clone its repos. Also the checks that run before any VM work.
// Internal to the vm module (the unit tests reach the pure parts).
#pragma once

#include <chrono>
#include <deque>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>

#include "machine/provision.hpp"
#include "machine/vm.hpp"
#include "guest_link.hpp"

namespace machine::vm {

/// git without prompts and with only the allowed transports (never ext::, which runs a command),
/// and ssh checking host keys strictly (never accepting a new key): the environment of every git
/// machine runs. In the VM (`known_hosts` empty) ssh reads the forges' keys from
/// /etc/ssh/ssh_known_hosts, which the base profile writes; on the host, from `known_hosts`
/// (forge_known_hosts_file()) and then the user's ~/.ssh/known_hosts.
std::vector<std::pair<std::string, std::string>> git_env(const std::filesystem::path& known_hosts = {});

/// <state dir>/forge_known_hosts, (re)written from the keys machine ships (machine/forge_keys.hpp).
std::filesystem::path forge_known_hosts_file();

/// Why `git ls-remote` of `url` on the host fails, with ssh checking host keys against
/// `known_hosts` (git_env); empty when it answers. A refused host key is said plainly
/// (forge::host_key_problem).
asio::awaitable<std::string> repo_reachability_problem(std::string url, std::filesystem::path known_hosts,
                                                       cancel_signal* cancel);

/// `git ls-remote` on the host for each of the project's repos, all at once; throws an error
/// listing every unreachable one (nothing has been created yet when this runs).
asio::awaitable<void> check_repos_reachable(context& ctx, const config::project& p, cancel_signal* cancel);

/// Applies `plan` through the guest agent, reporting each step as it starts and ends; returns
/// how many steps ran. Throws when a step fails, naming it (and the full disk, when that is why).
/// `agent` first asks whether any step would run (a re-up: none, and that is all); the
/// provisioning and its progress take two more connections over `link`.
asio::awaitable<std::size_t> apply_plan(context& ctx, const std::string& vm, const guest_link& link,
                                        guest::connection& agent, const provision::plan& plan, cancel_signal* cancel);

/// Clones the project's repos that are not in ~/code yet, then installs their dependencies.
/// Each clone runs through OpenSSH pinned to the VM's key with a connection of its own
/// (openssh_argv), forwarding `agent` when the project does (git in the VM authenticates with
/// it); it may take the project's clone_timeout, and its progress becomes step output.
/// `guest` (the VM's agent) checks what is there and installs the dependencies.
asio::awaitable<void> clone_repos(context& ctx, lima::instance inst, agent_environment agent, config::project p,
                                  guest::connection& guest, std::string vm_user, cancel_signal* cancel);

/// One clone as `clone_repos` runs it (through OpenSSH: openssh_argv of clone_command).
struct clone_run {
    std::string vm, step, url;
    std::vector<std::string> argv;  ///< run on the host
    lima::environment env;          ///< the agent the connection forwards
    std::chrono::seconds timeout{30 * 60};
    bool failure_is_fatal = true;   ///< false: a failed git (not ssh's 255) only returns false
};

/// Runs one clone as step `step`: git's progress as its output (clone_progress), at most
/// `timeout`. True when it cloned. Throws machine::error naming the URL and the timeout when it
/// took too long, naming the URL and git's last line when it failed (unless !failure_is_fatal:
/// then false), interrupted_error when `cancel` fired.
asio::awaitable<bool> run_clone(context& ctx, clone_run run, cancel_signal* cancel);

/// The argv run in the VM to clone `url` into `path`: git with progress on stderr, no `ext::`
/// transport, no prompts, and only the allowed protocols.
std::vector<std::string> clone_command(const std::string& url, const std::string& path);

/// How a fresh clone's JavaScript dependencies are installed: `argv` runs as the VM user in the
/// clone, with `env` added. A package.json whose `packageManager` names pnpm, yarn or npm
/// (e.g. "yarn@4.5.0") installs through corepack, which runs exactly that manager and version
/// (downloaded from the npm registry and checked against its signature or the name's hash);
/// else pnpm-lock.yaml means pnpm, yarn.lock yarn, anything else npm. `manager` names it.
struct deps_install {
    std::string manager;
    std::vector<std::string> argv;
    std::vector<std::pair<std::string, std::string>> env;
};
deps_install deps_install_command(const std::string& package_json, bool has_pnpm_lock, bool has_yarn_lock);

/// git's stderr during a clone, split at '\r' and '\n', as step output: at most one line per
/// `interval` (a progress meter redraws many times a second), each cut at `max_bytes`; the last
/// lines are kept for the error message. Pure: fed lines and times.
class clone_progress {
public:
    explicit clone_progress(std::chrono::milliseconds interval = std::chrono::seconds(1), std::size_t max_bytes = 200);
    /// A line of git's stderr seen at `now`; the line to show now, if any.
    std::optional<std::string> feed(std::string_view line, std::chrono::steady_clock::time_point now);
    /// The newest line not shown yet (at the end of the clone), if any.
    std::optional<std::string> finish();
    /// The last lines seen (at most 20, each cut like the shown ones), for diagnostics.
    std::string tail() const;

private:
    std::chrono::milliseconds interval_;
    std::size_t max_bytes_;
    std::optional<std::chrono::steady_clock::time_point> last_shown_;
    std::optional<std::string> pending_;
    std::deque<std::string> tail_;
};

/// "90s", "45m", "1h30m": a duration as the config writes it.
std::string format_duration(std::chrono::seconds d);


} // namespace machine::vm
