// What `up` and `bake` do inside a VM once it is booted: apply the project's provisioning plan
// through the guest agent, and clone its repos. Also the checks that run before any VM work.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "cli.hpp"
#include "machine/provision.hpp"

namespace machine::ssh {
class session;
}

namespace machine::cli {

/// The built-in profiles plus the user's own (<config dir>/profiles/*.toml).
provision::catalog load_catalog();

/// The profiles project `p` gets, requirements first. config_error (exit 2) for an unknown
/// profile, naming where it was written.
std::vector<std::string> profiles_of(const provision::catalog& cat, const config::project& p);

/// The host's git identity and signing key, for the git-signing profile: $GIT_SIGNING_KEY, else
/// `git config --global user.signingkey` (a key, `key::` + a key, or a path to a public key).
asio::awaitable<provision::host_values> detect_host_values(std::string vm_user);

/// The values `projects`' profiles use: the VM user always, the host's git settings only when
/// one of those profiles copies them (reading them runs git).
asio::awaitable<provision::host_values> host_values_for(const provision::catalog& cat,
                                                        const std::vector<config::project>& projects);

/// `git ls-remote` on the host for each of the project's repos, all at once; throws an error
/// listing every unreachable one (nothing has been created yet when this runs).
asio::awaitable<void> check_repos_reachable(context& ctx, const config::project& p, cancel_signal* cancel);

/// Applies `plan` through the guest agent, reporting each step as it starts and ends; returns
/// how many steps ran. Throws when a step fails, naming it (and the full disk, when that is why).
asio::awaitable<std::size_t> apply_plan(context& ctx, const std::string& vm, std::shared_ptr<ssh::session> session,
                                 const provision::plan& plan, cancel_signal* cancel);

/// Clones the project's repos that are not in ~/code yet (through `limactl shell`, so git
/// authenticates with the forwarded agent), then installs their dependencies.
/// `lima` runs the clones (`limactl shell`), with the project's agent environment.
asio::awaitable<void> clone_repos(context& ctx, lima::client& lima, const config::project& p,
                                  std::shared_ptr<ssh::session> session, std::string vm_user);

/// Closes the SSH ControlMaster Lima keeps for `limactl shell`: its login predates what
/// provisioning changed (the docker group), and the next shell should see it.
asio::awaitable<void> close_lima_ssh_master(const lima::instance& inst, const std::string& name);

/// The directory `git clone URL` makes ("https://h/a/web.git" -> "web"); "" when the URL has
/// no usable name.
std::string repo_dir_name(std::string_view url);

} // namespace machine::cli
