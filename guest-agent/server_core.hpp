// The agent's server (its own process state): the socket and its accept loop, the boot and user
// watches, sd_notify, the journal and the stores every request shares. Connections
// (connection.hpp) and the requests (requests.hpp) reach the shared state through it.
//
// Invariant: one io_context run by one thread (main's), so connection state, the journal and
// the counters below need no locks.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>

#include "journal.hpp"
#include "machine/protocol.hpp"
#include "machine/async.hpp"
#include "provision.hpp"
#include "secrets.hpp"
#include "server.hpp"
#include "session_registry.hpp"
#include "steps_state.hpp"

namespace machine::agent {

class connection;

class server {
public:
    server(asio::io_context& io, server_options options);

    int start();

    asio::io_context& io() { return io_; }
    const server_options& options() const { return options_; }
    journal& events_journal() { return journal_; }
    notifier& new_events() { return events_; }
    const std::string& boot_id() const { return boot_id_; }
    bool stopping() const { return stopping_; }

    std::uint64_t append_event(std::string_view name, const protocol::json& fields);
    provision_setup provision_setup_for_job();
    secrets_store& secrets() { return secrets_; }
    session_registry& sessions() { return sessions_; }
    network_rules& network() { return network_; }
    protocol::hello_result hello() const;
    /// Journals and logs what became of machine's network rules (`trigger`: "start" or
    /// "request"): network.applied, or network.failed with nft's complaint.
    void report_network(const network_outcome& outcome, std::string_view trigger);
    protocol::health_result health() const;

    std::size_t running = 0;
    std::size_t subscribers = 0;
    /// The one provision running (across all connections; a second one is `busy`), or null.
    std::shared_ptr<provision_job> provision;

private:
    void prepare_socket_directory(gid_t gid);
    secrets_setup secrets_setup_for_store();
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> sync_later();
    asio::awaitable<void> watch_boot();
    asio::awaitable<void> watch_user();
    asio::awaitable<void> apply_network_then_notify();
    void stop(int signal_number);
    void spawn_task(asio::awaitable<void> task, const char* what);

    asio::io_context& io_;
    server_options options_;
    journal journal_;
    steps_state steps_;
    secrets_store secrets_;
    network_rules network_;
    session_registry sessions_;
    asio::local::stream_protocol::acceptor acceptor_;
    asio::signal_set signals_;
    notifier events_;
    asio::steady_timer sync_timer_;
    bool sync_pending_ = false;
    bool stopping_ = false;
    std::string boot_id_;
    std::string binary_sha256_;
    std::chrono::steady_clock::time_point started_;
    std::set<std::shared_ptr<connection>> connections_;
};

/// Milliseconds since `t0`.
std::uint64_t ms_since(std::chrono::steady_clock::time_point t0);

} // namespace machine::agent
