// The user's project configuration: projects.toml on the host and .machine.toml in a repo.
//
// projects.toml ($MACHINE_CONFIG_DIR or $XDG_CONFIG_HOME/machine/projects.toml):
//   top-level settings (default_profile, default_shell, ca_certs), then one table per project,
//   `[web]`, as users of the reference tool already write them.
// .machine.toml (found by searching upward from the working directory): the same keys as one
//   project table, flat at top level, plus `name`. It replaces a table of the same name.
//
// Every problem in a file is a config_error naming the file, line, column and key path of the
// first problem in file order: `projects.toml:7:1: web.cpus: expected an integer, got "four"`.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "machine/error.hpp"
#include "machine/secret_kind.hpp"

namespace machine::config {

/// A configuration error: `file:line:column: key.path: problem`. Exit code 2.
class config_error : public usage_error {
public:
    using usage_error::usage_error;
};

/// Guest ports forwarded to the host's 127.0.0.1.
struct port_forwarding {
    enum class policy { all, none, listed };
    policy mode = policy::all;   ///< `ports = true` (default), `ports = false`, `ports = [3000, 8080]`
    std::vector<int> ports;      ///< when mode == listed; each 1..65535, in file order
};

/// One source of a project's secrets (`[[web.secrets]]`), read on the host by `machine secrets`
/// and rendered into the VM's tmpfs as the set `set` (/run/machine-secrets/<set>.env, loaded in
/// a repo by `use op_env <set>` in its .envrc). Entries of one set are read in file order; a
/// later entry's variable replaces an earlier one of the same name.
using machine::secret_kind;
struct secret_source {
    secret_kind kind = secret_kind::dotenv_file;
    /// op_environment: the 1Password Environment ID; op_reference: `op://vault/item/field`;
    /// dotenv_file: the path as written (`~/` means the home directory). Unused for command.
    std::string value;
    std::string variable;            ///< op_reference only: the variable it defines
    std::vector<std::string> argv;   ///< command only: argv[0] is looked up in PATH
    /// The set it renders into: as written, else the Environment ID for op_environment, else
    /// the project's name.
    std::string set;
    std::string origin;              ///< `projects.toml:9:1: web.secrets[0]`, for messages
};

struct project {
    std::string name;
    std::vector<std::string> repos;      ///< git URLs; the first is the primary repo
    std::vector<std::string> profiles;   ///< tool profiles, in order
    /// Where each of `profiles` was written (`projects.toml:3:13: web.profiles[0]`), for
    /// errors found later (an unknown profile); empty when it comes from the built-in default.
    std::vector<std::string> profile_origins;
    /// Neither `profiles` nor `default_profile` was written: the built-in profile set applies
    /// (the provision module knows it). `profiles` is then empty.
    bool builtin_profiles = false;
    std::string shell = "zsh";           ///< "zsh" or "bash"
    /// Claude Code's permissions.defaultMode in the VM: "auto" (full autonomy, Claude's own
    /// safety checks as a second line) or "bypassPermissions" (no checks at all).
    std::string claude_mode = "auto";
    bool forward_agent = true;
    int cpus = 4;
    std::string memory = "8GiB";         ///< normalized "<number><KiB|MiB|GiB|TiB>"
    std::string disk = "30GiB";
    /// The VM's CPU architecture in Lima's names (`arch = "aarch64"`): "x86_64" or "aarch64".
    /// nullopt (the key absent): the host's, as Lima defaults it. Another arch than the host's
    /// is emulated (QEMU TCG): correct, and many times slower.
    std::optional<std::string> arch;
    port_forwarding ports;
    /// CA certificates for the guest's trust store: file paths, or "host" for the host's
    /// locally added CAs (/usr/local/share/ca-certificates). Default ["host"].
    std::vector<std::string> ca_certs{"host"};
    /// Ports on the host's 127.0.0.1 the VM may reach through its gateway (`host_ports = [5432]`);
    /// nothing else on the host is reachable. Each 1..65535, no duplicates, in file order.
    std::vector<int> host_ports;
    /// `egress = ["github.com", "*.githubusercontent.com"]`: the hosts the VM may reach. nullopt
    /// (the key absent): the open internet; present, even empty: only these (plus what the
    /// project's profiles and machine's own provisioning need). Each a net::host_pattern_problem
    /// -free pattern.
    std::optional<std::vector<std::string>> egress;
    /// Where each `egress` entry was written (`projects.toml:4:11: web.egress[0]`).
    std::vector<std::string> egress_origins;
    /// Key fingerprints ("SHA256:...") the forwarded agent is limited to; empty = whole agent.
    std::vector<std::string> agent_keys;
    /// `agent_auth = ["claude", "gh"]`: the tools whose host login (`machine login`) this
    /// project's VM may receive. nullopt (the key absent): every tool logged in; [] none.
    /// Each an agent_tools name, no duplicates.
    std::optional<std::vector<std::string>> agent_auth;
    std::vector<secret_source> secrets;  ///< in file order
    /// Render the secrets on every `up`, and whenever `watch` sees the VM boot again.
    bool secrets_on_up = false;
    /// How long one `git clone` of a repo may take (`clone_timeout = "45m"`); then `up` fails
    /// naming the repo. Default 30 minutes, at most 24 hours.
    std::chrono::seconds clone_timeout{30 * 60};

    /// Where the project was defined: the projects.toml or .machine.toml path; empty for a
    /// project that exists only by its name (zero-config `default`, or a VM without a table).
    std::filesystem::path source;
    bool configured = false;  ///< true when a table or .machine.toml defines it
    /// Defined by a repository's .machine.toml: what it names on this computer is confined to
    /// that repository (ca_certs), and it runs or reads nothing else here (secrets).
    bool from_repository = false;
};

/// What the host has; the default cpus and memory of a project are capped by it.
struct host_resources {
    int cpus = 4;
    long long memory_bytes = 16LL << 30;

    /// The running host: online CPUs and physical memory.
    static host_resources detect();
};

/// The top-level settings of projects.toml, and the defaults they give every project.
struct settings {
    std::vector<std::string> default_profile;  ///< a string or a list in the file
    std::vector<std::string> default_profile_origins;  ///< where each entry was written
    bool default_profile_set = false;  ///< false: projects get the built-in profile set
    std::string default_shell = "zsh";
    std::vector<std::string> ca_certs{"host"};
    host_resources host;

    /// A project called `name` with every key at its default: cpus = min(4, host CPUs), memory
    /// = 8GiB capped at half the host's RAM (whole GiB, at least 1GiB), disk = 30GiB, shell and
    /// profiles and ca_certs from the settings above. Not `configured`, no `source`.
    project defaults_for(const std::string& name) const;
};

struct config {
    settings defaults;
    std::map<std::string, project> projects;   ///< by name, .machine.toml overlay applied
    std::filesystem::path projects_file;       ///< the path looked at (may not exist)
    bool projects_file_exists = false;
    std::optional<std::filesystem::path> local_file;  ///< the .machine.toml found, if any
    std::optional<std::string> local_project;         ///< its project name
    bool local_shadows_table = false;  ///< .machine.toml replaced a projects.toml table

    /// The project the user means when no NAME is given: the .machine.toml project, else
    /// "default".
    std::string ambient_project() const;

    /// The project `name`: its table if configured, else one built from the defaults.
    /// Validates the name first (usage_error when invalid).
    project resolve(const std::string& name) const;
};

struct load_options {
    std::filesystem::path config_dir;    ///< where projects.toml lives (paths::config_dir())
    std::filesystem::path working_dir;   ///< where the search for .machine.toml starts ("" = cwd)
    std::optional<std::filesystem::path> search_stop;  ///< last directory searched (tests)
    std::optional<host_resources> host;  ///< the host's resources; detected when unset
};

/// Parses a projects.toml document. `file_label` names the file in error messages.
config parse_projects(std::string_view text, const std::filesystem::path& file_label,
                      const host_resources& host = host_resources::detect());

/// Parses the .machine.toml document at `file_path` (its directory gives the default name and
/// the default repo, the `origin` remote) and puts its project into `into`, replacing a table
/// of the same name.
void overlay_local(config& into, std::string_view text, const std::filesystem::path& file_path);

/// The nearest .machine.toml in `start` or above it, up to `stop` (inclusive) or the root.
std::optional<std::filesystem::path> find_local_file(
    const std::filesystem::path& start, const std::optional<std::filesystem::path>& stop = {});

/// Loads everything: projects.toml (absent means no projects), then the nearest .machine.toml.
config load(const load_options& options);

/// Loads with the default locations: paths::config_dir() and the current directory.
config load_default();

/// Normalizes a memory/disk size: integer N >= 1 -> "NGiB"; "<num>(.<num>)?(KiB|MiB|GiB|TiB)"
/// kept as written. Returns nullopt when invalid, zero, or too large for 63-bit bytes.
std::optional<std::string> normalize_size(std::string_view text);
/// A duration as profiles' step timeouts and `clone_timeout` write it: one or more
/// `<integer><s|m|h>` ("90s", "10m", "1h30m"). nullopt when malformed or zero.
std::optional<std::chrono::seconds> parse_duration(std::string_view text);

/// Why `entry` cannot be an `egress` entry (projects.toml, .machine.toml, a profile): longer than
/// 255 bytes, or net::host_pattern_problem's reason with the entry (escaped); "" when it can.
std::string egress_entry_problem(std::string_view entry);

/// Bytes in a normalized size ("4GiB" -> 4294967296), rounded down; 0 when it is not one.
long long size_bytes(std::string_view normalized);

/// The checks projects.toml's keys get, for a value given some other way (`machine create`'s
/// answers and flags): "" when it is fine, else the problem, worded as the loader words it.
std::string repo_problem(std::string_view url);        ///< one of `repos`
std::string profile_problem(std::string_view name);    ///< one of `profiles` (its name only)
std::string shell_problem(std::string_view shell);     ///< `shell`
std::string cpus_problem(long long cpus);              ///< `cpus`
std::string arch_problem(std::string_view arch);       ///< `arch`: "x86_64" or "aarch64"
std::string size_problem(std::string_view size);       ///< `memory`, `disk`: normalize_size's forms

/// projects.toml alone (no .machine.toml): parsed, or the defaults when it does not exist.
config load_projects_file(const std::filesystem::path& file, const host_resources& host = host_resources::detect());

/// The documented projects.toml `machine init` writes (templates/projects.toml.example, all
/// comments), which a projects.toml that `machine create` starts also opens with.
std::string_view projects_example();

/// A project table as `machine create` writes it. Keys left unset are not written, so they keep
/// following the defaults (default_profile, default_shell, the host's size).
struct project_draft {
    std::string name;
    std::vector<std::string> repos;  ///< always written: [] is a VM without code
    std::optional<std::vector<std::string>> profiles;
    std::optional<std::string> shell;
    std::optional<int> cpus;
    std::optional<std::string> memory;  ///< normalized (normalize_size)
    std::optional<std::string> disk;    ///< normalized
};

/// `[name]` and its keys as TOML, values serialized by toml++ (basic strings, escaped, ASCII
/// only): whatever a value holds, it reads back as itself and never as more TOML.
std::string project_table_text(const project_draft& draft);

struct added_project {
    std::filesystem::path file;  ///< the file written: projects.toml, or its target when a symlink
    bool created = false;        ///< there was none: projects_example() then the table
    std::string table;           ///< project_table_text(draft)
};

/// Adds `draft`'s table to the projects.toml at `file`, keeping every byte already there (the
/// table goes after them, replacing the file atomically with its mode kept), or creates the file
/// (never over one that appeared meanwhile). The whole new file must load back with the draft's
/// values before anything is written. A file that does not load, or that has a project of that
/// name already, is a config_error (exit 2) and is left as it was.
added_project add_project(const std::filesystem::path& file, const project_draft& draft);

} // namespace machine::config
