#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "machine/cancel.hpp"
#include "machine/lima.hpp"

namespace machine::lima {

namespace {
// A line longer than this is not an event; skip it rather than buffer without bound.
constexpr std::size_t max_event_line = 64 * 1024;
} // namespace

asio::awaitable<void> follow_events(std::filesystem::path log_file,
                                    std::function<bool(const ha_event&)> on_event,
                                    cancel_signal* cancel,
                                    std::chrono::system_clock::time_point since,
                                    std::chrono::milliseconds poll) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    off_t offset = 0;
    std::string pending;
    bool skipping_long_line = false;
    for (;;) {
        if (cancel && cancel->current() != cancel_signal::none) throw interrupted_error();
        struct stat st {};
        if (::stat(log_file.c_str(), &st) == 0) {
            if (st.st_size < offset) {  // truncated by a new `limactl start`
                offset = 0;
                pending.clear();
            }
            if (st.st_size > offset) {
                const int fd = ::open(log_file.c_str(), O_RDONLY | O_CLOEXEC);
                if (fd >= 0) {
                    char buf[8192];
                    ssize_t n;
                    while ((n = ::pread(fd, buf, sizeof buf, offset)) > 0) {
                        offset += n;
                        pending.append(buf, static_cast<std::size_t>(n));
                    }
                    ::close(fd);
                }
                std::size_t start = 0;
                for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n', start)) {
                    const std::string_view line(pending.data() + start, nl - start);
                    start = nl + 1;
                    if (skipping_long_line) {
                        skipping_long_line = false;
                        continue;
                    }
                    const auto event = parse_ha_event(line);
                    if (!event) continue;
                    if (since != std::chrono::system_clock::time_point{}) {
                        const auto t = parse_rfc3339(event->time);
                        if (t && *t < since) continue;
                    }
                    if (!on_event(*event)) co_return;
                }
                pending.erase(0, start);
                if (pending.size() > max_event_line) {
                    pending.clear();
                    skipping_long_line = true;
                }
            }
        }
        timer.expires_after(poll);
        co_await timer.async_wait(asio::use_awaitable);  // throws when cancelled (e.g. by `||`)
    }
}

} // namespace machine::lima
