// Private to the config module: reading its files.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace machine::config::detail {

/// The file's content, or nullopt when it does not exist; any other failure (unreadable, a
/// directory) is a config_error `cannot read PATH: REASON`.
std::optional<std::string> read_if_exists(const std::filesystem::path& path);

} // namespace machine::config::detail
