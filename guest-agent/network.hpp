// The second line inside the VM (PROTOCOL.md §4 `network.apply`): machine's nftables table
// (net::guest_ruleset on the host) kept in a root-owned file and applied with `nft -f`, when
// the host sends it and at every start of the agent (which systemd orders before the network
// comes up). Root in the VM can remove it; where the stand-in's namespace isolates the VM from
// outside, the table only repeats that.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

namespace machine::proc {
class stopper;
}

namespace machine::agent {

inline constexpr const char* default_network_rules = "/etc/machine/network.nft";

struct network_outcome {
    bool nft_found = true;  ///< false: nft could not be started (not installed)
    bool applied = false;
    std::string error;      ///< when not applied: nft's stderr (its end), or why it did not run
};

/// Writes `ruleset` to `path` atomically (a temporary file in the same directory, fsync,
/// rename), mode 0644, owned by the agent (root), creating the directory (0755) when missing.
/// Throws std::runtime_error naming the step that failed.
void write_network_rules(const std::string& path, std::string_view ruleset);

/// `nft -f path`, at most `limit` (then killed) with its stderr kept up to 4 KiB. Never throws.
/// `*running`, when given, points at the nft being waited for (to force() it) until it returns.
asio::awaitable<network_outcome> apply_network_rules(std::string nft, std::string path,
                                                     std::chrono::milliseconds limit,
                                                     proc::stopper** running = nullptr);

} // namespace machine::agent
