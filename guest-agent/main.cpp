// machine-agent: the guest agent (guest-agent/PROTOCOL.md).
//
//   machine-agent [options]                      serve (as root, from machine-agent.service)
//   machine-agent emit EVENT [key=value|key:=json]...   append an event through the agent
//   machine-agent relay [--socket PATH]                  the host's way to the agent (relay.hpp)
//   machine-agent session attach|run|list ...            agent sessions in tmux (session.hpp)
//
// One thread runs one io_context (server.cpp); nothing else runs concurrently.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "emit_client.hpp"
#include "relay.hpp"
#include "log.hpp"
#include "server.hpp"
#include "session.hpp"

#ifndef MACHINE_AGENT_VERSION
#define MACHINE_AGENT_VERSION "0.0.0"
#endif

namespace {

using namespace machine::agent;

constexpr const char* usage_text =
    "usage: machine-agent [options]\n"
    "       machine-agent emit [--socket PATH] EVENT [key=value | key:=json]...\n"
    "       machine-agent relay [--socket PATH]\n"
    "       machine-agent session attach --name NAME --agent claude|codex [--dir DIR] [--socket PATH]\n"
    "       machine-agent session run --name NAME --agent claude|codex [--socket PATH] [--missing-dir DIR]\n"
    "       machine-agent session list [--socket PATH]\n"
    "       machine-agent --version\n"
    "\n"
    "Serves the machine guest protocol on a Unix socket (see PROTOCOL.md).\n"
    "\n"
    "  --socket PATH          socket (default /run/machine-agent/agent.sock; $MACHINE_AGENT_SOCKET)\n"
    "  --journal PATH         event journal (default /var/lib/machine-agent/journal.jsonl)\n"
    "  --steps-state PATH     provision's record of done steps (default /var/lib/machine-agent/steps.json)\n"
    "  --secrets-dir DIR      the tmpfs secrets.render writes to (default /run/machine-secrets)\n"
    "  --user NAME            the VM user: user.ready, and the socket's group\n"
    "  --group NAME           the socket's group (default: the user's primary group)\n"
    "  --no-systemd           no boot.finished, no sd_notify (tests, containers)\n"
    "  --systemctl PROGRAM    systemctl to ask for the boot state (default systemctl)\n"
    "  --tmux PROGRAM         tmux to ask about sessions' attached clients (default tmux)\n"
    "  --runtime-dir-root DIR where user runtime directories live (default /run/user)\n"
    "  --boot-id-file FILE    boot id source (default /proc/sys/kernel/random/boot_id)\n"
    "  --unit-file FILE       its systemd unit, hashed for hello (default /etc/systemd/system/machine-agent.service)\n"
    "  --network-rules FILE   machine's nftables table, applied at start (default /etc/machine/network.nft)\n"
    "  --nft PROGRAM          nft to apply it with (default nft)\n"
    "  --max-events N         journal bound in events (default 100000)\n"
    "  --max-bytes N          journal bound in bytes (default 16777216)\n"
    "  --max-clients N        concurrent connections (default 64)\n"
    "  --verbose              debug log\n";

int usage_error(const std::string& message) {
    std::fprintf(stderr, "machine-agent: %s\n%s", message.c_str(), usage_text);
    return 2;
}

bool parse_size(const char* text, std::size_t& out) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v == 0) return false;
    out = static_cast<std::size_t>(v);
    return true;
}

std::string default_socket_path() {
    const char* env = std::getenv("MACHINE_AGENT_SOCKET");
    return env && *env ? env : default_socket;
}

int run_emit(int argc, char** argv) {
    std::string socket = default_socket_path();
    int i = 2;
    for (; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--socket" && i + 1 < argc) socket = argv[++i];
        else if (a.substr(0, 9) == "--socket=") socket = std::string(a.substr(9));
        else break;
    }
    if (i >= argc) return usage_error("emit: missing EVENT");
    const std::string event = argv[i++];
    std::vector<std::string> fields(argv + i, argv + argc);
    return emit_command(socket, event, fields);
}

int run_relay(int argc, char** argv) {
    std::string socket = default_socket_path();
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--socket" && i + 1 < argc) socket = argv[++i];
        else if (a.substr(0, 9) == "--socket=") socket = std::string(a.substr(9));
        else return usage_error("relay: unexpected '" + std::string(a) + "'");
    }
    return relay_command(socket);
}

} // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "emit") == 0) return run_emit(argc, argv);
    if (argc > 1 && std::strcmp(argv[1], "relay") == 0) return run_relay(argc, argv);
    if (argc > 1 && std::strcmp(argv[1], "session") == 0) return session_command(argc, argv, default_socket_path());

    server_options opt;
    opt.socket_path = default_socket_path();
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) {
                usage_error(std::string(name) + " needs a value");
                std::exit(2);
            }
            return argv[++i];
        };
        std::size_t n = 0;
        if (a == "--help" || a == "-h") {
            std::fputs(usage_text, stdout);
            return 0;
        } else if (a == "--version") {
            std::puts("machine-agent " MACHINE_AGENT_VERSION);
            return 0;
        } else if (a == "--socket") opt.socket_path = value("--socket");
        else if (a == "--journal") opt.journal_path = value("--journal");
        else if (a == "--steps-state") opt.steps_state_path = value("--steps-state");
        else if (a == "--secrets-dir") opt.secrets_dir = value("--secrets-dir");
        else if (a == "--user") opt.user = value("--user");
        else if (a == "--group") opt.group = value("--group");
        else if (a == "--no-systemd") opt.systemd = false;
        else if (a == "--systemctl") opt.systemctl = value("--systemctl");
        else if (a == "--tmux") opt.tmux = value("--tmux");
        else if (a == "--runtime-dir-root") opt.runtime_dir_root = value("--runtime-dir-root");
        else if (a == "--boot-id-file") opt.boot_id_file = value("--boot-id-file");
        else if (a == "--unit-file") opt.unit_file = value("--unit-file");
        else if (a == "--network-rules") opt.network_rules = value("--network-rules");
        else if (a == "--nft") opt.nft = value("--nft");
        else if (a == "--max-events") {
            if (!parse_size(value("--max-events"), n)) return usage_error("--max-events needs a positive number");
            opt.journal_limits.max_events = n;
        } else if (a == "--max-bytes") {
            if (!parse_size(value("--max-bytes"), n)) return usage_error("--max-bytes needs a positive number");
            opt.journal_limits.max_bytes = n;
        } else if (a == "--max-clients") {
            if (!parse_size(value("--max-clients"), n)) return usage_error("--max-clients needs a positive number");
            opt.max_clients = n;
        } else if (a == "--verbose") log::set_level(log::level::debug);
        else return usage_error("unknown option '" + std::string(a) + "'");
    }
    return serve(opt);
}
