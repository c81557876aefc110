// Profile files: parsing (with the config module's TOML toolkit, so a bad user profile gets the
// same `file:line:col: key: problem` errors as projects.toml) and the catalog.
#include "machine/provision.hpp"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "machine/text.hpp"
#include "placeholders.hpp"
#include "toml_fields.hpp"

namespace machine::provision {

namespace {

using config::config_error;
using config::detail::field;
using config::detail::key_rule;
using config::detail::problems;

#include "builtin_profiles.inc"  // kBuiltinProfiles: {name, text} for templates/profiles/*.toml

bool is_name_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'; }

std::string step_name_problem(std::string_view name) {
    const bool ok = !name.empty() && name.size() <= 48 && name.front() != '-' && name.front() != '_' &&
                    std::all_of(name.begin(), name.end(), is_name_char);
    if (ok) return {};
    return "invalid step name " + config::detail::toml_string(name) +
           " (1-48 of a-z, 0-9, \"-\" and \"_\", starting with a letter or digit)";
}

std::string profile_name_problem(std::string_view name) {
    const bool ok = !name.empty() && name.size() <= 48 && name.front() != '-' && name.front() != '_' &&
                    std::all_of(name.begin(), name.end(), is_name_char);
    if (ok) return {};
    return "invalid profile name " + config::detail::toml_string(name);
}

// The placeholders an env value may hold; anything else that looks like one is a typo.
std::string env_value_problem(std::string_view value) {
    for (std::size_t at = value.find("${"); at != std::string_view::npos; at = value.find("${", at + 2)) {
        const auto end = value.find('}', at);
        if (end == std::string_view::npos) return "unterminated \"${\" in " + config::detail::toml_string(value);
        const std::string_view key = value.substr(at + 2, end - at - 2);
        if (!detail::find_placeholder(key)) {
            std::string list;
            for (const auto& p : detail::placeholders())
                list += (list.empty() ? "" : ", ") + ("${" + std::string(p.name) + "}");
            return "unknown placeholder ${" + std::string(key) + "} (known: " + list + ")";
        }
    }
    return {};
}

bool uses_git_values(std::string_view value) { return value.find("${git.") != std::string_view::npos; }
// A value that differs between projects: not for a base disk every project shares.
bool uses_project_values(std::string_view value) {
    const auto ps = detail::placeholders();
    return std::any_of(ps.begin(), ps.end(), [&](const detail::placeholder& p) {
        return p.per_project && value.find("${" + std::string(p.name) + "}") != std::string_view::npos;
    });
}

// ---- [[step]] ----

struct host_value_use {
    toml::source_region where;
    std::string path;
    bool git = false;  ///< a ${git.*} value (reading those runs git on the host)
    std::size_t step = 0;  ///< index of its step in the profile
};

struct step_draft {
    step s;
    std::vector<host_value_use> host_values;  ///< env entries with project values: refused when baked
};

// A step that can go into a cached base: its profile is baked and the step is not kept out of it.
bool baked(const profile& p, const step& s) { return p.bake && s.bake && !s.after_clone; }

void apply_step_name(const field& f, step_draft& d) {
    if (auto v = config::detail::read_string(f, step_name_problem)) d.s.name = *v;
}
void apply_step_user(const field& f, step_draft& d) {
    if (auto v = config::detail::read_string(f)) {
        if (*v == "root") d.s.user = run_as::root;
        else if (*v == "user") d.s.user = run_as::vm_user;
        else f.report("expected \"root\" or \"user\" (the VM's normal user), got " + config::detail::toml_string(*v));
    }
}
void apply_step_timeout(const field& f, step_draft& d) {
    if (auto v = config::detail::read_string(f)) {
        if (auto t = config::parse_duration(*v); t && *t <= std::chrono::hours(24)) d.s.timeout = *t;
        else f.report("expected a duration such as \"90s\", \"10m\" or \"1h\" (at most 24h), got " + config::detail::toml_string(*v));
    }
}
void apply_step_env(const field& f, step_draft& d) {
    const auto* table = f.value.as_table();
    if (!table) {
        f.report("expected a table of strings, got " + config::detail::describe(f.value));
        return;
    }
    for (auto&& [key, value] : *table) {
        const field entry{value, config::detail::join_key_path(f.path, key.str()), key.source(), f.out};
        const std::string k(key.str());
        const bool valid_key = !k.empty() && !(k[0] >= '0' && k[0] <= '9') &&
                               std::all_of(k.begin(), k.end(), [](char c) {
                                   return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
                               });
        if (!valid_key) {
            entry.report("not a valid environment variable name");
            continue;
        }
        if (auto v = config::detail::read_string(entry, env_value_problem)) {
            if (uses_project_values(*v)) d.host_values.push_back({entry.where, entry.path, uses_git_values(*v)});
            d.s.env.emplace_back(k, *v);
        }
    }
    std::sort(d.s.env.begin(), d.s.env.end());
}
void apply_step_after_clone(const field& f, step_draft& d) {
    if (auto v = config::detail::read_bool(f)) d.s.after_clone = *v;
}
void apply_step_bake(const field& f, step_draft& d) {
    if (auto v = config::detail::read_bool(f)) d.s.bake = *v;
}
void apply_step_check(const field& f, step_draft& d) {
    if (auto v = config::detail::read_string(f)) d.s.check = *v;
}
void apply_step_run(const field& f, step_draft& d) {
    if (auto v = config::detail::read_string(f)) d.s.run = *v;
}

constexpr key_rule<step_draft> step_keys[] = {
    {"name", apply_step_name}, {"user", apply_step_user}, {"timeout", apply_step_timeout},
    {"env", apply_step_env},   {"check", apply_step_check}, {"run", apply_step_run},
    {"after_clone", apply_step_after_clone}, {"bake", apply_step_bake},
};

// ---- the file's top level ----

struct profile_draft {
    profile p;
    std::vector<host_value_use> host_values;
};

void apply_description(const field& f, profile_draft& d) {
    if (auto v = config::detail::read_string(f)) d.p.description = *v;
}
void apply_requires(const field& f, profile_draft& d) {
    if (auto v = config::detail::read_strings(f, profile_name_problem)) d.p.requires_ = std::move(*v);
}
void apply_bake(const field& f, profile_draft& d) {
    if (auto v = config::detail::read_bool(f)) d.p.bake = *v;
}
void apply_egress(const field& f, profile_draft& d) {
    if (auto v = config::detail::read_strings(f, config::egress_entry_problem)) d.p.egress = std::move(*v);
}
void apply_steps(const field& f, profile_draft& d) {
    const auto* array = f.value.as_array();
    if (!array || !array->is_array_of_tables()) {
        f.report("expected [[step]] tables");
        return;
    }
    std::set<std::string> seen;
    for (std::size_t i = 0; i < array->size(); ++i) {
        const auto& table = *array->get(i)->as_table();
        const std::string prefix = f.path + "[" + std::to_string(i) + "]";
        step_draft draft;
        config::detail::apply_table<step_draft>(table, prefix, step_keys, draft, f.out);
        if (!table.contains("name")) f.out.add(table.source(), prefix, "missing `name`");
        if (!table.contains("run")) f.out.add(table.source(), prefix, "missing `run`");
        if (!draft.s.name.empty() && !seen.insert(draft.s.name).second) {
            for (auto&& [key, value] : table)  // the key's position, like every other message
                if (key.str() == "name")
                    f.out.add(key.source(), prefix + ".name", "duplicate step name \"" + draft.s.name + "\"");
        }
        for (auto& use : draft.host_values) use.step = i;
        d.host_values.insert(d.host_values.end(), draft.host_values.begin(), draft.host_values.end());
        d.p.steps.push_back(std::move(draft.s));
    }
}

constexpr key_rule<profile_draft> profile_keys[] = {
    {"description", apply_description}, {"requires", apply_requires},
    {"bake", apply_bake},               {"step", apply_steps},
    {"egress", apply_egress},
};

} // namespace

profile catalog::parse(std::string_view document, const std::string& name, const std::string& source) {
    const toml::table doc = config::detail::parse_toml(document, source);
    problems out(source);
    profile_draft draft;
    draft.p.name = name;
    draft.p.source = source;
    config::detail::apply_table<profile_draft>(doc, "", profile_keys, draft, out);
    if (!doc.contains("step")) out.add(doc.source(), "", "a profile needs at least one [[step]]");
    // A baked disk is shared by every project: it cannot hold one user's identity.
    draft.p.uses_git_values = std::any_of(draft.host_values.begin(), draft.host_values.end(),
                                          [](const host_value_use& u) { return u.git; });
    for (const auto& use : draft.host_values)
        if (use.step < draft.p.steps.size() && baked(draft.p, draft.p.steps[use.step]))
            out.add(use.where, use.path,
                    "${git.*}, ${vm.shell} and ${claude.mode} need `bake = false` (on the profile or the step): a "
                    "cached base is shared by every project");
    if (const std::string problem = profile_name_problem(name); !problem.empty())
        throw config_error(text::sanitize_for_terminal(source + ": " + problem));
    out.raise_first();
    for (auto& s : draft.p.steps) s.name = name + "." + s.name;
    return std::move(draft.p);
}

catalog catalog::builtin() {
    catalog c;
    for (const auto& [name, document] : kBuiltinProfiles)
        if (name) c.add(parse(document, name, std::string("builtin:") + name + ".toml"));
    return c;
}

catalog catalog::load(const std::filesystem::path& user_dir) {
    catalog c = builtin();
    std::error_code ec;
    if (!std::filesystem::is_directory(user_dir, ec)) return c;
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(user_dir, ec))
        if (entry.path().extension() == ".toml") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
        std::ifstream in(file, std::ios::binary);
        std::stringstream content;
        content << in.rdbuf();
        if (!in) throw config_error(text::sanitize_for_terminal(file.string() + ": cannot be read"));
        c.add(parse(content.str(), file.stem().string(), file.string()));
    }
    return c;
}

const profile* catalog::find(std::string_view name) const {
    const auto it = profiles_.find(name);
    return it == profiles_.end() ? nullptr : &it->second;
}

std::vector<std::string> catalog::names() const {
    std::vector<std::string> out;
    for (const auto& [name, p] : profiles_) out.push_back(name);
    return out;
}

void catalog::add(profile p) {
    std::string name = p.name;
    profiles_.insert_or_assign(std::move(name), std::move(p));
}

const std::vector<std::string>& default_profiles() {
    static const std::vector<std::string> all{"base", "docker", "node", "agents", "gh", "shell", "git-signing"};
    return all;
}

} // namespace machine::provision
