#include "detached.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>

#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/spdlog.h>

#include "machine/error.hpp"
#include "machine/platform.hpp"

namespace machine::vm {

namespace fs = std::filesystem;

namespace {
constexpr std::size_t log_max_bytes = 1024 * 1024;
}

void spawn_detached(const std::vector<std::string>& argv, const fs::path& log) {
    if (argv.empty()) throw error("spawn_detached: no command");
    std::vector<char*> args = platform::c_string_array(argv);
    // Built before fork(): the child may only make async-signal-safe calls.
    const std::string log_var = std::string(detached_log_variable) + "=";
    std::vector<std::string> env_strings{log_var + log.string()};
    for (char** e = environ; *e; ++e)
        if (!std::string_view(*e).starts_with(log_var)) env_strings.emplace_back(*e);
    std::vector<char*> env = platform::c_string_array(env_strings);
    const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) throw error("cannot open " + log.string() + ": " + std::strerror(errno));
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    // What the child writes to the log when exec fails, so that a caller's "see the log" finds
    // the reason (errno's number appended: strerror is not async-signal-safe).
    const std::string exec_failed = "cannot run " + argv[0] + ": exec failed with errno ";
    const long open_max = ::sysconf(_SC_OPEN_MAX);
    const int max_fd = open_max > 0 && open_max < (1 << 20) ? static_cast<int>(open_max) : (1 << 16);
    const pid_t child = ::fork();
    if (child < 0) {
        ::close(log_fd);
        if (null_fd >= 0) ::close(null_fd);
        throw error("cannot start " + (argv.size() > 1 ? argv[1] : argv[0]) + ": fork: " + std::strerror(errno));
    }
    if (child == 0) {
        // Only async-signal-safe calls from here on.
        ::setsid();
        if (::fork() != 0) ::_exit(0);
        if (null_fd >= 0) ::dup2(null_fd, 0);
        ::dup2(log_fd, 1);
        ::dup2(log_fd, 2);
        // Nothing else of machine's lives on in the helper: Asio's pipes and libssh's sockets are
        // not close-on-exec, and a pipe's write end kept open here would keep its reader (machine,
        // waiting for a sibling's output to end) waiting as long as the helper serves.
        if (::close_range(3, ~0U, 0) != 0)
            for (int fd = 3; fd < max_fd; ++fd) ::close(fd);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::execve(args[0], args.data(), env.data());
        const int e = errno;
        char digits[16];
        char* end = digits + sizeof digits;
        char* p = end;
        *--p = '\n';
        for (int n = e > 0 ? e : 0; p == end - 1 || n > 0; n /= 10) *--p = static_cast<char>('0' + n % 10);
        [[maybe_unused]] auto w1 = ::write(2, exec_failed.data(), exec_failed.size());
        [[maybe_unused]] auto w2 = ::write(2, p, static_cast<std::size_t>(end - p));
        ::_exit(127);
    }
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
}

std::shared_ptr<spdlog::logger> detached_logger(const std::string& name, const fs::path& file) {
    // spdlog rotates before a line would take the file past the cap: x.log becomes x.1.log
    // (the older one is removed) and a new x.log starts.
    auto sink = std::make_shared<spdlog::sinks::rotating_file_sink_mt>(file.string(), log_max_bytes, 1);
    auto logger = std::make_shared<spdlog::logger>(name, std::move(sink));
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %l: %v");
    logger->set_level(spdlog::level::info);
    // Each line reaches the file at once, as it did on stderr: someone may be watching it.
    logger->flush_on(spdlog::level::info);
    return logger;
}

bool log_only_to(const std::string& name, const fs::path& log) {
    // The files spdlog creates when it rotates stay as private as the one machine opened.
    ::umask(077);
    try {
        spdlog::set_default_logger(detached_logger(name, log));
    } catch (const spdlog::spdlog_ex& e) {
        spdlog::error("{}: cannot log to {}: {}", name, log.string(), e.what());
        return false;
    }
    // stdout and stderr are that same file, opened by machine for what goes wrong before this
    // point. Left open they would keep its first version on disk after it rotates away, and
    // grow it unseen with whatever reached them.
    const int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd >= 0) {
        ::dup2(null_fd, 1);
        ::dup2(null_fd, 2);
        ::close(null_fd);
    }
    return true;
}

std::function<bool()> while_vm_lives(const fs::path& vm_dir, const fs::path& socket) {
    // Serves while the VM's Lima host agent lives, and while its socket is there (the state
    // directory may be removed). Before the VM boots there is no host agent: it waits 10 minutes
    // from the socket's time, which machine renews each time it finds the helper serving (a
    // base baked before the VM's first boot can take longer than that).
    return [vm_dir, socket] {
        std::error_code ec;
        if (!fs::exists(socket, ec)) return false;
        const auto touched = fs::last_write_time(socket, ec);
        if (!ec && fs::file_time_type::clock::now() - touched < std::chrono::minutes(10)) return true;
        std::ifstream pid_file(vm_dir / "ha.pid");
        long pid = 0;
        return static_cast<bool>(pid_file >> pid) && pid > 0 && ::kill(static_cast<pid_t>(pid), 0) == 0;
    };
}

} // namespace machine::vm
