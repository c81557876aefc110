#include "network.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
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

} // namespace

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

} // namespace machine::agent
