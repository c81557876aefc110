// `machine net-proxy` (hidden): the egress proxy of one VM (src/net), started detached by
// machine when the VM starts, ending once the VM's Lima host agent is gone.
#include "machine/vm.hpp"

#include <charconv>

#include <spdlog/spdlog.h>

#include "detached.hpp"
#include "machine/error.hpp"
#include "machine/net.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// Seams for tests/bench/net_proxy.py only (machine never sets them): they let a benchmark play
// the internet on 127.0.0.1 while the policy sees public names and addresses.
//   MACHINE_NET_TEST_RESOLVE="name=addr[,addr...][;name=...]"  the resolver's answers
//   MACHINE_NET_TEST_REDIRECT="addr:port=addr:port[;...]"       where a chosen destination really is
//   MACHINE_NET_TEST_DNS="addr:port"                             the upstream DNS server
constexpr const char* test_resolve_variable = "MACHINE_NET_TEST_RESOLVE";
constexpr const char* test_redirect_variable = "MACHINE_NET_TEST_REDIRECT";
constexpr const char* test_dns_variable = "MACHINE_NET_TEST_DNS";

std::vector<std::string> split(std::string_view s, char sep) {
    std::vector<std::string> out;
    while (!s.empty()) {
        const auto at = s.find(sep);
        out.emplace_back(s.substr(0, at));
        if (at == std::string_view::npos) break;
        s.remove_prefix(at + 1);
    }
    return out;
}

int parse_port(std::string_view text, std::string_view what) {
    int port = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
    if (ec != std::errc() || end != text.data() + text.size() || port < 1 || port > 65535)
        throw usage_error(std::string(what) + ": not a port: " + std::string(text));
    return port;
}

// "addr:port" (the last colon separates, so an IPv6 address may be written bare).
std::pair<std::string, int> parse_endpoint(std::string_view text, std::string_view what) {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) throw usage_error(std::string(what) + ": not ADDRESS:PORT: " + std::string(text));
    return {std::string(text.substr(0, colon)), parse_port(text.substr(colon + 1), what)};
}

void apply_test_seams(net::proxy_options& opt) {
    if (const std::string v = paths::env(test_resolve_variable); !v.empty()) {
        std::map<std::string, std::vector<std::string>> answers;
        for (const auto& entry : split(v, ';')) {
            const auto eq = entry.find('=');
            if (eq == std::string::npos) throw usage_error(std::string(test_resolve_variable) + ": no '=' in " + entry);
            answers[entry.substr(0, eq)] = split(std::string_view(entry).substr(eq + 1), ',');
        }
        opt.resolve = [answers](const std::string& name) {
            const auto it = answers.find(name);
            return it == answers.end() ? std::vector<std::string>{} : it->second;
        };
        spdlog::warn("net-proxy: test resolver from {} in use", test_resolve_variable);
    }
    if (const std::string v = paths::env(test_redirect_variable); !v.empty()) {
        std::map<std::pair<std::string, int>, std::pair<std::string, int>> to;
        for (const auto& entry : split(v, ';')) {
            const auto eq = entry.find('=');
            if (eq == std::string::npos) throw usage_error(std::string(test_redirect_variable) + ": no '=' in " + entry);
            to[parse_endpoint(std::string_view(entry).substr(0, eq), test_redirect_variable)] =
                parse_endpoint(std::string_view(entry).substr(eq + 1), test_redirect_variable);
        }
        opt.redirect = [to](const std::string& address, int port) {
            const auto it = to.find({address, port});
            return it == to.end() ? std::pair<std::string, int>(address, port) : it->second;
        };
        spdlog::warn("net-proxy: test redirects from {} in use", test_redirect_variable);
    }
    if (const std::string v = paths::env(test_dns_variable); !v.empty()) {
        std::tie(opt.dns_server, opt.dns_port) = parse_endpoint(v, test_dns_variable);
        spdlog::warn("net-proxy: test DNS server from {} in use", test_dns_variable);
    }
}

} // namespace

int run_net_proxy(const net_proxy_arguments& a) {
    // Started by hand (no log named), the proxy logs to stderr.
    if (const std::string log = paths::env(detached_log_variable); !log.empty() && !log_only_to("net-proxy", log))
        return 1;
    try {
        net::proxy_options opt;
        opt.vm = a.vm;
        opt.listen = a.listen;
        opt.audit_log = a.audit_log;
        if (a.egress == "allowlist") {
            opt.rules.allow.emplace();
            for (const auto& pattern : a.allow) {
                if (const auto problem = net::host_pattern_problem(pattern); !problem.empty())
                    throw usage_error("--allow " + text::escape_for_terminal(pattern) + ": " + problem);
                opt.rules.allow->push_back(pattern);
            }
        } else if (a.egress != "open") {
            throw usage_error("--egress must be open or allowlist, not " + text::escape_for_terminal(a.egress));
        } else if (!a.allow.empty()) {
            throw usage_error("--allow needs --egress allowlist");
        }
        for (const auto& port : a.host_ports) opt.rules.host_ports.push_back(parse_port(port, "--host-port"));
        opt.idle_check = 5s;
        opt.still_wanted = while_vm_lives(a.vm_dir, a.listen);
        apply_test_seams(opt);
        return net::run_proxy(opt);
    } catch (const std::exception& e) {
        spdlog::error("net-proxy: {}", e.what());
        return 2;
    }
}

} // namespace machine::vm
