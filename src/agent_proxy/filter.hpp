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

/// Log lines a client can cause at will (a refusal per message, a failure per message while the
/// agent is away, a close per connection) go through one of these: the first is logged as it is,
/// the rest are counted and summarised at most once per `interval`, e.g.
///   "refused 48213 requests in the last 1.0 s (add identity x48213)".
/// A guest sending as fast as it can then costs one line a second, not one line a message.
/// Sans-io: the caller passes the time and logs whatever line comes back, with its own prefix.
class log_limiter {
public:
    using clock = std::chrono::steady_clock;

    /// `verb` and `noun` make the summary: "<verb> <n> <noun>s in the last <t> s (...)".
    log_limiter(std::string verb, std::string noun, clock::duration interval = std::chrono::seconds(1));

    /// Counts one event of `kind` ("add identity"): the line to log now, if any. That is
    /// `detail` when it is the only event since the last line and a line is due, a summary of
    /// everything counted since when several are, and nothing before `interval` has passed.
    std::optional<std::string> note(std::string_view kind, std::string_view detail, clock::time_point now);

    /// The summary of the events counted but not yet logged (for when the client leaves), or
    /// nullopt when there are none.
    std::optional<std::string> flush(clock::time_point now);

private:
    std::string summary(clock::time_point now) const;
    void reset(clock::time_point now);

    // A summary names at most this many kinds; the rest are "other". Kinds come from the
    // client (a message type, a problem's text), so the line stays short whatever it sends.
    static constexpr std::size_t max_kinds = 8;

    std::string verb_, noun_;
    clock::duration interval_;
    std::optional<clock::time_point> last_line_;
    std::uint64_t pending_ = 0;
    std::vector<std::pair<std::string, std::uint64_t>> kinds_; // in order of first appearance
    std::uint64_t other_ = 0;
};

} // namespace machine::agent_proxy
