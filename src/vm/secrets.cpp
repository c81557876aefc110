// A project's secrets (`machine secrets`, `up` with secrets_on_up, `watch` after a boot), read on this computer into
// memory only, sent over the SSH channel to the guest agent, which writes them into a tmpfs in
// the VM (guest-agent/PROTOCOL.md §4 `secrets.*`, §8). Nothing here writes a value anywhere, and
// no message carries one: they name sets, sources, variables and counts.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "agent_channel.hpp"
#include "machine/agent_tools.hpp"
#include "machine/async.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/secrets.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
namespace pr = machine::protocol;
using asio::awaitable;
using namespace std::chrono_literals;
using detail::agent_request;

namespace {

// `~/x` is in the home directory; a relative path is relative to the file that declared it.
fs::path resolve_path(const std::string& written, const config::project& p) {
    if (written == "~" || written.starts_with("~/")) return paths::home_dir() / written.substr(std::min<std::size_t>(2, written.size()));
    const fs::path path(written);
    if (path.is_absolute() || p.source.empty()) return path;
    return p.source.parent_path() / path;
}

// A declared source as the providers read it: both use one secret_kind (machine/secret_kind.hpp);
// this maps config's fields (the path as written, relative to its file) onto the provider's.
// The providers (src/secrets) know nothing of projects.toml, and config nothing of reading
// secrets; this module is the one that knows both.
secrets::source to_provider(const config::secret_source& s, const config::project& p) {
    secrets::source out;
    out.kind = s.kind;
    switch (s.kind) {
    case secret_kind::op_environment:
        out.id_or_ref_or_path = s.value;
        break;
    case secret_kind::op_reference:
        out.id_or_ref_or_path = s.value;
        out.name = s.variable;
        break;
    case secret_kind::dotenv_file:
        out.id_or_ref_or_path = resolve_path(s.value, p).string();
        break;
    case secret_kind::command:
        out.argv = s.argv;
        break;
    }
    return out;
}

// A set read into memory: its variables in first-definition order, later sources winning.
struct read_set {
    pr::secrets_render_request request;
    ~read_set() { pr::wipe_secrets(request); }
};

// Rough size of the set's one protocol line: base64 values plus the JSON around each.
std::size_t encoded_size(const pr::secrets_render_request& r) {
    std::size_t n = 128 + r.set.size();
    for (const auto& v : r.variables) n += 32 + v.name.size() + (v.value.size() + 2) / 3 * 4;
    return n;
}

// Reads one planned set. A failing source throws, naming the source, never a value.
awaitable<void> read_planned(const planned_set& plan, const config::project& p, read_set& out) {
    out.request.set = plan.name;
    std::map<std::string, std::size_t> index;  // name -> position in request.variables
    for (const auto& source : plan.sources) {
        std::vector<secrets::variable> vars;
        try {
            vars = co_await secrets::read(to_provider(source, p), "op");
        } catch (const error& e) {
            throw error(text::sanitize_for_terminal(source.origin + ": " + e.what()));
        }
        for (auto& v : vars) {
            if (!text::is_valid_secret_name(v.name)) {
                const std::string name = text::sanitize_for_terminal(v.name);
                secrets::wipe(vars);
                throw error(source.origin + ": variable '" + name + "' cannot be set from a file (bash reserves it)");
            }
            const auto [it, added] = index.try_emplace(v.name, out.request.variables.size());
            if (added) out.request.variables.push_back(pr::secret_variable{v.name, {}});
            pr::secret_variable& slot = out.request.variables[it->second];
            pr::wipe_secret_bytes(slot.value);
            slot.value = std::move(v.value);
        }
        secrets::wipe(vars);
    }
    if (out.request.variables.size() > pr::max_secret_variables)
        throw error("set '" + plan.name + "' has " + std::to_string(out.request.variables.size()) +
                    " variables; at most " + std::to_string(pr::max_secret_variables) + " fit in one set");
    for (const auto& v : out.request.variables)
        if (v.value.size() > pr::max_secret_value_bytes)
            throw error("set '" + plan.name + "': the value of " + v.name + " is " + std::to_string(v.value.size()) +
                        " bytes; at most 64 KiB per value");
    if (encoded_size(out.request) > pr::max_line_bytes)
        throw error("set '" + plan.name + "' is too large for one request (about 760 KiB of values); split it into "
                    "several sets");
}

std::string plural(std::size_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string seconds(std::chrono::milliseconds d) { return fmt::format("{:.2f} s", static_cast<double>(d.count()) / 1000.0); }

// The agent of running VM `name` (through its master when it has one, started while it is listed).
awaitable<std::unique_ptr<guest::connection>> agent_of(context& ctx, const std::string& name) {
    co_return co_await connect_to_running_agent(ctx, name, 10s);
}

// sync_secrets over the agent's connection `conn`, which it began to open at `t_start`.
awaitable<void> sync_secrets_with(context& ctx, const config::project& project, guest::connection& conn,
                                  secrets_sync_options options, std::chrono::steady_clock::time_point t_start) {
    const std::string& name = project.name;
    const auto t_open = std::chrono::steady_clock::now();
    const std::vector<pr::envrc_secrets> repos = co_await agent_request(conn.discover_secrets(), name);
    secrets_plan planned = plan_secret_sets(project, repos, options.repo);
    for (const auto& w : planned.warnings) ctx.emit(events::message(name, "warning", w));
    std::vector<planned_set>& plan = planned.sets;
    if (options.only_missing) {
        const std::vector<pr::secret_set_info> present = co_await agent_request(conn.list_secrets(), name);
        std::erase_if(plan, [&](const planned_set& s) {
            return std::any_of(present.begin(), present.end(), [&](const pr::secret_set_info& i) { return i.set == s.name; });
        });
        if (plan.empty()) co_return;
    }
    if (plan.empty()) {
        if (!options.required) {
            ctx.emit(events::message(name, "warning", "secrets_on_up is set, but the project declares no secrets"));
            co_return;
        }
        const std::string where = project.source.empty() ? "projects.toml" : project.source.string();
        throw error(text::sanitize_for_terminal("nothing to render for '" + name + "': no [[" + name +
                                                ".secrets]] in " + where + " (a VM's .envrc chooses no secret)"));
    }

    // Every source first: one that fails (1Password locked, a command failing, a malformed
    // file) leaves the VM's sets as they were.
    const auto t_read = std::chrono::steady_clock::now();
    std::vector<read_set> sets(plan.size());
    for (std::size_t i = 0; i < plan.size(); ++i) co_await read_planned(plan[i], project, sets[i]);

    const auto t0 = std::chrono::steady_clock::now();
    std::size_t total = 0;
    for (std::size_t i = 0; i < plan.size(); ++i) {
        const pr::secrets_render_result r =
            co_await agent_request(conn.render_secrets(std::move(sets[i].request)), name);
        total += r.count;
        std::string line = "rendered " + plan[i].name + ": " + plural(r.count, "variable", "variables") + " in " +
                           text::sanitize_for_terminal(r.path);
        if (plan[i].used_by.empty()) {
            line += " (no .envrc uses it yet: add `use op_env " + plan[i].name + "` to a repo's .envrc)";
        } else {
            std::string users;
            for (const auto& u : plan[i].used_by) users += (users.empty() ? "" : ", ") + u;
            line += " (loaded by " + users + ")";
        }
        ctx.say(name, line);
    }
    ctx.say(name, "rendered " + plural(plan.size(), "set", "sets") + " (" + plural(total, "variable", "variables") +
                      ") into '" + name + "' in " + seconds(since(t0)));
    spdlog::debug("vm={} secrets: agent channel {} ms, discovery {} ms, sources read {} ms, rendered {} ms", name,
                  std::chrono::duration_cast<std::chrono::milliseconds>(t_open - t_start).count(),
                  std::chrono::duration_cast<std::chrono::milliseconds>(t_read - t_open).count(),
                  std::chrono::duration_cast<std::chrono::milliseconds>(t0 - t_read).count(), since(t0).count());
}

} // namespace

awaitable<void> sync_secrets(context& ctx, const config::project& project, guest::connection& agent,
                             secrets_sync_options options) {
    co_await sync_secrets_with(ctx, project, agent, std::move(options), std::chrono::steady_clock::now());
}

awaitable<void> sync_secrets(context& ctx, const config::project& project, secrets_sync_options options) {
    const auto t_start = std::chrono::steady_clock::now();
    auto conn = co_await agent_of(ctx, project.name);
    co_await sync_secrets_with(ctx, project, *conn, std::move(options), t_start);
}

awaitable<std::vector<std::string>> clear_secrets(context& ctx, const config::project& p, std::optional<std::string> repo) {
    auto conn = co_await agent_of(ctx, p.name);
    std::vector<std::optional<std::string>> targets;
    if (!repo) {
        // Every set of the project's, not the agents' logins (machine logout removes those).
        const std::vector<pr::secret_set_info> present = co_await agent_request(conn->list_secrets(), p.name);
        for (const auto& s : present)
            if (!is_credential_set_name(s.set)) targets.emplace_back(s.set);
    } else {
        const std::vector<pr::envrc_secrets> repos = co_await agent_request(conn->discover_secrets(), p.name);
        targets.clear();
        bool found = false;
        for (const auto& r : repos) {
            if (!repo_matches(r, *repo)) continue;
            found = true;
            for (const auto& use : r.uses)
                if (text::is_valid_secret_set_name(use.set) && !is_credential_set_name(use.set))
                    targets.emplace_back(use.set);
        }
        if (!found)
            throw error("no .envrc with a `use op_env` line for repo '" + text::sanitize_for_terminal(*repo) +
                        "' in VM '" + p.name + "'");
    }
    std::vector<std::string> cleared;
    for (auto& target : targets) {
        const std::vector<std::string> these = co_await agent_request(conn->clear_secrets(target), p.name);
        cleared.insert(cleared.end(), these.begin(), these.end());
    }
    co_return cleared;
}

awaitable<std::vector<pr::secret_set_info>> list_secrets(context& ctx, const config::project& p) {
    auto conn = co_await agent_of(ctx, p.name);
    std::vector<pr::secret_set_info> sets = co_await agent_request(conn->list_secrets(), p.name);
    conn.reset();
    // The agents' logins are not the project's secrets: `machine login --status` shows them.
    std::erase_if(sets, [](const pr::secret_set_info& s) { return is_credential_set_name(s.set); });
    co_return sets;
}

} // namespace machine::vm
