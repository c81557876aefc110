#include "machine/hygiene.hpp"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace machine::hygiene {

std::string disable_core_dumps() {
    std::string failed;
    const rlimit none{0, 0};
    if (::setrlimit(RLIMIT_CORE, &none) != 0) failed = std::string("setrlimit(RLIMIT_CORE, 0): ") + std::strerror(errno);
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        failed += (failed.empty() ? "" : "; ") + std::string("prctl(PR_SET_DUMPABLE, 0): ") + std::strerror(errno);
    return failed;
}

} // namespace machine::hygiene
