// Running a command: the event loop, Ctrl-C, and turning errors into exit codes.
#include <csignal>
#include <cstdio>

#include <asio/co_spawn.hpp>
#include <asio/signal_set.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "command_table.hpp"
#include "machine/text.hpp"

namespace machine::cli {

void setup_logging(const std::string& level) {
    auto logger = spdlog::stderr_color_mt("machine");
    // Debugging is about where the time goes: stamp debug and trace lines.
    const auto lvl = spdlog::level::from_str(level);
    logger->set_pattern(lvl <= spdlog::level::debug ? "machine: %H:%M:%S.%e %l: %v" : "machine: %l: %v");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(level));
}

namespace {

// `args` lives in this frame while the row's handler runs.
asio::awaitable<int> dispatch(context& ctx, const command& row, arguments args) {
    co_return co_await row.run(ctx, args);
}

void report(context* ctx, const std::string& vm, const error& e) {
    std::fprintf(stderr, "machine: %s\n", text::sanitize_for_terminal(e.what()).c_str());
    if (!e.diagnostics().empty()) {
        std::fprintf(stderr, "machine: last lines of its output:\n");
        auto lines = text::split_lines(e.diagnostics());
        const std::size_t from = lines.size() > 10 ? lines.size() - 10 : 0;
        for (std::size_t i = from; i < lines.size(); ++i)
            std::fprintf(stderr, "  %s\n", text::sanitize_for_terminal(lines[i]).c_str());
    }
    if (ctx && ctx->json) ctx->emit(events::error(vm, e.what(), e.diagnostics()));
}

} // namespace

int main(int argc, char** argv) {
    const cmdline::parsed line = cmdline::parse(program(), argc, argv);
    if (!line.chosen) return line.exit_code;  // help, version or a usage error: printed
    const command& row = commands()[*line.chosen];
    const arguments& a = line.args;

    if (row.run_now) return row.run_now(a);
    setup_logging(*line.globals.value("--log-level"));
    asio::io_context io;
    const bool json = a.has("--json") && a.flag("--json");
    context ctx(io, json);
    if (json) ctx.bus.add(std::make_shared<events::json_lines_sink>(stdout));
    else ctx.bus.add(std::make_shared<events::terminal_sink>(stdout, row.live));

    // First Ctrl-C: stop gracefully (children get SIGINT, then SIGTERM); second: SIGKILL.
    asio::signal_set signals(io, SIGINT, SIGTERM);
    std::function<void(std::error_code, int)> on_signal = [&](std::error_code ec, int) {
        if (ec) return;
        if (ctx.cancel.current() == cancel_signal::none) {
            std::fprintf(stderr, "\nmachine: interrupting (Ctrl-C again to force)\n");
            ctx.cancel.trigger(cancel_signal::graceful);
        } else {
            ctx.cancel.trigger(cancel_signal::forceful);
        }
        signals.async_wait(on_signal);
    };
    signals.async_wait(on_signal);

    int code = 0;
    std::exception_ptr failure;
    auto main_task = dispatch(ctx, row, a);
    asio::co_spawn(io, std::move(main_task), [&](std::exception_ptr e, int c) {
        failure = e;
        code = c;
        signals.cancel();
    });
    io.run();

    const std::string vm = a.named_project();
    if (!failure) return code;
    try {
        std::rethrow_exception(failure);
    } catch (const interrupted_error& e) {
        std::fprintf(stderr, "machine: interrupted\n");
        // For a live command (watch), Ctrl-C is the normal way out, not an error worth an event.
        if (ctx.json && !row.live) ctx.emit(events::error(vm, "interrupted"));
        return static_cast<int>(exit_code::interrupted);
    } catch (const error& e) {
        report(&ctx, vm, e);
        return static_cast<int>(e.code());
    } catch (const std::exception& e) {
        report(&ctx, vm, error(std::string("internal error: ") + e.what()));
        return static_cast<int>(exit_code::failure);
    }
}

} // namespace machine::cli
