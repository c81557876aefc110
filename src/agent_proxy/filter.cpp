#include "filter.hpp"

#include <algorithm>
#include <cstdio>

#include "machine/agent_proxy.hpp"
#include "machine/protocol.hpp"
#include "machine/sha256.hpp"

namespace machine::agent_proxy {

namespace {

// A bounds-checked cursor over one message body. Every read fails instead of running past
// the end, so a length field can never make us read (or allocate) more than we were given.
class reader {
public:
    explicit reader(std::string_view in) : in_(in) {}

    bool u8(std::uint8_t& v) {
        if (in_.size() - pos_ < 1) return false;
        v = static_cast<std::uint8_t>(in_[pos_++]);
        return true;
    }
    bool u32(std::uint32_t& v) {
        if (in_.size() - pos_ < 4) return false;
        v = frame_length(reinterpret_cast<const unsigned char*>(in_.data() + pos_));
        pos_ += 4;
        return true;
    }
    bool string(std::string_view& v) {
        std::uint32_t n = 0;
        if (!u32(n) || n > in_.size() - pos_) return false;
        v = in_.substr(pos_, n);
        pos_ += n;
        return true;
    }
    std::size_t remaining() const { return in_.size() - pos_; }
    bool done() const { return pos_ == in_.size(); }

private:
    std::string_view in_;
    std::size_t pos_ = 0;
};

void put_u32(std::string& out, std::uint32_t v) {
    out += static_cast<char>((v >> 24) & 0xFF);
    out += static_cast<char>((v >> 16) & 0xFF);
    out += static_cast<char>((v >> 8) & 0xFF);
    out += static_cast<char>(v & 0xFF);
}

void put_string(std::string& out, std::string_view s) {
    put_u32(out, static_cast<std::uint32_t>(s.size()));
    out += s;
}

// Client-chosen text (an extension name) made safe and short for a log line.
std::string printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7F) ? c : '?';
    if (s.size() > 64) out += "...";
    return out;
}

decision make(action what, std::uint8_t type, std::string reason, std::string fp = {}) {
    return decision{what, type, std::move(reason), std::move(fp)};
}

// session-bind@openssh.com's payload (OpenSSH PROTOCOL.agent §1): string hostkey,
// string session identifier, string signature, bool is_forwarding.
bool valid_session_bind(reader& r) {
    std::string_view hostkey, session_id, signature;
    std::uint8_t forwarding = 0;
    return r.string(hostkey) && r.string(session_id) && r.string(signature) && r.u8(forwarding) &&
           forwarding <= 1 && r.done();
}

} // namespace

std::string fingerprint(std::string_view key_blob) {
    sha256 h;
    h.update(key_blob);
    const auto d = h.digest();
    std::string b64 =
        protocol::base64_encode(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
    while (!b64.empty() && b64.back() == '=') b64.pop_back();
    return "SHA256:" + b64;
}

std::string type_name(std::uint8_t type) {
    switch (type) {
    case 1: return "SSH1 request RSA identities";
    case 3: return "SSH1 RSA challenge";
    case 7: return "SSH1 add RSA identity";
    case 8: return "SSH1 remove RSA identity";
    case 9: return "SSH1 remove all RSA identities";
    case 24: return "SSH1 add RSA identity (constrained)";
    case msg::failure: return "failure";
    case msg::success: return "success";
    case msg::request_identities: return "request identities";
    case msg::identities_answer: return "identities answer";
    case msg::sign_request: return "sign request";
    case msg::sign_response: return "sign response";
    case 17: return "add identity";
    case 18: return "remove identity";
    case 19: return "remove all identities";
    case 20: return "add smartcard key";
    case 21: return "remove smartcard key";
    case 22: return "lock";
    case 23: return "unlock";
    case 25: return "add identity (constrained)";
    case 26: return "add smartcard key (constrained)";
    case msg::extension: return "extension";
    case msg::extension_failure: return "extension failure";
    default: return "type " + std::to_string(type);
    }
}

std::uint32_t frame_length(const unsigned char* h) {
    return (std::uint32_t(h[0]) << 24) | (std::uint32_t(h[1]) << 16) | (std::uint32_t(h[2]) << 8) |
           std::uint32_t(h[3]);
}

bool acceptable_length(std::uint32_t length) { return length >= 1 && length <= max_message_length; }

std::string frame(std::string_view body) {
    std::string out;
    out.reserve(4 + body.size());
    put_string(out, body);
    return out;
}

std::string failure_frame() { return std::string("\0\0\0\1\5", 5); }

decision inspect_request(std::string_view body, const allow_list& allowed) {
    reader r(body);
    std::uint8_t type = 0;
    if (!r.u8(type)) return make(action::close, 0, "empty message");
    const std::string name = type_name(type);

    switch (type) {
    case msg::request_identities:
        if (!r.done()) return make(action::close, type, name + " with trailing bytes");
        return make(action::forward, type, name);

    case msg::sign_request: {
        std::string_view key, data;
        std::uint32_t flags = 0;
        if (!r.string(key) || !r.string(data) || !r.u32(flags))
            return make(action::close, type, "truncated " + name);
        if (!r.done()) return make(action::close, type, name + " with trailing bytes");
        auto fp = fingerprint(key);
        // (The reason is built before `fp` is moved: argument evaluation order is unspecified.)
        if (!allowed.contains(fp)) {
            auto reason = name + " for " + fp + " (not an allowed key)";
            return make(action::refuse, type, std::move(reason), std::move(fp));
        }
        auto reason = name + " for " + fp;
        return make(action::forward, type, std::move(reason), std::move(fp));
    }

    case msg::extension: {
        std::string_view ext;
        if (!r.string(ext)) return make(action::close, type, "truncated " + name);
        if (ext != session_bind_extension)
            return make(action::refuse, type, name + " '" + printable(ext) + "' (not forwarded)");
        // A malformed session-bind is refused rather than fatal: ssh treats a failed bind as
        // "agent does not support it" and carries on.
        if (!valid_session_bind(r))
            return make(action::refuse, type, name + " '" + std::string(session_bind_extension) + "' malformed");
        return make(action::forward, type, name + " '" + std::string(session_bind_extension) + "'");
    }

    default:
        // Add/remove/lock/unlock/smartcard, SSH1, answers sent the wrong way, unknown types.
        return make(action::refuse, type, name + " (not forwarded)");
    }
}

std::optional<std::vector<identity>> parse_identities(std::string_view body) {
    reader r(body);
    std::uint8_t type = 0;
    std::uint32_t count = 0;
    if (!r.u8(type) || type != msg::identities_answer || !r.u32(count)) return std::nullopt;
    // Each identity takes at least 8 bytes (two empty strings): a count the data cannot hold
    // is rejected before anything is reserved.
    if (count > r.remaining() / 8) return std::nullopt;
    std::vector<identity> ids;
    ids.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        std::string_view blob, comment;
        if (!r.string(blob) || !r.string(comment)) return std::nullopt;
        ids.push_back({std::string(blob), std::string(comment)});
    }
    if (!r.done()) return std::nullopt;
    return ids;
}

std::string encode_identities(const std::vector<identity>& ids) {
    std::string out(1, static_cast<char>(msg::identities_answer));
    put_u32(out, static_cast<std::uint32_t>(ids.size()));
    for (const auto& id : ids) {
        put_string(out, id.key_blob);
        put_string(out, id.comment);
    }
    return out;
}

std::optional<std::string> check_answer(std::uint8_t request_type, std::string_view answer,
                                        const allow_list& allowed, std::size_t* kept, std::size_t* total) {
    if (answer.empty()) return std::nullopt;
    const auto type = static_cast<std::uint8_t>(answer[0]);
    // A refusal is a refusal whatever follows it; the client gets the plain form.
    if (type == msg::failure) return std::string(1, static_cast<char>(msg::failure));

    switch (request_type) {
    case msg::request_identities: {
        auto ids = parse_identities(answer);
        if (!ids) return std::nullopt;
        std::vector<identity> shown;
        for (auto& id : *ids)
            if (allowed.contains(fingerprint(id.key_blob))) shown.push_back(std::move(id));
        if (kept) *kept = shown.size();
        if (total) *total = ids->size();
        return encode_identities(shown);
    }
    case msg::sign_request: {
        reader r(answer.substr(1));
        std::string_view signature;
        if (type != msg::sign_response || !r.string(signature) || !r.done()) return std::nullopt;
        return std::string(answer);
    }
    case msg::extension:
        if ((type == msg::success || type == msg::extension_failure) && answer.size() == 1)
            return std::string(answer);
        return std::nullopt;
    default:
        return std::nullopt; // nothing else is ever forwarded
    }
}

} // namespace machine::agent_proxy
