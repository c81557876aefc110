// `machine pause|resume [NAME...]`, `machine snapshot ...` and `machine restore NAME TAG`: the
// arguments to the workflows of src/vm/pause.cpp, and the snapshot list printed.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "machine/text.hpp"

namespace machine::cli {

using asio::awaitable;

awaitable<int> cmd_pause(context& ctx, std::vector<std::string> names, bool resume) {
    if (names.empty()) names.push_back(resolve_name(ctx, std::nullopt));
    for (const auto& n : names) text::require_valid_project_name(n);
    // One after the other: each waits for its own agent; the first failure ends the command
    // (the VMs before it are done, and say so).
    for (const auto& name : names) {
        if (resume)
            co_await vm::resume(ctx.vm(), name);
        else
            co_await vm::pause(ctx.vm(), name);
    }
    co_return 0;
}

awaitable<int> cmd_snapshot(context& ctx, snapshot_action action, std::optional<std::string> name_opt,
                            std::optional<std::string> tag) {
    if (action == snapshot_action::list) {
        if (tag) throw usage_error("snapshot --list takes a VM name, not a tag");
        // Without a name: every VM Lima has.
        std::vector<std::string> names;
        if (name_opt) {
            names.push_back(resolve_name(ctx, name_opt));
        } else {
            for (const auto& i : co_await ctx.lima().list()) names.push_back(i.name);
        }
        std::string out;
        if (!ctx.json) out = "VM                   TAG\n";
        for (const auto& name : names) {
            for (const auto& t : co_await vm::snapshot_list(ctx.vm(), name)) {
                if (ctx.json) {
                    nlohmann::ordered_json j{{"vm", name}, {"tag", t}};
                    out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
                } else {
                    char line[256];
                    std::snprintf(line, sizeof line, "%-20s %s\n", name.c_str(), text::sanitize_for_terminal(t).c_str());
                    out += line;
                }
            }
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
        co_return 0;
    }
    const std::string name = resolve_name(ctx, name_opt);
    if (action == snapshot_action::remove) {
        if (!tag) throw usage_error("snapshot --delete needs the VM and the tag: machine snapshot --delete NAME TAG");
        co_await vm::snapshot_delete(ctx.vm(), name, *tag);
        co_return 0;
    }
    const std::string t = tag.value_or(vm::default_snapshot_tag(std::chrono::system_clock::now()));
    co_await vm::snapshot_create(ctx.vm(), name, t);
    co_return 0;
}

awaitable<int> cmd_restore(context& ctx, std::string name, std::string tag) {
    name = resolve_name(ctx, name);
    // The project's settings, when it has some (secrets_on_up); a VM without one restores too.
    std::optional<config::project> project;
    if (ctx.cfg().projects.count(name)) project = ctx.cfg().resolve(name);
    co_await vm::restore(ctx.vm(), name, tag, project ? &*project : nullptr);
    co_return 0;
}

} // namespace machine::cli
