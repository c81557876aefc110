// What a project's VM may reach on the network, and the host-side egress proxy that enforces it
// (src/net, `machine net-proxy`, one detached process per VM, like the agent filter).
//
// The policy is assembled here from the project's config (`host_ports`, `egress`), its profiles'
// `egress` and the hosts machine itself makes the VM fetch from. With a Lima that isolates the
// VM's network (the stand-in: `limactl info` says machineEgress), the proxy must be serving
// before the VM starts: the VM's template names its socket, and every guest connection goes
// through it. A proxy started with another policy is replaced; only a process that is really
// that VM's net-proxy is ever signalled.
#include "machine/platform.hpp"
#include "machine/vm.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include "machine/async.hpp"
#include "machine/paths.hpp"
#include "machine/sha256.hpp"
#include "machine/text.hpp"

#include "detached.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

std::string lowercase(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// A pattern that may go into an allowlist: a real host name, not an address or a local name.
bool allowable(const std::string& host) { return !host.empty() && net::host_pattern_problem(host).empty(); }

std::string plural(std::size_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
    return out;
}

// The file an origin names: "projects.toml:4:11: web.egress[0]" -> "projects.toml".
std::string origin_file(const std::string& origin) {
    const std::string path = origin.substr(0, origin.find(':'));
    return fs::path(path).filename().string();
}

fs::path pid_file(const std::string& name) { return project_state_dir(name) / "net-proxy.pid"; }
fs::path fingerprint_file(const std::string& name) { return project_state_dir(name) / "net-proxy.policy"; }
fs::path proxy_log(const std::string& name) { return project_state_dir(name) / "net-proxy.log"; }

// Connects to the proxy's socket; the pid of the process listening on it (platform::peer_pid), 0 when
// nothing accepts.
int listener_pid(const fs::path& socket_path) {
    sockaddr_un addr{};
    if (socket_path.native().size() >= sizeof addr.sun_path) return 0;
    const int fd = platform::open_socket(AF_UNIX, SOCK_STREAM, false);
    if (fd < 0) return 0;
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.native().size());
    int pid = 0;
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
        pid = platform::peer_pid(fd);
        if (pid <= 0) pid = 1;  // something listens; the system does not say what
    }
    ::close(fd);
    return pid;
}

int recorded_pid(const std::string& name) {
    std::ifstream in(pid_file(name));
    int pid = 0;
    return in >> pid && pid > 0 ? pid : 0;
}

std::string recorded_fingerprint(const std::string& name) {
    try {
        return text::trim(paths::read_file(fingerprint_file(name)));
    } catch (const error&) {
        return {};
    }
}

std::string fingerprint_of(const std::vector<std::string>& argv) {
    std::string all;
    for (std::size_t i = 1; i < argv.size(); ++i) all += argv[i] + '\0';  // not the executable's path
    return sha256::hex(all);
}

// SIGTERM to the proxy of `name` at `pid`, only when that pid is still its net-proxy (checked
// through platform::signal_if: on Linux a pidfd, so a process given the pid meanwhile is never
// hit), then a short wait for it to go.
awaitable<void> stop_proxy(const std::string& name, int pid) {
    if (pid <= 0) co_return;
    if (platform::signal_if(pid, SIGTERM, [&] { return is_net_proxy_for(pid, name); })) {
        for (int i = 0; i < 100 && is_net_proxy_for(pid, name); ++i) co_await sleep_for(20ms);
    }
}

} // namespace

std::string repo_host(std::string_view url) {
    std::string_view rest;
    if (const auto scheme = url.find("://"); scheme != std::string_view::npos) {
        if (url.substr(0, scheme) == "file") return {};
        rest = url.substr(scheme + 3);
        rest = rest.substr(0, rest.find('/'));
        if (const auto at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
        if (!rest.empty() && rest.front() == '[') return {};  // an IPv6 address
        rest = rest.substr(0, rest.find(':'));
    } else {
        // scp-like `[user@]host:path`: a colon before any slash.
        const auto colon = url.find(':');
        if (colon == std::string_view::npos || url.substr(0, colon).find('/') != std::string_view::npos) return {};
        rest = url.substr(0, colon);
        if (const auto at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
    }
    std::string host = lowercase(rest);
    return allowable(host) ? host : std::string();
}

std::vector<std::string> provisioning_hosts(const config::project& p) {
    std::vector<std::string> hosts;
    auto add = [&hosts](const std::string& h) {
        if (!h.empty() && std::find(hosts.begin(), hosts.end(), h) == hosts.end()) hosts.push_back(h);
    };
    for (const auto& url : p.repos) add(repo_host(url));
    // A fresh clone's dependencies (clones.cpp): npm and pnpm use the npm registry, yarn 1 its
    // own name for it.
    if (!p.repos.empty()) {
        add("registry.npmjs.org");
        add("registry.yarnpkg.com");
    }
    return hosts;
}

net::policy egress_policy_of(const config::project& p, const provision::catalog& cat,
                             const std::vector<std::string>& profiles, std::vector<net::allow_entry>* allowed) {
    net::policy rules;
    rules.host_ports = p.host_ports;
    std::vector<net::allow_entry> entries;
    if (p.egress) {
        std::set<std::string> seen;
        auto add = [&](const std::string& pattern, const std::string& origin) {
            if (seen.insert(lowercase(pattern)).second) entries.push_back({pattern, origin});
        };
        for (std::size_t i = 0; i < p.egress->size(); ++i)
            add((*p.egress)[i], i < p.egress_origins.size() ? p.egress_origins[i] : p.source.string());
        for (const auto& name : profiles)
            if (const provision::profile* prof = cat.find(name))
                for (const auto& host : prof->egress) add(host, "profile " + name);
        for (const auto& host : provisioning_hosts(p)) add(host, provisioning_origin);
        rules.allow = std::vector<std::string>{};
        for (const auto& e : entries) rules.allow->push_back(e.pattern);
    }
    if (allowed) *allowed = std::move(entries);
    return rules;
}

std::string describe_egress(const net::policy& rules, const std::vector<net::allow_entry>& allowed) {
    if (!rules.allow) return {};
    if (allowed.empty()) return "egress: no host allowed (egress = [] and nothing to provision)";
    std::map<std::string, std::size_t> from_files;  // file name -> count, in name order
    std::vector<std::string> profiles, provisioning;
    std::size_t from_profiles = 0;
    for (const auto& e : allowed) {
        if (e.origin == provisioning_origin) {
            provisioning.push_back(e.pattern);
        } else if (e.origin.rfind("profile ", 0) == 0) {
            ++from_profiles;
            const std::string name = e.origin.substr(8);
            if (std::find(profiles.begin(), profiles.end(), name) == profiles.end()) profiles.push_back(name);
        } else {
            ++from_files[origin_file(e.origin)];
        }
    }
    std::vector<std::string> parts;
    for (const auto& [file, n] : from_files) parts.push_back(plural(n, "host", "hosts") + " from " + file);
    if (from_profiles) parts.push_back(plural(from_profiles, "host", "hosts") + " from profiles (" + joined(profiles) + ")");
    if (!provisioning.empty())
        parts.push_back(plural(provisioning.size(), "host", "hosts") + " for machine's provisioning (" +
                        joined(provisioning) + ")");
    // Host names come from files a cloned repository may have written: escaped like all else.
    return text::sanitize_for_terminal("egress: " + joined(parts));
}

fs::path egress_socket(const std::string& name) {
    const fs::path dir = paths::state_dir() / "net";
    fs::path plain = dir / (name + ".sock");
    // sun_path holds 108 bytes with its NUL.
    if (plain.native().size() <= sizeof(sockaddr_un{}.sun_path) - 1) return plain;
    return dir / (sha256::hex(name).substr(0, 16) + ".sock");
}

std::vector<std::string> net_proxy_argv(const fs::path& exe, const std::string& name, const fs::path& vm_dir,
                                        const net::policy& rules) {
    std::vector<std::string> argv{exe.string(), "net-proxy", "--vm", name,
                                  "--listen", egress_socket(name).string(),
                                  "--vm-dir", vm_dir.string(),
                                  "--audit-log", audit_log_of(name).string(),
                                  "--egress", rules.allow ? "allowlist" : "open"};
    if (rules.allow)
        for (const auto& pattern : *rules.allow) {
            argv.push_back("--allow");
            argv.push_back(pattern);
        }
    for (int port : rules.host_ports) {
        argv.push_back("--host-port");
        argv.push_back(std::to_string(port));
    }
    return argv;
}

fs::path audit_log_of(const std::string& name) { return project_state_dir(name) / "net.jsonl"; }

proxy_action decide_proxy(const proxy_seen& seen, const std::string& wanted_fingerprint) {
    if (!seen.running) return proxy_action::start;
    if (seen.fingerprint != wanted_fingerprint || !seen.accepts) return proxy_action::replace;
    return proxy_action::keep;
}

bool is_net_proxy_cmdline(std::string_view raw, const std::string& name) {
    std::vector<std::string_view> argv;
    for (std::size_t at = 0; at < raw.size();) {
        const auto end = raw.find('\0', at);
        argv.push_back(raw.substr(at, end == std::string_view::npos ? std::string_view::npos : end - at));
        if (end == std::string_view::npos) break;
        at = end + 1;
    }
    if (argv.size() < 2 || argv[1] != "net-proxy") return false;
    for (std::size_t i = 2; i + 1 < argv.size(); ++i)
        if (argv[i] == "--vm") return argv[i + 1] == name;
    return false;
}

bool is_net_proxy_for(int pid, const std::string& name) {
    if (pid <= 0) return false;
    return is_net_proxy_cmdline(platform::process_arguments(pid), name);
}

awaitable<void> ensure_egress_proxy(context& ctx, std::string name, net::policy rules) {
    const fs::path socket_path = egress_socket(name);
    if (socket_path.native().size() >= sizeof(sockaddr_un{}.sun_path))
        throw error("the egress proxy's socket path is too long: " + socket_path.string() +
                    " (set MACHINE_STATE_DIR to a shorter directory)");
    const auto argv = net_proxy_argv(platform::self_executable(), name, ctx.lima.instance_dir(name), rules);
    const std::string wanted = fingerprint_of(argv);
    int pid = recorded_pid(name);
    // A proxy that lost its record (its state directory was removed) is still found by its
    // socket: replaced, not left serving beside a new one.
    if (!is_net_proxy_for(pid, name)) pid = listener_pid(socket_path);
    proxy_seen seen;
    seen.running = is_net_proxy_for(pid, name);
    seen.accepts = seen.running && listener_pid(socket_path) == pid;
    seen.fingerprint = recorded_fingerprint(name);
    const proxy_action action = decide_proxy(seen, wanted);
    if (action == proxy_action::keep) {
        // Renews the proxy's wait for its VM (while_vm_lives counts from the socket's time).
        std::error_code ec;
        fs::last_write_time(socket_path, fs::file_time_type::clock::now(), ec);
        co_return;
    }
    if (action == proxy_action::replace) {
        ctx.say(name, seen.fingerprint.empty() ? "restarting the VM's egress proxy (its policy was not recorded)"
                                               : "the VM's network policy changed: restarting its egress proxy");
        co_await stop_proxy(name, pid);
    }
    std::error_code ec;
    fs::create_directories(socket_path.parent_path());
    fs::permissions(socket_path.parent_path(), fs::perms::owner_all, fs::perm_options::replace);
    fs::create_directories(project_state_dir(name));
    // What is at the path now is no live proxy of ours (a stale socket, or a proxy that lost
    // its record): the new one binds there.
    fs::remove(socket_path, ec);
    fs::remove(pid_file(name), ec);
    spawn_detached(argv, proxy_log(name));
    int started = 0;
    for (int i = 0; i < 250 && !(started = listener_pid(socket_path)); ++i) co_await sleep_for(20ms);
    if (!started)
        throw error("the egress proxy for '" + name + "' did not start within 5 s; see " + proxy_log(name).string());
    paths::write_file_atomic(pid_file(name), std::to_string(started) + "\n", 0600);
    paths::write_file_atomic(fingerprint_file(name), wanted + "\n", 0600);
}

awaitable<void> stop_egress_proxy(const std::string& name) {
    int pid = recorded_pid(name);
    if (!is_net_proxy_for(pid, name)) pid = listener_pid(egress_socket(name));
    co_await stop_proxy(name, pid);
    std::error_code ec;
    fs::remove(pid_file(name), ec);
    fs::remove(fingerprint_file(name), ec);
}

awaitable<std::optional<fs::path>> prepare_network(context& ctx, const std::string& name, const net::policy& rules,
                                                   const lima::instance* listed) {
    // Only a Lima that isolates VMs knows the egress socket its list shows (the stand-in).
    bool isolating = listed && !listed->egress_socket.empty();
    if (!isolating) isolating = co_await ctx.lima.isolates_network();
    if (!isolating) {
        if (rules.allow)
            throw config::config_error(
                "project '" + name + "': egress allowlists need a network machine can enforce outside the VM; "
                "this Lima's cannot (the VM reaches the network directly): remove `egress` from its config, or use "
                "machine's Lima stand-in on Linux (tools/limactl)");
        // The firewall inside the VM is the guest agent's to install: without it (MACHINE_AGENT=off)
        // there is no second line to speak of.
        if (ctx.agent && first_time(name, "guest-firewall-only"))
            ctx.emit(events::message(name, "warning",
                                     "this Lima cannot keep the VM off the host's ports and other VMs from outside "
                                     "the VM: machine's firewall inside the VM is the only line, and root in the VM "
                                     "can remove it"));
        co_return std::nullopt;
    }
    if (ctx.egress_proxy)
        co_await ctx.egress_proxy(name, rules);
    else
        co_await ensure_egress_proxy(ctx, name, rules);
    co_return egress_socket(name);
}

} // namespace machine::vm
