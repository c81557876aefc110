// The command line, parsed as the command table declares it (command_line.cpp).
#pragma once

#include <string>

#include "command_table.hpp"

namespace machine::cli {

struct command_line {
    const command* row = nullptr;  // none: nothing to run; exit with exit_code (help, version, a usage error)
    arguments args;
    std::string log_level;
    int exit_code = 0;
};

// Parses argv; prints help, the version or a usage error itself (then `row` is null).
command_line parse_command_line(int argc, char** argv);

} // namespace machine::cli
