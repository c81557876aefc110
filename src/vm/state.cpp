// A project's state on this computer: its directory, its lock, its VM's host-key pin.
#include "machine/vm.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

fs::path project_state_dir(const std::string& name) { return paths::state_dir() / name; }

bool first_time(const std::string& name, const std::string& what) {
    const fs::path marker = project_state_dir(name) / ("noted-" + what);
    std::error_code ec;
    if (fs::exists(marker, ec)) return false;
    fs::create_directories(marker.parent_path(), ec);
    std::ofstream(marker) << "\n";
    return true;
}


project_lock::project_lock(const std::string& name) : project_lock(name, ".lock") {}

project_lock::project_lock(const std::string& name, const std::string& file) {
    const fs::path dir = project_state_dir(name);
    fs::create_directories(dir);
    fd_ = ::open((dir / file).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) throw error("cannot open " + (dir / file).string() + ": " + std::strerror(errno));
}

namespace {

std::uint64_t read_generation(int fd) {
    char buf[24] = {};
    const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    return std::strtoull(buf, nullptr, 10);
}

} // namespace

project_lock::~project_lock() {
    if (held_) {
        // Fixed width, so a shorter number never leaves digits of a longer one behind.
        char buf[24];
        const int n = std::snprintf(buf, sizeof buf, "%020llu\n",
                                    static_cast<unsigned long long>(read_generation(fd_) + 1));
        if (::pwrite(fd_, buf, static_cast<std::size_t>(n), 0) != n)
            spdlog::debug("cannot record the lock generation: {}", std::strerror(errno));
    }
    ::close(fd_);
}

bool project_lock::try_lock() {
    held_ = ::flock(fd_, LOCK_EX | LOCK_NB) == 0;
    return held_;
}

std::uint64_t project_lock::generation() const { return read_generation(fd_); }

std::uint64_t project_lock::generation_of(const std::string& name) {
    const int fd = ::open((project_state_dir(name) / ".lock").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    const std::uint64_t g = read_generation(fd);
    ::close(fd);
    return g;
}

asio::awaitable<void> wait_for_lock(context& ctx, const std::string& name, project_lock& lock, cancel_signal* cancel) {
    if (lock.try_lock()) co_return;
    ctx.say(name, "waiting for another machine command working on '" + name + "'");
    while (!lock.try_lock()) {
        if (cancel && cancel->current() != cancel_signal::none) throw interrupted_error();
        co_await sleep_for(100ms);
    }
}

asio::awaitable<std::unique_ptr<project_lock>> lock_project(context& ctx, std::string name,
                                                            cancel_signal* cancel) {
    auto lock = std::make_unique<project_lock>(name);
    co_await wait_for_lock(ctx, name, *lock, cancel);
    co_return lock;
}

fs::path ssh_config_of(const lima::instance& inst) {
    return inst.ssh_config_file.empty() ? fs::path(inst.dir) / "ssh.config" : fs::path(inst.ssh_config_file);
}

asio::awaitable<lima::instance> require_running(context& ctx, const std::string& name) {
    auto existing = co_await ctx.lima.find(name);
    if (!existing) throw error("VM '" + name + "' does not exist (run 'machine up " + name + "')");
    if (existing->state != lima::status::running)
        throw error("VM '" + name + "' is not running (run 'machine up " + name + "')");
    co_return std::move(*existing);
}

namespace {
fs::path pin_pending_marker(const std::string& name) { return project_state_dir(name) / "host_key.pending"; }
}  // namespace

ssh::host_key_pin pin_of(const std::string& name, bool record_if_absent) {
    ssh::host_key_pin pin{project_state_dir(name) / "host_key", name, record_if_absent};
    pin.known_hosts = project_state_dir(name) / "known_hosts";
    pin.known_hosts_alias = "machine-" + name;
    std::error_code ec;
    if (!record_if_absent && !fs::exists(pin.file, ec)) throw error(no_pin_message(name));
    return pin;
}

std::string no_pin_message(const std::string& name) {
    return "VM '" + name + "' has no pinned host key (machine pins it only when it creates the VM); to trust the key " +
           "it presents now, run 'machine pin " + name + "'";
}

void expect_new_vm_key(const std::string& name) {
    const fs::path dir = project_state_dir(name);
    fs::create_directories(dir);
    std::error_code ec;
    fs::remove(dir / "host_key", ec);
    fs::remove(dir / "known_hosts", ec);
    paths::write_file_atomic(pin_pending_marker(name), "the VM is being created: its first key is pinned\n", 0600);
}

bool new_vm_key_expected(const std::string& name) {
    std::error_code ec;
    return fs::exists(pin_pending_marker(name), ec);
}

void new_vm_key_pinned(const std::string& name) {
    std::error_code ec;
    fs::remove(pin_pending_marker(name), ec);
}

void forget_pin(const std::string& name) {
    std::error_code ec;
    fs::remove(project_state_dir(name) / "host_key", ec);
    fs::remove(project_state_dir(name) / "known_hosts", ec);
}

} // namespace machine::vm
