// The agents' logins (`machine login`, include/machine/credentials.hpp) delivered into a VM: each
// tool's credential is one more secret set (`secrets.render`, guest-agent/PROTOCOL.md §8) in the
// VM's tmpfs, named `machine-cred-<tool>-<fingerprint>`, which a login shell's profile sources.
//
// The fingerprint is of the login's description (tool, variable, source, when it was set), never
// of its value: the set's name says whether the VM has the current login without any value, or
// any digest of one, leaving this computer. So an attach that finds it in `secrets.list` renders
// nothing, and reads no source (no 1Password prompt on every `machine claude`).
#include <algorithm>

#include <spdlog/spdlog.h>

#include "agent_channel.hpp"
#include "machine/agent_tools.hpp"
#include "machine/credentials.hpp"
#include "machine/sha256.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::vm {

namespace pr = machine::protocol;
using asio::awaitable;
using detail::agent_request;

namespace {

std::string tool_prefix(std::string_view tool) {
    return std::string(credential_set_prefix) + std::string(tool) + "-";
}

bool allowed_for(const config::project& p, std::string_view tool) {
    return !p.agent_auth || std::find(p.agent_auth->begin(), p.agent_auth->end(), tool) != p.agent_auth->end();
}

std::string joined(const std::vector<std::string>& tools) {
    std::string out;
    for (const auto& t : tools) out += (out.empty() ? "" : ", ") + t;
    return out;
}

} // namespace

std::string credential_set_name(const credentials::login& l) {
    sha256 h;
    for (const std::string_view part : {std::string_view(l.tool), std::string_view(l.variable),
                                        credentials::kind_name(l.kind), std::string_view(l.op_reference)}) {
        h.update(part);
        h.update(std::string_view("\0", 1));
    }
    for (const auto& a : l.argv) {
        h.update(a);
        h.update(std::string_view("\0", 1));
    }
    h.update(l.set_at);
    return tool_prefix(l.tool) + h.hex_digest().substr(0, 16);
}

std::vector<std::string> credentials_for(const config::project& p, const credentials::store& store) {
    std::vector<std::string> out;
    for (const auto tool : agent_tools)
        if (allowed_for(p, tool) && store.find(tool)) out.emplace_back(tool);
    return out;
}

awaitable<credentials_outcome> sync_credentials(const config::project& project, guest::connection& agent,
                                                credentials_sync_options options) {
    const std::string& name = project.name;
    const credentials::store store = options.store ? *options.store : credentials::store::at_default();
    const std::vector<pr::secret_set_info> present = co_await agent_request(agent.list_secrets(), name);
    const auto in_vm = [&](const std::string& set) {
        return std::any_of(present.begin(), present.end(), [&](const pr::secret_set_info& i) { return i.set == set; });
    };

    credentials_outcome out;
    for (const auto tool_view : agent_tools) {
        const std::string tool(tool_view);
        if (options.only_remove && *options.only_remove != tool) continue;  // logout: that tool only
        std::optional<credentials::login> login;
        if (allowed_for(project, tool) && !options.only_remove) {
            try {
                login = store.find(tool);
            } catch (const error& e) {
                // A login file machine refuses to read (a symlink, malformed): as if a source failed.
                out.warnings.push_back(text::sanitize_for_terminal("credentials: " + std::string(e.what())));
                out.kept.push_back(tool);
                continue;
            }
        }
        const std::string wanted = login ? credential_set_name(*login) : std::string();
        if (login) {
            if (!options.reread && in_vm(wanted)) {
                out.unchanged.push_back(tool);
            } else {
                pr::secrets_render_request request;
                request.set = wanted;
                try {
                    pr::secret_variable v;
                    v.value = co_await credentials::read_value(store, *login, "op");
                    v.name = login->variable;
                    request.variables.push_back(std::move(v));
                } catch (const error& e) {
                    pr::wipe_secrets(request);
                    // Whatever the VM has stays: a locked 1Password must not log the agents out.
                    const bool had = std::any_of(present.begin(), present.end(), [&](const pr::secret_set_info& i) {
                        return i.set.starts_with(tool_prefix(tool));
                    });
                    out.warnings.push_back(
                        text::sanitize_for_terminal("credentials: " + tool + ": " + e.what() + "; " +
                                                    (had ? "the VM keeps its previous " + tool + " credential"
                                                         : "the VM has no " + tool + " credential")));
                    out.kept.push_back(tool);
                    continue;
                }
                co_await agent_request(agent.render_secrets(std::move(request)), name);
                out.delivered.push_back(tool);
            }
        }
        // Every other set of this tool goes: an older login's, or one no longer allowed.
        bool removed = false;
        for (const auto& s : present) {
            if (!s.set.starts_with(tool_prefix(tool)) || s.set == wanted) continue;
            co_await agent_request(agent.clear_secrets(s.set), name);
            removed = true;
        }
        if (removed && !login) out.removed.push_back(tool);
    }
    spdlog::debug("vm={} credentials: delivered [{}] unchanged [{}] kept [{}] removed [{}]", name,
                  joined(out.delivered), joined(out.unchanged), joined(out.kept), joined(out.removed));
    co_return out;
}

awaitable<std::vector<removal_reach>> remove_credentials_everywhere(context& ctx, std::string tool) {
    std::vector<removal_reach> out;
    if (!ctx.agent) co_return out;
    const std::vector<lima::instance> listed = co_await ctx.lima.list();
    for (const lima::instance& inst : listed) {
        if (inst.state != lima::status::running || !text::is_valid_project_name(inst.name)) continue;
        std::error_code ec;
        // A VM machine never connected to (a base being baked, someone else's) has no pin.
        if (!std::filesystem::exists(pin_of(inst.name, true).file, ec)) continue;
        removal_reach r;
        r.vm = inst.name;
        try {
            auto conn = co_await connect_to_agent(ctx, inst.name, inst, std::chrono::seconds(10));
            config::project p;
            p.name = inst.name;
            credentials_sync_options options;
            options.only_remove = tool;
            const credentials_outcome o = co_await sync_credentials(p, *conn, options);
            r.reached = true;
            r.removed = !o.removed.empty();
        } catch (const interrupted_error&) {
            throw;
        } catch (const std::exception& e) {
            r.problem = text::sanitize_for_terminal(e.what());
        }
        out.push_back(std::move(r));
    }
    co_return out;
}

std::string describe(const credentials_outcome& o) {
    std::vector<std::string> parts;
    if (!o.delivered.empty()) parts.push_back(joined(o.delivered) + " delivered");
    if (!o.unchanged.empty()) parts.push_back(joined(o.unchanged) + " already there");
    if (!o.kept.empty()) parts.push_back(joined(o.kept) + " not refreshed");
    if (!o.removed.empty()) parts.push_back(joined(o.removed) + " removed");
    if (parts.empty()) return {};
    std::string out = "credentials: ";
    for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? "; " : "") + parts[i];
    return out;
}

} // namespace machine::vm
