// The live agent sessions (PROTOCOL.md §4 `session.*`): who registered which session, listing
// them, and ending them (session.end, or the wrapper's connection closing: `lost`). Each start and
// end is a journal event.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "machine/protocol.hpp"

namespace machine::agent {

// A live agent session: registered by its wrapper on `owner`, a connection the wrapper keeps
// open; the registration ends with session.end or that connection.
struct live_session {
    std::string name;
    std::string agent;
    std::string user;
    std::int64_t pid = 0;
    std::string tty;
    std::chrono::system_clock::time_point started_at;
    const void* owner = nullptr;  ///< the connection, only compared
};

class session_registry {
public:
    /// Appends an event to the journal; may throw on I/O failure.
    using emit_fn = std::function<void(std::string_view event, const protocol::json& fields)>;
    explicit session_registry(emit_fn emit) : emit_(std::move(emit)) {}

    /// An error (code, message) when the registration is refused. `uid`: the peer's credentials.
    std::optional<std::pair<protocol::errc, std::string>> add(const void* owner, uid_t uid,
                                                              const protocol::session_register_request& q);
    void end(const std::string& name, const protocol::session_end_request& q);
    /// The connection is gone: what it registered ends as `lost`.
    void owner_gone(const void* owner);
    const live_session* find(const std::string& name) const;
    std::vector<live_session> list() const;
    std::size_t size() const { return sessions_.size(); }

private:
    emit_fn emit_;
    std::map<std::string, live_session> sessions_;  // by name
};

} // namespace machine::agent
