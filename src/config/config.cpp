// The schema of projects.toml and .machine.toml, and turning their documents into structs.
#include "machine/config.hpp"

#include "git_origin.hpp"
#include "toml_fields.hpp"

#include "machine/agent_tools.hpp"
#include "machine/net.hpp"
#include "machine/text.hpp"

#include <algorithm>
#include <set>
#include <span>

namespace machine::config {

namespace fs = std::filesystem;
using detail::describe;
using detail::field;
using detail::key_rule;
using detail::toml_string;

namespace {

constexpr int max_cpus = 1024;
constexpr long long gib = 1LL << 30;

// ---- Checks on single strings (detail::string_rule: "" when fine, else the problem) ----

bool has_space_or_control(std::string_view s) {
    return std::any_of(s.begin(), s.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || c == 0x7F;
    });
}

bool has_control(std::string_view s) {
    return std::any_of(s.begin(), s.end(), [](char c) {
        return static_cast<unsigned char>(c) < 0x20 || c == 0x7F;
    });
}

} // namespace

// ---- The rules of single values, public for values given some other way (`machine create`) ----

// Repos end up as `git clone` arguments: a leading '-' would be read as an option.
std::string repo_problem(std::string_view url) {
    if (url.empty()) return "must not be empty";
    if (url.front() == '-') return "must not start with \"-\", got " + toml_string(url);
    // git's ext:: transport runs a shell command named in the URL, fd:: reads a descriptor.
    if (url.rfind("ext::", 0) == 0 || url.rfind("fd::", 0) == 0)
        return "the " + std::string(url.substr(0, url.find("::") + 2)) + " transport is refused (it runs local commands), got " + toml_string(url);
    if (has_space_or_control(url))
        return "must not contain whitespace or control characters, got " + toml_string(url);
    return {};
}

namespace {
bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
} // namespace

// Profiles name files (templates/<profile>.yaml), so they cannot be paths.
std::string profile_problem(std::string_view name) {
    const bool ok = !name.empty() && is_lower_alnum(name.front()) &&
                    std::all_of(name.begin(), name.end(),
                                [](char c) { return is_lower_alnum(c) || c == '-' || c == '_'; });
    if (ok) return {};
    return "invalid profile name " + toml_string(name) +
           " (use a-z, 0-9, \"-\" and \"_\", starting with a letter or digit)";
}

std::string claude_mode_problem(std::string_view mode) {
    if (mode == "auto" || mode == "bypassPermissions") return {};
    return "expected \"auto\" (full autonomy with Claude's own safety checks) or \"bypassPermissions\" (no checks), got " +
           toml_string(mode);
}

// A repository's .machine.toml may not switch Claude's own checks off in the VM where its
// code runs: that is the user's choice, made in projects.toml.
std::string repo_claude_mode_problem(std::string_view mode) {
    if (mode == "bypassPermissions")
        return "a repository's .machine.toml cannot turn off Claude's permission checks; set "
               "claude_mode = \"bypassPermissions\" in projects.toml";
    return claude_mode_problem(mode);
}

std::string shell_problem(std::string_view shell) {
    if (shell == "zsh" || shell == "bash") return {};
    return "expected \"zsh\" or \"bash\", got " + toml_string(shell);
}

std::string arch_problem(std::string_view arch) {
    if (arch == "x86_64" || arch == "aarch64") return {};
    return "expected \"x86_64\" or \"aarch64\" (Lima's names), got " + toml_string(arch);
}

std::string cpus_problem(long long cpus) {
    if (cpus < 1) return "must be at least 1, got " + std::to_string(cpus);
    if (cpus > max_cpus) return "must be at most " + std::to_string(max_cpus) + ", got " + std::to_string(cpus);
    return {};
}

namespace {
constexpr std::string_view size_forms = R"(expected a size like 8 or "8GiB" (KiB, MiB, GiB, TiB), got )";
} // namespace

std::string size_problem(std::string_view size) {
    if (normalize_size(size)) return {};
    return std::string(size_forms) + toml_string(size);
}

namespace {

std::string ca_cert_problem(std::string_view cert) {
    if (cert.empty()) return "must not be empty";
    if (has_control(cert)) return "must not contain control characters, got " + toml_string(cert);
    return {};
}

// A repository's .machine.toml comes with code that may not be the user's: its ca_certs may be
// "host" (the certificates this computer added itself) or files inside that repository, never a
// path that reaches elsewhere on this computer (~/.mitmproxy/mitmproxy-ca.pem holds a private key).
std::string repo_ca_cert_problem(std::string_view cert) {
    if (auto problem = ca_cert_problem(cert); !problem.empty()) return problem;
    if (cert == "host") return {};
    const fs::path path{std::string(cert)};
    if (path.is_absolute() || cert.starts_with("~"))
        return "a repository's .machine.toml may name \"host\" or files inside the repository, got " +
               toml_string(cert);
    for (const auto& part : path)
        if (part == "..")
            return "a repository's .machine.toml may name files inside the repository only, got " + toml_string(cert);
    return {};
}

std::string fingerprint_problem(std::string_view key) {
    constexpr std::string_view prefix = "SHA256:";
    if (key.starts_with(prefix) && key.size() > prefix.size() && !has_space_or_control(key))
        return {};
    return "expected a key fingerprint like \"SHA256:...\", got " + toml_string(key);
}

std::string agent_auth_problem(std::string_view tool) {
    if (is_agent_tool(tool)) return {};
    std::string known;
    for (const auto name : agent_tools) known += std::string(known.empty() ? "" : ", ") + toml_string(name);
    return "unknown tool " + toml_string(tool) + " (expected one of " + known + ")";
}

std::string secret_set_problem(std::string_view set) {
    if (is_credential_set_name(set))
        return "set name " + toml_string(set) + " is reserved: sets named " + toml_string(credential_set_prefix) +
               "... carry the agents' logins (machine login)";
    if (text::is_valid_secret_set_name(set)) return {};
    return "invalid set name " + toml_string(set) +
           " (1-64 of a-z, 0-9, \"_\" and \"-\", starting with a letter or digit)";
}

// A 1Password Environment ID names the set it renders into by default, so it follows both the
// reference tool's `use op_env` pattern (lowercase letters and digits) and the set name rule.
std::string op_environment_problem(std::string_view id) {
    if (text::is_op_environment_id(id) && text::is_valid_secret_set_name(id)) return {};
    return "expected a 1Password Environment ID (lowercase letters and digits, as 1Password's "
           "Copy ID gives it), got " + toml_string(id);
}

std::string op_reference_problem(std::string_view ref) {
    if (ref.starts_with("op://") && ref.size() > 5 && ref.size() <= 1024 && !has_control(ref)) return {};
    return "expected a 1Password secret reference like \"op://vault/item/field\", got " + toml_string(ref);
}

std::string variable_problem(std::string_view name) {
    if (text::is_valid_secret_name(name)) return {};
    return "expected a variable name (letters, digits and \"_\", not starting with a digit; not "
           "UID, EUID, PPID, BASHOPTS, SHELLOPTS, BASH_VERSINFO or _), got " + toml_string(name);
}

std::string path_problem(std::string_view path) {
    if (path.empty()) return "must not be empty";
    if (has_control(path)) return "must not contain control characters, got " + toml_string(path);
    return {};
}

std::string argv_problem(std::string_view word) {
    if (word.find('\0') != std::string_view::npos) return "must not contain NUL";
    return {};
}

// The one wording of the project name rule lives in text::require_valid_project_name.
std::string project_name_problem(std::string_view name) {
    try {
        text::require_valid_project_name(name);
        return {};
    } catch (const usage_error& e) {
        return e.what();
    }
}

// ---- Values that are more than one string ----

std::optional<std::string> read_size(const field& f) {
    std::optional<std::string> size;
    if (const auto* i = f.value.as_integer())
        size = normalize_size(std::to_string(i->get()));
    else if (const auto* s = f.value.as_string())
        size = normalize_size(s->get());
    if (!size) f.report(std::string(size_forms) + describe(f.value));
    return size;
}

std::optional<int> read_port(const field& f) {
    const auto n = detail::read_integer(f);
    if (!n) return std::nullopt;
    if (*n < 1 || *n > 65535) {
        f.report("expected a port from 1 to 65535, got " + std::to_string(*n));
        return std::nullopt;
    }
    return static_cast<int>(*n);
}

std::optional<port_forwarding> read_ports(const field& f) {
    using policy = port_forwarding::policy;
    if (const auto* b = f.value.as_boolean())
        return port_forwarding{b->get() ? policy::all : policy::none, {}};
    const auto* array = f.value.as_array();
    if (!array) {
        f.report("expected true, false or an array of port numbers, got " + describe(f.value));
        return std::nullopt;
    }
    // `ports = []` forwards nothing: the same as `ports = false`, so consumers see one form.
    port_forwarding listed{array->empty() ? policy::none : policy::listed, {}};
    bool ok = true;
    for (std::size_t i = 0; i < array->size(); ++i) {
        const auto port = read_port(detail::element_field(f, *array, i));
        if (port) listed.ports.push_back(*port);
        ok = ok && port;
    }
    if (!ok) return std::nullopt;
    return listed;
}

// `host_ports = [5432, 6379]`: host loopback ports the VM may reach, each once.
std::optional<std::vector<int>> read_host_ports(const field& f) {
    const auto* array = f.value.as_array();
    if (!array) {
        f.report("expected an array of port numbers, got " + describe(f.value));
        return std::nullopt;
    }
    std::vector<int> ports;
    std::set<int> seen;
    bool ok = true;
    for (std::size_t i = 0; i < array->size(); ++i) {
        const field e = detail::element_field(f, *array, i);
        const auto port = read_port(e);
        if (port && !seen.insert(*port).second) {
            e.report("port " + std::to_string(*port) + " is listed twice");
            ok = false;
        } else if (port) {
            ports.push_back(*port);
        }
        ok = ok && port;
    }
    if (!ok) return std::nullopt;
    return ports;
}

// A cloned repository's .machine.toml is hostile: its allowlist is bounded like everything
// else read from it (and projects.toml gets the same bounds, one rule for both).
constexpr std::size_t max_egress_entries = 256;

// ---- [[web.secrets]]: one source of secrets per table ----

// What one entry may say; read_secret_entry() then checks the combination.
struct secret_entry_fields {
    secret_source entry;
    int sources = 0;  ///< how many of op_environment, op_reference, dotenv_file, command
    bool has_variable = false;
};

void apply_secret_set(const field& f, secret_entry_fields& e) {
    if (auto v = detail::read_string(f, secret_set_problem)) e.entry.set = *v;
}
// A source key: counts towards "exactly one source", and says which kind the entry is.
void read_source(const field& f, secret_entry_fields& e, secret_kind kind, detail::string_rule rule) {
    ++e.sources;
    e.entry.kind = kind;
    if (auto v = detail::read_string(f, rule)) e.entry.value = *v;
}
void apply_op_environment(const field& f, secret_entry_fields& e) {
    read_source(f, e, secret_kind::op_environment, op_environment_problem);
}
void apply_op_reference(const field& f, secret_entry_fields& e) {
    read_source(f, e, secret_kind::op_reference, op_reference_problem);
}
void apply_dotenv_file(const field& f, secret_entry_fields& e) {
    read_source(f, e, secret_kind::dotenv_file, path_problem);
}
void apply_secret_variable(const field& f, secret_entry_fields& e) {
    e.has_variable = true;
    if (auto v = detail::read_string(f, variable_problem)) e.entry.variable = *v;
}
void apply_secret_command(const field& f, secret_entry_fields& e) {
    ++e.sources;
    e.entry.kind = secret_kind::command;
    auto v = detail::read_strings(f, argv_problem);
    if (!v) return;
    if (v->empty() || v->front().empty())
        f.report("expected a program and its arguments, such as [\"pass\", \"show\", \"web/env\"]; the program must not be empty");
    else
        e.entry.argv = std::move(*v);
}

constexpr key_rule<secret_entry_fields> secret_keys[] = {
    {"op_environment", apply_op_environment},
    {"op_reference", apply_op_reference},
    {"variable", apply_secret_variable},
    {"dotenv_file", apply_dotenv_file},
    {"command", apply_secret_command},
    {"set", apply_secret_set},
};

std::optional<secret_source> read_secret_entry(const field& f) {
    const auto* table = f.value.as_table();
    if (!table) {
        f.report("expected a table ([[...secrets]] or { op_environment = \"...\" }), got " + describe(f.value));
        return std::nullopt;
    }
    secret_entry_fields e;
    detail::apply_table<secret_entry_fields>(*table, f.path, secret_keys, e, f.out);
    // A misspelt key is the problem to show, not the missing source it leaves behind.
    for (auto&& [key, value] : *table)
        if (!detail::find_rule<secret_entry_fields>(secret_keys, key.str())) return std::nullopt;
    const bool reference = e.entry.kind == secret_kind::op_reference;
    if (e.sources != 1) {
        f.report(std::string(e.sources == 0 ? "names no source" : "names more than one source") +
                 ": give exactly one of op_environment, op_reference (with variable), dotenv_file, command");
        return std::nullopt;
    }
    if (reference && !e.has_variable) {
        f.report("op_reference needs `variable`, the name the value gets in the VM");
        return std::nullopt;
    }
    if (!reference && e.has_variable) {
        f.report("`variable` goes only with op_reference (the other sources name their own variables)");
        return std::nullopt;
    }
    e.entry.origin = f.out.locate(f.where, f.path);
    return std::move(e.entry);
}

void apply_secrets(const field& f, project& p) {
    const auto* array = f.value.as_array();
    if (!array) {
        f.report("expected an array of tables ([[" + f.path + "]]), got " + describe(f.value));
        return;
    }
    std::vector<secret_source> entries;
    for (std::size_t i = 0; i < array->size(); ++i)
        if (auto e = read_secret_entry(detail::element_field(f, *array, i))) entries.push_back(std::move(*e));
    p.secrets = std::move(entries);
}

void apply_secrets_on_up(const field& f, project& p) {
    if (auto v = detail::read_bool(f)) p.secrets_on_up = *v;
}

void apply_clone_timeout(const field& f, project& p) {
    const auto text = detail::read_string(f);
    if (!text) return;
    if (auto d = parse_duration(*text); d && *d <= std::chrono::hours(24))
        p.clone_timeout = *d;
    else
        f.report("expected a duration such as \"90s\", \"45m\" or \"1h\" (at most 24h), got " +
                 detail::toml_string(*text));
}

// An entry without `set` renders into the set its Environment ID names, else the project's.
void default_secret_sets(project& p) {
    for (auto& e : p.secrets)
        if (e.set.empty()) e.set = e.kind == secret_kind::op_environment ? e.value : p.name;
}

// ---- projects.toml top-level settings ----

// Where each element of `f` was written (each profile name, each egress entry), so that later
// checks (an unknown profile) and messages (where an allowed host came from) can point at it.
std::vector<std::string> element_origins(const field& f) {
    std::vector<std::string> at;
    if (const auto* array = f.value.as_array()) {
        for (std::size_t i = 0; i < array->size(); ++i) {
            const field e = detail::element_field(f, *array, i);
            at.push_back(f.out.locate(e.where, e.path));
        }
    } else {
        at.push_back(f.out.locate(f.where, f.path));
    }
    return at;
}

void apply_default_profile(const field& f, settings& s) {
    if (f.value.is_string()) {
        if (auto v = detail::read_string(f, profile_problem)) s.default_profile = {*v};
    } else if (f.value.is_array()) {
        if (auto v = detail::read_strings(f, profile_problem)) s.default_profile = std::move(*v);
    } else {
        f.report("expected a string or an array of strings, got " + describe(f.value));
        return;
    }
    s.default_profile_set = true;
    s.default_profile_origins = element_origins(f);
}

void apply_default_shell(const field& f, settings& s) {
    if (auto v = detail::read_string(f, shell_problem)) s.default_shell = *v;
}

void apply_default_ca_certs(const field& f, settings& s) {
    if (auto v = detail::read_strings(f, ca_cert_problem)) s.ca_certs = std::move(*v);
}

constexpr key_rule<settings> settings_keys[] = {
    {"default_profile", apply_default_profile},
    {"default_shell", apply_default_shell},
    {"ca_certs", apply_default_ca_certs},
};

// ---- One project: a projects.toml table, or .machine.toml at top level ----

void apply_repos(const field& f, project& p) {
    if (auto v = detail::read_strings(f, repo_problem)) p.repos = std::move(*v);
}
void apply_profiles(const field& f, project& p) {
    if (auto v = detail::read_strings(f, profile_problem)) p.profiles = std::move(*v);
    p.profile_origins = element_origins(f);
    p.builtin_profiles = false;
}
void apply_shell(const field& f, project& p) {
    if (auto v = detail::read_string(f, shell_problem)) p.shell = *v;
}
void apply_claude_mode(const field& f, project& p) {
    if (auto v = detail::read_string(f, claude_mode_problem)) p.claude_mode = *v;
}
void apply_repo_claude_mode(const field& f, project& p) {
    if (auto v = detail::read_string(f, repo_claude_mode_problem)) p.claude_mode = *v;
}
void apply_forward_agent(const field& f, project& p) {
    if (auto v = detail::read_bool(f)) p.forward_agent = *v;
}
void apply_cpus(const field& f, project& p) {
    const auto n = detail::read_integer(f);
    if (!n) return;
    if (const std::string problem = cpus_problem(*n); !problem.empty())
        f.report(problem);
    else
        p.cpus = static_cast<int>(*n);
}
void apply_arch(const field& f, project& p) {
    if (auto v = detail::read_string(f, arch_problem)) p.arch = *v;
}
void apply_memory(const field& f, project& p) {
    if (auto v = read_size(f)) p.memory = *v;
}
void apply_disk(const field& f, project& p) {
    if (auto v = read_size(f)) p.disk = *v;
}
void apply_ports(const field& f, project& p) {
    if (auto v = read_ports(f)) p.ports = std::move(*v);
}
void apply_ca_certs(const field& f, project& p) {
    if (auto v = detail::read_strings(f, ca_cert_problem)) p.ca_certs = std::move(*v);
}
void apply_host_ports(const field& f, project& p) {
    if (auto v = read_host_ports(f)) p.host_ports = std::move(*v);
}
void apply_egress(const field& f, project& p) {
    if (const auto* array = f.value.as_array(); array && array->size() > max_egress_entries) {
        f.report("at most " + std::to_string(max_egress_entries) + " entries, got " + std::to_string(array->size()));
        return;
    }
    auto v = detail::read_strings(f, egress_entry_problem);
    if (!v) return;
    p.egress = std::move(*v);
    p.egress_origins = element_origins(f);
}
void apply_repo_ca_certs(const field& f, project& p) {
    if (auto v = detail::read_strings(f, repo_ca_cert_problem)) p.ca_certs = std::move(*v);
}
void apply_agent_keys(const field& f, project& p) {
    if (auto v = detail::read_strings(f, fingerprint_problem)) p.agent_keys = std::move(*v);
}
void apply_agent_auth(const field& f, project& p) {
    auto v = detail::read_strings(f, agent_auth_problem);
    if (!v) return;
    const auto* array = f.value.as_array();
    for (std::size_t i = 0; i < v->size(); ++i)
        if (std::find(v->begin(), v->begin() + static_cast<long>(i), (*v)[i]) != v->begin() + static_cast<long>(i)) {
            detail::element_field(f, *array, i).report(toml_string((*v)[i]) + " is listed twice");
            return;
        }
    p.agent_auth = std::move(*v);
}
void apply_name(const field& f, project& p) {
    if (auto v = detail::read_string(f, project_name_problem)) p.name = *v;
}

// In this order in "valid keys: ..." messages.
constexpr key_rule<project> project_keys[] = {
    {"repos", apply_repos},
    {"profiles", apply_profiles},
    {"shell", apply_shell},
    {"claude_mode", apply_claude_mode},
    {"forward_agent", apply_forward_agent},
    {"cpus", apply_cpus},
    {"memory", apply_memory},
    {"disk", apply_disk},
    {"arch", apply_arch},
    {"ports", apply_ports},
    {"host_ports", apply_host_ports},
    {"egress", apply_egress},
    {"ca_certs", apply_ca_certs},
    {"agent_keys", apply_agent_keys},
    {"agent_auth", apply_agent_auth},
    {"secrets", apply_secrets},
    {"secrets_on_up", apply_secrets_on_up},
    {"clone_timeout", apply_clone_timeout},
};

// .machine.toml: `name`, then the keys of a project table.
std::span<const key_rule<project>> local_keys() {
    static const std::vector<key_rule<project>> keys = [] {
        std::vector<key_rule<project>> all{{"name", apply_name}};
        all.insert(all.end(), std::begin(project_keys), std::end(project_keys));
        for (auto& rule : all) {
            if (std::string_view(rule.name) == "ca_certs") rule.apply = apply_repo_ca_certs;
            if (std::string_view(rule.name) == "claude_mode") rule.apply = apply_repo_claude_mode;
        }
        return all;
    }();
    return keys;
}

// A top-level key that is neither a setting nor a table.
std::string top_level_unknown_key(std::string_view key) {
    std::string message =
        detail::unknown_key_message(key, detail::rule_names<settings>(settings_keys));
    if (detail::find_rule<project>(project_keys, key))
        message += " (project keys belong in a project's table, such as [web])";
    return message;
}

project read_project(const toml::key& key, const toml::table& table, const settings& defaults,
                     const fs::path& file, detail::problems& out) {
    const std::string name(key.str());
    // Reported without a key path: the problem is the name itself, shown in the message.
    if (const std::string problem = project_name_problem(name); !problem.empty())
        out.add(key.source(), "", problem);
    project p = defaults.defaults_for(name);
    detail::apply_table<project>(table, detail::join_key_path("", name), project_keys, p, out);
    default_secret_sets(p);
    p.source = file;
    p.configured = true;
    return p;
}

// `~/Sites/My App` -> `my-app`: lowercase, runs of other characters become one '-', no '-'
// at either end, at most 63 characters (the project name limit).
std::string slug(std::string_view s) {
    std::string out;
    bool gap = false;
    for (const char raw : s) {
        const char c = (raw >= 'A' && raw <= 'Z') ? static_cast<char>(raw - 'A' + 'a') : raw;
        if (is_lower_alnum(c)) {
            if (gap && !out.empty()) out += '-';
            out += c;
            gap = false;
        } else {
            gap = true;
        }
    }
    out.resize(std::min<std::size_t>(out.size(), 63));
    while (!out.empty() && out.back() == '-') out.pop_back();
    return out;
}

std::string name_from_directory(const fs::path& dir, const fs::path& file) {
    std::string name = slug(dir.filename().string());
    if (name.empty()) {
        throw config_error(text::sanitize_for_terminal(
            file.string() + ": cannot derive a project name from directory \"" + dir.string() +
            "\"; set name in .machine.toml"));
    }
    return name;
}

// The default repo of a .machine.toml project: its checkout's origin remote, if any.
std::vector<std::string> origin_repos(const fs::path& dir) {
    const auto origin = detail::find_origin(dir);
    if (!origin) return {};
    if (const std::string problem = repo_problem(origin->url); !problem.empty()) {
        throw config_error(text::sanitize_for_terminal(origin->config_file.string() +
                                                       ": remote.origin.url: " + problem));
    }
    return {origin->url};
}

} // namespace

std::string egress_entry_problem(std::string_view entry) {
    constexpr std::size_t max_bytes = 255;
    if (entry.size() > max_bytes) return "longer than " + std::to_string(max_bytes) + " bytes: not a host name";
    if (std::string problem = net::host_pattern_problem(entry); !problem.empty())
        return problem + ", got " + toml_string(entry);
    return {};
}

project settings::defaults_for(const std::string& name) const {
    project p;
    p.name = name;
    p.profiles = default_profile;
    p.profile_origins = default_profile_origins;
    p.builtin_profiles = !default_profile_set;
    p.shell = default_shell;
    p.ca_certs = ca_certs;
    p.cpus = std::clamp(host.cpus, 1, 4);
    // Half the host's RAM keeps the host usable with one VM running.
    p.memory = std::to_string(std::clamp(host.memory_bytes / 2 / gib, 1LL, 8LL)) + "GiB";
    p.disk = "30GiB";
    return p;
}

std::string config::ambient_project() const { return local_project.value_or("default"); }

project config::resolve(const std::string& name) const {
    text::require_valid_project_name(name);
    if (const auto it = projects.find(name); it != projects.end()) return it->second;
    return defaults.defaults_for(name);
}

config parse_projects(std::string_view text, const fs::path& file_label, const host_resources& host) {
    const toml::table doc = detail::parse_toml(text, file_label);
    detail::problems out(file_label);
    config result;
    result.defaults.host = host;
    result.projects_file = file_label;
    result.projects_file_exists = true;

    // Settings first, wherever they are in the (unordered) table: projects default from them.
    std::vector<std::pair<const toml::key*, const toml::table*>> tables;
    for (auto&& [key, value] : doc) {
        const field f{value, detail::join_key_path("", key.str()), key.source(), out};
        if (const auto* rule = detail::find_rule<settings>(settings_keys, key.str()))
            rule->apply(f, result.defaults);
        else if (const auto* table = value.as_table())
            tables.emplace_back(&key, table);
        else if (value.is_array_of_tables())
            f.report(std::string("expected a table ([name]), got an array of tables ([[name]])") +
                     (key.str() == "secrets" ? "; a project's secrets go in [[<project>.secrets]]" : ""));
        else
            f.report(top_level_unknown_key(key.str()));
    }
    for (const auto& [key, table] : tables) {
        project p = read_project(*key, *table, result.defaults, file_label, out);
        result.projects.emplace(p.name, std::move(p));
    }
    out.raise_first();
    return result;
}

void overlay_local(config& into, std::string_view text, const fs::path& file_path) {
    const toml::table doc = detail::parse_toml(text, file_path);
    detail::problems out(file_path);
    project p = into.defaults.defaults_for("");
    detail::apply_table<project>(doc, "", local_keys(), p, out);
    out.raise_first();

    // A repository's file comes with the code, which may not be the user's: it may name
    // 1Password items (1Password asks before each read), but not run commands or read files
    // on this computer.
    for (const auto& e : p.secrets) {
        if (e.kind == secret_kind::command || e.kind == secret_kind::dotenv_file)
            throw config_error(text::sanitize_for_terminal(
                e.origin + ": " + (e.kind == secret_kind::command ? "command" : "dotenv_file") +
                " secrets run or read on this computer, so a repository's .machine.toml cannot declare them; "
                "put this entry in projects.toml"));
    }

    const fs::path dir = fs::absolute(file_path).lexically_normal().parent_path();
    if (p.name.empty()) p.name = name_from_directory(dir, file_path);
    if (!doc.contains("repos")) p.repos = origin_repos(dir);
    default_secret_sets(p);
    p.source = file_path;
    p.from_repository = true;
    p.configured = true;

    // Except for the agents' logins: a cloned repository is not the user's, so its file may
    // only narrow what projects.toml lets this project's VM receive (the table's agent_auth,
    // or every tool when the table has none or there is no table), never widen it.
    if (const auto table = into.projects.find(p.name); table != into.projects.end() && table->second.agent_auth) {
        const std::vector<std::string>& allowed = *table->second.agent_auth;
        if (!p.agent_auth) p.agent_auth = allowed;
        std::erase_if(*p.agent_auth, [&](const std::string& tool) {
            return std::find(allowed.begin(), allowed.end(), tool) == allowed.end();
        });
    }

    // The committed file describes the whole project: it replaces a table of the same name
    // rather than merging with it, as in the reference tool.
    into.local_shadows_table = into.projects.count(p.name) > 0;
    into.local_file = file_path;
    into.local_project = p.name;
    into.projects.insert_or_assign(p.name, std::move(p));
}

} // namespace machine::config
