// The proxy's audit log writer (audit_writer.hpp): sanitize, rate-limit, rotate, append.
#include "audit_writer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

#include "machine/text.hpp"

namespace machine::net {

namespace {

/// `s` escaped for a terminal and cut to at most `cap` bytes, neither inside a UTF-8 character
/// nor inside an escape: it is escaped a character at a time (a lead byte and the
/// continuation bytes after it), and a character that does not fit ends it.
std::string escaped(std::string_view s, std::size_t cap) {
    std::string out;
    std::size_t pos = 0;
    while (pos < s.size()) {
        std::size_t end = pos + 1;
        while (end < s.size() && end - pos < 4 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) ++end;
        const auto piece = text::escape_for_terminal(s.substr(pos, end - pos));
        if (out.size() + piece.size() > cap) break;
        out += piece;
        pos = end;
    }
    return out;
}

/// A whole buffer to `fd`, or false.
bool write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const auto n = ::write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

class fd_closer {
public:
    explicit fd_closer(int fd) : fd_(fd) {}
    ~fd_closer() {
        if (fd_ >= 0) ::close(fd_);
    }
    fd_closer(const fd_closer&) = delete;
    fd_closer& operator=(const fd_closer&) = delete;
    int get() const { return fd_; }

private:
    int fd_;
};

/// The log opened for appending: created 0600, never through a symlink, only a regular file.
int open_log(const std::filesystem::path& p) {
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return -1;
    }
    if ((st.st_mode & 0077) != 0) ::fchmod(fd, 0600);  // a file someone else made readable
    return fd;
}

} // namespace

audit_record sanitized(audit_record r) {
    r.kind = escaped(r.kind, audit_max_kind);
    r.host = escaped(r.host, audit_max_host);
    r.reason = escaped(r.reason, audit_max_reason);
    r.port = std::clamp(r.port, 0, 65535);
    r.bytes_up = std::max<std::int64_t>(r.bytes_up, 0);
    r.bytes_down = std::max<std::int64_t>(r.bytes_down, 0);
    r.duration_ms = std::max<std::int64_t>(r.duration_ms, 0);
    r.suppressed = std::max<std::int64_t>(r.suppressed, 0);
    return r;
}

audit_writer::audit_writer(std::filesystem::path log, std::size_t max_bytes, std::size_t max_per_second)
    : log_(std::move(log)),
      max_bytes_(max_bytes),
      rate_(static_cast<double>(std::max<std::size_t>(max_per_second, 1))),
      tokens_(rate_) {}

bool audit_writer::take_token(clock::time_point now) {
    if (last_refill_ && now > *last_refill_) {
        const std::chrono::duration<double> elapsed = now - *last_refill_;
        tokens_ = std::min(rate_, tokens_ + elapsed.count() * rate_);
    }
    if (!last_refill_ || now > *last_refill_) last_refill_ = now;
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
}

audit_writer::outcome audit_writer::record(audit_record r, clock::time_point now) {
    if (!take_token(now)) {
        pending_ += 1 + r.suppressed;
        r.suppressed = 0;
        last_suppressed_ = std::move(r);
        return outcome::suppressed;
    }
    r.suppressed += pending_;
    const auto result = write(r);
    if (result == outcome::written) {
        pending_ = 0;
        last_suppressed_.reset();
    }
    return result;
}

std::optional<audit_writer::outcome> audit_writer::flush(clock::time_point now) {
    if (pending_ == 0 || !last_suppressed_) return std::nullopt;
    (void)take_token(now);  // spend one if there is one, so the rate stays honest
    auto r = *last_suppressed_;
    r.suppressed += pending_ - 1;  // the record itself is one of those counted
    const auto result = write(r);
    if (result == outcome::written) {
        pending_ = 0;
        last_suppressed_.reset();
    }
    return result;
}

audit_writer::outcome audit_writer::write(const audit_record& r) {
    const std::string line = to_json_line(sanitized(r)) + '\n';
    if (line.size() > max_bytes_) return outcome::failed;  // a cap smaller than one line
    fd_closer fd(open_log(log_));
    if (fd.get() < 0) return outcome::failed;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return outcome::failed;
    if (static_cast<std::uintmax_t>(st.st_size) + line.size() > max_bytes_) {
        auto rotated = log_;
        rotated += ".1";
        if (::rename(log_.c_str(), rotated.c_str()) != 0) return outcome::failed;
        fd_closer fresh(open_log(log_));
        if (fresh.get() < 0) return outcome::failed;
        return write_all(fresh.get(), line) ? outcome::written : outcome::failed;
    }
    return write_all(fd.get(), line) ? outcome::written : outcome::failed;
}

} // namespace machine::net
