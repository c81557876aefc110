// Small POSIX file helpers (no iostreams: they would double the static binary).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace machine::agent {

/// The whole file, or nullopt when it cannot be read.
std::optional<std::string> read_file(const std::string& path);
/// write(2) until everything is written; false on error (errno set).
bool write_all(int fd, std::string_view data);
/// Trims spaces and newlines at both ends.
std::string trim(std::string_view s);
/// errno as text: "No such file or directory".
std::string errno_text(int err);
/// A connected, close-on-exec Unix stream socket to `path`; -1 with `error` set ("cannot
/// connect to PATH: REASON") when nobody listens there.
int connect_unix(const std::string& path, std::string& error);

} // namespace machine::agent
