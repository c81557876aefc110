// The event journal: sequence-numbered events in a JSON-lines file that survives restarts.
//
// File: a header line {"journal_id":"<hex>","format":1}, then one protocol::journal_line() per
// event, each ending in '\n'. Appends are pwrite(2)s of whole lines at the end of the file, so
// an event is in the page cache (safe from an agent crash) when append() returns; sync() makes
// it durable (the agent calls it in batches). open() recovers: the last seq from the last
// complete line, a torn last line cut off, unreadable lines dropped by a rewrite. Bounded:
// beyond max_events or max_bytes the file is rewritten atomically, keeping the newest 3/4.
//
// Not thread-safe; the agent uses it from its one event-loop thread.
#pragma once

#include <cstdint>
#include <deque>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "machine/protocol.hpp"

namespace machine::agent {

class journal {
public:
    struct limits {
        std::size_t max_events = 100'000;
        std::size_t max_bytes = 16u << 20;
    };
    struct entry {
        std::uint64_t seq = 0;
        std::string line;  ///< journal_line(), without '\n'
    };
    /// What open() found and repaired.
    struct recovery {
        std::uint64_t events = 0;
        std::uint64_t torn_bytes = 0;  ///< cut from the end (an unfinished last line)
        std::uint64_t bad_lines = 0;   ///< dropped (not an event line, or seq not increasing)
        bool created = false;
    };

    journal(std::string path, limits lim);
    ~journal();
    journal(const journal&) = delete;
    journal& operator=(const journal&) = delete;

    /// Opens (creating the file and its directory, mode 0700/0600) and recovers.
    /// Throws std::runtime_error when the file cannot be opened or repaired.
    recovery open();

    /// Appends an event stamped `ts` and returns its seq. Throws std::runtime_error on I/O
    /// failure (the file is left as it was).
    std::uint64_t append(std::string_view event, const protocol::json& fields, std::string ts);

    /// Events with seq > after, oldest first, about max_bytes of lines (at least one event
    /// when there is any).
    std::vector<entry> read_after(std::uint64_t after, std::size_t max_bytes) const;

    /// fdatasync when something was appended since the last sync.
    void sync();
    bool needs_sync() const noexcept { return dirty_; }

    const std::string& id() const noexcept { return id_; }
    std::uint64_t first_seq() const noexcept { return first_seq_; }  ///< 0 when empty
    std::uint64_t last_seq() const noexcept { return last_seq_; }    ///< 0 when empty
    std::uint64_t events() const noexcept { return count_; }
    std::uint64_t bytes() const noexcept { return end_; }
    std::uint64_t compactions() const noexcept { return compactions_; }

    /// True when an event `event` with field boot_id == `boot_id` was ever recorded (in the
    /// file at open, or appended since).
    bool has_event_for_boot(std::string_view event, std::string_view boot_id) const;

private:
    struct scan_result;
    scan_result scan(int fd, std::uint64_t from, bool collect);
    void rewrite(std::uint64_t cut);
    void maybe_compact();
    void remember_boot_event(std::string_view line);
    void reset_state();

    std::string path_;
    limits limits_;
    int fd_ = -1;
    std::string id_;
    std::uint64_t header_end_ = 0;
    std::uint64_t end_ = 0;
    std::uint64_t first_seq_ = 0, last_seq_ = 0, count_ = 0;
    std::uint64_t compactions_ = 0;
    bool dirty_ = false;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> index_;  // (seq, offset), sparse
    std::deque<entry> tail_;                                      // the newest events
    std::size_t tail_bytes_ = 0;
    std::set<std::string> boot_events_;                           // event '\0' boot_id
};

/// The seq of a journal line ({"seq":N,...}), or 0 when the line is not one.
std::uint64_t journal_line_seq(std::string_view line);

} // namespace machine::agent
