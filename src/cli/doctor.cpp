// `machine doctor [--json]`: what machine needs on this computer, checked one by one, each
// failure with the command that fixes it, then the residual risks of this setup as notes. Exit 1
// when a check failed (the JSON is still whole); notes never change it.
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "machine/agent_proxy.hpp"
#include "machine/credentials.hpp"
#include "machine/vm.hpp"
#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/proc.hpp"
#include "machine/text.hpp"

namespace machine::cli {

using asio::awaitable;
using namespace std::chrono_literals;

namespace {

struct check {
    std::string name;
    std::string status;  // "ok", "fail" or "note" (informational, never a failure)
    std::string detail;
    std::string hint;
};

check passed(std::string name, std::string detail) { return {std::move(name), "ok", std::move(detail), {}}; }
check failed(std::string name, std::string detail, std::string hint) {
    return {std::move(name), "fail", std::move(detail), std::move(hint)};
}

// Lima's major version, or -1 when the text has none ("2.2.0" -> 2).
int major_version(const std::string& v) {
    std::size_t i = 0;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') ++i;
    return i == 0 ? -1 : std::atoi(v.substr(0, i).c_str());
}

// Which line keeps a VM away from the host and other VMs (issue 15). Never a failure: Lima's own
// network is a supported choice, and the residual risks are said in the detail.
// `in_guest_only` is set when `limactl info` answered that nothing outside the VM isolates it.
awaitable<check> network_line_check(lima::client& lima, bool& in_guest_only) {
    const std::string name = "VM network isolation";
    bool outside = false;
    std::string unknown;
    try {
        outside = co_await lima.isolates_network();
        in_guest_only = !outside;
    } catch (const error& e) {
        unknown = std::string(" (`limactl info` failed: ") + e.what() + ")";
    }
    if (outside)
        co_return passed(name, "isolated outside the VM (the stand-in's network namespace): the VM reaches neither "
                               "the host nor other VMs, however root in the VM changes its firewall; egress "
                               "allowlists are enforced there too. machine's nftables rules in the VM repeat it. "
                               "Outbound internet is open unless a project sets `egress`");
    co_return check{name, "note",
                    "only inside the VM (nftables): root in the VM can remove it" + unknown +
                        ". The VM user has passwordless sudo, so a process in the VM that gains root "
                        "(`sudo nft flush ruleset`) reaches the host's loopback services (192.168.5.2, "
                        "host.lima.internal) and other VMs' forwarded ports; the host's other addresses are refused as they were at the VM's "
                        "last `machine up` (after a change of network, until the next); `egress` allowlists cannot be "
                        "enforced (a project that sets one is refused)",
                    "a boundary the VM cannot remove needs a limactl whose `limactl info` says "
                    "\"machineEgress\": true (machine's Lima stand-in on Linux)"};
}

// machine's Lima stand-in builds its guest image at the first `up` (a real Lima downloads a
// template's images itself: no line then). A missing image is fine when this host can build it.
awaitable<std::optional<check>> guest_image_check(lima::client& lima) {
    const std::string name = "guest image";
    std::optional<lima::stand_in_image> image;
    try {
        image = co_await lima.stand_in_image_status();
    } catch (const error&) {
        co_return std::nullopt;  // `limactl info` failing is the network line's to report
    }
    if (!image) co_return std::nullopt;
    if (image->ready) co_return passed(name, image->image);
    if (image->problems.empty())
        co_return check{name, "note",
                        "not built yet: the first `machine up` builds it (a few minutes, once) into " + image->cache, {}};
    std::string problems;
    for (const auto& p : image->problems) problems += (problems.empty() ? "" : "; ") + p;
    co_return failed(name, "not built yet, and this computer cannot build it: " + problems,
                     "install or set up what is named; then `machine up` builds it");
}

awaitable<std::vector<check>> lima_checks(context& ctx, bool& in_guest_only) {
    std::vector<check> out;
    lima::client* lima = nullptr;
    try {
        lima = &ctx.lima();
    } catch (const error& e) {
        out.push_back(failed("limactl", e.what(), "install Lima >= 2.0 (https://lima-vm.io), or set MACHINE_LIMACTL"));
        co_return out;
    }
    std::string why;
    try {
        why = " (" + lima::find_limactl().why + ")";
    } catch (const error&) {
        // found a moment ago: only the reason is missing
    }
    out.push_back(passed("limactl", lima->limactl().string() + why));
    try {
        const std::string version = co_await lima->version();
        if (major_version(version) >= 2 || major_version(version) < 0)
            out.push_back(passed("Lima >= 2.0", version));
        else
            out.push_back(failed("Lima >= 2.0", version, "machine needs Lima >= 2.0: upgrade Lima"));
    } catch (const error& e) {
        out.push_back(failed("Lima >= 2.0", e.what(), "check that `limactl --version` works"));
    }
    out.push_back(co_await network_line_check(*lima, in_guest_only));
    if (auto image = co_await guest_image_check(*lima)) out.push_back(std::move(*image));
    co_return out;
}

check config_check(context& ctx) {
    try {
        const config::config& cfg = ctx.cfg();
        if (!cfg.projects_file_exists)
            return {"projects.toml", "note", "none at " + cfg.projects_file.string() + "; `machine up` gives you 'default'",
                    {}};
        return passed("projects.toml", cfg.projects_file.string() + ": " + std::to_string(cfg.projects.size()) +
                                           " project(s)");
    } catch (const error& e) {
        return failed("projects.toml", e.what(), "fix the line it names");
    }
}

check agent_check() {
    const std::string socket = paths::env("SSH_AUTH_SOCK");
    const agent_proxy::agent_probe probe = agent_proxy::probe(socket, 2s);
    if (probe.result == agent_proxy::agent_probe::state::ok)
        return passed("SSH agent has keys", std::to_string(probe.fingerprints.size()) + " key(s) in " + socket);
    return failed("SSH agent has keys", text::sanitize_for_terminal(probe.detail),
                  "eval \"$(ssh-agent)\"; ssh-add ~/.ssh/id_ed25519 (or set forward_agent = false per project)");
}

awaitable<std::vector<check>> git_checks() {
    std::vector<check> out;
    const provision::host_values v = co_await vm::detect_host_values("");
    if (v.git_name.empty()) out.push_back(failed("git user.name", "not set", "git config --global user.name 'Your Name'"));
    else out.push_back(passed("git user.name", text::sanitize_for_terminal(v.git_name)));
    if (v.git_email.empty())
        out.push_back(failed("git user.email", "not set", "git config --global user.email you@example.com"));
    else out.push_back(passed("git user.email", text::sanitize_for_terminal(v.git_email)));
    if (v.git_signing_key.empty())
        out.push_back(failed("SSH signing key resolves", "no SSH key in user.signingkey (or $GIT_SIGNING_KEY)",
                             "git config --global gpg.format ssh; git config --global user.signingkey "
                             "'ssh-ed25519 AAAA...'"));
    else
        out.push_back(passed("SSH signing key resolves", text::sanitize_for_terminal(v.git_signing_key.substr(0, 40)) + "..."));
    co_return out;
}

check guest_agent_check() {
    if (paths::env("MACHINE_AGENT") == "off")
        return {"guest agent binary", "note", "MACHINE_AGENT=off: VMs boot without it (no provisioning, no sessions)", {}};
    try {
        const guest::agent_files files = guest::find_agent();
        return passed("guest agent binary", files.binary.string());
    } catch (const error& e) {
        return failed("guest agent binary", e.what(), "build it (tools/setup) or set MACHINE_AGENT");
    }
}

check op_check() {
    if (const auto op = proc::find_program("op")) return passed("1Password CLI", op->string());
    return {"1Password CLI", "note", "`op` not found: `machine secrets` needs it for op_environment and op_reference",
            "https://developer.1password.com/docs/cli/get-started/"};
}

// "web, api" (names are checked identifiers, but escaped anyway: the JSON form is not sanitized).
std::string project_list(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + text::sanitize_for_terminal(n);
    return out;
}

// What machine does not protect against in this setup, one line each (docs/threat-model.md says
// why). Notes, never failures: each is a choice the user may make knowingly. The projects are
// those configured, else the one `machine up` would make; a config that does not load has none.
std::vector<check> residual_risk_notes(context& ctx, bool in_guest_only) {
    std::vector<check> out;
    std::vector<std::string> whole_agent, open_egress;
    try {
        const config::config& cfg = ctx.cfg();
        std::vector<config::project> projects;
        for (const auto& [name, p] : cfg.projects) projects.push_back(p);
        if (projects.empty()) projects.push_back(cfg.resolve(cfg.ambient_project()));
        for (const auto& p : projects) {
            if (p.forward_agent && p.agent_keys.empty()) whole_agent.push_back(p.name);
            if (!p.egress) open_egress.push_back(p.name);
        }
    } catch (const error&) {
        // config_check names the problem; no project, no project-specific risk.
    }
    if (!whole_agent.empty())
        out.push_back({"residual risk: whole SSH agent forwarded", "note",
                       project_list(whole_agent) + ": while a session is connected, the VM can sign and "
                                                   "authenticate (push) with every key in your agent",
                       "limit it with agent_keys = [\"SHA256:...\"], or forward_agent = false"});
    if (!open_egress.empty())
        out.push_back({"residual risk: open egress", "note",
                       project_list(open_egress) + ": no egress allowlist, the VM can send what it holds "
                                                   "(code, rendered secrets) to any internet host",
                       in_guest_only ? "an allowlist (egress = [...]) needs the Lima stand-in's boundary"
                                     : "set egress = [\"github.com\", ...] to allow only those hosts"});
    if (in_guest_only)
        out.push_back({"residual risk: network policy inside the VM only", "note",
                       "root in the VM can remove it and reach your 127.0.0.1 services and other VMs' ports",
                       "see docs/threat-model.md"});
    return out;
}

// One line per agent tool: logged in on this computer (`machine login`) or not; never a value.
// Not being logged in is a note: the agent then asks for a login in the VM.
std::vector<check> login_checks() {
    std::vector<check> out;
    const credentials::store store = credentials::store::at_default();
    for (const auto tool_view : agent_tools) {
        const std::string tool(tool_view);
        const std::string name = tool + " login";
        try {
            if (const auto l = store.find(tool))
                out.push_back(passed(name, l->variable + " from " + std::string(credentials::kind_name(l->kind)) +
                                               ", set " + l->set_at));
            else
                out.push_back({name, "note", "not logged in on this computer", "machine login " + tool});
        } catch (const error& e) {
            out.push_back(failed(name, e.what(), "machine logout " + tool + "; machine login " + tool));
        }
    }
    return out;
}

// Which of those logins the VM of the project here receives (its agent_auth): a note, never a failure.
check project_logins_check(context& ctx) {
    try {
        const config::project p = ctx.cfg().resolve(ctx.cfg().ambient_project());
        std::string tools;
        for (const auto& t : vm::credentials_for(p, credentials::store::at_default()))
            tools += (tools.empty() ? "" : ", ") + t;
        return {"logins for project " + p.name, "note",
                "its VM receives " + (tools.empty() ? std::string("none") : tools) +
                    (p.agent_auth ? " (agent_auth)" : " (every tool logged in: no agent_auth)"),
                ""};
    } catch (const error& e) {
        return {"logins for the project here", "note", e.what(), ""};
    }
}

} // namespace

awaitable<int> cmd_doctor(context& ctx) {
    bool in_guest_only = false;
    std::vector<check> checks = co_await lima_checks(ctx, in_guest_only);
    checks.push_back(config_check(ctx));
    checks.push_back(agent_check());
    for (auto& c : co_await git_checks()) checks.push_back(std::move(c));
    checks.push_back(guest_agent_check());
    checks.push_back(op_check());
    for (auto& c : login_checks()) checks.push_back(std::move(c));
    checks.push_back(project_logins_check(ctx));
    for (auto& c : residual_risk_notes(ctx, in_guest_only)) checks.push_back(std::move(c));

    std::size_t fails = 0;
    for (const auto& c : checks) fails += c.status == "fail";
    std::string out;
    if (ctx.json) {
        nlohmann::ordered_json j;
        j["checks"] = nlohmann::ordered_json::array();
        for (const auto& c : checks)
            j["checks"].push_back({{"name", c.name}, {"status", c.status}, {"detail", c.detail}, {"hint", c.hint}});
        j["summary"] = {{"checks", checks.size()}, {"fails", fails}};
        out = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    } else {
        for (const auto& c : checks) {
            const char* tag = c.status == "ok" ? "[ok  ]" : c.status == "fail" ? "[FAIL]" : "[note]";
            out += fmt::format("{} {}: {}\n", tag, c.name, text::sanitize_for_terminal(c.detail));
            if (!c.hint.empty()) out += fmt::format("       {}\n", c.hint);
        }
        out += fails == 0 ? "all checks passed\n" : fmt::format("{} check(s) failed\n", fails);
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    co_return fails == 0 ? 0 : 1;
}

} // namespace machine::cli
