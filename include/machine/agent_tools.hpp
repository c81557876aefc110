// The tools `machine login` keeps a credential for: one list for the configuration, which checks
// a project's `agent_auth = ["claude", "gh"]` against it, and for the credentials store
// (include/machine/credentials.hpp), which says what each tool's credential looks like.
#pragma once

#include <algorithm>
#include <array>
#include <string_view>

namespace machine {

inline constexpr std::array<std::string_view, 3> agent_tools{"claude", "codex", "gh"};

inline bool is_agent_tool(std::string_view name) {
    return std::find(agent_tools.begin(), agent_tools.end(), name) != agent_tools.end();
}

/// In a VM, a tool's credential is one more secret set (guest-agent/PROTOCOL.md §8):
/// `machine-cred-<tool>-<fingerprint>`, a name a project's own sets may not take (config
/// refuses it), so `use op_env` never mistakes one for the other.
inline constexpr std::string_view credential_set_prefix = "machine-cred-";

inline bool is_credential_set_name(std::string_view set) { return set.starts_with(credential_set_prefix); }

} // namespace machine
