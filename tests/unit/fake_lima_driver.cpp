#include "fake_lima_driver.hpp"

#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <fstream>
#include <optional>
#include <string_view>

namespace machine::test {

namespace fs = std::filesystem;
using asio::awaitable;

lima::instance& fake_lima_driver::add(const std::string& name, lima::status s) {
    lima::instance& i = world_->instances[name];
    i.name = name;
    i.state = s;
    i.dir = instance_dir(name).string();
    // cpus, memory and disk stay 0 (not listed): a test that compares resources sets them.
    return i;
}

void fake_lima_driver::call(const std::string& verb, const std::vector<std::string>& args) {
    std::string line = verb;
    for (const auto& a : args) line += " " + a;
    world_->calls.push_back(line);
    if (world_->failing.count(verb)) throw lima::command_error("fake limactl " + verb + " failed", 1, "");
}

lima::instance& fake_lima_driver::existing(const std::string& name, const std::string& verb) {
    const auto it = world_->instances.find(name);
    if (it == world_->instances.end())
        throw lima::command_error("fake limactl " + verb + ": instance \"" + name + "\" does not exist", 1, "");
    return it->second;
}

std::unique_ptr<lima::driver> fake_lima_driver::fork(cancel_signal*, lima::timeouts) const {
    return std::make_unique<fake_lima_driver>(world_);
}

void fake_lima_driver::set_environment(lima::environment env) { world_->environments.push_back(std::move(env)); }

awaitable<std::string> fake_lima_driver::version() {
    call("version", {});
    co_return "2.2.0";
}

// A property of the Lima, not a call to record: the real client asks once per process.
awaitable<bool> fake_lima_driver::isolates_network() {
    ++world_->info_asked;
    co_return world_->isolates_network;
}

awaitable<std::vector<lima::instance>> fake_lima_driver::list() {
    call("list", {});
    std::vector<lima::instance> out;
    for (const auto& [name, i] : world_->instances) out.push_back(i);
    co_return out;
}

awaitable<std::optional<lima::instance>> fake_lima_driver::find(std::string name) {
    call("list", {name});
    if (world_->while_listing) co_await world_->while_listing();
    const auto it = world_->instances.find(name);
    if (it == world_->instances.end()) co_return std::nullopt;
    co_return it->second;
}

awaitable<std::vector<lima::instance>> fake_lima_driver::find_all(std::vector<std::string> names) {
    call("list", names);
    std::vector<lima::instance> out;
    for (const auto& n : names)
        if (const auto it = world_->instances.find(n); it != world_->instances.end()) out.push_back(it->second);
    co_return out;
}

awaitable<void> fake_lima_driver::create(std::string name, fs::path tmpl, std::vector<std::string> sets,
                                         lima::log_handler) {
    std::vector<std::string> args{name, tmpl.string()};
    args.insert(args.end(), sets.begin(), sets.end());
    call("create", args);
    add(name, lima::status::stopped);
    co_return;
}

awaitable<void> fake_lima_driver::start(std::string name, lima::log_handler) {
    call("start", {name});
    lima::instance& i = existing(name, "start");
    i.state = lima::status::running;
    // As the stand-in: a saved state is loaded (the "broken" one is not) and the outcome written.
    if (const fs::path state = lima::hibernate_state(i.dir); fs::exists(state)) {
        std::ifstream in(state);
        std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const bool ok = content == "saved";
        lima::discard_hibernate_state(i.dir);
        std::ofstream(fs::path(i.dir) / "hibernate.outcome")
            << (ok ? R"({"resumed": true, "took": 1.5, "reason": ""})"
                   : R"({"resumed": false, "took": null, "reason": "QEMU exited with status 1"})");
    }
    co_return;
}

awaitable<void> fake_lima_driver::start_new(std::string name, fs::path tmpl, lima::log_handler) {
    call("start_new", {name, tmpl.string()});
    add(name, lima::status::running);
    co_return;
}

awaitable<void> fake_lima_driver::stop(std::string name, bool force) {
    call("stop", force ? std::vector<std::string>{name, "--force"} : std::vector<std::string>{name});
    existing(name, "stop").state = lima::status::stopped;
    co_return;
}

awaitable<void> fake_lima_driver::remove(std::string name, bool force) {
    call("delete", force ? std::vector<std::string>{name, "--force"} : std::vector<std::string>{name});
    existing(name, "delete");
    world_->instances.erase(name);
    co_return;
}

awaitable<void> fake_lima_driver::clone(std::string from, std::string to, std::vector<std::string> sets) {
    std::vector<std::string> args{from, to};
    args.insert(args.end(), sets.begin(), sets.end());
    call("clone", args);
    lima::instance copy = existing(from, "clone");
    copy.name = to;
    copy.dir = instance_dir(to).string();
    copy.state = lima::status::stopped;
    world_->instances[to] = copy;
    co_return;
}

awaitable<void> fake_lima_driver::edit(std::string name, std::vector<std::string> sets) {
    std::vector<std::string> args{name};
    args.insert(args.end(), sets.begin(), sets.end());
    call("edit", args);
    lima::instance& i = existing(name, "edit");
    for (const auto& s : sets) {
        if (s == ".ssh.forwardAgent = true") i.forward_agent = true;
        if (s == ".ssh.forwardAgent = false") i.forward_agent = false;
        // `.cpus = 4`, `.memory = "8GiB"`, `.disk = "40GiB"`, as `limactl list` would show them after
        const auto value = [&s](std::string_view key) -> std::optional<std::string> {
            const std::string prefix = std::string(key) + " = ";
            if (s.rfind(prefix, 0) != 0) return std::nullopt;
            std::string v = s.substr(prefix.size());
            if (v.size() >= 2 && v.front() == '"') v = v.substr(1, v.size() - 2);
            return v;
        };
        if (const auto v = value(".cpus")) i.cpus = std::stoi(*v);
        if (const auto v = value(".memory")) i.memory_bytes = config::size_bytes(*v);
        if (const auto v = value(".disk")) i.disk_bytes = config::size_bytes(*v);
    }
    co_return;
}

awaitable<lima::shell_result> fake_lima_driver::shell(std::string name, std::vector<std::string> cmd, std::string) {
    std::vector<std::string> args{name};
    args.insert(args.end(), cmd.begin(), cmd.end());
    call("shell", args);
    co_return lima::shell_result{0, "", ""};
}

// QMP: only a running QEMU has a monitor; its state is run_states' ("running" by default).
// A query, not a change: not recorded (every list of a running VM asks), but it can fail ("qmp").
awaitable<std::string> fake_lima_driver::run_state(std::string name) {
    if (world_->failing.count("qmp")) throw lima::qmp_error("fake QMP failed");
    const lima::instance& i = existing(name, "qmp");
    if (i.state != lima::status::running) throw lima::qmp_error("no QEMU monitor for " + name);
    const auto it = world_->run_states.find(name);
    co_return it == world_->run_states.end() ? std::string("running") : it->second;
}

awaitable<void> fake_lima_driver::pause(std::string name) {
    call("qmp stop", {name});
    if (existing(name, "qmp").state != lima::status::running) throw lima::qmp_error("no QEMU monitor for " + name);
    world_->run_states[name] = "paused";
    co_return;
}

awaitable<void> fake_lima_driver::resume(std::string name) {
    call("qmp cont", {name});
    if (existing(name, "qmp").state != lima::status::running) throw lima::qmp_error("no QEMU monitor for " + name);
    world_->run_states[name] = "running";
    co_return;
}

awaitable<bool> fake_lima_driver::can_hibernate() { co_return world_->can_hibernate; }

// As the stand-in: the state in <dir>/hibernate.state (a few bytes here), the instance stopped.
awaitable<void> fake_lima_driver::hibernate(std::string name) {
    call("hibernate", {name});
    lima::instance& i = existing(name, "hibernate");
    if (i.state != lima::status::running) throw lima::command_error("fake limactl hibernate: not running", 1, "");
    fs::create_directories(i.dir);
    std::ofstream(lima::hibernate_state(i.dir)) << "saved";
    i.state = lima::status::stopped;
    co_return;
}

awaitable<std::vector<std::string>> fake_lima_driver::snapshots(std::string name) {
    call("snapshot list", {name});
    existing(name, "snapshot list");
    co_return world_->snapshots[name];
}

// As Lima's QEMU driver: an unknown tag fails with a bare "exit status 1" on a stopped VM and
// is only a warning (HMP's output) on a running one.
awaitable<std::vector<std::string>> fake_lima_driver::snapshot(std::string verb, std::string name, std::string tag) {
    call("snapshot " + verb, {name, tag});
    const lima::instance& i = existing(name, "snapshot " + verb);
    auto& tags = world_->snapshots[name];
    const auto it = std::find(tags.begin(), tags.end(), tag);
    if (verb == "create") {
        if (it == tags.end()) tags.push_back(tag);
        if (i.state != lima::status::running) world_->disk_only.insert(tag);
        co_return std::vector<std::string>{};
    }
    if (it == tags.end()) {
        if (i.state == lima::status::running) {
            if (verb == "apply") world_->run_states[name] = "restore-vm";  // QEMU's failed loadvm stops the guest
            co_return std::vector<std::string>{"output: Error: Snapshot '" + tag + "' does not exist in one or more devices"};
        }
        throw lima::command_error("limactl snapshot " + verb + " " + name + ": exit status 1", 1, "");
    }
    if (verb == "delete") tags.erase(it);
    if (verb == "apply" && i.state == lima::status::running && world_->disk_only.count(tag)) {
        world_->run_states[name] = "restore-vm";  // QEMU's failed loadvm stops the guest
        co_return std::vector<std::string>{"output: Error: This is a disk-only snapshot. Revert to it offline using qemu-img"};
    }
    co_return std::vector<std::string>{};
}

fs::path fake_lima_driver::instance_dir(const std::string& name) const { return world_->lima_home / name; }

// Reports the scripted events, then follows "forever": the start it races against ends it.
awaitable<void> fake_lima_driver::follow_host_agent(fs::path, std::function<bool(const lima::ha_event&)> on_event,
                                              cancel_signal*, std::chrono::system_clock::time_point) {
    for (const auto& e : world_->boot_events)
        if (!on_event(e)) co_return;
    asio::steady_timer forever(co_await asio::this_coro::executor, asio::steady_timer::time_point::max());
    co_await forever.async_wait(asio::use_awaitable);
}

std::vector<std::string> recorded_events::lines() const {
    std::vector<std::string> out;
    for (const auto& e : seen) {
        std::string line = e.type + " " + e.vm;
        for (const auto& [key, v] : e.fields) {
            if (const auto* s = std::get_if<std::string>(&v); s && !s->empty()) line += " " + *s;
            else if (const auto* b = std::get_if<bool>(&v)) line += *b ? " ok" : " failed";
        }
        out.push_back(line);
    }
    return out;
}

} // namespace machine::test
