// The forges' host keys machine ships (core/forge_keys) and the host-side `git ls-remote` check
// that uses them (vm/host_git), against ssh-keygen and a real sshd on 127.0.0.1 standing in for
// a forge.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <asio/io_context.hpp>

#include "../support/sshd.hpp"
#include "machine/forge_keys.hpp"
#include "provisioning.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using namespace machine;
using machine::test::run_sync;

namespace {

std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// An environment variable set for a scope, restored after.
struct scoped_env {
    std::string name;
    std::optional<std::string> old;
    scoped_env(std::string n, const std::string& value) : name(std::move(n)) {
        if (const char* v = std::getenv(name.c_str())) old = v;
        ::setenv(name.c_str(), value.c_str(), 1);
    }
    ~scoped_env() {
        if (old) ::setenv(name.c_str(), old->c_str(), 1);
        else ::unsetenv(name.c_str());
    }
};

// A real `ssh-agent -D -a <socket>` holding `key`, stopped (by its pid) at scope exit; SSH_AUTH_SOCK
// points at it meanwhile, so the ssh that git runs authenticates with it.
class agent_with_key {
public:
    agent_with_key(const fs::path& dir, const fs::path& key) : socket_(dir / "agent.sock") {
        std::string a0 = "ssh-agent", a1 = "-D", a2 = "-a", a3 = socket_.string();
        char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), nullptr};
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        const int rc = ::posix_spawnp(&pid_, "ssh-agent", &fa, nullptr, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        BOOST_REQUIRE_MESSAGE(rc == 0, "cannot start ssh-agent");
        for (int i = 0; i < 200 && !fs::exists(socket_); ++i) ::usleep(10000);
        env_.emplace("SSH_AUTH_SOCK", socket_.string());
        run_sync({"ssh-add", "-q", key.string()});
    }
    ~agent_with_key() {
        env_.reset();
        if (pid_ > 0) {
            ::kill(pid_, SIGTERM);
            ::waitpid(pid_, nullptr, 0);
        }
    }

private:
    fs::path socket_;
    pid_t pid_ = -1;
    std::optional<scoped_env> env_;
};

std::string public_key_blob(const fs::path& pub) {
    std::ifstream in(pub);
    std::string type, blob;
    in >> type >> blob;
    return type + " " + blob;
}

} // namespace

BOOST_AUTO_TEST_SUITE(forge_keys)

// Every shipped key is the one its forge publishes: ssh-keygen's SHA256 fingerprint of each key
// equals the fingerprint written next to it (copied from the forge's page, see forge_keys.cpp),
// and every forge has its three key types.
BOOST_AUTO_TEST_CASE(each_shipped_key_has_the_fingerprint_its_forge_publishes) {
    test::temp_dir tmp;
    const fs::path file = tmp.path / "known_hosts";
    { std::ofstream(file) << forge::known_hosts_text(); }
    std::istringstream lines(run_sync({"ssh-keygen", "-E", "sha256", "-lf", file.string()}));
    std::vector<std::string> printed;
    for (std::string bits, fp, host, type; lines >> bits >> fp >> host >> type;) printed.push_back(host + " " + fp);
    const auto keys = forge::shipped_keys();
    BOOST_REQUIRE_EQUAL(printed.size(), keys.size());
    std::map<std::string, std::set<std::string>> types;
    for (std::size_t i = 0; i < keys.size(); ++i) {
        BOOST_TEST(printed[i] == std::string(keys[i].host) + " " + std::string(keys[i].fingerprint));
        types[std::string(keys[i].host)].insert(std::string(keys[i].type));
    }
    const std::set<std::string> all{"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"};
    BOOST_TEST(types.size() == 3u);
    for (const char* host : {"github.com", "gitlab.com", "bitbucket.org"}) {
        BOOST_TEST(types[host] == all, host);
        BOOST_TEST(forge::is_pinned_forge(host));
    }
    BOOST_TEST(forge::is_pinned_forge("GitHub.com"));
    BOOST_TEST(!forge::is_pinned_forge("github.com.evil.org"));
    BOOST_TEST(!forge::is_pinned_forge("git.example.com"));
}

BOOST_AUTO_TEST_CASE(the_ssh_host_of_a_git_url) {
    const std::pair<const char*, const char*> cases[] = {
        {"git@github.com:o/r.git", "github.com"},
        {"GitHub.com:o/r", "github.com"},
        {"ssh://git@gitlab.com/o/r.git", "gitlab.com"},
        {"ssh://git@bitbucket.org:22/o/r", "bitbucket.org"},
        {"git+ssh://git@host.example:2222/r", "host.example"},
        {"ssh://git@[::1]:2222/r", "::1"},
        {"https://github.com/o/r.git", ""},
        {"/srv/git/r.git", ""},
        {"./dir:with/colon", ""},
        {"file:///srv/r", ""},
    };
    for (const auto& [url, host] : cases) BOOST_TEST(forge::ssh_host_of(url) == host, url);
}

// OpenSSH's own words for a refused host key become a plain sentence; other failures do not.
BOOST_AUTO_TEST_CASE(openssh_host_key_refusals_are_said_plainly) {
    const std::string changed =
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
        "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
        "Host key for github.com has changed and you have requested strict checking.\n"
        "Host key verification failed.\nfatal: Could not read from remote repository.\n";
    const std::string forge_message = forge::host_key_problem(changed, "github.com");
    BOOST_TEST(forge_message.find("did not match the key machine ships for github.com") != std::string::npos, forge_message);
    BOOST_TEST(forge::host_key_problem(changed, "git.example.com").find("did not match the key your known_hosts has") !=
               std::string::npos);
    const std::string unknown = "No ED25519 host key is known for git.example.com and you have requested strict checking.\n"
                                "Host key verification failed.\nfatal: Could not read from remote repository.\n";
    BOOST_TEST(forge::host_key_problem(unknown, "git.example.com").find("SSH host key of git.example.com is not known") !=
               std::string::npos);
    BOOST_TEST(forge::host_key_problem("git@github.com: Permission denied (publickey).\n", "github.com").empty());
    BOOST_TEST(forge::host_key_problem("fatal: repository 'x' not found\n", "github.com").empty());
}

// No git machine runs accepts a host key unseen; on the host, ssh reads the shipped keys first.
BOOST_AUTO_TEST_CASE(git_over_ssh_checks_host_keys_strictly) {
    auto ssh_command = [](const std::vector<std::pair<std::string, std::string>>& env) {
        for (const auto& [k, v] : env)
            if (k == "GIT_SSH_COMMAND") return v;
        return std::string();
    };
    const std::string in_vm = ssh_command(vm::git_env());
    BOOST_TEST(in_vm.find("StrictHostKeyChecking=yes") != std::string::npos, in_vm);
    BOOST_TEST(in_vm.find("accept-new") == std::string::npos);
    BOOST_TEST(in_vm.find("UserKnownHostsFile") == std::string::npos);  // the VM's: /etc/ssh/ssh_known_hosts
    const std::string on_host = ssh_command(vm::git_env("/state dir/forge_known_hosts"));
    BOOST_TEST(on_host.find("StrictHostKeyChecking=yes") != std::string::npos, on_host);
    BOOST_TEST(on_host.find("'UserKnownHostsFile=\"/state dir/forge_known_hosts\" ~/.ssh/known_hosts'") != std::string::npos,
               on_host);
    const auto clone = vm::clone_command("git@github.com:o/r.git", "/home/dev/code/r");
    for (const auto& a : clone) BOOST_TEST(a.find("accept-new") == std::string::npos, a);
}

// The host-side check against a real sshd on 127.0.0.1 (a throwaway host key) standing in for a
// forge: a known_hosts naming ANOTHER key for it fails with the plain message (nothing is
// accepted), no entry at all fails as unknown, the right key passes.
BOOST_AUTO_TEST_CASE(the_host_side_check_refuses_a_forge_presenting_another_key) {
    test::sshd_server sshd;
    test::temp_dir tmp;
    const fs::path repo = tmp.path / "repo.git";
    run_sync({"git", "init", "-q", "--bare", repo.string()});
    agent_with_key agent(tmp.path, sshd.identity_file());
    const std::string host = "[127.0.0.1]:" + std::to_string(sshd.port());
    const std::string url = "ssh://" + sshd.user() + "@127.0.0.1:" + std::to_string(sshd.port()) + repo.string();
    asio::io_context ctx;

    const fs::path wrong = tmp.path / "known_hosts.wrong";
    { std::ofstream(wrong) << host << " " << public_key_blob(sshd.make_key("impostor").string() + ".pub") << "\n"; }
    const std::string before = slurp(wrong);
    const std::string refused = test::co_run(ctx, vm::repo_reachability_problem(url, wrong, nullptr));
    BOOST_TEST(refused.find("the SSH host key 127.0.0.1 presented did not match") != std::string::npos, refused);
    BOOST_TEST(slurp(wrong) == before);  // nothing learnt

    const fs::path empty = tmp.path / "known_hosts.empty";
    { std::ofstream(empty) << ""; }
    const std::string unknown = test::co_run(ctx, vm::repo_reachability_problem(url, empty, nullptr));
    BOOST_TEST(unknown.find("SSH host key of 127.0.0.1 is not known") != std::string::npos, unknown);
    BOOST_TEST(slurp(empty).empty());  // no accept-new

    const fs::path right = tmp.path / "known_hosts.right";
    { std::ofstream(right) << host << " " << public_key_blob(sshd.host_public_key()) << "\n"; }
    const std::string answered = test::co_run(ctx, vm::repo_reachability_problem(url, right, nullptr));
    BOOST_TEST(answered.empty(), answered);
}

// The file the host-side check uses is written from the shipped table (and rewritten when it
// differs from it, e.g. after an upgrade or tampering).
BOOST_AUTO_TEST_CASE(the_host_writes_the_shipped_keys_for_its_check) {
    const fs::path file = vm::forge_known_hosts_file();
    BOOST_TEST(slurp(file) == forge::known_hosts_text());
    { std::ofstream(file) << "github.com ssh-ed25519 AAAAevil\n"; }
    BOOST_TEST(vm::forge_known_hosts_file() == file);
    BOOST_TEST(slurp(file) == forge::known_hosts_text());
}

BOOST_AUTO_TEST_SUITE_END()
