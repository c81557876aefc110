// Private to the config module: the `origin` remote of a git work tree, read from the
// repository's config file instead of running `git config --get remote.origin.url`.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace machine::config::detail {

struct git_remote {
    std::string url;
    std::filesystem::path config_file;  ///< where it was read, for messages
};

/// The origin remote of the repository containing `dir` (found like git does, by looking for
/// `.git` in `dir` and above it; a `.git` file `gitdir: ...` is a worktree or submodule).
/// nullopt when there is no repository or it has no origin URL.
std::optional<git_remote> find_origin(const std::filesystem::path& dir);

/// The last `url` of `[remote "origin"]` in the text of a git config file.
std::optional<std::string> origin_url_in(std::string_view git_config);

} // namespace machine::config::detail
