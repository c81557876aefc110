// The host's side of a project's git: the identity and signing key its profiles copy into the
// VM, and whether its repos can be reached before anything is created.
#include "provisioning.hpp"

#include <map>

#include <asio/this_coro.hpp>
#include <spdlog/spdlog.h>

#include "machine/async.hpp"
#include "machine/forge_keys.hpp"
#include "tasks.hpp"
#include "machine/paths.hpp"
#include "machine/proc.hpp"
#include "machine/render.hpp"
#include "machine/text.hpp"

namespace machine::vm {

namespace fs = std::filesystem;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

// Transports git may use, on the host and in the VM: never ext:: (runs a command) or fd::.
constexpr const char* allowed_git_protocols = "https:http:ssh:git:file";

bool looks_like_ssh_public_key(std::string_view s) {
    return s.rfind("ssh-", 0) == 0 || s.rfind("ecdsa-", 0) == 0 || s.rfind("sk-ssh-", 0) == 0 ||
           s.rfind("sk-ecdsa-", 0) == 0;
}

// The host's global git settings machine copies, read by one `git config` call: key -> the
// last value, as `git config --get` would give it.
awaitable<std::map<std::string, std::string>> git_config_globals() {
    proc::command cmd;
    cmd.argv = {"git", "config", "--global", "-z", "--get-regexp", "^(user\\.(name|email|signingkey)|gpg\\.format)$"};
    std::map<std::string, std::string> values;
    try {
        const proc::result r = co_await proc::run(std::move(cmd));
        if (!r.ok()) co_return values;  // exit 1: none of them is set
        // -z: "key\nvalue\0" per entry; keys come lower-cased.
        std::string_view rest = r.out;
        while (!rest.empty()) {
            const auto end = rest.find('\0');
            const std::string_view entry = rest.substr(0, end);
            const auto nl = entry.find('\n');
            if (nl != std::string_view::npos) values[std::string(entry.substr(0, nl))] = std::string(entry.substr(nl + 1));
            if (end == std::string_view::npos) break;
            rest.remove_prefix(end + 1);
        }
    } catch (const proc::spawn_error&) {
        // no git on the host: no identity to copy
    }
    co_return values;
}

// user.signingkey as git reads it for gpg.format=ssh: a key, "key::" + a key, or a file.
std::string signing_key_from(std::string value) {
    if (value.rfind("key::", 0) == 0) value = value.substr(5);
    if (looks_like_ssh_public_key(value)) return value;
    if (value.empty()) return {};
    fs::path file = value.rfind("~/", 0) == 0 ? paths::home_dir() / value.substr(2) : fs::path(value);
    std::error_code ec;
    // A private key path: git signs with it, and its public half sits next to it.
    if (file.extension() != ".pub" && fs::exists(file.string() + ".pub", ec)) file += ".pub";
    try {
        const std::string line = text::last_line(paths::read_file(file).substr(0, 16384));
        if (looks_like_ssh_public_key(line)) return line;
    } catch (const error&) {
    }
    spdlog::warn("user.signingkey {} is not an SSH public key; commits in the VM will not be signed", file.string());
    return {};
}

} // namespace

// git without prompts: a missing credential is an error, not a hang. ssh never accepts a host
// key it has not seen (no accept-new): the forges' keys are shipped (machine/forge_keys.hpp).
std::vector<std::pair<std::string, std::string>> git_env(const fs::path& known_hosts) {
    std::string ssh = "ssh -o BatchMode=yes -o ConnectTimeout=10 -o StrictHostKeyChecking=yes";
    if (!known_hosts.empty()) {
        // GIT_SSH_COMMAND goes through a shell, then ssh splits the option's value into files
        // (double quotes keep a path with spaces whole, as in vm/openssh.cpp).
        ssh += " -o " + text::shell_quote("UserKnownHostsFile=\"" + known_hosts.string() + "\" ~/.ssh/known_hosts");
    }
    return {{"GIT_TERMINAL_PROMPT", "0"}, {"GIT_ALLOW_PROTOCOL", allowed_git_protocols}, {"GIT_SSH_COMMAND", ssh}};
}

fs::path forge_known_hosts_file() {
    const fs::path file = paths::state_dir() / "forge_known_hosts";
    const std::string text = forge::known_hosts_text();
    std::error_code ec;
    if (!fs::exists(file, ec) || paths::read_file(file) != text) paths::write_file_atomic(file, text, 0644);
    return file;
}

awaitable<std::string> repo_reachability_problem(std::string url, fs::path known_hosts, cancel_signal* cancel) {
    proc::command cmd;
    // `--` first: the URL can never be read as an option.
    cmd.argv = {"git", "-c", "protocol.ext.allow=never", "ls-remote", "--", url, "HEAD"};
    cmd.env_set = git_env(known_hosts);
    proc::run_options opt;
    opt.limit.timeout = 30s;
    opt.limit.max_output = 1 << 20;
    opt.cancel = cancel;
    try {
        const proc::result r = co_await proc::run(std::move(cmd), std::move(opt));
        if (r.timed_out) co_return "no answer within 30s";
        if (r.ok()) co_return "";
        if (std::string why = forge::host_key_problem(r.err, forge::ssh_host_of(url)); !why.empty()) co_return why;
        const std::string last = text::last_line(r.err);
        co_return last.empty() ? "git ls-remote failed" : last;
    } catch (const proc::spawn_error& e) {
        co_return std::string("cannot run git: ") + e.what();
    }
}

awaitable<provision::host_values> detect_host_values(std::string vm_user) {
    provision::host_values v;
    v.vm_user = std::move(vm_user);
    auto git = co_await git_config_globals();
    v.git_name = git["user.name"];
    v.git_email = git["user.email"];
    const std::string from_env = paths::env("GIT_SIGNING_KEY");
    if (!from_env.empty()) {
        v.git_signing_key = signing_key_from(from_env);
    } else {
        const std::string format = git["gpg.format"];
        const std::string key = git["user.signingkey"];
        // An OpenPGP key id means nothing to ssh-keygen in the VM.
        if (format == "ssh" || looks_like_ssh_public_key(key) || key.rfind("key::", 0) == 0)
            v.git_signing_key = signing_key_from(key);
    }
    co_return v;
}

awaitable<provision::host_values> host_values_for(const provision::catalog& cat,
                                                  const std::vector<config::project>& projects) {
    bool wants_git = false;
    for (const auto& p : projects)
        for (const auto& name : profiles_of(cat, p)) wants_git |= cat.find(name)->uses_git_values;
    if (wants_git) co_return co_await detect_host_values(render::vm_user);
    provision::host_values host;
    host.vm_user = render::vm_user;
    co_return host;
}

awaitable<void> check_repos_reachable(context& ctx, const config::project& p, cancel_signal* cancel) {
    if (p.repos.empty()) co_return;
    ctx.say(p.name, "checking access to " + std::to_string(p.repos.size()) + " repo(s)");
    std::vector<std::string> problems(p.repos.size());
    const fs::path known_hosts = forge_known_hosts_file();
    task_group checks(co_await asio::this_coro::executor, log_task_failure);
    for (std::size_t i = 0; i < p.repos.size(); ++i) {
        checks.spawn([url = p.repos[i], &problem = problems[i], known_hosts, cancel]() -> awaitable<void> {
            problem = co_await repo_reachability_problem(url, known_hosts, cancel);
        });
    }
    co_await checks.join();
    if (cancel && cancel->current() != cancel_signal::none) throw interrupted_error();
    std::string report;
    for (std::size_t i = 0; i < p.repos.size(); ++i)
        if (!problems[i].empty()) report += "\n  " + p.repos[i] + ": " + problems[i];
    if (!report.empty())
        throw error(text::sanitize_for_terminal("cannot reach repo(s) of '" + p.name +
                                                "'; check its repos for typos or access:" + report));
}

} // namespace machine::vm
