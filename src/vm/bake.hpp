// The cached base's identity (bake.cpp). Internal to the vm module.
#pragma once

#include <string>

#include "machine/vm.hpp"

namespace machine::vm {

/// The instance name of the cached base for `t`: `machine-base-` and the first 12 hex digits of
/// a hash of everything that shaped its disk (its rendered template, its steps).
std::string base_name(const up_target& t);

} // namespace machine::vm
