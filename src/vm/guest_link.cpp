#include "guest_link.hpp"

#include <asio/this_coro.hpp>

#include "machine/guest.hpp"
#include "machine/proc.hpp"
#include "machine/ssh.hpp"

namespace machine::vm {

using asio::awaitable;

master_before_listing find_master_before_listing(context& ctx, const lima::driver& lima, const std::string& name) {
    lima::instance assumed;
    assumed.name = name;
    assumed.dir = lima.instance_dir(name).string();
    return master_before_listing{ssh_config_of(assumed), guest_link::over_master(ctx, name, assumed)};
}

std::optional<guest_link> guest_link::over_master(context& ctx, const std::string& name, const lima::instance& inst) {
    auto target = master_for(name, inst);
    if (!target) return std::nullopt;
    guest_link link(ctx, name);
    link.master_ = std::move(target);
    return link;
}

guest_link guest_link::over(context& ctx, const std::string& name, std::shared_ptr<ssh::session> session) {
    guest_link link(ctx, name);
    link.session_ = std::move(session);
    return link;
}

awaitable<guest_link> guest_link::open(context& ctx, const std::string& name, const lima::instance& inst,
                                       cancel_signal* cancel) {
    if (auto link = over_master(ctx, name, inst)) co_return std::move(*link);
    const ssh::endpoint ep = ssh::endpoint_from_lima_ssh_config(ssh_config_of(inst));
    auto session = co_await ssh::session::connect(ep, pin_of(name, false), cancel ? cancel : &ctx.cancel);
    co_return over(ctx, name, std::move(session));
}

awaitable<std::unique_ptr<guest::connection>> guest_link::connect(std::chrono::milliseconds patience) const {
    context& ctx = *ctx_;
    auto on_problem = [&ctx, name = name_](const std::string& m) { ctx.emit(events::message(name, "warning", m)); };
    if (session_)
        co_return co_await guest::connect_agent(session_, patience, std::move(on_problem), ctx.agent_socket,
                                                ctx.agent_relay);
    proc::command relay;
    relay.argv = openssh_argv(*master_, false, {ctx.agent_relay, "relay", "--socket", ctx.agent_socket});
    relay.err = proc::stdio::null;  // the relay's one line of complaint: its exit status says it
    relay.env_unset = {"SSH_AUTH_SOCK"};
    auto child = proc::child::start(co_await asio::this_coro::executor, std::move(relay));
    co_return std::make_unique<guest::connection>(guest::process_stream(std::move(child)), std::move(on_problem), name_);
}

void guest_link::close() {
    if (session_) session_->close();
}

} // namespace machine::vm
