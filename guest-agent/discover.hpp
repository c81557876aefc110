// `secrets.discover` (PROTOCOL.md §4): which repos under the VM user's ~/code load which secret
// sets, through `use op_env ID` lines in their `.envrc` (the direnv function of §8).
//
// The agent runs as root and the files belong to whoever can write in ~/code, so the scan is
// defensive: no symlink is followed (directories or files), nothing but a regular file is
// opened as an .envrc (a FIFO or a device is never opened, let alone read), each file is read
// up to 64 KiB, and the whole scan has a budget of directories and bytes so that a huge tree
// cannot stall the agent's single thread. Everything the result says is capped as the
// protocol's parser expects (protocol.hpp `secrets_discover_result`).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "machine/protocol.hpp"

namespace machine::agent {

struct discover_limits {
    std::size_t max_dirs = 8192;          ///< directories opened in all (repos and their subdirectories)
    std::size_t max_bytes = 16u << 20;    ///< bytes read from .envrc files in all
    std::size_t read_bytes = protocol::envrc_read_bytes;  ///< of each .envrc
};

/// Scans `<code_dir>/*/.envrc` and `<code_dir>/*/*/.envrc` (names starting with '.' are skipped,
/// like a shell glob; so are names that are not printable UTF-8). A `code_dir` that is missing,
/// not a directory or a symlink gives no repos. Sorted by dir, at most max_discovered_repos,
/// `truncated` when a cap or the budget left something out.
protocol::secrets_discover_result discover_envrc_secrets(const std::string& code_dir,
                                                        const discover_limits& limits = {});

/// The `use op_env TOKEN` lines of an .envrc's text: `^[ \t]*use[ \t]+op_env[ \t]+(\S+)`, in
/// line order, at most max_envrc_uses (`truncated` is set when there were more). `complete`:
/// false when `text` is only the start of the file, whose last, unterminated line is then not
/// looked at. Tokens are made printable (bytes that are not printable UTF-8 become '?') and cut
/// to max_envrc_token bytes at a character boundary.
std::vector<protocol::envrc_use> op_env_uses(std::string_view text, bool complete, bool& truncated);

} // namespace machine::agent
