// The agent's log: one line per message on stderr, with a syslog priority prefix that
// journald understands ("<6>agent listening on ..."). No logging library: the agent is a
// small static binary.
#pragma once

#include <string_view>

namespace machine::agent::log {

enum class level : int { error = 3, warning = 4, info = 6, debug = 7 };

/// Messages above this level are dropped (default: info; --verbose: debug).
void set_level(level max);
bool enabled(level l);
void write(level l, std::string_view message);

inline void error(std::string_view m) { write(level::error, m); }
inline void warning(std::string_view m) { write(level::warning, m); }
inline void info(std::string_view m) { write(level::info, m); }
inline void debug(std::string_view m) {
    if (enabled(level::debug)) write(level::debug, m);
}

} // namespace machine::agent::log
