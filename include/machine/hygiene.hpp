// What the machine process does to itself before it may hold a secret in memory.
#pragma once

#include <string>

namespace machine::hygiene {

/// No core dump of this process, ever: RLIMIT_CORE 0 (soft and hard, so nothing in this
/// process raises it again; children inherit it, the secret providers we run among them), and
/// not dumpable (PR_SET_DUMPABLE 0: no core even through a core_pattern pipe, and no other
/// unprivileged process of the user may ptrace it or read its /proc/PID/mem or environ). A child
/// is dumpable again after it execs a program, as the kernel does for any non-setuid exec.
/// Returns what failed (empty on success); the caller says it and goes on.
std::string disable_core_dumps();

} // namespace machine::hygiene
