// The agent proxy's policy, pure and sans-io: which client messages reach the real agent, what
// the client sees of the answers, and how much of it the log says. No sockets here; proxy.cpp
// and probe.cpp drive it.
//
// Messages are handled as "bodies": the bytes after the uint32 length (type byte + payload).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "machine/text.hpp"

namespace machine::agent_proxy {

/// OpenSSH's AGENT_MAX_LEN: the largest body either side may send.
inline constexpr std::size_t max_message_length = 256 * 1024;

/// Message numbers used here (draft-miller-ssh-agent §§ 3-6, plus the legacy SSH1 ones).
namespace msg {
inline constexpr std::uint8_t failure = 5;
inline constexpr std::uint8_t success = 6;
inline constexpr std::uint8_t request_identities = 11;
inline constexpr std::uint8_t identities_answer = 12;
inline constexpr std::uint8_t sign_request = 13;
inline constexpr std::uint8_t sign_response = 14;
inline constexpr std::uint8_t extension = 27;
inline constexpr std::uint8_t extension_failure = 28;
} // namespace msg

inline constexpr std::string_view session_bind_extension = "session-bind@openssh.com";

using allow_list = std::set<std::string, std::less<>>;

/// A human name for a message type, for logs ("add identity", "lock", "type 200").
std::string type_name(std::uint8_t type);

/// The uint32 of a frame header (big endian); `header` holds at least 4 bytes.
std::uint32_t frame_length(const unsigned char* header);
/// A length is acceptable when 1 <= length <= max_message_length.
bool acceptable_length(std::uint32_t length);
/// `body` with its uint32 length in front.
std::string frame(std::string_view body);
/// The framed SSH_AGENT_FAILURE message.
std::string failure_frame();

enum class action {
    forward, ///< send to the real agent, then pass its answer through check_answer()
    refuse,  ///< answer SSH_AGENT_FAILURE without contacting the real agent
    close,   ///< malformed: close the client's connection
};

struct decision {
    action what = action::close;
    std::uint8_t type = 0;   ///< the message type (0 for an empty body)
    std::string reason;      ///< why, for the log; never contains data to be signed
    std::string fingerprint; ///< for sign requests: the key asked for
};

/// Decides what to do with one client message body.
decision inspect_request(std::string_view body, const allow_list& allowed);

struct identity {
    std::string key_blob;
    std::string comment;
};

/// Parses an SSH_AGENT_IDENTITIES_ANSWER body strictly (count, strings, no trailing bytes);
/// nullopt when malformed. Never allocates more than the input's size.
std::optional<std::vector<identity>> parse_identities(std::string_view body);
std::string encode_identities(const std::vector<identity>& ids);

/// What the client gets for the real agent's answer `answer` to a forwarded request of type
/// `request_type`: a body to send, or nullopt when the answer is malformed or unexpected
/// (then the client gets SSH_AGENT_FAILURE). Identities answers are filtered here.
/// `kept`/`total` (optional) report how many identities survived the filter.
std::optional<std::string> check_answer(std::uint8_t request_type, std::string_view answer,
                                        const allow_list& allowed, std::size_t* kept = nullptr,
                                        std::size_t* total = nullptr);

/// Log lines a client can cause at will go through one of these (machine/text.hpp): the first
/// as it is, then a summary at most once a second.
using log_limiter = text::log_limiter;

} // namespace machine::agent_proxy
