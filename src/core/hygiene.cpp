#include "machine/hygiene.hpp"
#include "machine/platform.hpp"

#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace machine::hygiene {

std::string disable_core_dumps() {
    std::string failed;
    const rlimit none{0, 0};
    if (::setrlimit(RLIMIT_CORE, &none) != 0) failed = std::string("setrlimit(RLIMIT_CORE, 0): ") + std::strerror(errno);
    if (const std::string attach = platform::forbid_attach(); !attach.empty())
        failed += (failed.empty() ? "" : "; ") + attach;
    return failed;
}

} // namespace machine::hygiene
