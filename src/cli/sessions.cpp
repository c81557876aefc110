// `machine sessions [NAME] [--json]`: the agent sessions the guest agent knows in a VM.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "machine/guest.hpp"
#include "machine/text.hpp"

namespace machine::cli {

using asio::awaitable;
using namespace std::chrono_literals;

awaitable<int> cmd_sessions(context& ctx, std::optional<std::string> name_opt) {
    const std::string name = resolve_name(ctx, name_opt);
    auto conn = co_await vm::connect_to_running_agent(ctx.vm(), name, 10s);
    std::vector<protocol::session_info> sessions;
    try {
        sessions = co_await conn->list_sessions();
    } catch (const guest::agent_error& e) {
        if (e.code() != "unknown_type") throw;
        throw error("the agent in VM '" + name + "' predates sessions; run 'machine up " + name + "' to update it");
    }
    conn.reset();

    // Everything below came from the VM: the parser capped and checked it, and only
    // sanitized text reaches the terminal.
    std::string out;
    if (ctx.json) {
        for (const auto& s : sessions) {
            nlohmann::ordered_json j{{"vm", name},     {"name", s.name},
                                     {"agent", s.agent}, {"user", s.user},
                                     {"started_at", s.started_at}, {"pid", s.pid},
                                     {"attached", s.attached > 0}, {"clients", s.attached}};
            out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
        }
    } else if (sessions.empty()) {
        out = "no agent sessions in '" + name + "' (machine claude " + name + " starts one)\n";
    } else {
        char line[512];
        std::snprintf(line, sizeof line, "%-24s %-8s %-26s %s\n", "SESSION", "AGENT", "STARTED", "ATTACHED");
        out += line;
        for (const auto& s : sessions) {
            const std::string attached = s.attached == 0 ? "no" : s.attached == 1 ? "yes" : "yes (" + std::to_string(s.attached) + ")";
            std::snprintf(line, sizeof line, "%-24s %-8s %-26s %s\n", text::sanitize_for_terminal(s.name).c_str(),
                          text::sanitize_for_terminal(s.agent).c_str(),
                          text::sanitize_for_terminal(s.started_at).c_str(), attached.c_str());
            out += line;
        }
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    co_return 0;
}

} // namespace machine::cli
