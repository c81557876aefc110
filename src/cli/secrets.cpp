// `machine secrets [NAME] [--repo R] [--clear|--list]`: a project's secrets rendered into its
// running VM (vm::sync_secrets), cleared, or listed. Nothing here prints a value: only sets,
// counts, sizes and times.
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "machine/text.hpp"

namespace machine::cli {

using asio::awaitable;

namespace {

awaitable<int> clear_secrets(context& ctx, const config::project& p, std::optional<std::string> repo) {
    const std::vector<std::string> cleared = co_await vm::clear_secrets(ctx.vm(), p, std::move(repo));
    if (cleared.empty()) {
        ctx.say(p.name, "no secrets were rendered in '" + p.name + "'; nothing to clear");
    } else {
        std::string names;
        for (const auto& s : cleared) names += (names.empty() ? "" : ", ") + text::sanitize_for_terminal(s);
        ctx.say(p.name, "cleared " + std::to_string(cleared.size()) + (cleared.size() == 1 ? " set" : " sets") +
                            " (" + names + "): overwritten with zeros and removed");
    }
    co_return 0;
}

// `--list`: the sets in the VM now, by name, count, size and time; never a value.
awaitable<int> list_secrets(context& ctx, const config::project& p) {
    const std::vector<protocol::secret_set_info> sets = co_await vm::list_secrets(ctx.vm(), p);
    // Everything below came from the VM: the parser capped it; only sanitized text is printed.
    std::string out;
    if (ctx.json) {
        for (const auto& s : sets) {
            nlohmann::ordered_json j{{"vm", p.name}, {"set", s.set}, {"variables", s.count}, {"bytes", s.bytes},
                                     {"rendered_at", s.mtime}};
            out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
        }
    } else if (sets.empty()) {
        out = "no secrets rendered in '" + p.name + "' (machine secrets " + p.name + " renders them)\n";
    } else {
        out = fmt::format("{:<24} {:>9} {:>10}  {}\n", "SET", "VARIABLES", "SIZE", "RENDERED");
        for (const auto& s : sets)
            out += fmt::format("{:<24} {:>9} {:>10}  {}\n", text::sanitize_for_terminal(s.set), s.count,
                               human_bytes(static_cast<std::int64_t>(s.bytes)), text::sanitize_for_terminal(s.mtime));
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    co_return 0;
}

} // namespace

awaitable<int> cmd_secrets(context& ctx, std::optional<std::string> name_opt, std::optional<std::string> repo,
                           secrets_action action) {
    const std::string name = resolve_name(ctx, name_opt);
    const config::project project = ctx.cfg().resolve(name);
    if (action == secrets_action::clear) co_return co_await clear_secrets(ctx, project, std::move(repo));
    if (action == secrets_action::list) co_return co_await list_secrets(ctx, project);
    vm::secrets_sync_options options;
    options.repo = std::move(repo);
    co_await vm::sync_secrets(ctx.vm(), project, std::move(options));
    co_return 0;
}

} // namespace machine::cli
