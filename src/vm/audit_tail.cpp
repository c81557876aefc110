#include "audit_tail.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace machine::vm {

line_tail::line_tail(std::filesystem::path file, bool from_start) : file_(std::move(file)) {
    open_current(!from_start);
}

line_tail::~line_tail() {
    if (fd_ >= 0) ::close(fd_);
}

void line_tail::open_current(bool at_end) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = ::open(file_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    partial_.clear();
    skipping_ = false;
    if (fd_ < 0) return;
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd_);
        fd_ = -1;
        return;
    }
    dev_ = st.st_dev;
    ino_ = st.st_ino;
    if (at_end) ::lseek(fd_, 0, SEEK_END);
}

bool line_tail::replaced() const {
    struct stat st {};
    if (::stat(file_.c_str(), &st) != 0) return false;  // gone, nothing new yet: keep the old one
    return static_cast<std::uint64_t>(st.st_dev) != dev_ || static_cast<std::uint64_t>(st.st_ino) != ino_;
}

std::size_t line_tail::read_some(std::size_t max_bytes, std::vector<std::string>& lines) {
    std::size_t total = 0;
    char buf[16 * 1024];
    while (total < max_bytes) {
        const ssize_t n = ::read(fd_, buf, std::min(sizeof buf, max_bytes - total));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        total += static_cast<std::size_t>(n);
        for (ssize_t i = 0; i < n; ++i) {
            const char c = buf[i];
            if (c == '\n') {
                if (skipping_) ++dropped_;
                else lines.push_back(std::move(partial_));
                partial_.clear();
                skipping_ = false;
            } else if (!skipping_) {
                partial_ += c;
                if (partial_.size() > max_line) {
                    partial_.clear();
                    skipping_ = true;
                }
            }
        }
    }
    return total;
}

std::vector<std::string> line_tail::poll(std::size_t max_bytes) {
    std::vector<std::string> lines;
    if (fd_ < 0) {
        open_current(false);  // appeared since: everything in it is new
        if (fd_ < 0) return lines;
    }
    // Truncated in place: start over from its beginning.
    struct stat st {};
    if (::fstat(fd_, &st) == 0 && ::lseek(fd_, 0, SEEK_CUR) > st.st_size) {
        ::lseek(fd_, 0, SEEK_SET);
        partial_.clear();
        skipping_ = false;
    }
    std::size_t got = read_some(max_bytes, lines);
    // At the end of a file that was rotated away: its last lines are read (above), then the new
    // file from its start. A torn last line of the old file is lost with it (the proxy writes
    // whole lines, so there is none unless it died mid-write).
    if (got < max_bytes && replaced()) {
        open_current(false);
        if (fd_ >= 0) read_some(max_bytes - got, lines);
    }
    return lines;
}

} // namespace machine::vm
