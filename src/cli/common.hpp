// Pieces shared by the commands (internal to the CLI module).
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>

#include "cli.hpp"
#include "machine/protocol.hpp"
#include "machine/ssh.hpp"

namespace machine::cli {

std::chrono::milliseconds since(std::chrono::steady_clock::time_point t0);

// $MACHINE_STATE_DIR/<name>: the rendered template, the host-key pin, the lock.
std::filesystem::path project_state_dir(const std::string& name);

// One machine command at a time per project: two `up`s racing on one VM would each call
// `limactl create` or `start`. A second command waits for the first, then sees its result.
// The lock is released when the process exits, however it exits.
//
// The lock file also counts releases (its generation). A command that read the generation,
// then listed the VM, then took the lock and finds the same generation knows no machine
// command has changed the VM in between, so `up --all` can list every VM in one call.
class project_lock {
public:
    explicit project_lock(const std::string& name);
    ~project_lock();  // bumps the generation when this lock was held
    project_lock(const project_lock&) = delete;
    project_lock& operator=(const project_lock&) = delete;
    bool try_lock();
    std::uint64_t generation() const;
    // Without taking the lock (0 when no command has locked the project yet).
    static std::uint64_t generation_of(const std::string& name);

private:
    int fd_ = -1;
    bool held_ = false;
};

// Waits (cancellably, saying so) until no other machine command works on `name`.
asio::awaitable<std::unique_ptr<project_lock>> lock_project(context& ctx, std::string name,
                                                            cancel_signal* cancel);

// The name given (validated), else the ambient project (.machine.toml, else "default").
std::string resolve_name(context& ctx, const std::optional<std::string>& name);

// usage_error: no such project, with a did-you-mean among the configured ones.
[[noreturn]] void unknown_project(const config::config& cfg, const std::string& name);

// Sleeps on `timer`; throws when cancelled (so it can lose an `a || b` race).
asio::awaitable<void> sleep_for(asio::steady_timer& timer, std::chrono::milliseconds d);

// The instance's ssh.config (as `limactl list` names it, else in its directory).
std::filesystem::path ssh_config_of(const lima::instance& inst);

// The VM, running; otherwise an error saying to run `machine up NAME`.
asio::awaitable<lima::instance> require_running(context& ctx, const std::string& name);

// The VM's host-key pin (<state>/<name>/host_key) and its OpenSSH form (known_hosts, under the
// alias `machine-<name>`), which every verified connection keeps current. `record_if_absent`
// only for the first connection after machine created the VM (new_vm_key_expected) and for
// `machine pin`; otherwise a VM without a pin is refused here with no_pin_message().
ssh::host_key_pin pin_of(const std::string& name, bool record_if_absent);

// "VM 'NAME' has no pinned host key ...; run 'machine pin NAME'".
std::string no_pin_message(const std::string& name);

// Called just before machine creates (or clones) the VM `name`: a pin of an earlier VM of that
// name is removed, and the first connection to the new one pins its key (until then
// new_vm_key_expected() is true, also for an `up` that failed before connecting).
void expect_new_vm_key(const std::string& name);
bool new_vm_key_expected(const std::string& name);
void new_vm_key_pinned(const std::string& name);

// Removes the pin and its known_hosts (`machine pin --replace`).
void forget_pin(const std::string& name);

// Runs `task` and returns its exception instead of throwing it. `a || b` ends with the first
// *successful* side, so a side that may fail must not throw.
asio::awaitable<std::exception_ptr> capture(asio::awaitable<void> task);

// An agent event as one of ours. The guest is untrusted: at most 32 fields, values cut at 1 KiB,
// nested values flattened to JSON text (the terminal sink sanitizes what it prints).
events::event from_guest(const std::string& vm, const protocol::event_record& e);

// Spawned tasks that must all finish before their owner returns (no orphans).
class task_group {
public:
    explicit task_group(asio::any_io_executor ex)
        : ex_(ex), idle_(ex, asio::steady_timer::time_point::max()) {}

    // `make_task` is a callable returning asio::awaitable<void>; it is kept alive by co_spawn.
    template <class MakeTask>
    void spawn(MakeTask make_task) {
        ++running_;
        asio::co_spawn(ex_, std::move(make_task), [this](std::exception_ptr e) {
            if (e) log_task_failure(e);
            if (--running_ == 0) idle_.cancel();
        });
    }

    asio::awaitable<void> join();
    int running() const { return running_; }

private:
    static void log_task_failure(std::exception_ptr e);
    asio::any_io_executor ex_;
    asio::steady_timer idle_;
    int running_ = 0;
};

} // namespace machine::cli
