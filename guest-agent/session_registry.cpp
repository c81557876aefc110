#include "session_registry.hpp"

#include <algorithm>
#include <exception>

#include "log.hpp"
#include "users.hpp"

namespace machine::agent {

namespace proto = machine::protocol;

std::optional<std::pair<proto::errc, std::string>> session_registry::add(const void* owner, uid_t uid,
                                                                         const proto::session_register_request& q) {
    if (const auto it = sessions_.find(q.name); it != sessions_.end())
        return std::pair{proto::errc::busy, "a session named '" + q.name + "' is already registered (pid " +
                                                std::to_string(it->second.pid) + ")"};
    if (sessions_.size() >= proto::max_sessions)
        return std::pair{proto::errc::busy, std::to_string(proto::max_sessions) + " sessions are registered already"};
    live_session s;
    s.name = q.name;
    s.agent = q.agent;
    const auto user = find_uid(uid);
    s.user = user ? user->name : std::to_string(uid);
    s.pid = q.pid;
    s.tty = q.tty;
    s.started_at = std::chrono::system_clock::now() - std::chrono::milliseconds(q.running_ms);
    s.owner = owner;
    log::info("session " + s.name + " (" + s.agent + ") " + (q.resumed ? "registered again" : "started") + " by " +
              s.user + ", pid " + std::to_string(s.pid));
    // Registered again after an agent restart: its session.started is already in the journal.
    if (!q.resumed) {
        proto::json fields = {{"name", s.name}, {"agent", s.agent}, {"user", s.user}, {"pid", s.pid}};
        if (!s.tty.empty()) fields["tty"] = s.tty;
        emit_("session.started", fields);
    }
    sessions_.emplace(s.name, std::move(s));
    return std::nullopt;
}

void session_registry::end(const std::string& name, const proto::session_end_request& q) {
    const auto it = sessions_.find(name);
    if (it == sessions_.end()) return;
    const live_session s = std::move(it->second);
    sessions_.erase(it);
    proto::json fields = {{"name", s.name}, {"agent", s.agent}, {"user", s.user}, {"pid", s.pid}};
    if (q.signal) {
        fields["reason"] = "signal";
        fields["signal"] = *q.signal;
    } else {
        fields["reason"] = "exit";
        fields["exit_code"] = q.exit_code.value_or(-1);
    }
    fields["duration_ms"] = q.duration_ms;
    log::info("session " + s.name + " ended: " +
              (q.signal ? "signal " + std::to_string(*q.signal) : "exit " + std::to_string(q.exit_code.value_or(-1))));
    emit_("session.ended", fields);
}

void session_registry::owner_gone(const void* owner) {
    for (auto it = sessions_.begin(); it != sessions_.end();) {
        if (it->second.owner != owner) {
            ++it;
            continue;
        }
        const live_session s = std::move(it->second);
        it = sessions_.erase(it);
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now() -
                                                                              s.started_at);
        log::warning("session " + s.name + " lost: its wrapper (pid " + std::to_string(s.pid) +
                     ") closed its connection without reporting an end");
        try {
            emit_("session.ended", proto::json{{"name", s.name},
                                               {"agent", s.agent},
                                               {"user", s.user},
                                               {"pid", s.pid},
                                               {"reason", "lost"},
                                               {"duration_ms", std::max<std::int64_t>(0, ms.count())}});
        } catch (const std::exception& e) {
            // Called as a connection ends: a full disk must not take the connection's cleanup with it.
            log::error(std::string("journal: ") + e.what());
        }
    }
}

const live_session* session_registry::find(const std::string& name) const {
    const auto it = sessions_.find(name);
    return it == sessions_.end() ? nullptr : &it->second;
}

std::vector<live_session> session_registry::list() const {
    std::vector<live_session> out;
    out.reserve(sessions_.size());
    for (const auto& [name, s] : sessions_) out.push_back(s);
    return out;
}

} // namespace machine::agent
