// The OpenSSH command line of every connection through OpenSSH (src/cli/interactive.*): pinning
// and no-master options, agent forwarding, the remote command's quoting (checked by a real
// shell), `run`'s directory, the clone's argv and its progress; and real OpenSSH, with Lima's
// ControlMaster already open, refusing a key that is not the pinned one.
#include <boost/test/unit_test.hpp>

#include <sys/syscall.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <asio/io_context.hpp>

#include "interactive.hpp"
#include "fake_lima_driver.hpp"
#include "provisioning.hpp"
#include "machine/error.hpp"
#include "machine/paths.hpp"
#include "machine/proc.hpp"
#include "machine/ssh.hpp"
#include "../support/sshd.hpp"
#include "pinned_vm.hpp"
#include "test_support.hpp"

namespace cli = machine::cli;
namespace vm = machine::vm;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

bool has_env(const std::vector<std::pair<std::string, std::string>>& env, const std::string& k, const std::string& v) {
    return std::find(env.begin(), env.end(), std::pair<std::string, std::string>{k, v}) != env.end();
}

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

// A program run to completion (no shell), with HOME in `home`.
machine::proc::result run_program(std::vector<std::string> argv, const fs::path& home) {
    machine::proc::command c;
    c.argv = std::move(argv);
    c.env_set = {{"HOME", home.string()}};
    c.env_unset = {"SSH_AUTH_SOCK"};
    machine::proc::run_options opt;
    opt.limit.timeout = 30s;
    asio::io_context io;
    return machine::test::co_run(io, machine::proc::run(std::move(c), std::move(opt)));
}

// argv without the `-o NAME=...` pairs whose NAME starts with `name`.
std::vector<std::string> without_option(std::vector<std::string> argv, const std::string& name) {
    for (std::size_t i = 0; i + 1 < argv.size();) {
        if (argv[i] == "-o" && argv[i + 1].rfind(name + "=", 0) == 0) argv.erase(argv.begin() + i, argv.begin() + i + 2);
        else ++i;
    }
    return argv;
}

} // namespace

BOOST_AUTO_TEST_SUITE(interactive)

BOOST_AUTO_TEST_CASE(openssh_opens_a_connection_of_its_own_never_limas_master) {
    const auto argv = vm::openssh_argv({"web", "/l/web/ssh.config", "/k", false}, false, {"true"});
    const auto o = options_of(argv);
    BOOST_TEST(has(o, "ControlMaster=no"));
    BOOST_TEST(has(o, "ControlPath=none"));
    BOOST_TEST(has(o, "StrictHostKeyChecking=yes"));
    BOOST_TEST(has(o, "UpdateHostKeys=no"));
    // Every -o comes before the host (ssh stops reading options there).
    const auto host = std::find(argv.begin(), argv.end(), "lima-web");
    BOOST_REQUIRE(host != argv.end());
    BOOST_TEST(std::count(host, argv.end(), "-o") == 0);
}

BOOST_AUTO_TEST_CASE(run_starts_in_the_primary_repo_and_keeps_every_word) {
    machine::config::project p;
    p.name = "web";
    BOOST_TEST(cli::primary_repo_dir(p) == ".");
    p.repos = {"git@github.com:acme/web-app.git", "https://h/x/api.git"};
    BOOST_TEST(cli::primary_repo_dir(p) == "code/web-app");

    machine::test::temp_dir tmp;
    fs::create_directories(tmp.path / "code" / "web app");
    const std::vector<std::string> command{"sh", "-c", "pwd; printf '%s\\n' \"$@\"; exit 7", "x", "a b", "$(id)", "it's"};
    const auto argv = vm::openssh_argv({"web", "/c", "/k", false}, false, cli::run_in_dir("code/web app", command));
    // What the remote login shell does with the one string ssh hands it, here in `tmp` as home.
    auto r = run_program({"sh", "-c", "cd \"$HOME\" && eval \"$0\"", argv.back()}, tmp.path);
    BOOST_TEST(r.exit_code == 7);
    BOOST_TEST(r.out == (tmp.path / "code" / "web app").string() + "\na b\n$(id)\nit's\n");
    // A directory that is not there (yet): the home directory.
    const auto home_argv = vm::openssh_argv({"web", "/c", "/k", false}, false, cli::run_in_dir("code/none", {"pwd"}));
    r = run_program({"sh", "-c", "cd \"$HOME\" && eval \"$0\"", home_argv.back()}, tmp.path);
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out == tmp.path.string() + "\n");
}

// `ssh` (no command: the login shell) and `run` start in one place, chosen once: the primary
// repo when it is cloned, else the home directory, with nothing said about it.
BOOST_AUTO_TEST_CASE(ssh_and_run_start_where_the_primary_repo_is_else_at_home) {
    machine::config::project p;
    p.name = "web";
    p.repos = {"git@github.com:acme/web-app.git"};
    machine::test::temp_dir tmp;
    // The "login shell" prints where it started and how it was called.
    const fs::path shell = tmp.path / "login-shell";
    std::ofstream(shell) << "#!/bin/sh\npwd; echo \"$@\"\n";
    fs::permissions(shell, fs::perms::owner_all);
    // What the remote side does with the string ssh hands it, with `tmp` as home and SHELL set.
    auto remote = [&](const std::vector<std::string>& command) {
        const auto argv = vm::openssh_argv({"web", "/c", "/k", false}, false, cli::in_primary_repo(p, command));
        return run_program({"sh", "-c", "export SHELL=\"$1\"; cd \"$HOME\" && eval \"$0\"", argv.back(), shell.string()},
                           tmp.path);
    };
    const std::string repo = (tmp.path / "code" / "web-app").string();
    for (const bool cloned : {false, true}) {
        BOOST_TEST_CONTEXT("cloned " << cloned) {
            if (cloned) fs::create_directories(repo);
            const std::string where = cloned ? repo : tmp.path.string();
            auto r = remote({});
            BOOST_TEST(r.exit_code == 0);
            BOOST_TEST(r.out == where + "\n-l\n");
            BOOST_TEST(r.err.empty());
            r = remote({"pwd"});
            BOOST_TEST(r.exit_code == 0);
            BOOST_TEST(r.out == where + "\n");
            BOOST_TEST(r.err.empty());
        }
    }
    // One wrapper for both: the same words before the command.
    const auto shell_argv = cli::in_primary_repo(p, {});
    const auto run_argv = cli::in_primary_repo(p, {"pwd"});
    BOOST_TEST((std::vector<std::string>(run_argv.begin(), run_argv.end() - 1) == shell_argv));
    BOOST_TEST(shell_argv.back() == "code/web-app");
}

// The VM user's login shell parses the one string ssh hands it: bash or zsh (`shell` in the
// config). Words zsh would expand unquoted (`=sh` is the path of sh under its EQUALS option,
// `~`, globs) reach the command as they were written, under both.
BOOST_AUTO_TEST_CASE(run_keeps_every_word_under_bash_and_zsh) {
    const std::vector<std::string> words{"=sh", "~", "*", "a=b", "-t", "=claude", "x y", "'q'"};
    std::vector<std::string> command{"printf", "%s\n"};
    command.insert(command.end(), words.begin(), words.end());
    const auto argv = vm::openssh_argv({"web", "/c", "/k", false}, false, cli::run_in_dir(".", command));
    std::string expected;
    for (const auto& w : words) expected += w + "\n";
    machine::test::temp_dir tmp;
    for (const std::string shell : {"bash", "zsh"}) {
        BOOST_TEST_CONTEXT(shell) {
            auto r = run_program({shell, "-c", "cd \"$HOME\" && eval \"$0\"", argv.back()}, tmp.path);
            BOOST_TEST(r.exit_code == 0);
            BOOST_TEST(r.out == expected);
        }
    }
}

// A repo's declared package manager and version win (through corepack); the lockfile decides
// otherwise. A hostile packageManager value never becomes part of the argv.
BOOST_AUTO_TEST_CASE(deps_install_honours_package_manager_through_corepack) {
    using argv_t = std::vector<std::string>;
    const auto yarn4 = vm::deps_install_command(R"({"packageManager": "yarn@4.9.4"})", false, false);
    BOOST_TEST(yarn4.manager == "yarn");
    BOOST_TEST((yarn4.argv == argv_t{"corepack", "yarn", "install"}), boost::test_tools::per_element());
    BOOST_TEST(has_env(yarn4.env, "COREPACK_ENABLE_DOWNLOAD_PROMPT", "0"));
    BOOST_TEST(has_env(yarn4.env, "COREPACK_NPM_REGISTRY", "https://registry.npmjs.org"));
    // corepack fetches with Node's own CAs unless the system bundle (the template's CAs) is added
    BOOST_TEST(has_env(yarn4.env, "NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt"));
    BOOST_TEST(has_env(vm::deps_install_command("{}", true, false).env, "NODE_EXTRA_CA_CERTS",
                       "/etc/ssl/certs/ca-certificates.crt"));
    // packageManager beats a lockfile of another manager
    const auto pnpm = vm::deps_install_command(R"({"packageManager": "pnpm@9.0.0+sha512.abc"})", false, true);
    BOOST_TEST((pnpm.argv == argv_t{"corepack", "pnpm", "install"}), boost::test_tools::per_element());
    // no packageManager: the lockfile's manager (corepack's shims run it), else npm
    BOOST_TEST((vm::deps_install_command("{}", true, false).argv == argv_t{"pnpm", "install"}),
               boost::test_tools::per_element());
    BOOST_TEST((vm::deps_install_command("{}", false, true).argv == argv_t{"yarn", "install"}),
               boost::test_tools::per_element());
    BOOST_TEST((vm::deps_install_command("not json", false, false).argv == argv_t{"npm", "install"}),
               boost::test_tools::per_element());
    // hostile values: an unknown manager, a name that only starts like one, a non-string
    for (const char* pj : {R"({"packageManager": "evil@1; rm -rf ~"})", R"({"packageManager": "yarnx@1"})",
                           R"({"packageManager": ["yarn@4.0.0"]})", R"({"packageManager": "--help"})"}) {
        BOOST_TEST_CONTEXT(pj) {
            const auto d = vm::deps_install_command(pj, false, false);
            BOOST_TEST((d.argv == argv_t{"npm", "install"}), boost::test_tools::per_element());
        }
    }
}

BOOST_AUTO_TEST_CASE(clone_argv_shows_progress_and_takes_the_url_as_an_operand) {
    const auto c = vm::clone_command("-oProxyCommand=touch /tmp/x", "/home/u/code/web");
    BOOST_TEST(c.front() == "env");
    const auto git = std::find(c.begin(), c.end(), "git");
    BOOST_REQUIRE(has(c, "git"));
    const std::vector<std::string> after(git, c.end());
    BOOST_TEST((after == std::vector<std::string>{"git", "-c", "protocol.ext.allow=never", "clone", "--progress",
                                                 "--recurse-submodules", "--", "-oProxyCommand=touch /tmp/x",
                                                 "/home/u/code/web"}),
               boost::test_tools::per_element());
    BOOST_TEST(has(c, "GIT_TERMINAL_PROMPT=0"));
    // The same OpenSSH command line as every other connection: pinned, no master, the agent
    // when the project forwards it.
    const auto argv = vm::openssh_argv({"web", "/c", "/k", true}, false, c);
    BOOST_TEST(has(options_of(argv), "ControlMaster=no"));
    BOOST_TEST(has(options_of(argv), "ForwardAgent=yes"));
    BOOST_TEST(has(argv, "-T"));
    std::string expected;
    for (const auto& w : c) expected += w + "\n";
    BOOST_TEST(words_after_shell(argv.back()) == expected);
}

BOOST_AUTO_TEST_CASE(clone_progress_is_at_most_a_line_a_second_and_bounded) {
    vm::clone_progress progress;
    const auto t0 = std::chrono::steady_clock::time_point{} + 1h;
    BOOST_TEST(progress.feed("Cloning into '/home/u/code/web'...", t0).value_or("") == "Cloning into '/home/u/code/web'...");
    int shown = 0;
    // git redraws its meter a thousand times a second here; 2.5 s of it shows 2 lines, and the
    // newest one at the end.
    for (int i = 0; i < 2500; ++i)
        shown += progress.feed("Receiving objects:  " + std::to_string(i / 30) + "% (" + std::to_string(i) + "/3000)",
                               t0 + std::chrono::milliseconds(i + 1)).has_value();
    BOOST_TEST(shown == 2);
    BOOST_TEST(progress.finish().value_or("") == "Receiving objects:  83% (2499/3000)");
    BOOST_TEST(!progress.finish().has_value());
    BOOST_TEST(!progress.feed("   ", t0 + 10s).has_value());  // blank: nothing

    const auto long_line = progress.feed(std::string(100000, 'x'), t0 + 20s);
    BOOST_REQUIRE(long_line.has_value());
    BOOST_TEST(long_line->size() == 203u);
    // The tail keeps the last 20 lines, each as bounded as what was shown.
    for (int i = 0; i < 50; ++i) progress.feed("fatal: line " + std::to_string(i), t0 + 30s);
    const std::string tail = progress.tail();
    BOOST_TEST(tail.find("fatal: line 49\n") != std::string::npos);
    BOOST_TEST(tail.find("fatal: line 29\n") == std::string::npos);
    BOOST_TEST(tail.size() < 20u * 210u);
}

struct recording_sink : machine::events::sink {
    std::vector<machine::events::event> seen;
    void write(const machine::events::event& e) override { seen.push_back(e); }
};

// One clone as up runs it, with a stand-in for `ssh ... git clone`: its progress becomes step
// output, and its own timeout (clone_timeout) ends it with an error naming the repo and the limit.
BOOST_AUTO_TEST_CASE(a_clone_shows_progress_and_ends_at_its_timeout_naming_the_repo) {
    machine::test::fake_vm_context fake;
    asio::io_context& io = fake.io;
    vm::context& ctx = fake.ctx;
    auto rec = std::make_shared<recording_sink>();
    ctx.bus.add(rec);
    vm::clone_run run;
    run.vm = "web";
    run.step = "clone big";
    run.url = "git@example.com:acme/big.git";
    run.timeout = 1s;
    run.argv = {"sh", "-c", "printf 'Cloning into big...\\n'; printf 'Receiving objects:  1%%\\r' >&2; exec sleep 30"};
    const auto t0 = std::chrono::steady_clock::now();
    std::string message;
    try {
        machine::test::co_run(io, vm::run_clone(ctx, run, nullptr));
    } catch (const machine::error& e) {
        message = e.what();
        BOOST_TEST(static_cast<int>(e.code()) == static_cast<int>(machine::exit_code::failure));
    }
    BOOST_TEST(message == "git clone git@example.com:acme/big.git in VM 'web' timed out after 1s (raise clone_timeout for project web)");
    BOOST_TEST(machine::test::seconds_since(t0) < 10);
    bool progress_shown = false, failed = false;
    for (const auto& e : rec->seen) {
        progress_shown |= e.type == "step.output" && e.text("line") == "Receiving objects:  1%";
        failed |= e.type == "step.finished" && e.text("detail") == "timed out after 1s";
    }
    BOOST_TEST(progress_shown);
    BOOST_TEST(failed);

    // git failing: its last line, or only false when the project clones with a deploy key.
    run.timeout = 30s;
    run.argv = {"sh", "-c", "echo 'fatal: repository not found' >&2; exit 128"};
    message.clear();
    try {
        machine::test::co_run(io, vm::run_clone(ctx, run, nullptr));
    } catch (const machine::error& e) {
        message = e.what();
    }
    BOOST_TEST(message == "git clone git@example.com:acme/big.git failed in VM 'web': fatal: repository not found");
    run.failure_is_fatal = false;
    BOOST_TEST(!machine::test::co_run(io, vm::run_clone(ctx, run, nullptr)));
    run.argv = {"true"};
    BOOST_TEST(machine::test::co_run(io, vm::run_clone(ctx, run, nullptr)));
}

BOOST_AUTO_TEST_CASE(durations_are_written_as_the_config_takes_them) {
    BOOST_TEST(vm::format_duration(30min) == "30m");
    BOOST_TEST(vm::format_duration(90s) == "1m30s");
    BOOST_TEST(vm::format_duration(5400s) == "1h30m");
    BOOST_TEST(vm::format_duration(0s) == "0s");
}

// The attack of issue 13 with real OpenSSH: Lima's ssh.config shares a ControlMaster that was
// opened without checking the host key. With our options ssh opens its own connection and
// checks the pin's known_hosts, so a VM presenting another key is refused although the master
// is up; without ControlMaster=no and ControlPath=none the same command rides the master and
// runs (which is what this test would see on the old command line).
BOOST_AUTO_TEST_CASE(a_wrong_pin_is_refused_although_limas_master_is_open) {
    machine::test::sshd_server sshd;
    machine::test::temp_dir tmp;
    const fs::path home = tmp.path / "home";
    fs::create_directories(home);
    const fs::path config = tmp.path / "ssh.config";
    const fs::path sock = tmp.path / "ssh.sock";
    std::ofstream(config) << "Host lima-web\n  IdentityFile \"" << sshd.identity_file().string()
                          << "\"\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                          << "  NoHostAuthenticationForLocalhost yes\n  BatchMode yes\n  IdentitiesOnly yes\n"
                          << "  User " << sshd.user() << "\n  ControlMaster auto\n  ControlPath \"" << sock.string()
                          << "\"\n  ControlPersist yes\n  Hostname 127.0.0.1\n  Port " << sshd.port() << "\n";
    // The master, opened the way Lima's host agent does; stopped below by its pid.
    BOOST_REQUIRE(run_program({"ssh", "-F", config.string(), "lima-web", "true"}, home).exit_code == 0);
    const auto check = run_program({"ssh", "-F", config.string(), "-O", "check", "lima-web"}, home);
    const auto at = check.err.find("pid=");
    BOOST_REQUIRE_MESSAGE(at != std::string::npos, check.err);
    const pid_t master = static_cast<pid_t>(std::stol(check.err.substr(at + 4)));
    const int master_fd = static_cast<int>(::syscall(SYS_pidfd_open, master, 0));
    BOOST_REQUIRE(master_fd >= 0);
    struct stop_master {
        int fd;
        std::vector<std::string> exit_argv;
        fs::path home;
        ~stop_master() {
            run_program(exit_argv, home);
            machine::test::kill_and_wait(fd);
        }
    } stopper{master_fd, {"ssh", "-F", config.string(), "-O", "exit", "lima-web"}, home};

    // A pin of another key, in OpenSSH's form.
    const fs::path other = sshd.make_key("other");
    std::ifstream pub(other.string() + ".pub");
    std::string type, blob;
    pub >> type >> blob;
    const fs::path wrong = tmp.path / "known_hosts";
    std::ofstream(wrong) << "machine-web " << type << " " << blob << "\n";
    const vm::openssh_target target{"web", config, wrong, false};
    const auto argv = vm::openssh_argv(target, false, {"echo", "rode"});

    auto r = run_program(argv, home);
    BOOST_TEST(r.exit_code == 255);
    BOOST_TEST(r.out.empty());
    BOOST_TEST(r.err.find("Host key verification failed") != std::string::npos, r.err);
    // Control: without the two no-master options the same command rides the master.
    r = run_program(without_option(without_option(argv, "ControlMaster"), "ControlPath"), home);
    BOOST_TEST(r.exit_code == 0);
    BOOST_TEST(r.out == "rode\n");

    // The right pin: our own connection works.
    std::ifstream host_pub(sshd.host_public_key());
    host_pub >> type >> blob;
    const fs::path right = tmp.path / "known_hosts.right";
    std::ofstream(right) << "machine-web " << type << " " << blob << "\n";
    r = run_program(vm::openssh_argv({"web", config, right, false}, false, {"echo", "own"}), home);
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(r.out == "own\n");
}

BOOST_AUTO_TEST_CASE(openssh_checks_the_pinned_key_whatever_limas_config_says) {
    const vm::openssh_target t{"web", "/l/web/ssh.config", "/s/web dir/known_hosts", true};
    const auto argv = vm::openssh_argv(t, true, {});
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

    const vm::openssh_target closed{"web", "/l/web/ssh.config", "/k", false};
    const auto no_tty = vm::openssh_argv(closed, false, {"true"});
    BOOST_TEST(has(options_of(no_tty), "ForwardAgent=no"));
    BOOST_TEST(!has(options_of(no_tty), "ForwardAgent=yes"));
    BOOST_TEST(has(no_tty, "-T"));
}

BOOST_AUTO_TEST_CASE(the_remote_command_reaches_the_vm_word_for_word) {
    const std::vector<std::string> remote{"/usr/local/bin/machine-agent", "a b", "$(touch /tmp/pwned)", "it's",
                                          "`x`;y", "\"q\"", "*", ""};
    const auto argv = vm::openssh_argv({"web", "/c", "/k", true}, true, remote);
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

// machine's own master (vm::ssh_target): opened pinned, ridden by the sessions after it (with a
// known_hosts that no longer matches, a session of its own is refused while one riding the master
// runs: it made no new key exchange), not ridden from a shell with another SSH agent, closed
// after provisioning and by stop_ssh_master, and never left behind when the VM presents another key.
BOOST_AUTO_TEST_CASE(sessions_ride_one_pinned_master_per_vm) {
    machine::test::state_dir state;
    machine::test::sshd_server sshd;
    machine::test::fake_vm_context fake;
    asio::io_context& io = fake.io;
    const fs::path home = state.dir.path / "home";
    fs::create_directories(home);
    // Lima's ssh.config, with its own master settings (which ours override).
    const fs::path config = state.dir.path / "ssh.config";
    std::ofstream(config) << "Host lima-web\n  IdentityFile \"" << sshd.identity_file().string()
                          << "\"\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                          << "  BatchMode yes\n  IdentitiesOnly yes\n  User " << sshd.user()
                          << "\n  ControlMaster auto\n  ControlPath \"" << (state.dir.path / "lima.sock").string()
                          << "\"\n  ControlPersist yes\n  Hostname 127.0.0.1\n  Port " << sshd.port() << "\n";
    const machine::test::pinned_vm web(io, state, "web", config);
    const machine::lima::instance& inst = web.inst;
    const vm::agent_environment no_agent = web.no_agent();

    const vm::openssh_target t = machine::test::co_run(io, vm::ssh_target(fake.ctx, "web", inst, no_agent));
    BOOST_TEST(t.control_path == vm::ssh_master_socket("web"));
    BOOST_TEST(machine::paths::socket_accepts(t.control_path));
    auto r = run_program(vm::openssh_argv(t, false, {"echo", "rode"}), home);
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(r.out == "rode\n");

    const fs::path known_hosts = vm::pin_of("web", false).known_hosts;
    const std::string right = machine::paths::read_file(known_hosts);
    std::ifstream pub(sshd.make_key("other").string() + ".pub");
    std::string type, blob;
    pub >> type >> blob;
    std::ofstream(known_hosts) << "machine-web " << type << " " << blob << "\n";
    vm::openssh_target own = t;
    own.control_path.clear();
    r = run_program(vm::openssh_argv(own, false, {"echo", "own"}), home);
    BOOST_TEST(r.exit_code == 255);
    BOOST_TEST(r.err.find("Host key verification failed") != std::string::npos, r.err);
    r = run_program(vm::openssh_argv(t, false, {"echo", "rode"}), home);
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(r.out == "rode\n");
    std::ofstream(known_hosts) << right;

    // The same VM and agent again: the same master, found, not opened anew.
    BOOST_TEST(machine::test::co_run(io, vm::ssh_target(fake.ctx, "web", inst, no_agent)).control_path == t.control_path);
    // Another SSH agent (the master forwards its own): a connection of its own; the master stays.
    vm::agent_environment other_agent;
    other_agent.forward = true;
    other_agent.env.set = {{"SSH_AUTH_SOCK", (state.dir.path / "agent.sock").string()}};
    BOOST_TEST(machine::test::co_run(io, vm::ssh_target(fake.ctx, "web", inst, other_agent)).control_path.empty());
    BOOST_TEST(machine::paths::socket_accepts(t.control_path));

    // Provisioning changed the user's groups: the master (whose login predates it) is closed.
    machine::test::co_run(io, vm::close_ssh_masters_after_provisioning(inst, "web"));
    BOOST_TEST(!machine::paths::socket_accepts(t.control_path));
    BOOST_TEST(machine::test::co_run(io, vm::ssh_target(fake.ctx, "web", inst, no_agent)).control_path == t.control_path);
    machine::test::co_run(io, vm::stop_ssh_master("web"));
    BOOST_TEST(!machine::paths::socket_accepts(t.control_path));
    r = run_program(vm::openssh_argv(t, false, {"echo", "own"}), home);  // no master: on its own, pinned
    BOOST_TEST(r.exit_code == 0, r.err);
    BOOST_TEST(r.out == "own\n");

    // The VM presents another key: machine's message, and no master left behind.
    sshd.restart_with_new_host_key();
    std::string message;
    try {
        machine::test::co_run(io, vm::ssh_target(fake.ctx, "web", inst, no_agent));
    } catch (const machine::ssh::host_key_mismatch& e) {
        message = e.what();
    }
    BOOST_TEST(message.find("web") != std::string::npos, message);
    BOOST_TEST(!machine::paths::socket_accepts(t.control_path));
}

BOOST_AUTO_TEST_SUITE_END()
