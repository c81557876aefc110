// Where machine keeps its files on the host (XDG base directories, with overrides).
#pragma once

#include <filesystem>
#include <string>

namespace machine::paths {

// $MACHINE_CONFIG_DIR, else $XDG_CONFIG_HOME/machine, else ~/.config/machine.
std::filesystem::path config_dir();
// $MACHINE_STATE_DIR, else $XDG_STATE_HOME/machine, else ~/.local/state/machine.
std::filesystem::path state_dir();
// $XDG_CACHE_HOME/machine, else ~/.cache/machine.
std::filesystem::path cache_dir();
// $HOME (or the passwd entry when unset).
std::filesystem::path home_dir();

// Value of an environment variable, or "" when unset.
std::string env(const char* name);

// Writes `content` to `path` atomically (temporary file in the same directory, fsync,
// rename), creating parent directories. `mode` applies to the new file.
void write_file_atomic(const std::filesystem::path& path, std::string_view content,
                       unsigned mode = 0644);

std::string read_file(const std::filesystem::path& path);

} // namespace machine::paths
