// How one command reaches a running VM's guest agent: every connection it opens goes over one
// SSH connection checked against the VM's pinned host key. That is machine's OpenSSH master for
// the VM when one serves its pin and instance (vm.hpp, "One SSH connection per VM, reused": an
// `ssh` client on the master runs the relay, no handshake), else a libssh session of machine's
// own. Internal to the vm module.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <asio/awaitable.hpp>

#include "machine/vm.hpp"

namespace machine::ssh {
class session;
}

namespace machine::vm {

/// The target that rides machine's master for the VM, when one runs for its pin and instance
/// (whatever agent it forwards: the relay asks for none); nullopt otherwise.
std::optional<openssh_target> master_for(const std::string& name, const lima::instance& inst);

class guest_link {
public:
    /// Riding the VM's master; nullopt when none serves it.
    static std::optional<guest_link> over_master(context& ctx, const std::string& name, const lima::instance& inst);
    /// Over `session`, already checked against the pin.
    static guest_link over(context& ctx, const std::string& name, std::shared_ptr<ssh::session> session);
    /// The master when one serves the VM, else a libssh session of its own, checked against the
    /// pin (a VM without one is refused).
    static asio::awaitable<guest_link> open(context& ctx, const std::string& name, const lima::instance& inst,
                                            cancel_signal* cancel);

    /// A new connection to the agent; lines from it that make no sense are warnings about the
    /// VM. Over a session it waits up to `patience` for an agent that is starting; over the
    /// master an agent that is not there fails at once (guest::agent_unavailable).
    asio::awaitable<std::unique_ptr<guest::connection>> connect(std::chrono::milliseconds patience) const;

    bool rides_master() const { return session_ == nullptr; }
    /// The link's own libssh session; nullptr when it rides the master.
    const std::shared_ptr<ssh::session>& session() const { return session_; }
    /// Ends the link's own session, and every connection over it; the master is the VM's and stays.
    void close();

private:
    guest_link(context& ctx, std::string name) : ctx_(&ctx), name_(std::move(name)) {}

    context* ctx_;
    std::string name_;
    std::optional<openssh_target> master_;
    std::shared_ptr<ssh::session> session_;
};

/// The master for a VM, found before `limactl list` answers: a command that reaches the VM while
/// Lima lists it assumes the instance Lima keeps under the name (its directory under LIMA_HOME,
/// the ssh.config in it), and uses what it reached only if the listed instance is that one.
struct master_before_listing {
    std::filesystem::path ssh_config;  ///< of the instance assumed
    std::optional<guest_link> link;    ///< nullopt: no master serves it
    /// The link, found for `listed`'s ssh.config: what it reached may be used for `listed`.
    bool serves(const lima::instance& listed) const { return link && ssh_config == ssh_config_of(listed); }
};
master_before_listing find_master_before_listing(context& ctx, const lima::driver& lima, const std::string& name);

} // namespace machine::vm
