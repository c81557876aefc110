// Lima in memory for the workflows' unit tests (src/vm): instances kept in a map, every call
// recorded as one line ("start web", "stop web --force"), and any call made to fail on demand.
// Modelled on Ninja's FakeCommandRunner. No process is started.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <asio/io_context.hpp>

#include "machine/cancel.hpp"
#include "machine/events.hpp"
#include "machine/lima.hpp"
#include "machine/vm.hpp"

namespace machine::test {

class fake_lima_driver final : public lima::driver {
public:
    // What a driver and its forks share: one Lima.
    struct world {
        std::filesystem::path lima_home = "/nonexistent/lima";
        std::map<std::string, lima::instance> instances;
        std::vector<std::string> calls;                      // "verb arg...", in order
        std::set<std::string> failing;                       // verbs that throw lima::command_error
        std::vector<lima::ha_event> boot_events;             // what follow_host_agent reports during a start
        std::vector<lima::environment> environments;         // set_environment, in order
        bool isolates_network = false;                       // what `limactl info` would say
        int info_asked = 0;                                  // isolates_network() calls
        std::map<std::string, std::string> run_states;       // QEMU's (QMP); a running instance without one: "running"
        std::map<std::string, std::vector<std::string>> snapshots;  // tags per instance
        std::set<std::string> disk_only;                     // tags taken while stopped: QEMU cannot load them online
        bool can_hibernate = false;                          // what `limactl info` would say
        // Run by find() before it answers: a test watches what happens while Lima lists.
        std::function<asio::awaitable<void>()> while_listing;
    };

    explicit fake_lima_driver(std::shared_ptr<world> w = std::make_shared<world>()) : world_(std::move(w)) {}
    world& state() { return *world_; }

    // An instance as `limactl list` would show it.
    lima::instance& add(const std::string& name, lima::status s);

    std::unique_ptr<lima::driver> fork(cancel_signal* cancel, lima::timeouts t) const override;
    void set_environment(lima::environment env) override;
    asio::awaitable<std::string> version() override;
    asio::awaitable<bool> isolates_network() override;
    asio::awaitable<std::vector<lima::instance>> list() override;
    asio::awaitable<std::optional<lima::instance>> find(std::string name) override;
    asio::awaitable<std::vector<lima::instance>> find_all(std::vector<std::string> names) override;
    asio::awaitable<void> create(std::string name, std::filesystem::path tmpl, std::vector<std::string> sets,
                                 lima::log_handler on_log) override;
    asio::awaitable<void> start(std::string name, lima::log_handler on_log) override;
    asio::awaitable<void> start_new(std::string name, std::filesystem::path tmpl, lima::log_handler on_log) override;
    asio::awaitable<void> stop(std::string name, bool force) override;
    asio::awaitable<void> remove(std::string name, bool force) override;
    asio::awaitable<void> clone(std::string from, std::string to, std::vector<std::string> sets) override;
    asio::awaitable<void> edit(std::string name, std::vector<std::string> sets) override;
    asio::awaitable<lima::shell_result> shell(std::string name, std::vector<std::string> cmd,
                                              std::string workdir) override;
    asio::awaitable<std::string> run_state(std::string name) override;
    asio::awaitable<void> pause(std::string name) override;
    asio::awaitable<void> resume(std::string name) override;
    asio::awaitable<bool> can_hibernate() override;
    asio::awaitable<void> hibernate(std::string name) override;
    asio::awaitable<std::vector<std::string>> snapshots(std::string name) override;
    asio::awaitable<std::vector<std::string>> snapshot(std::string verb, std::string name, std::string tag) override;
    std::filesystem::path instance_dir(const std::string& name) const override;
    asio::awaitable<void> follow_host_agent(std::filesystem::path ha_log, std::function<bool(const lima::ha_event&)> on_event,
                                      cancel_signal* cancel, std::chrono::system_clock::time_point since) override;

private:
    // Records the call; throws when its verb was made to fail.
    void call(const std::string& verb, const std::vector<std::string>& args);
    lima::instance& existing(const std::string& name, const std::string& verb);
    std::shared_ptr<world> world_;
};

// Records what a workflow emits.
struct recorded_events : events::sink {
    std::vector<events::event> seen;
    void write(const events::event& e) override { seen.push_back(e); }
    // "type vm [state|step|level] [detail]" per event, for comparing whole sequences.
    std::vector<std::string> lines() const;
};

// A workflow context on a fake Lima, recording its events; the guest agent off unless told.
struct fake_vm_context {
    asio::io_context io;
    cancel_signal cancel{io.get_executor()};
    events::bus bus;
    fake_lima_driver lima;
    std::shared_ptr<recorded_events> events = std::make_shared<recorded_events>();
    vm::context ctx{cancel, bus, lima};

    fake_vm_context() {
        bus.add(events);
        ctx.agent = false;
    }
};

} // namespace machine::test
