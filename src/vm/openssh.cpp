// Every OpenSSH connection machine opens to a VM (ssh, claude, codex, run, the repo clones):
// pinned to the VM's host key, on a connection of its own.
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::vm {

std::vector<std::string> openssh_argv(const openssh_target& t, bool tty, const std::vector<std::string>& remote) {
    std::vector<std::string> argv{"ssh", "-F", t.ssh_config.string(), tty ? "-t" : "-T"};
    // Quoted: ssh parses -o values like config lines, where a space would end the path.
    const std::string known_hosts = "\"" + t.known_hosts.string() + "\"";
    const std::vector<std::string> options{
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=" + known_hosts,
        "GlobalKnownHostsFile=/dev/null",
        "HostKeyAlias=machine-" + t.name,  // also ends NoHostAuthenticationForLocalhost's exemption
        "NoHostAuthenticationForLocalhost=no",
        "CheckHostIP=no",
        "UpdateHostKeys=no",
        // Our own connection: Lima's ssh.config shares a master (ControlMaster auto) that Lima's
        // host agent opened with StrictHostKeyChecking no; riding it would check nothing.
        "ControlMaster=no",
        "ControlPath=none",
        std::string("ForwardAgent=") + (t.forward_agent ? "yes" : "no"),
        "LogLevel=ERROR",  // no "Connection to 127.0.0.1 closed." after every detach
        // A VM that vanishes without closing the connection is noticed within 15 s.
        "ServerAliveInterval=5",
        "ServerAliveCountMax=3",
    };
    for (const auto& o : options) {
        argv.push_back("-o");
        argv.push_back(o);
    }
    argv.push_back("lima-" + t.name);
    if (!remote.empty()) {
        std::string command;
        for (const auto& word : remote) command += (command.empty() ? "" : " ") + text::shell_quote(word);
        argv.push_back("--");
        argv.push_back(command);
    }
    return argv;
}

} // namespace machine::vm
