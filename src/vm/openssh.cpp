// Every OpenSSH connection machine opens to a VM (ssh, claude, codex, run, the repo clones, the
// master they ride): pinned to the VM's host key, never on Lima's master.
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::vm {

namespace {

// Quoted: ssh parses -o values like config lines, where a space would end the path.
std::string quoted(const std::filesystem::path& p) { return "\"" + p.string() + "\""; }

// `ssh -F <ssh.config> <mode> -o ... ` up to the host alias.
std::vector<std::string> openssh_base(const openssh_target& t, std::vector<std::string> mode,
                                      std::vector<std::string> master) {
    std::vector<std::string> argv{"ssh", "-F", t.ssh_config.string()};
    argv.insert(argv.end(), mode.begin(), mode.end());
    std::vector<std::string> options{
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=" + quoted(t.known_hosts),
        "GlobalKnownHostsFile=/dev/null",
        "HostKeyAlias=machine-" + t.name,  // also ends NoHostAuthenticationForLocalhost's exemption
        "NoHostAuthenticationForLocalhost=no",
        "CheckHostIP=no",
        "UpdateHostKeys=no",
    };
    // Never Lima's master: Lima's ssh.config shares one (ControlMaster auto) that Lima's host
    // agent opened with StrictHostKeyChecking no; riding it would check nothing. OpenSSH takes
    // the first value it obtains, and -o comes before -F's file.
    options.insert(options.end(), master.begin(), master.end());
    for (std::string o : {std::string("ForwardAgent=") + (t.forward_agent ? "yes" : "no"),
                          std::string("LogLevel=ERROR"),  // no "Connection to 127.0.0.1 closed." after every detach
                          // A VM that vanishes without closing the connection is noticed within 15 s.
                          std::string("ServerAliveInterval=5"), std::string("ServerAliveCountMax=3")})
        options.push_back(std::move(o));
    for (const auto& o : options) {
        argv.push_back("-o");
        argv.push_back(o);
    }
    return argv;
}

} // namespace

std::vector<std::string> openssh_argv(const openssh_target& t, bool tty, const std::vector<std::string>& remote) {
    std::vector<std::string> master{"ControlMaster=no"};
    master.push_back(t.control_path.empty() ? "ControlPath=none" : "ControlPath=" + quoted(t.control_path));
    std::vector<std::string> argv = openssh_base(t, {tty ? "-t" : "-T"}, std::move(master));
    argv.push_back("lima-" + t.name);
    if (!remote.empty()) {
        std::string command;
        for (const auto& word : remote) command += (command.empty() ? "" : " ") + text::shell_quote(word);
        argv.push_back("--");
        argv.push_back(command);
    }
    return argv;
}

std::vector<std::string> openssh_master_argv(const openssh_target& t, const std::filesystem::path& log) {
    std::vector<std::string> argv =
        openssh_base(t, {"-M", "-N", "-f", "-E", log.string()},
                     {"ControlMaster=yes", "ControlPath=" + quoted(t.control_path), "ControlPersist=no",
                      "BatchMode=yes"});
    argv.push_back("lima-" + t.name);
    return argv;
}

} // namespace machine::vm
