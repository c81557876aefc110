// The proxy's side of the audit trail: appends one JSON line per connection to a per-VM log
// that never grows past its cap, at a rate a guest cannot raise. Sans-io in time (the caller
// passes `now`), synchronous on the file (a line is a few hundred bytes, at most
// max_per_second of them a second).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>

#include "machine/net.hpp"

namespace machine::net {

/// The most a field of a record may hold once escaped (host: a DNS name's 253 bytes).
inline constexpr std::size_t audit_max_host = 253;
inline constexpr std::size_t audit_max_reason = 200;
inline constexpr std::size_t audit_max_kind = 16;

/// `r` as it may be written: every string escaped for a terminal (text::escape_for_terminal)
/// and cut to its cap at a character boundary; counts made non-negative.
audit_record sanitized(audit_record r);

class audit_writer {
public:
    using clock = std::chrono::steady_clock;

    enum class outcome {
        written,     ///< the line is in the log
        suppressed,  ///< over the rate: counted, carried by a later line
        failed,      ///< the log could not be written (the record is lost, and said so by the caller)
    };

    /// `log` is created 0600 on first write (its directory must exist); before a line would
    /// take it past `max_bytes` it becomes `<log>.1` (replacing the one before) and a new one
    /// starts. At most `max_per_second` lines a second, with a burst of as many.
    audit_writer(std::filesystem::path log, std::size_t max_bytes, std::size_t max_per_second);

    /// Writes `r` (sanitized) now, or counts it when the rate is spent. A written line carries
    /// in `suppressed` the records counted since the last line (plus any `r` already had).
    outcome record(audit_record r, clock::time_point now);

    /// For the caller's timer (about once a second, and at exit): when records were counted
    /// and not yet carried, writes the last of them with `suppressed` = the others, whatever
    /// the rate. nullopt when there was nothing to write.
    std::optional<outcome> flush(clock::time_point now);

    /// Records counted and not yet carried by a written line.
    std::int64_t pending() const { return pending_; }

    const std::filesystem::path& path() const { return log_; }

private:
    bool take_token(clock::time_point now);
    outcome write(const audit_record& r);

    std::filesystem::path log_;
    std::size_t max_bytes_;
    double rate_;
    double tokens_;
    std::optional<clock::time_point> last_refill_;
    std::int64_t pending_ = 0;
    std::optional<audit_record> last_suppressed_;  // what flush() writes
};

} // namespace machine::net
