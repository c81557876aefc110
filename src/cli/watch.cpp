// `machine watch [NAME...]`: runs until interrupted (then exits 130), printing what vm::watch
// tells (the terminal sink in its watch mode, or JSON lines).
#include <cstdlib>

#include "cli.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::cli {

using asio::awaitable;

awaitable<int> cmd_watch(context& ctx, std::vector<std::string> names) {
    for (const auto& n : names) text::require_valid_project_name(n);
    vm::watch_options opt;
    opt.names = std::move(names);
    // How often `limactl list` is polled; a debugging and testing knob.
    const std::string poll = paths::env("MACHINE_WATCH_POLL_MS");
    opt.poll = std::chrono::milliseconds(std::max(100, std::atoi(poll.empty() ? "2000" : poll.c_str())));
    opt.after_boot = [&ctx](const std::string& name) -> std::optional<config::project> {
        try {
            const auto& projects = ctx.cfg().projects;
            const auto it = projects.find(name);
            if (it != projects.end()) return it->second;
        } catch (const error& e) {
            ctx.emit(events::error(name, e.what()));
        }
        return std::nullopt;
    };
    co_await vm::watch(ctx.vm(), std::move(opt));
    co_return 0;  // not reached: watch ends interrupted
}

} // namespace machine::cli
