#include "network.hpp"

#include <fcntl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>

#include "files.hpp"
#include "machine/protocol.hpp"
#include "machine/supervise.hpp"
#include "spawn.hpp"

namespace machine::agent {

namespace {

using namespace asio::experimental::awaitable_operators;

constexpr std::size_t nft_output_cap = 4096;

std::string parent_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

[[noreturn]] void fail(const std::string& what, int err) { throw std::runtime_error(what + ": " + errno_text(err)); }

// The end of nft's complaint, whole lines where possible: its first error names the line.
std::string error_text(std::string text) {
    text = trim(text);
    if (text.size() > protocol::max_network_error_bytes) text.resize(protocol::max_network_error_bytes);
    return text;
}

// The file's text when it is at most what network.apply accepts; nullopt otherwise.
std::optional<std::string> read_rules_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
        static_cast<std::size_t>(st.st_size) > protocol::max_network_ruleset_bytes)
        return std::nullopt;
    return read_file(path);
}

} // namespace

std::optional<std::uint32_t> nftables_generation() {
    const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) return std::nullopt;
    struct fd_closer {
        int fd;
        ~fd_closer() { ::close(fd); }
    } closer{fd};
    const timeval patience{1, 0};  // the kernel answers at once; never a hang
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    struct {
        nlmsghdr header;
        nfgenmsg body;
    } request{};
    request.header.nlmsg_len = sizeof request;
    request.header.nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
    request.header.nlmsg_flags = NLM_F_REQUEST;
    request.header.nlmsg_seq = 1;
    request.body.nfgen_family = AF_UNSPEC;
    request.body.version = NFNETLINK_V0;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd, &request, sizeof request, 0, reinterpret_cast<const sockaddr*>(&kernel), sizeof kernel) < 0)
        return std::nullopt;
    alignas(nlmsghdr) char reply[512];
    const ssize_t n = ::recv(fd, reply, sizeof reply, 0);
    if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nfgenmsg)))) return std::nullopt;
    const auto* header = reinterpret_cast<const nlmsghdr*>(reply);
    if (!NLMSG_OK(header, static_cast<unsigned>(n)) ||
        header->nlmsg_type != ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN))
        return std::nullopt;  // NLMSG_ERROR: EPERM without CAP_NET_ADMIN, or no nf_tables
    // The attributes after the nfgenmsg: NFTA_GEN_ID is the generation, big-endian.
    std::size_t at = NLMSG_LENGTH(sizeof(nfgenmsg));
    const std::size_t end = header->nlmsg_len;
    while (at + sizeof(nlattr) <= end) {
        nlattr attr;
        std::memcpy(&attr, reply + at, sizeof attr);
        if (attr.nla_len < sizeof(nlattr) || at + attr.nla_len > end) break;
        if ((attr.nla_type & NLA_TYPE_MASK) == NFTA_GEN_ID && attr.nla_len >= sizeof(nlattr) + sizeof(std::uint32_t)) {
            std::uint32_t id;
            std::memcpy(&id, reply + at + sizeof(nlattr), sizeof id);
            return ntohl(id);
        }
        at += NLA_ALIGN(attr.nla_len);
    }
    return std::nullopt;
}

void write_network_rules(const std::string& path, std::string_view ruleset) {
    const std::string dir = parent_of(path);
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
        if (errno != ENOENT) fail("stat " + dir, errno);
        if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) fail("mkdir " + dir, errno);
        if (::chmod(dir.c_str(), 0755) != 0) fail("chmod " + dir, errno);  // the agent's umask is 077
    } else if (!S_ISDIR(st.st_mode)) {
        throw std::runtime_error(dir + " is not a directory");
    }
    std::random_device rd;
    const std::string tmp = dir + "/.network.nft.tmp-" + std::to_string(rd());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) fail("create " + tmp, errno);
    int err = 0;
    if (::fchmod(fd, 0644) != 0 || !write_all(fd, ruleset) || ::fsync(fd) != 0) err = errno;
    ::close(fd);
    if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
    if (err != 0) {
        ::unlink(tmp.c_str());
        fail("write " + path, err);
    }
}

asio::awaitable<network_outcome> apply_network_rules(std::string nft, std::string path,
                                                     std::chrono::milliseconds limit, proc::stopper** running) {
    network_outcome out;
    spawn_spec spec;
    spec.argv = {nft, "-f", path};  // argv only: the path is the agent's own option
    spec.env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"};
    child_process child;
    try {
        child = spawn(spec);
    } catch (const spawn_failure& e) {
        out.nft_found = false;
        out.error = std::string("nft cannot run (install nftables): ") + e.what();
        co_return out;
    }
    ::close(child.stdout_fd);  // nft -f prints nothing on success; its complaints are on stderr
    auto ex = co_await asio::this_coro::executor;
    const pid_t pid = child.pid;
    proc::stopper stopper(ex, proc::stop_ladder::kill_only(), [pid](int sig) { ::kill(-pid, sig); });
    stopper.deadline(std::chrono::steady_clock::now() + limit);
    if (running) *running = &stopper;
    struct forget_at_end {
        proc::stopper** running;
        ~forget_at_end() {
            if (running) *running = nullptr;
        }
    } forget{running};
    std::string err;
    proc::child_watch watch;
    watch.pid = child.pid;
    watch.pidfd = child.pidfd;
    watch.err = proc::output_pipe::collected(child.stderr_fd, err, nft_output_cap, 4096);
    watch.on_reaped = [&stopper] { stopper.exited(); };
    auto draining = proc::drain_and_reap(std::move(watch));  // named first: house style §4
    const int status = co_await (std::move(draining) && stopper.run());
    if (stopper.why() == proc::stopper::reason::deadline) {
        out.error = "nft -f " + path + " did not finish within " + std::to_string(limit.count()) + " ms (killed)";
    } else if (stopper.stopping()) {
        out.error = "nft -f " + path + " was stopped (cancelled, or the agent is stopping)";
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        out.applied = true;
    } else {
        const std::string how = WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                                  : "signal " + std::to_string(WTERMSIG(status));
        out.error = error_text("nft -f " + path + " failed (" + how + "): " + err);
    }
    co_return out;
}

asio::awaitable<network_outcome> network_rules::apply(std::string ruleset, std::chrono::milliseconds limit,
                                                      proc::stopper** running) {
    co_return co_await run_nft(std::move(ruleset), true, limit, running);
}

asio::awaitable<network_outcome> network_rules::apply_file(std::chrono::milliseconds limit) {
    // Unreadable or too long: nft is given the file all the same (and says what is wrong with it).
    std::string text = read_rules_file(path_).value_or(std::string());
    co_return co_await run_nft(std::move(text), false, limit, nullptr);
}

asio::awaitable<network_outcome> network_rules::run_nft(std::string ruleset, bool write, std::chrono::milliseconds limit,
                                                        proc::stopper** running) {
    // Another apply in flight could write the file this one's nft reads: only an apply that ran
    // alone from start to end may remember what it applied.
    const bool alone_at_start = in_flight_ == 0;
    const std::uint64_t ticket = ++started_;
    ++in_flight_;
    struct leave {
        std::size_t& in_flight;
        ~leave() { --in_flight; }
    } leaving{in_flight_};
    if (write && read_rules_file(path_) != ruleset) write_network_rules(path_, ruleset);
    const std::optional<std::uint32_t> before = nftables_generation();
    if (last_ && before && *before == last_->generation && last_->ruleset == ruleset && !ruleset.empty()) {
        network_outcome kept;
        kept.applied = kept.kept = true;
        co_return kept;
    }
    last_.reset();
    network_outcome out = co_await apply_network_rules(nft_, path_, limit, running);
    // Remembered only when this nft's commit was nftables' only change meanwhile.
    const std::optional<std::uint32_t> after = nftables_generation();
    const bool alone = alone_at_start && in_flight_ == 1 && started_ == ticket;
    if (out.applied && alone && before && after && *after == *before + 1 && !ruleset.empty())
        last_ = applied{std::move(ruleset), *after};
    co_return out;
}

} // namespace machine::agent
