// `machine init`: writes the documented example as the user's projects.toml, never over one.
#include <cstdio>
#include <filesystem>

#include "cli.hpp"
#include "machine/config.hpp"
#include "machine/paths.hpp"

namespace machine::cli {

asio::awaitable<int> cmd_init(context&) {
    const std::filesystem::path file = paths::config_dir() / "projects.toml";
    if (!paths::create_file_exclusive(file, config::projects_example(), 0644))
        throw error(file.string() + " already exists; edit it, or remove it first");
    std::printf("wrote %s: edit it, then run 'machine up <project>'\n", file.c_str());
    co_return 0;
}

} // namespace machine::cli
