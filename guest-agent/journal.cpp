#include "journal.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <stdexcept>

#include "files.hpp"

namespace machine::agent {

namespace {

constexpr std::size_t index_every = 64;           // one index entry per 64 events
constexpr std::size_t tail_max_entries = 2048;    // the in-memory cache of newest events
constexpr std::size_t tail_max_bytes = 256u << 10;
constexpr std::size_t max_journal_line = 1u << 20;  // longer: garbage, dropped at recovery
constexpr std::size_t block = 64u << 10;

[[noreturn]] void fail(const std::string& what, int err) {
    throw std::runtime_error(what + ": " + errno_text(err));
}

std::string random_id() {
    unsigned char raw[16];
    std::size_t got = 0;
    while (got < sizeof raw) {
        const ssize_t n = ::getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("getrandom", errno);
        got += static_cast<std::size_t>(n);
    }
    static const char hex[] = "0123456789abcdef";
    std::string id;
    for (unsigned char c : raw) {
        id += hex[c >> 4];
        id += hex[c & 15];
    }
    return id;
}

std::string header_line(const std::string& id) {
    return R"({"journal_id":")" + id + R"(","format":1})" + "\n";
}

// Calls fn(line, offset) for each complete line of fd from `from`; fn returns false to stop.
// Lines longer than max_journal_line are passed as an empty view with overlong = true.
// Returns the offset just after the last complete line visited.
template <class Fn>
std::uint64_t for_each_line(int fd, std::uint64_t from, Fn fn) {
    std::string carry;
    bool overlong = false;
    std::uint64_t carry_offset = from;  // where `carry` starts in the file
    std::uint64_t pos = from;           // next read position
    std::uint64_t complete_end = from;
    std::string buf(block, '\0');
    for (;;) {
        const ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(pos));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("read journal", errno);
        if (n == 0) return complete_end;
        std::string_view data(buf.data(), static_cast<std::size_t>(n));
        std::uint64_t data_offset = pos;
        pos += static_cast<std::uint64_t>(n);
        while (!data.empty()) {
            const auto nl = data.find('\n');
            if (nl == std::string_view::npos) {
                if (!overlong && carry.size() + data.size() <= max_journal_line) carry.append(data);
                else {
                    overlong = true;
                    carry.clear();
                }
                break;
            }
            bool go_on;
            if (overlong || carry.size() + nl > max_journal_line) {
                go_on = fn(std::string_view(), carry_offset, true);
            } else if (carry.empty()) {
                go_on = fn(data.substr(0, nl), carry_offset, false);
            } else {
                carry.append(data.substr(0, nl));
                go_on = fn(std::string_view(carry), carry_offset, false);
            }
            carry.clear();
            overlong = false;
            data_offset += nl + 1;
            data.remove_prefix(nl + 1);
            carry_offset = data_offset;
            complete_end = data_offset;
            if (!go_on) return complete_end;
        }
    }
}

bool looks_like_event(std::string_view line) { return line.size() > 8 && line.back() == '}'; }

} // namespace

std::uint64_t journal_line_seq(std::string_view line) {
    constexpr std::string_view prefix = R"({"seq":)";
    if (line.substr(0, prefix.size()) != prefix) return 0;
    std::uint64_t seq = 0;
    std::size_t i = prefix.size(), digits = 0;
    for (; i < line.size() && line[i] >= '0' && line[i] <= '9' && digits < 18; ++i, ++digits)
        seq = seq * 10 + static_cast<std::uint64_t>(line[i] - '0');
    if (digits == 0 || i >= line.size() || line[i] != ',') return 0;
    return seq;
}

journal::journal(std::string path, limits lim) : path_(std::move(path)), limits_(lim) {}

journal::~journal() {
    if (fd_ >= 0) {
        if (dirty_) ::fdatasync(fd_);
        ::close(fd_);
    }
}

void journal::reset_state() {
    first_seq_ = last_seq_ = count_ = 0;
    index_.clear();
    tail_.clear();
    tail_bytes_ = 0;
}

void journal::remember_boot_event(std::string_view line) {
    if (line.find(R"("boot_id":")") == std::string_view::npos) return;
    const auto j = protocol::json::parse(line.data(), line.data() + line.size(), nullptr, false);
    if (!j.is_object()) return;
    const auto e = j.find("event");
    const auto b = j.find("boot_id");
    if (e == j.end() || b == j.end() || !e->is_string() || !b->is_string()) return;
    boot_events_.insert(e->get<std::string>() + '\0' + b->get<std::string>());
}

bool journal::has_event_for_boot(std::string_view event, std::string_view boot_id) const {
    std::string key(event);
    key += '\0';
    key += boot_id;
    return boot_events_.count(key) > 0;
}

struct journal::scan_result {
    std::uint64_t complete_end = 0;  // offset after the last complete line
    std::uint64_t bad_lines = 0;
};

journal::scan_result journal::scan(int fd, std::uint64_t from, bool) {
    scan_result r;
    r.complete_end = for_each_line(fd, from, [&](std::string_view line, std::uint64_t offset, bool overlong) {
        const std::uint64_t seq = overlong ? 0 : journal_line_seq(line);
        if (seq == 0 || seq <= last_seq_ || !looks_like_event(line)) {
            ++r.bad_lines;
            return true;
        }
        if (count_ % index_every == 0) index_.emplace_back(seq, offset);
        if (count_ == 0) first_seq_ = seq;
        last_seq_ = seq;
        ++count_;
        remember_boot_event(line);
        return true;
    });
    return r;
}

journal::recovery journal::open() {
    recovery rec;
    const std::filesystem::path p(path_);
    if (p.has_parent_path()) {
        std::error_code ec;
        if (!std::filesystem::exists(p.parent_path(), ec)) {
            std::filesystem::create_directories(p.parent_path(), ec);
            if (ec) throw std::runtime_error("create " + p.parent_path().string() + ": " + ec.message());
            ::chmod(p.parent_path().c_str(), 0700);
        }
    }
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) fail("open " + path_, errno);
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail("stat " + path_, errno);

    if (st.st_size == 0) {
        id_ = random_id();
        const std::string header = header_line(id_);
        if (!write_all(fd_, header)) fail("write " + path_, errno);
        ::fsync(fd_);
        header_end_ = end_ = header.size();
        rec.created = true;
        return rec;
    }

    // The header: the first line, when it is one.
    bool header_ok = false;
    for_each_line(fd_, 0, [&](std::string_view line, std::uint64_t, bool overlong) {
        if (!overlong) {
            const auto j = protocol::json::parse(line.data(), line.data() + line.size(), nullptr, false);
            if (j.is_object() && j.contains("journal_id") && j["journal_id"].is_string()) {
                id_ = j["journal_id"].get<std::string>();
                header_end_ = line.size() + 1;
                header_ok = !id_.empty();
            }
        }
        return false;
    });
    if (!header_ok) {
        id_ = random_id();
        header_end_ = 0;
    }

    const scan_result s = scan(fd_, header_end_, true);
    rec.torn_bytes = static_cast<std::uint64_t>(st.st_size) - s.complete_end;
    rec.bad_lines = s.bad_lines;
    end_ = s.complete_end;
    if (!header_ok || s.bad_lines > 0) {
        rewrite(header_end_);  // keeps the good lines, drops the rest and any torn tail
    } else if (rec.torn_bytes > 0) {
        if (::ftruncate(fd_, static_cast<off_t>(end_)) != 0) fail("truncate " + path_, errno);
        ::fsync(fd_);
    }
    rec.events = count_;
    return rec;
}

void journal::rewrite(std::uint64_t cut) {
    const std::string tmp = path_ + ".tmp";
    const int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) fail("open " + tmp, errno);
    std::string pending = header_line(id_);
    const std::uint64_t new_header_end = pending.size();
    std::uint64_t prev = 0;
    bool ok = true;
    for_each_line(fd_, cut, [&](std::string_view line, std::uint64_t offset, bool overlong) {
        if (offset >= end_) return false;
        const std::uint64_t seq = overlong ? 0 : journal_line_seq(line);
        if (seq == 0 || seq <= prev || !looks_like_event(line)) return true;
        prev = seq;
        pending.append(line);
        pending.push_back('\n');
        if (pending.size() >= block) {
            ok = write_all(out, pending);
            pending.clear();
        }
        return ok;
    });
    if (ok) ok = write_all(out, pending);
    if (ok) ok = ::fsync(out) == 0;
    const int err = errno;
    ::close(out);
    if (!ok) {
        ::unlink(tmp.c_str());
        fail("write " + tmp, err);
    }
    if (::rename(tmp.c_str(), path_.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        fail("rename " + tmp, e);
    }
    const auto dir = std::filesystem::path(path_).parent_path();
    const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }

    // Continue on the new file.
    const int fresh = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fresh < 0) fail("reopen " + path_, errno);
    ::close(fd_);
    fd_ = fresh;
    header_end_ = new_header_end;
    std::deque<entry> old_tail = std::move(tail_);
    reset_state();
    const scan_result s = scan(fd_, header_end_, true);
    end_ = s.complete_end;
    for (auto& e : old_tail) {
        if (e.seq >= first_seq_) {
            tail_bytes_ += e.line.size();
            tail_.push_back(std::move(e));
        }
    }
    dirty_ = false;
    ++compactions_;
}

void journal::maybe_compact() {
    const std::uint64_t payload = end_ - header_end_;
    if (count_ <= limits_.max_events && payload <= limits_.max_bytes) return;
    const std::uint64_t keep_events = std::max<std::uint64_t>(1, limits_.max_events * 3 / 4);
    const std::uint64_t keep_bytes = std::max<std::uint64_t>(1, limits_.max_bytes * 3 / 4);
    // Walk from the oldest line until both bounds hold for what is left.
    std::uint64_t remaining = count_;
    std::uint64_t cut = header_end_;
    for_each_line(fd_, header_end_, [&](std::string_view, std::uint64_t offset, bool) {
        if (remaining <= 1 || (remaining <= keep_events && end_ - offset <= keep_bytes)) {
            cut = offset;
            return false;
        }
        --remaining;
        return true;
    });
    rewrite(cut);
}

std::uint64_t journal::append(std::string_view event, const protocol::json& fields, std::string ts) {
    protocol::event_record rec;
    rec.seq = last_seq_ + 1;
    rec.ts = std::move(ts);
    rec.event = std::string(event);
    rec.fields = fields;
    std::string line = protocol::journal_line(rec);
    line.push_back('\n');
    std::string_view rest = line;
    std::uint64_t at = end_;
    while (!rest.empty()) {
        const ssize_t n = ::pwrite(fd_, rest.data(), rest.size(), static_cast<off_t>(at));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = n < 0 ? errno : EIO;
            [[maybe_unused]] int r = ::ftruncate(fd_, static_cast<off_t>(end_));  // no torn line
            fail("append to " + path_, err);
        }
        rest.remove_prefix(static_cast<std::size_t>(n));
        at += static_cast<std::uint64_t>(n);
    }
    line.pop_back();
    if (count_ % index_every == 0) index_.emplace_back(rec.seq, end_);
    if (count_ == 0) first_seq_ = rec.seq;
    last_seq_ = rec.seq;
    ++count_;
    end_ = at;
    dirty_ = true;
    remember_boot_event(line);

    tail_bytes_ += line.size();
    tail_.push_back(entry{rec.seq, std::move(line)});
    while (tail_.size() > tail_max_entries || (tail_bytes_ > tail_max_bytes && tail_.size() > 1)) {
        tail_bytes_ -= tail_.front().line.size();
        tail_.pop_front();
    }
    maybe_compact();
    return rec.seq;
}

std::vector<journal::entry> journal::read_after(std::uint64_t after, std::size_t max_bytes) const {
    std::vector<entry> out;
    if (count_ == 0 || after >= last_seq_) return out;
    const std::uint64_t start = std::max(after + 1, first_seq_);
    std::size_t bytes = 0;

    if (!tail_.empty() && tail_.front().seq <= start) {
        auto it = std::lower_bound(tail_.begin(), tail_.end(), start,
                                   [](const entry& e, std::uint64_t s) { return e.seq < s; });
        for (; it != tail_.end() && (out.empty() || bytes < max_bytes); ++it) {
            bytes += it->line.size();
            out.push_back(*it);
        }
        return out;
    }

    // From the file: the last index entry at or before `start`, then line by line.
    auto it = std::upper_bound(index_.begin(), index_.end(), start,
                               [](std::uint64_t s, const std::pair<std::uint64_t, std::uint64_t>& e) {
                                   return s < e.first;
                               });
    const std::uint64_t from = it == index_.begin() ? header_end_ : std::prev(it)->second;
    for_each_line(fd_, from, [&](std::string_view line, std::uint64_t offset, bool overlong) {
        if (offset >= end_) return false;
        const std::uint64_t seq = overlong ? 0 : journal_line_seq(line);
        if (seq < start) return true;
        bytes += line.size();
        out.push_back(entry{seq, std::string(line)});
        return bytes < max_bytes;
    });
    return out;
}

void journal::sync() {
    if (!dirty_ || fd_ < 0) return;
    ::fdatasync(fd_);
    dirty_ = false;
}

} // namespace machine::agent
