// Errors every module raises, each carrying the exit code the CLI reports.
#pragma once

#include <stdexcept>
#include <string>

namespace machine {

// Documented exit codes (README, `machine --help`).
enum class exit_code : int {
    ok = 0,
    failure = 1,      // an operation failed (limactl error, VM unreachable, ...)
    usage = 2,        // bad command line or bad configuration; nothing was run
    interrupted = 130 // Ctrl-C
};

// Base of every error the product reports to the user. `what()` is the one-line message;
// `diagnostics()` keeps supporting detail (for example a child's stderr tail).
class error : public std::runtime_error {
public:
    explicit error(const std::string& message, exit_code code = exit_code::failure,
                   std::string diagnostics = {})
        : std::runtime_error(message), code_(code), diagnostics_(std::move(diagnostics)) {}

    exit_code code() const noexcept { return code_; }
    const std::string& diagnostics() const noexcept { return diagnostics_; }

private:
    exit_code code_;
    std::string diagnostics_;
};

// Bad input from the user: command line, project names, configuration files. Exit code 2.
class usage_error : public error {
public:
    explicit usage_error(const std::string& message) : error(message, exit_code::usage) {}
};

// The operation was interrupted by the user (SIGINT). Exit code 130.
class interrupted_error : public error {
public:
    interrupted_error() : error("interrupted", exit_code::interrupted) {}
};

} // namespace machine
