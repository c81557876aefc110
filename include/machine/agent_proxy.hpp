// A filtering SSH-agent proxy: a VM's forwarded agent sees only the keys a project allows.
//
// The proxy sits between the VM's forwarded agent connections (a Unix socket it creates) and
// the user's real agent (SSH_AUTH_SOCK). It lists only the allowed identities, forwards sign
// requests only for allowed keys and the `session-bind@openssh.com` extension, and answers
// SSH_AGENT_FAILURE to everything else (add, remove, lock, smartcards, other extensions...)
// without contacting the real agent. Both sides are treated as hostile: bad framing closes the
// client's connection, a bad or late answer from the real agent becomes SSH_AGENT_FAILURE.
//
// Protocol: draft-miller-ssh-agent. Fingerprints are OpenSSH's, as `ssh-add -l -E sha256`
// prints them ("SHA256:" + unpadded base64 of the SHA-256 of the public key blob).
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace machine::agent_proxy {

/// "SHA256:<base64 without padding>" of an SSH public key blob (the wire form, not the text).
std::string fingerprint(std::string_view key_blob);

struct options {
    /// The socket to create. Its directory must exist, belong to this user and be private
    /// (no group/other permissions, e.g. 0700): the socket is made 0600 only after bind().
    /// A stale socket there is replaced; a live one (someone accepts) or a non-socket is an error.
    std::filesystem::path listen;
    /// The user's agent (SSH_AUTH_SOCK). Connected once per client connection, when the
    /// client first sends something worth forwarding.
    std::filesystem::path upstream;
    /// Allowed fingerprints. Empty means no key at all (the caller starts no proxy when a
    /// project has no filter).
    std::vector<std::string> allowed;
    /// Budget for one exchange with the real agent (connect + request + answer). When it runs
    /// out the client gets SSH_AGENT_FAILURE and that upstream connection is dropped.
    std::chrono::milliseconds upstream_timeout{10000};
    /// Polled every `idle_check` while no client is connected; the proxy exits when it returns
    /// false. Without it the proxy serves forever. Called on the proxy's thread.
    std::function<bool()> still_wanted;
    std::chrono::milliseconds idle_check{30000};
};

/// Serves until still_wanted() says no (or forever without it). Blocking; runs its own
/// io_context on the calling thread and installs no signal handlers. Removes the socket on
/// exit. Returns an exit code: 0 after a normal stop, 1 when the socket cannot be set up
/// (the reason is logged through spdlog).
int run(const options& opt);

/// What an agent offers, for clear messages in `machine up` / `machine doctor`.
struct agent_probe {
    enum class state {
        not_set,     ///< no socket path (SSH_AUTH_SOCK unset or empty)
        not_running, ///< no socket there, or nobody accepts on it
        no_keys,     ///< an agent answered with an empty list (or it is locked)
        ok,          ///< an agent answered with at least one identity
        broken,      ///< something answers badly, refuses to list, or not in time
    };
    state result = state::broken;
    std::vector<std::string> fingerprints; ///< identities offered, in the agent's order
    std::vector<std::string> comments;     ///< their comments, same order (agent-supplied text)
    std::string detail;                    ///< one line for humans, e.g. "connection refused"
};

/// Asks the agent at `socket` for its identities. Synchronous and bounded: a hung agent gives
/// `broken` after `timeout`. Never throws for anything the agent does.
agent_probe probe(const std::filesystem::path& socket, std::chrono::milliseconds timeout);

/// "not_set", "not_running", "no_keys", "ok", "broken".
std::string_view to_string(agent_probe::state s);

} // namespace machine::agent_proxy
