// The command table: every `machine` command as one row, a cmdline::spec (name, help, options)
// and its handler. The command line and `--help`, the dispatch (app.cpp) and the shell
// completions are made from it (by src/cmdline), so adding a command is a handler and a row
// (command_table.cpp).
#pragma once

#include <span>

#include <asio/awaitable.hpp>

#include "cli.hpp"
#include "machine/cmdline.hpp"

namespace machine::cli {

using cmdline::arguments;
using cmdline::option;

struct command : cmdline::spec {
    // Every user command runs on the event loop, with a context.
    asio::awaitable<int> (*run)(context&, const arguments&) = nullptr;
    // Or it runs at once: no loop, no logging set up, nothing printed but what it prints itself
    // (the hidden agent filter, completion).
    int (*run_now)(const arguments&) = nullptr;
};

// The rows, in `--help` order.
std::span<const command> commands();
// machine's own options (before the command).
std::span<const option> global_options();
// The command line the rows make: machine's name, help, version, options, and the rows as its
// commands in the same order (cmdline::parsed::chosen indexes commands()).
const cmdline::program& program();

} // namespace machine::cli
