#include <cstdio>

#include "../cli/cli.hpp"
#include "machine/hygiene.hpp"

int main(int argc, char** argv) {
    // Before anything else: commands hold secrets in memory (secrets, up, watch), and none of
    // them may end up in a core file.
    if (const std::string failed = machine::hygiene::disable_core_dumps(); !failed.empty())
        std::fprintf(stderr, "machine: warning: core dumps stay possible: %s\n", failed.c_str());
    return machine::cli::main(argc, argv);
}
