// What `provision` remembers between requests: for each step name, the hash of the definition
// that last succeeded and when (PROTOCOL.md §4 `provision`).
//
// File (default /var/lib/machine-agent/steps.json): one JSON object mapping step name to
// {"hash": ..., "at": RFC 3339}. Every change rewrites it atomically (temporary file in the same
// directory, fsync, rename, fsync of the directory), so a crash leaves the old or the new file,
// never half of one. The file is the truth: it is read again at the start of every provision, so
// deleting it (or an entry) makes those steps run again.
//
// Not thread-safe; the agent uses it from its one event-loop thread.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace machine::agent {

class steps_state {
public:
    struct record {
        std::string hash;
        std::string at;  ///< RFC 3339 UTC, when the step last succeeded
    };

    explicit steps_state(std::string path) : path_(std::move(path)) {}

    /// Reads the file, replacing what is in memory. Never throws: a missing file means nothing
    /// is recorded; an unreadable or corrupt one too, with a warning in the agent's log.
    void load();

    /// The record for `name`, or nullptr.
    const record* find(std::string_view name) const;

    /// Whether `name` last succeeded with exactly `hash`: a provision skips it ("unchanged").
    bool unchanged(std::string_view name, std::string_view hash) const {
        const record* rec = find(name);
        return rec && rec->hash == hash;
    }

    /// Records a success and writes the file. On failure returns strerror's text ("No space left
    /// on device") and `name` is left unrecorded, in memory and (as far as we know) on disk.
    std::optional<std::string> record_success(const std::string& name, std::string hash, std::string at);

    /// Forgets `name` (a step that failed must run again) and writes the file. When the write
    /// fails, returns the error and remembers the removal in memory: a later load() still
    /// forgets that name, so a stale hash on disk cannot skip the step while this agent runs.
    std::optional<std::string> forget(const std::string& name);

    const std::string& path() const noexcept { return path_; }
    std::size_t size() const noexcept { return steps_.size(); }

private:
    std::optional<std::string> save();

    std::string path_;
    std::map<std::string, record, std::less<>> steps_;
    std::set<std::string, std::less<>> unsaved_removals_;
};

} // namespace machine::agent
