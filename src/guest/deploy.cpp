// Putting the agent into a VM: compare by SHA-256, upload when missing or different, install
// the systemd unit, (re)start the service.
#include <unistd.h>

#include <cctype>
#include <fstream>

#include "machine/guest.hpp"
#include "machine/paths.hpp"
#include "machine/platform.hpp"
#include "machine/sha256.hpp"
#include "machine/ssh.hpp"
#include "machine/text.hpp"

#include <spdlog/spdlog.h>

namespace machine::guest {

namespace fs = std::filesystem;
using asio::awaitable;

namespace {
#include "agent_unit.inc"  // defines kAgentUnit, generated from guest-agent/machine-agent.service

constexpr const char* unit_path = "/etc/systemd/system/machine-agent.service";
constexpr const char* defaults_path = "/etc/default/machine-agent";

// The VM user goes into a config file and a command line: refuse anything but a plain name.
void require_plain_user_name(const std::string& user) {
    const bool ok = !user.empty() && user.size() <= 32 &&
                    std::all_of(user.begin(), user.end(), [](char c) {
                        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
                    }) &&
                    user[0] != '-';
    if (!ok) throw error("invalid VM user name '" + text::sanitize_for_terminal(user) + "'");
}

std::string defaults_text(const std::string& user) { return "MACHINE_AGENT_OPTS=--user " + user + "\n"; }

// What the VM's side of these commands may print (their real output is a few lines; a hostile
// guest's flood is read and discarded beyond this), and how long the probe may take: three
// hashes and a systemctl query take about a second even under emulation.
constexpr std::size_t max_command_output = 64 * 1024;
constexpr std::chrono::seconds probe_timeout{20};

// Writes `content` to `path` in the VM as root, atomically (a temporary file, then rename).
// The command is a constant; the path is one of ours; the content travels on stdin.
awaitable<void> install_file(std::shared_ptr<ssh::session> session, std::string path, std::string content,
                             std::string mode) {
    const std::string q = text::shell_quote(path);
    const std::string tmp = text::shell_quote(path + ".machine-new");
    ssh::run_options opt;
    opt.stdin_data = std::move(content);
    opt.timeout = std::chrono::seconds(120);
    opt.max_output = max_command_output;
    const std::string command = "sudo -n sh -c " +
                                text::shell_quote("umask 022 && mkdir -p \"$(dirname " + q + ")\" && cat > " + tmp +
                                                  " && chmod " + mode + " " + tmp + " && mv -f " + tmp + " " + q);
    const auto r = co_await session->run(command, std::move(opt));
    if (!r.ok())
        throw error("cannot install " + path + " in VM '" + session->vm_name() + "': " + text::trim(text::tail(r.err, 500)) +
                    " (exit status " + std::to_string(r.status()) + ")");
}

} // namespace

std::string_view agent_unit() { return kAgentUnit; }

std::string_view native_agent_arch() {
#if defined(__aarch64__)
    return "aarch64";
#else
    return "x86_64";
#endif
}

bool known_agent_arch(std::string_view arch) { return arch == "x86_64" || arch == "aarch64"; }

std::string agent_elf_arch(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    unsigned char h[20] = {};
    if (!in.read(reinterpret_cast<char*>(h), sizeof h)) return {};
    if (h[0] != 0x7f || h[1] != 'E' || h[2] != 'L' || h[3] != 'F' || h[5] != 1) return {};  // ELF, little-endian
    switch (h[18] | (h[19] << 8)) {
    case 62: return "x86_64";    // EM_X86_64
    case 183: return "aarch64";  // EM_AARCH64
    default: return "another architecture";
    }
}

agent_files find_agent(std::string_view arch, std::string_view vm) {
    // Lima reports an arch for every instance it can read; one without (a test double's) is taken
    // to be machine's own.
    if (arch.empty()) arch = native_agent_arch();
    const std::string for_vm = vm.empty() ? "" : "VM '" + text::sanitize_for_terminal(std::string(vm)) + "': ";
    if (!known_agent_arch(arch))
        throw error(for_vm + "machine has no guest agent for the architecture '" +
                    text::sanitize_for_terminal(std::string(arch)) + "' (it has one for x86_64 and aarch64)");
    // The host's own architecture's agent has the plain names; another's has "-ARCH" appended.
    const bool native = arch == native_agent_arch();
    const std::string suffix = native ? "" : "-" + std::string(arch);
    std::string env_name = "MACHINE_AGENT";
    for (char c : suffix) env_name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    std::vector<fs::path> candidates;
    if (const auto v = paths::env(env_name.c_str()); !v.empty()) candidates.emplace_back(v);
    const fs::path exe_dir = platform::self_executable().parent_path();
    if (!exe_dir.empty()) {
        candidates.push_back(exe_dir / ("machine-agent" + suffix));
        candidates.push_back((exe_dir / ".." / "lib" / "machine" / ("machine-agent" + suffix)).lexically_normal());  // installed
        candidates.push_back(exe_dir / "guest-agent" / ("machine-agent" + suffix));  // the build tree
    }
    std::string looked;
    for (const auto& c : candidates) {
        if (::access(c.c_str(), R_OK) == 0) {
            if (const auto built_for = agent_elf_arch(c); built_for != arch)
                throw error(for_vm + "the guest agent " + c.string() + " is " +
                            (built_for.empty() ? "not a Linux executable" : "built for " + built_for) + ", not for " +
                            std::string(arch));
            return agent_files{c, sha256::hex_of_file(c)};
        }
        looked += (looked.empty() ? "" : ", ") + c.string();
    }
    throw error(for_vm + "the guest agent binary (machine-agent" + suffix + ") is missing; looked in: " + looked +
                " (build it, or set " + env_name + ")");
}

bool is_current(const protocol::deployment_info& running, const agent_files& files, const std::string& vm_user) {
    const bool current = running.binary_sha256 == files.sha256 && running.unit_sha256 == sha256::hex(kAgentUnit) &&
                         running.user == vm_user;
    if (!current)
        spdlog::debug("guest agent differs from this machine's: binary {} unit {} user {}", running.binary_sha256,
                      running.unit_sha256, running.user);
    return current;
}

awaitable<deployment> ensure_agent(std::shared_ptr<ssh::session> session, const agent_files& files,
                                   std::string vm_user) {
    require_plain_user_name(vm_user);
    const std::string want_unit = sha256::hex(kAgentUnit);
    const std::string want_defaults = sha256::hex(defaults_text(vm_user));
    // What is installed: three hashes (missing files print nothing) and whether it runs.
    const std::string probe = std::string("sha256sum ") + agent_install_path + " " + unit_path + " " +
                              defaults_path + " 2>/dev/null; systemctl is-active machine-agent 2>/dev/null; true";
    ssh::run_options probe_opt;
    probe_opt.timeout = probe_timeout;
    probe_opt.max_output = max_command_output;
    const auto r = co_await session->run(probe, std::move(probe_opt));
    if (r.timed_out)
        throw error("VM '" + session->vm_name() + "': looking for the guest agent's files did not finish within " +
                    std::to_string(probe_timeout.count()) + " s");
    std::string have_binary, have_unit, have_defaults;
    bool active = false;
    for (const auto& line : text::split_lines(r.out)) {
        const auto space = line.find(' ');
        const std::string hash = line.substr(0, space);
        if (line.size() > 66 && line.find(agent_install_path) != std::string::npos) have_binary = hash;
        else if (line.find(unit_path) != std::string::npos) have_unit = hash;
        else if (line.find(defaults_path) != std::string::npos) have_defaults = hash;
        else if (text::trim(line) == "active") active = true;
    }
    const bool binary_ok = have_binary == files.sha256;
    const bool config_ok = have_unit == want_unit && have_defaults == want_defaults;
    if (binary_ok && config_ok && active) co_return deployment::already_current;

    // Arguments are named before each co_await (house style §4: g++ 12 mishandles temporaries
    // built inside a co_await expression).
    if (!binary_ok) {
        std::string binary = paths::read_file(files.binary);
        co_await install_file(session, agent_install_path, std::move(binary), "0755");
    }
    if (have_unit != want_unit) {
        std::string unit(kAgentUnit);
        co_await install_file(session, unit_path, std::move(unit), "0644");
    }
    if (have_defaults != want_defaults) {
        std::string defaults = defaults_text(vm_user);
        co_await install_file(session, defaults_path, std::move(defaults), "0644");
    }
    // Lingering starts the user's systemd manager at boot: that is what `user.ready` waits for.
    const std::string start =
        "sudo -n sh -c " + text::shell_quote("systemctl daemon-reload && systemctl enable --quiet machine-agent && "
                                             "systemctl restart machine-agent && { loginctl enable-linger " +
                                             vm_user + " 2>/dev/null || true; }");
    ssh::run_options opt;
    opt.timeout = std::chrono::seconds(120);
    opt.max_output = max_command_output;
    const auto s = co_await session->run(start, std::move(opt));
    if (!s.ok())
        throw error("cannot start the guest agent in VM '" + session->vm_name() + "': " + text::trim(text::tail(s.err, 500)) + " (exit status " +
                    std::to_string(s.status()) + ")");
    co_return have_binary.empty() ? deployment::installed : deployment::upgraded;
}

} // namespace machine::guest
