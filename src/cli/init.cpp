// `machine init`: writes the documented example as the user's projects.toml, never over one.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "cli.hpp"
#include "machine/paths.hpp"

namespace machine::cli {

namespace {
#include "projects_example.inc"
}

asio::awaitable<int> cmd_init(context&) {
    namespace fs = std::filesystem;
    const fs::path file = paths::config_dir() / "projects.toml";
    fs::create_directories(file.parent_path());
    // Written whole under another name, then linked into place: link() refuses an existing
    // file, so a file created meanwhile is never replaced, and no half-written one appears.
    const fs::path staged = file.string() + ".init." + std::to_string(::getpid());
    paths::write_file_atomic(staged, kProjectsExample, 0644);
    const int linked = ::link(staged.c_str(), file.c_str());
    const int err = errno;
    std::error_code ec;
    fs::remove(staged, ec);
    if (linked != 0 && err == EEXIST) throw error(file.string() + " already exists; edit it, or remove it first");
    if (linked != 0) throw error("cannot write " + file.string() + ": " + std::strerror(err));
    std::printf("wrote %s: edit it, then run 'machine up <project>'\n", file.c_str());
    co_return 0;
}

} // namespace machine::cli
