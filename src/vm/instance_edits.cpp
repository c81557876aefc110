#include "instance_edits.hpp"

#include <array>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "machine/text.hpp"

namespace machine::vm {

using asio::awaitable;
using nlohmann::json;

namespace {

// Lima lists a size as the bytes Go's float parsing made of the yaml's text ("1.3GiB"), ours
// come from long double: the two may differ in the last byte, which is no change.
bool same_size(long long a, long long b) { return std::llabs(a - b) < 1024; }

std::string project_file(const config::project& p) {
    return p.source.empty() ? std::string("projects.toml") : p.source.string();
}

} // namespace

std::string size_text(long long bytes) {
    struct unit {
        const char* suffix;
        long long bytes;
    };
    static constexpr std::array<unit, 4> units{{{"TiB", 1LL << 40}, {"GiB", 1LL << 30}, {"MiB", 1LL << 20}, {"KiB", 1LL << 10}}};
    for (const unit& u : units) {
        if (bytes < u.bytes) continue;
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.2f", static_cast<double>(bytes) / static_cast<double>(u.bytes));
        std::string number(buf);
        number.erase(number.find_last_not_of('0') + 1);  // "1.50" -> "1.5", "4.00" -> "4."
        if (number.back() == '.') number.pop_back();
        return number + u.suffix;
    }
    return std::to_string(bytes) + "B";
}

std::vector<setting_change> resource_changes(const config::project& p, const lima::instance& inst) {
    std::vector<setting_change> out;
    // A project without a table has only defaults: they describe no wish about a VM someone
    // made with other values.
    if (!p.configured) return out;
    if (inst.cpus > 0 && inst.cpus != p.cpus)
        out.push_back({"cpus", std::to_string(inst.cpus), std::to_string(p.cpus), ".cpus = " + std::to_string(p.cpus)});
    const long long memory = config::size_bytes(p.memory);
    if (inst.memory_bytes > 0 && !same_size(inst.memory_bytes, memory))
        out.push_back({"memory", size_text(inst.memory_bytes), p.memory, ".memory = " + json(p.memory).dump()});
    const long long disk = config::size_bytes(p.disk);
    if (inst.disk_bytes > 0 && !same_size(inst.disk_bytes, disk)) {
        if (disk < inst.disk_bytes) {
            const std::string current = size_text(inst.disk_bytes);
            throw config::config_error(project_file(p) + ": " + p.name + ".disk: " + p.disk +
                                       " is smaller than the VM's disk (" + current +
                                       "); a VM's disk only grows: set disk = \"" + current +
                                       "\" or more, or start over with machine destroy " + p.name);
        }
        out.push_back({"disk", size_text(inst.disk_bytes), p.disk, ".disk = " + json(p.disk).dump()});
    }
    return out;
}

std::string arch_change_warning(const config::project& p, const lima::instance& inst) {
    if (!p.arch || inst.arch.empty() || *p.arch == inst.arch) return {};
    return "the VM is " + text::sanitize_for_terminal(inst.arch) + "; arch = \"" + *p.arch +
           "\" applies only to a new VM: machine destroy " + p.name + " && machine up " + p.name +
           " (its disk starts over)";
}

std::vector<setting_change> changes_before_start(const config::project& p, const lima::instance& inst,
                                                 const std::string& egress_socket) {
    std::vector<setting_change> out = resource_changes(p, inst);
    // Lima forwards the agent (or not) by ssh.forwardAgent as the VM starts; prepare_agent_forwarding
    // tells about the change.
    if (inst.forward_agent && *inst.forward_agent != p.forward_agent)
        out.push_back({"ssh.forwardAgent", "", "", std::string(".ssh.forwardAgent = ") + (p.forward_agent ? "true" : "false")});
    // A VM made before its Lima isolated VMs (or whose socket moved) gets its egress at its next start.
    if (!egress_socket.empty() && inst.egress_socket != egress_socket)
        out.push_back({"machineEgress.socket", "", "", ".machineEgress.socket = " + json(egress_socket).dump()});
    return out;
}

std::string describe_changes(const std::vector<setting_change>& changes) {
    std::string out;
    for (const auto& c : changes)
        if (!c.current.empty()) out += (out.empty() ? "" : ", ") + c.key + " " + c.current + " -> " + c.wanted;
    return out;
}

awaitable<void> edit_before_start(context& ctx, lima::driver& lima, std::string name,
                                  std::vector<setting_change> changes) {
    if (changes.empty()) co_return;
    std::vector<std::string> sets;
    for (const auto& c : changes) sets.push_back(c.set);
    co_await lima.edit(name, sets);
    if (const std::string said = describe_changes(changes); !said.empty()) ctx.say(name, said + ", applied at this start");
}

} // namespace machine::vm
