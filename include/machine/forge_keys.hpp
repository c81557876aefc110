// The SSH host keys of the public forges (github.com, gitlab.com, bitbucket.org) that machine
// ships, so that git over SSH checks them instead of trusting whatever key a first connection
// presents. One table (src/core/forge_keys.cpp) serves both places that need them: the base
// profile writes them to the VM's /etc/ssh/ssh_known_hosts (the `${forge.known_hosts}`
// placeholder), and the host-side `git ls-remote` check reads them from a file machine writes.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace machine::forge {

struct host_key {
    std::string_view host;         ///< "github.com"
    std::string_view type;         ///< "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    std::string_view key;          ///< the base64 public key blob
    std::string_view fingerprint;  ///< "SHA256:...", as the forge publishes it
};

/// Every key machine ships, every type each forge publishes.
std::span<const host_key> shipped_keys();

/// shipped_keys() as OpenSSH known_hosts lines ("host type key\n" each), with a comment line first.
std::string known_hosts_text();

/// True when `host` is one of the forges whose keys machine ships.
bool is_pinned_forge(std::string_view host);

/// The host a git URL reaches over SSH ("git@github.com:o/r.git", "ssh://git@gitlab.com:22/o/r"),
/// lower-cased; empty for other transports (https://, file paths).
std::string ssh_host_of(std::string_view url);

/// When `ssh_stderr` (OpenSSH's output on a failed connection) says the host key was refused,
/// the plain reason for `host`: a forge's key that differs from the one machine ships, or a
/// host whose key is unknown. Empty when the failure was something else.
std::string host_key_problem(std::string_view ssh_stderr, std::string_view host);

} // namespace machine::forge
