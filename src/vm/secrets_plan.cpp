// Which secret sets `machine secrets` renders: the host decides, from the project's declarations;
// the VM's .envrc files only say which repos load which declared set.
#include "machine/vm.hpp"

#include <algorithm>

#include "machine/error.hpp"
#include "machine/text.hpp"

namespace machine::vm {

namespace pr = machine::protocol;

std::string shown_envrc(const pr::envrc_secrets& r) {
    return text::escape_for_terminal("~/code/" + r.dir + "/.envrc");
}

bool repo_matches(const pr::envrc_secrets& r, const std::string& repo) {
    if (r.dir == repo) return true;
    const auto slash = r.dir.rfind('/');
    return slash != std::string::npos && r.dir.compare(slash + 1, std::string::npos, repo) == 0;
}

namespace {

// What a user adds to projects.toml so that a set the VM asks for is rendered.
std::string entry_to_declare(const config::project& p, const std::string& set) {
    if (text::is_op_environment_id(set))
        return "[[" + p.name + ".secrets]] op_environment = \"" + set + "\"";
    return "a [[" + p.name + ".secrets]] entry with set = \"" + set + "\"";
}

} // namespace

secrets_plan plan_secret_sets(const config::project& p, const std::vector<pr::envrc_secrets>& repos,
                              const std::optional<std::string>& only_repo) {
    secrets_plan plan;
    auto find = [&plan](const std::string& name) -> planned_set* {
        for (auto& s : plan.sets)
            if (s.name == name) return &s;
        return nullptr;
    };
    for (const auto& source : p.secrets) {
        planned_set* s = find(source.set);
        if (!s) s = &plan.sets.emplace_back(planned_set{source.set, {}, {}});
        s->sources.push_back(source);
    }
    std::vector<std::string> wanted;  // with --repo: the sets that repo uses
    bool repo_found = false;
    for (const auto& r : repos) {
        const bool selected = only_repo && repo_matches(r, *only_repo);
        repo_found = repo_found || selected;
        // With --repo, the other repos' lines are none of this command's business.
        const bool speak = !only_repo || selected;
        auto warn = [&](const std::string& text) {
            if (speak) plan.warnings.push_back(text);
        };
        for (const auto& use : r.uses) {
            const std::string where = shown_envrc(r) + ":" + std::to_string(use.line);
            const std::string token = text::escape_for_terminal(use.set);
            if (!text::is_valid_secret_set_name(use.set)) {
                warn(where + ": '" + token + "' is not a secret set name (1-64 of a-z 0-9 _ -); skipped");
                continue;
            }
            planned_set* s = find(use.set);
            if (!s) {
                warn(where + ": set '" + token + "' is not declared for " + p.name +
                     "; not rendered (a VM cannot choose what this computer reads). To render it, add " +
                     entry_to_declare(p, use.set) + " to projects.toml");
                continue;
            }
            if (std::find(s->used_by.begin(), s->used_by.end(), shown_envrc(r)) == s->used_by.end())
                s->used_by.push_back(shown_envrc(r));
            if (selected && std::find(wanted.begin(), wanted.end(), use.set) == wanted.end()) wanted.push_back(use.set);
        }
    }
    if (only_repo) {
        const std::string repo = text::escape_for_terminal(*only_repo);
        if (!repo_found)
            throw error("no .envrc with a `use op_env` line for repo '" + repo + "' in VM '" + p.name +
                        "' (expected ~/code/" + repo + "/.envrc)");
        std::erase_if(plan.sets, [&](const planned_set& s) {
            return std::find(wanted.begin(), wanted.end(), s.name) == wanted.end();
        });
        if (plan.sets.empty()) throw error("repo '" + repo + "' in VM '" + p.name + "' uses no set its project declares");
    }
    return plan;
}

} // namespace machine::vm
