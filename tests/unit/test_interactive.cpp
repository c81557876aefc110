// The OpenSSH command line of interactive sessions (src/cli/interactive.*): pinning options,
// agent forwarding, and the remote command's quoting, checked by a real shell.
#include <boost/test/unit_test.hpp>

#include <cstdio>

#include "interactive.hpp"
#include "machine/error.hpp"

namespace cli = machine::cli;

namespace {

// The option values given with -o, in order.
std::vector<std::string> options_of(const std::vector<std::string>& argv) {
    std::vector<std::string> out;
    for (std::size_t i = 0; i + 1 < argv.size(); ++i)
        if (argv[i] == "-o") out.push_back(argv[i + 1]);
    return out;
}

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// What `sh -c` makes of a remote command string: its words, one per line.
std::string words_after_shell(const std::string& command) {
    const std::string script = "set -- " + command + "; printf '%s\\n' \"$@\"";
    std::string quoted = "'";
    for (char c : script) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    quoted += "'";
    FILE* f = ::popen(("sh -c " + quoted).c_str(), "r");  // test-only: the input is ours
    std::string out;
    char buf[256];
    while (f && std::fgets(buf, sizeof buf, f)) out += buf;
    if (f) ::pclose(f);
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(interactive)

BOOST_AUTO_TEST_CASE(openssh_checks_the_pinned_key_whatever_limas_config_says) {
    const cli::openssh_target t{"web", "/l/web/ssh.config", "/s/web dir/known_hosts", true};
    const auto argv = cli::openssh_argv(t, true, {});
    BOOST_TEST(argv[0] == "ssh");
    BOOST_TEST((argv[1] == "-F" && argv[2] == "/l/web/ssh.config" && argv[3] == "-t"));
    const auto o = options_of(argv);
    BOOST_TEST(has(o, "StrictHostKeyChecking=yes"));
    BOOST_TEST(has(o, "UserKnownHostsFile=\"/s/web dir/known_hosts\""));
    BOOST_TEST(has(o, "HostKeyAlias=machine-web"));
    BOOST_TEST(has(o, "NoHostAuthenticationForLocalhost=no"));
    BOOST_TEST(has(o, "GlobalKnownHostsFile=/dev/null"));
    BOOST_TEST(has(o, "ForwardAgent=yes"));
    BOOST_TEST(argv.back() == "lima-web");  // no remote command: the login shell

    const cli::openssh_target closed{"web", "/l/web/ssh.config", "/k", false};
    const auto no_tty = cli::openssh_argv(closed, false, {"true"});
    BOOST_TEST(has(options_of(no_tty), "ForwardAgent=no"));
    BOOST_TEST(!has(options_of(no_tty), "ForwardAgent=yes"));
    BOOST_TEST(has(no_tty, "-T"));
}

BOOST_AUTO_TEST_CASE(the_remote_command_reaches_the_vm_word_for_word) {
    const std::vector<std::string> remote{"/usr/local/bin/machine-agent", "a b", "$(touch /tmp/pwned)", "it's",
                                          "`x`;y", "\"q\"", "*", ""};
    const auto argv = cli::openssh_argv({"web", "/c", "/k", true}, true, remote);
    BOOST_TEST(argv[argv.size() - 2] == "--");
    std::string expected;
    for (const auto& w : remote) expected += w + "\n";
    BOOST_TEST(words_after_shell(argv.back()) == expected);
}

BOOST_AUTO_TEST_CASE(session_names_with_shell_metacharacters_are_refused) {
    for (const std::string ok : {"claude", "fix-login_2", "A1"}) BOOST_CHECK_NO_THROW(cli::require_valid_session_name(ok));
    const std::vector<std::string> bad_names{"", "a;b", "$(x)", "a b", "a.b", "a:b", "-x", "`id`", std::string(65, 'a'), "é"};
    for (const auto& bad : bad_names)
        BOOST_CHECK_THROW(cli::require_valid_session_name(bad), machine::usage_error);
}

BOOST_AUTO_TEST_SUITE_END()
