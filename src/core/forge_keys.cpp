// The forges' SSH host keys machine ships, and what OpenSSH's refusal of one means.
//
// Sources (each key's SHA256 fingerprint is the one its forge publishes; tests/unit/test_forge_keys.cpp
// checks every key against its fingerprint with `ssh-keygen -lf`):
// - github.com: "GitHub's SSH key fingerprints",
//   https://docs.github.com/en/authentication/keeping-your-account-and-data-secure/githubs-ssh-key-fingerprints
//   (the known_hosts entries on that page; also https://api.github.com/meta `ssh_keys`).
// - gitlab.com: "SSH host keys fingerprints", https://docs.gitlab.com/user/gitlab_com/#ssh-host-keys-fingerprints
//   (fingerprints and the known_hosts entries on that page).
// - bitbucket.org: https://bitbucket.org/site/ssh (the keys), fingerprints from "SSH host key changes",
//   https://bitbucket.org/blog/ssh-host-key-changes (ECDSA, Ed25519; the RSA key since 2023-06-20) and
//   Atlassian's https://confluence.atlassian.com/bbkb/the-authenticity-of-host-bitbucket-org-104-192-143-1-can-t-be-established-1168865389.html (RSA).
// When a forge rotates a key, replace it here (and its fingerprint): VMs get the new file at their
// next `up` (the base profile's step hash changes with it).
#include "machine/forge_keys.hpp"

#include <algorithm>
#include <array>

namespace machine::forge {

namespace {

constexpr std::array<host_key, 9> keys{{
    {"github.com", "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
     "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"},
    {"github.com", "ecdsa-sha2-nistp256",
     "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/"
     "y6v0mKV0U2w0WZ2YB/++Tpockg=",
     "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM"},
    {"github.com", "ssh-rsa",
     "AAAAB3NzaC1yc2EAAAADAQABAAABgQCj7ndNxQowgcQnjshcLrqPEiiphnt+VTTvDP6mHBL9j1aNUkY4Ue1gvwnGLVlOhGeYrnZaMgRK6+"
     "PKCUXaDbC7qtbW8gIkhL7aGCsOr/C56SJMy/BCZfxd1nWzAOxSDPgVsmerOBYfNqltV9/hWCqBywINIR+5dIg6JTJ72pcEpEjcYgXkE2YEFXV1JHnsKgbLWNlhScqb2UmyRkQyytRLtL+"
     "38TGxkxCflmO+5Z8CSSNY7GidjMIZ7Q4zMjA2n1nGrlTDkzwDCsw+wqFPGQA179cnfGWOWRVruj16z6XyvxvjJwbz0wQZ75XK5tKSb7FNyeIEs4TT4jk+"
     "S4dhPeAUC5y+bDYirYgM4GC7uEnztnZyaVWQ7B381AK4Qdrwt51ZqExKbQpTUNn+EjqoTwvqNj4kqx5QUCI0ThS/YkOxJCXmPUWZbhjpCg56i+"
     "2aB6CmK2JGhn57K5mj0MNdBXA4/WnwH6XoPWJzK5Nyu2zB3nAZp+S5hpQs+p1vN1/wsjk=",
     "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"},
    {"gitlab.com", "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf",
     "SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8"},
    {"gitlab.com", "ecdsa-sha2-nistp256",
     "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFSMqzJeV9rUzU4kWitGjeR4PWSa29SPqJ1fVkhtj3Hw9xjLVXVYrU9QlYWrOLXBpQ6KWjbjTDTdDkoohFzgbEY=",
     "SHA256:HbW3g8zUjNSksFbqTiUWPWg2Bq1x8xdGUrliXFzSnUw"},
    {"gitlab.com", "ssh-rsa",
     "AAAAB3NzaC1yc2EAAAADAQABAAABAQCsj2bNKTBSpIYDEGk9KxsGh3mySTRgMtXL583qmBpzeQ+jqCMRgBqB98u3z++J1sKlXHWfM9dyhSevkMwSbhoR8XIq/"
     "U0tCNyokEi/ueaBMCvbcTHhO7FcwzY92WK4Yt0aGROY5qX2UKSeOvuP4D6TPqKF1onrSzH9bx9XUf2lEdWT/ia1NEKjunUqu1xOB/StKDHMoX4/OKyIzuS0q/"
     "T1zOATthvasJFoPrAjkohTyaDUz2LN5JoH839hViyEG82yB+MjcFV5MU3N1l1QL3cVUCh93xSaua1N85qivl+siMkPGbO5xR/En4iEY6K2XPASUEMaieWVNTRCtJ4S8H+9",
     "SHA256:ROQFvPThGrW4RuWLoL9tq9I9zJ42fK4XywyRtbOz/EQ"},
    {"bitbucket.org", "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO",
     "SHA256:ybgmFkzwOSotHTHLJgHO0QN8L0xErw6vd0VhFA9m3SM"},
    {"bitbucket.org", "ecdsa-sha2-nistp256",
     "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPIQmuzMBuKdWeF4+a2sjSSpBK0iqitSQ+5BM9KhpexuGt20JpTVM7u5BDZngncgrqDMbWdxMWWOGtZ9UgbqgZE=",
     "SHA256:FC73VB6C4OQLSCrjEayhMp9UMxS97caD/Yyi2bhW/J0"},
    {"bitbucket.org", "ssh-rsa",
     "AAAAB3NzaC1yc2EAAAADAQABAAABgQDQeJzhupRu0u0cdegZIa8e86EG2qOCsIsD1Xw0xSeiPDlCr7kq97NLmMbpKTX6Esc30NuoqEEHCuc7yWtwp8dI76EEEB1VqY9QJq6vk+"
     "aySyboD5QF61I/1WeTwu+deCbgKMGbUijeXhtfbxSxm6JwGrXrhBdofTsbKRUsrN1WoNgUa8uqN1Vx6WAJw1JHPhglEGGHea6QICwJOAr/6mrui/oB7pkaWKHj3z7d1IC4KWLtY47elvjbaTlkN04Kc/"
     "5LFEirorGYVbt15kAUlqGM65pk6ZBxtaO3+30LVlORZkxOh+LKL/BvbZ/iRNhItLqNyieoQj/uh/7Iv4uyH/cV/0b4WDSd3DptigWq84lJubb9t/DnZlrJazxyDCulTmKdOR7vs9gMTo+uoIrPSb8ScTtvw65+"
     "odKAlBj59dhnVp9zd7QUojOpXlL62Aw56U4oO+FALuevvMjiWeavKhJqlR7i5n9srYcrNV7ttmDw7kf/97P5zauIhxcjX+xHv4M=",
     "SHA256:46OSHA1Rmj8E8ERTC6xkNcmGOw9oFxYr0WF6zWW8l1E"},
}};

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

bool contains(std::string_view haystack, std::string_view needle) { return haystack.find(needle) != std::string_view::npos; }

} // namespace

std::span<const host_key> shipped_keys() { return keys; }

std::string known_hosts_text() {
    std::string out = "# The forges' SSH host keys, shipped by machine (src/core/forge_keys.cpp). Do not edit: machine replaces this file.\n";
    for (const auto& k : keys) {
        out.append(k.host).append(" ").append(k.type).append(" ").append(k.key).append("\n");
    }
    return out;
}

bool is_pinned_forge(std::string_view host) {
    const std::string h = lower(host);
    return std::any_of(keys.begin(), keys.end(), [&](const host_key& k) { return k.host == h; });
}

std::string ssh_host_of(std::string_view url) {
    std::string_view rest;
    bool may_have_port = false;
    for (std::string_view scheme : {"ssh://", "git+ssh://", "ssh+git://"}) {
        if (url.substr(0, scheme.size()) == scheme) {
            rest = url.substr(scheme.size());
            rest = rest.substr(0, rest.find('/'));
            may_have_port = true;
            break;
        }
    }
    if (!may_have_port) {
        // git's scp-like syntax: [user@]host:path, where no '/' comes before the first ':'.
        const auto colon = url.find(':');
        if (colon == std::string_view::npos || url.find("://") != std::string_view::npos) return {};
        const auto slash = url.find('/');
        if (slash != std::string_view::npos && slash < colon) return {};
        rest = url.substr(0, colon);
    }
    if (const auto at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
    if (!rest.empty() && rest.front() == '[') {
        const auto close = rest.find(']');
        return close == std::string_view::npos ? std::string() : lower(rest.substr(1, close - 1));
    }
    if (!may_have_port) return lower(rest);
    return lower(rest.substr(0, rest.find(':')));
}

std::string host_key_problem(std::string_view ssh_stderr, std::string_view host) {
    const std::string shown = host.empty() ? std::string("the server") : std::string(host);
    // OpenSSH, StrictHostKeyChecking=yes: a known host with another key prints the
    // "REMOTE HOST IDENTIFICATION HAS CHANGED" banner ("Host key for X has changed and you have
    // requested strict checking."); an unknown host gets "No <TYPE> host key is known for X and you
    // have requested strict checking."; both end with "Host key verification failed."
    if (contains(ssh_stderr, "REMOTE HOST IDENTIFICATION HAS CHANGED") || contains(ssh_stderr, "has changed and you have requested strict checking")) {
        if (is_pinned_forge(host))
            return "the SSH host key " + shown + " presented did not match the key machine ships for " + shown +
                   ": someone may be intercepting the connection (or " + shown +
                   " changed its key, and a newer machine ships the new one); nothing was cloned";
        return "the SSH host key " + shown + " presented did not match the key your known_hosts has for it: "
               "someone may be intercepting the connection (or its key changed)";
    }
    if (contains(ssh_stderr, "Host key verification failed") || contains(ssh_stderr, "host key is known for")) {
        return "the SSH host key of " + shown + " is not known: machine ships the keys of github.com, gitlab.com and "
               "bitbucket.org and accepts no other key unseen; add " + shown + "'s key to ~/.ssh/known_hosts (on the host, "
               "and in the VM for its clones), or use an https:// URL";
    }
    return {};
}

} // namespace machine::forge
