// Following a host agent's ha.stdout.log. A guest grows that log at will (every port it opens or
// closes is an event), so everything here is bounded: the follower holds one chunk and at most
// one unfinished line of the log, however large it is, and looks at its past only near its end.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "machine/cancel.hpp"
#include "machine/lima.hpp"

namespace machine::lima {

namespace {

using time_point = std::chrono::system_clock::time_point;

// Reads are this large.
constexpr std::size_t chunk_size = 64 * 1024;
// A longer line is not an event: it is skipped as it streams by, never buffered whole.
constexpr std::size_t max_line = 64 * 1024;
// How far back from its end a log's past is searched, when the log is first seen.
constexpr off_t max_history = 1024 * 1024;
// Chunks read before other tasks get a turn: a log that grows as fast as it is read must not
// starve them.
constexpr int chunks_per_turn = 16;

// The log, open read-only for one poll.
class open_log {
public:
    explicit open_log(const std::filesystem::path& p) : fd_(::open(p.c_str(), O_RDONLY | O_CLOEXEC)) {}
    ~open_log() {
        if (fd_ >= 0) ::close(fd_);
    }
    open_log(const open_log&) = delete;
    open_log& operator=(const open_log&) = delete;

    bool stat(struct stat& st) const { return fd_ >= 0 && ::fstat(fd_, &st) == 0; }
    // Up to buf.size() bytes from `offset`; none at the end (or on an error).
    std::string_view read_at(off_t offset, std::vector<char>& buf) const {
        const ssize_t n = ::pread(fd_, buf.data(), buf.size(), offset);
        return n > 0 ? std::string_view(buf.data(), static_cast<std::size_t>(n)) : std::string_view();
    }

private:
    int fd_;
};

// Cuts a stream of bytes into lines. Only the unfinished line is kept between chunks; a line
// longer than max_line is dropped, and counted, as it goes by.
class line_splitter {
public:
    // Starts a new stream; `mid_line`: it starts inside a line, which is dropped uncounted.
    void restart(bool mid_line) {
        pending_.clear();
        skipping_ = mid_line;
    }

    // Hands each line that `data` completes to `on_line` until that returns false; false then.
    template <class F>
    bool feed(std::string_view data, F&& on_line) {
        for (;;) {
            const auto nl = data.find('\n');
            const std::string_view piece = data.substr(0, nl);
            if (!skipping_ && pending_.size() + piece.size() > max_line) {
                ++skipped_;
                pending_.clear();
                skipping_ = true;
            }
            if (nl == std::string_view::npos) {
                if (!skipping_) pending_.append(piece);
                return true;
            }
            data.remove_prefix(nl + 1);
            if (std::exchange(skipping_, false)) continue;
            if (!pending_.empty()) pending_.append(piece);
            const bool more = on_line(pending_.empty() ? piece : std::string_view(pending_));
            pending_.clear();
            if (!more) return false;
        }
    }

    std::uint64_t skipped() const { return skipped_; }

private:
    std::string pending_;
    bool skipping_ = false;
    std::uint64_t skipped_ = 0;
};

std::optional<time_point> event_time(std::string_view line) {
    const auto e = parse_ha_event(line);
    return e ? parse_rfc3339(e->time) : std::nullopt;
}

// The first line that starts at or after offset `at`, when all of it fits in `buf`.
std::optional<std::string_view> line_after(const open_log& log, off_t at, std::vector<char>& buf) {
    std::string_view data = log.read_at(at > 0 ? at - 1 : 0, buf);
    if (at > 0) {
        const auto nl = data.find('\n');
        if (nl == std::string_view::npos) return std::nullopt;
        data.remove_prefix(nl + 1);
    }
    const auto end = data.find('\n');
    if (end == std::string_view::npos) return std::nullopt;
    return data.substr(0, end);
}

// Where to start reading a log first seen at `size` bytes: reading starts with the line
// line_after(offset) finds. The search steps back from the end a chunk at a time and stops at a
// line stamped before `since` (Lima appends events in time order, so no line before it is
// newer), but never goes back further than max_history: the past before that is never read.
off_t history_start(const open_log& log, off_t size, time_point since, std::vector<char>& buf) {
    const off_t floor = std::max<off_t>(0, size - max_history);
    for (off_t at = size; at > floor;) {
        at = std::max<off_t>(floor, at - static_cast<off_t>(chunk_size));
        const auto line = line_after(log, at, buf);
        const auto t = line ? event_time(*line) : std::nullopt;
        if (t && *t < since) return at;
    }
    return floor;
}

// Where the follower is in the log, from one poll to the next.
struct position {
    std::optional<ino_t> inode;
    off_t offset = 0;
    line_splitter lines;

    // Starts on the file `id` with the line line_after(start) finds: one byte early, dropping
    // everything up to the first newline, so a start exactly at a line's beginning keeps it.
    void restart(ino_t id, off_t start) {
        inode = id;
        offset = start > 0 ? start - 1 : 0;
        lines.restart(start > 0);
    }
};

// Warns about skipped over-long lines with their count, when the count doubles: a log full of
// them is reported a few times, not once per line.
void report_skipped(const std::filesystem::path& log, std::uint64_t skipped, std::uint64_t& next_report) {
    if (skipped < next_report) return;
    spdlog::warn("{}: skipped {} line(s) longer than {} KiB (not host agent events)", log.string(), skipped,
                 max_line / 1024);
    next_report = skipped * 2;
}

} // namespace

asio::awaitable<void> follow_events(std::filesystem::path log_file,
                                    std::function<bool(const ha_event&)> on_event,
                                    cancel_signal* cancel,
                                    time_point since,
                                    std::chrono::milliseconds poll) {
    std::vector<char> buf(chunk_size);
    position at;
    std::uint64_t next_skip_report = 1;
    auto deliver = [&](std::string_view line) {
        const auto event = parse_ha_event(line);
        if (!event) return true;
        if (since != time_point{}) {
            const auto t = parse_rfc3339(event->time);
            if (t && *t < since) return true;
        }
        return on_event(*event);
    };
    for (;;) {
        if (cancel && cancel->current() != cancel_signal::none) throw interrupted_error();
        bool caught_up = true;
        const open_log log(log_file);
        struct stat st {};
        if (log.stat(st)) {
            // First seen, replaced, or truncated (every `limactl start` truncates it).
            if (at.inode != st.st_ino || st.st_size < at.offset)
                at.restart(st.st_ino, history_start(log, st.st_size, since, buf));
            caught_up = false;
            for (int i = 0; i < chunks_per_turn && !caught_up; ++i) {
                const std::string_view data = log.read_at(at.offset, buf);
                caught_up = data.empty();
                at.offset += static_cast<off_t>(data.size());
                if (!at.lines.feed(data, deliver)) co_return;
            }
        }
        report_skipped(log_file, at.lines.skipped(), next_skip_report);
        const bool slept = co_await sleep_for(caught_up ? poll : std::chrono::milliseconds(0));
        if (!slept) co_return;  // it lost a race
    }
}

} // namespace machine::lima
