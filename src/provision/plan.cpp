// From profile names to the steps the guest agent applies, each with the hash of its whole
// definition.
#include "machine/provision.hpp"

#include <algorithm>
#include <functional>

#include <nlohmann/json.hpp>

#include "machine/sha256.hpp"
#include "machine/text.hpp"
#include "placeholders.hpp"

namespace machine::provision {

namespace {

std::string quote_name(std::string_view s) { return "\"" + text::sanitize_for_terminal(s) + "\""; }

std::string expand(std::string_view value, const host_values& host) {
    std::string out;
    std::size_t pos = 0;
    for (;;) {
        const auto at = value.find("${", pos);
        if (at == std::string_view::npos) break;
        const auto end = value.find('}', at);
        if (end == std::string_view::npos) break;  // refused when the profile was parsed
        out.append(value.substr(pos, at - pos));
        const std::string_view key = value.substr(at + 2, end - at - 2);
        if (const auto* p = detail::find_placeholder(key)) out += p->value(host);  // none unknown: parsing refused those
        pos = end + 1;
    }
    out.append(value.substr(pos));
    return out;
}

// The hash covers everything the agent is asked to do, in a fixed encoding: change any of it
// (a script, the user, an env value such as the signing key, the timeout) and the step runs
// again on the next `up`.
std::string hash_of(const planned_step& s) {
    nlohmann::ordered_json j;
    j["name"] = s.name;
    j["user"] = s.user;
    auto env = nlohmann::ordered_json::array();
    for (const auto& [k, v] : s.env) env.push_back({k, v});
    j["env"] = env;
    j["check"] = s.check;
    j["run"] = s.run;
    j["timeout_ms"] = s.timeout_ms;
    j["after_clone"] = s.after_clone;
    sha256 h;
    h.update(j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
    return h.hex_digest();
}

} // namespace

std::vector<std::string> script_argv(const std::string& script) {
    return {"bash", "-e", "-u", "-o", "pipefail", "-c", script};
}

std::vector<std::string> resolve_profiles(const catalog& cat, const std::vector<std::string>& wanted,
                                          const std::function<std::string(std::size_t)>& where) {
    std::vector<std::string> order;
    std::vector<std::string> path;  // the chain of requirements being expanded (cycle check)
    std::function<void(const std::string&, const std::string&)> visit = [&](const std::string& name,
                                                                           const std::string& from) {
        if (std::find(order.begin(), order.end(), name) != order.end()) return;
        if (std::find(path.begin(), path.end(), name) != path.end()) {
            std::string chain;
            for (const auto& p : path) chain += p + " -> ";
            throw config::config_error(from + ": profiles require each other in a cycle: " + chain + name);
        }
        const profile* p = cat.find(name);
        if (!p) {
            const auto names = cat.names();
            std::string hint;
            if (const std::string match = text::closest_match(name, names); !match.empty())
                hint = " (did you mean " + quote_name(match) + "?)";
            else {
                for (const auto& n : names) hint += (hint.empty() ? " (known: " : ", ") + n;
                if (!hint.empty()) hint += ")";
            }
            throw config::config_error(from + ": unknown profile " + quote_name(name) + hint);
        }
        path.push_back(name);
        for (const auto& r : p->requires_) visit(r, p->source + ": requires");
        path.pop_back();
        order.push_back(name);
    };
    for (std::size_t i = 0; i < wanted.size(); ++i) visit(wanted[i], where(i));
    return order;
}

plan make_plan(const catalog& cat, const std::vector<std::string>& profiles, const host_values& host) {
    plan out;
    out.profiles = profiles;
    for (const auto& name : profiles) {
        const profile* p = cat.find(name);
        if (!p) throw config::config_error("unknown profile " + quote_name(name));
        for (const auto& s : p->steps) {
            planned_step ps;
            ps.name = s.name;
            ps.profile = name;
            ps.user = s.user == run_as::root ? "root" : host.vm_user;
            for (const auto& [k, v] : s.env) ps.env.emplace_back(k, expand(v, host));
            ps.after_clone = s.after_clone;
            ps.bake = s.bake;
            if (s.after_clone) {
                std::string dirs;
                for (const auto& d : host.repo_dirs) dirs += (dirs.empty() ? "" : " ") + d;
                ps.env.emplace_back("MACHINE_REPOS", dirs);
                std::sort(ps.env.begin(), ps.env.end());
            }
            if (!s.check.empty()) ps.check = script_argv(s.check);
            ps.run = script_argv(s.run);
            ps.timeout_ms = static_cast<std::uint64_t>(s.timeout.count());
            ps.hash = hash_of(ps);
            out.steps.push_back(std::move(ps));
        }
    }
    return out;
}

plan bakeable_prefix(const catalog& cat, const plan& p) {
    plan out;
    for (const auto& name : p.profiles) {
        const profile* prof = cat.find(name);
        if (!prof || !prof->bake) break;
        out.profiles.push_back(name);
    }
    for (const auto& s : p.steps)
        if (!s.after_clone && s.bake && std::find(out.profiles.begin(), out.profiles.end(), s.profile) != out.profiles.end())
            out.steps.push_back(s);
    return out;
}

} // namespace machine::provision
