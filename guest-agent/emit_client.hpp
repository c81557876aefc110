// The `emit` subcommand: append one event through a running agent.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "machine/protocol.hpp"

namespace machine::agent {

/// key=value (a string) and key:=json (any JSON value) into an object; nullopt + error.
std::optional<protocol::json> parse_emit_fields(const std::vector<std::string>& args, std::string& error);

/// Sends the event and waits for its acknowledgement. Returns the exit status (0 or 1),
/// having printed any error on stderr.
int emit_command(const std::string& socket_path, const std::string& event, const std::vector<std::string>& args);

} // namespace machine::agent
