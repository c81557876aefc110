#include "../cli/cli.hpp"

int main(int argc, char** argv) { return machine::cli::main(argc, argv); }
