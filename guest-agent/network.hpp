// The second line inside the VM (PROTOCOL.md §4 `network.apply`): machine's nftables table
// (net::guest_ruleset on the host) kept in a root-owned file and applied with `nft -f`, when
// the host sends it and at every start of the agent (which systemd orders before the network
// comes up). Root in the VM can remove it; where the stand-in's namespace isolates the VM from
// outside, the table only repeats that.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
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
    bool kept = false;      ///< applied, and nft did not run: nftables holds what this agent applied from the same text
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

/// nftables' ruleset generation in this network namespace (NFT_MSG_GETGEN): the kernel counts
/// every committed change to any table, one per `nft -f`. nullopt when it cannot be read (no
/// nf_tables, no CAP_NET_ADMIN).
std::optional<std::uint32_t> nftables_generation();

/// machine's rules in this VM: the file, and what this agent process last applied from it.
///
/// A re-`up` sends the same rules each time; `nft -f` costs ~0.1 s under emulation. The kernel's
/// generation says whether anything changed nftables since this agent's own `nft -f` committed
/// (a `nft flush ruleset`, Docker's rules, anything): only when nothing did, and the text is the
/// same, is the table known to be exactly in place, and nft does not run.
class network_rules {
public:
    network_rules(std::string nft, std::string path) : nft_(std::move(nft)), path_(std::move(path)) {}

    /// network.apply: writes `ruleset` to the file (write_network_rules; not when it holds it
    /// already) and applies it, or finds it in place (kept). Throws when the file cannot be written.
    asio::awaitable<network_outcome> apply(std::string ruleset, std::chrono::milliseconds limit,
                                           proc::stopper** running = nullptr);
    /// At the agent's start: the file as it is.
    asio::awaitable<network_outcome> apply_file(std::chrono::milliseconds limit);

    const std::string& path() const { return path_; }

private:
    asio::awaitable<network_outcome> run_nft(std::string ruleset, bool write, std::chrono::milliseconds limit,
                                             proc::stopper** running);

    struct applied {
        std::string ruleset;
        std::uint32_t generation = 0;  ///< nftables' right after that `nft -f`
    };
    std::string nft_, path_;
    std::optional<applied> last_;
    std::uint64_t started_ = 0;   ///< applies begun, ever
    std::size_t in_flight_ = 0;   ///< applies running now
};

} // namespace machine::agent
