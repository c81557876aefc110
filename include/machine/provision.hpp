// Provisioning as data: profiles (templates/profiles/*.toml, compiled in, plus the user's own in
// <config dir>/profiles/) made of ordered, idempotent steps, and the plan a project gets from
// them. The guest agent applies a plan (PROTOCOL.md, `provision`); this module only decides
// what the plan is and gives every step a hash of its whole definition, which is what lets a
// re-`up` re-apply exactly the steps that changed.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "machine/config.hpp"

namespace machine::provision {

/// Who a step runs as: root, or the VM's normal user (agents refuse full-auto mode as root).
enum class run_as { root, vm_user };

struct step {
    std::string name;      ///< "<profile>.<step>"
    run_as user = run_as::root;
    std::vector<std::pair<std::string, std::string>> env;  ///< values may hold ${host.*} placeholders
    std::string check;     ///< bash script; exit 0 = already in place. Empty: no check
    std::string run;       ///< bash script
    std::chrono::milliseconds timeout{std::chrono::minutes(10)};
    /// Runs after the project's repos are cloned (and again whenever its repos change), e.g. to
    /// trust every repo for the agents. Never part of a cached base.
    bool after_clone = false;
    /// `bake = false` on a step of a baked profile: the step is applied at `up`, never in a cached
    /// base, so it may use project values (${claude.mode}) while the rest of its profile is baked.
    bool bake = true;
};

struct profile {
    std::string name;
    std::string description;
    std::vector<std::string> requires_;  ///< applied before this one
    bool bake = true;                    ///< may be part of the cached base disk
    bool uses_git_values = false;        ///< some step's env holds ${git.*}
    std::vector<step> steps;
    /// Hosts its steps fetch from (`egress = ["registry.npmjs.org"]`): a project with an egress
    /// allowlist gets them too, so it still provisions. Empty: none declared.
    std::vector<std::string> egress;
    std::string source;                  ///< "builtin:<name>.toml" or the file's path
};

/// Every profile `machine` knows: the built-in ones, then the user's, which may replace a
/// built-in of the same name.
class catalog {
public:
    /// The compiled-in profiles only.
    static catalog builtin();
    /// builtin() plus `<dir>/*.toml` when the directory exists. A bad file is a
    /// config::config_error naming the file, line, column and key.
    static catalog load(const std::filesystem::path& user_dir);

    /// Parses one profile file; `name` is its file name without `.toml`. Throws config_error.
    static profile parse(std::string_view text, const std::string& name, const std::string& source);

    const profile* find(std::string_view name) const;
    std::vector<std::string> names() const;
    void add(profile p);

private:
    std::map<std::string, profile, std::less<>> profiles_;
};

/// The profiles a project gets when projects.toml sets no default_profile: the whole set the
/// product promises (Docker, Node, the agents, gh, signed git).
const std::vector<std::string>& default_profiles();

/// Host values a step may use in its env: ${git.name}, ${git.email}, ${git.signing_key},
/// ${vm.user}, ${vm.shell}, ${claude.mode}; and ${forge.known_hosts}, the forges' SSH host keys
/// machine ships (machine/forge_keys.hpp), the same for every project.
struct host_values {
    std::string git_name;
    std::string git_email;
    std::string git_signing_key;  ///< an SSH public key line, or empty
    std::string vm_user = "dev";
    std::string vm_shell = "bash";  ///< the project's login shell: "zsh" or "bash"
    std::string claude_mode = "auto";  ///< the project's claude_mode: "auto" or "bypassPermissions"
    /// The directories the project's repos are cloned into: after_clone steps get them as
    /// $MACHINE_REPOS (space-separated), so they run again when the repos change.
    std::vector<std::string> repo_dirs;
};

/// A step as the agent receives it: argv vectors, the user's name, env expanded, and the hash.
struct planned_step {
    std::string name;
    std::string profile;
    std::string user;
    std::vector<std::pair<std::string, std::string>> env;
    std::vector<std::string> check;  ///< empty: no check
    std::vector<std::string> run;
    std::uint64_t timeout_ms = 0;
    bool after_clone = false;
    std::string hash;                ///< sha256 hex over everything above but `profile`
    /// false: kept out of a cached base (the step's `bake = false`). Not hashed: it changes where
    /// the step runs, not what it does.
    bool bake = true;
};

struct plan {
    std::vector<std::string> profiles;  ///< in application order, requirements first
    std::vector<planned_step> steps;
};

/// The profiles `wanted` expands to, requirements first, each once. Unknown names and cycles
/// are config_errors; `where(i)` says where wanted[i] came from ("projects.toml:3:12:
/// web.profiles[1]"), for the message.
std::vector<std::string> resolve_profiles(const catalog& cat, const std::vector<std::string>& wanted,
                                          const std::function<std::string(std::size_t)>& where);

/// The plan for these (resolved) profiles.
plan make_plan(const catalog& cat, const std::vector<std::string>& profiles, const host_values& host);

/// The steps of `p` that may go into a cached base: those of its bake profiles, up to the first
/// profile that cannot be baked (what follows may depend on it), without after_clone steps and
/// steps marked `bake = false`.
plan bakeable_prefix(const catalog& cat, const plan& p);

/// The argv a script runs as in the guest: bash with errexit, nounset and pipefail.
std::vector<std::string> script_argv(const std::string& script);

} // namespace machine::provision
