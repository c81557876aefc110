// What the workflows' task groups do with a task that ended with an exception: a debug line
// (the task itself reports what the user must see, as events).
#pragma once

#include <exception>

#include <spdlog/spdlog.h>

namespace machine::vm {

inline void log_task_failure(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        spdlog::debug("task ended: {}", x.what());
    } catch (...) {
        spdlog::debug("task ended with an unknown exception");
    }
}

} // namespace machine::vm
