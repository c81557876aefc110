// A running VM as the SSH master's tests need it: a Lima instance whose ssh.config (the
// caller's) leads to a test sshd, its host key pinned as at the VM's creation, and machine's
// master for it stopped when the test ends, however it ends.
#pragma once

#include <filesystem>
#include <string>

#include <asio/io_context.hpp>

#include "machine/lima.hpp"
#include "machine/ssh.hpp"
#include "machine/vm.hpp"
#include "test_support.hpp"

namespace machine::test {

struct pinned_vm {
    asio::io_context& io;
    lima::instance inst;

    pinned_vm(asio::io_context& loop, const state_dir& state, const std::string& name,
              const std::filesystem::path& ssh_config)
        : io(loop) {
        inst.name = name;
        inst.state = lima::status::running;
        inst.ssh_config_file = ssh_config.string();
        namespace fs = std::filesystem;
        fs::create_directories(state.of(name));
        fs::permissions(state.of(name), fs::perms::owner_all, fs::perm_options::replace);
        co_run(io, [&]() -> asio::awaitable<void> {  // the pin (and its known_hosts) as at creation
            auto s = co_await ssh::session::connect(ssh::endpoint_from_lima_ssh_config(ssh_config),
                                                    vm::pin_of(name, true));
            s->close();
        }());
    }
    ~pinned_vm() { co_run(io, vm::stop_ssh_master(inst.name)); }
    pinned_vm(const pinned_vm&) = delete;
    pinned_vm& operator=(const pinned_vm&) = delete;

    // What ssh_target is given in these tests: no SSH agent to forward.
    static vm::agent_environment no_agent() {
        vm::agent_environment a;
        a.env.unset = {"SSH_AUTH_SOCK"};
        return a;
    }
};

} // namespace machine::test
