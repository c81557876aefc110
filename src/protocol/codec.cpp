// Framing and envelope: the incremental line decoder and the one-line encoder.
#include "machine/protocol.hpp"

#include <array>
#include <stdexcept>

namespace machine::protocol {

namespace {

constexpr std::array<std::pair<errc, std::string_view>, 21> errc_names{{
    {errc::line_too_long, "line_too_long"},
    {errc::invalid_json, "invalid_json"},
    {errc::not_an_object, "not_an_object"},
    {errc::bad_version, "bad_version"},
    {errc::missing_type, "missing_type"},
    {errc::bad_id, "bad_id"},
    {errc::truncated, "truncated"},
    {errc::unknown_type, "unknown_type"},
    {errc::bad_request, "bad_request"},
    {errc::duplicate_id, "duplicate_id"},
    {errc::too_many_requests, "too_many_requests"},
    {errc::not_found, "not_found"},
    {errc::bad_seq, "bad_seq"},
    {errc::no_such_user, "no_such_user"},
    {errc::spawn_failed, "spawn_failed"},
    {errc::too_large, "too_large"},
    {errc::too_many_clients, "too_many_clients"},
    {errc::shutting_down, "shutting_down"},
    {errc::busy, "busy"},
    {errc::unsafe_target, "unsafe_target"},
    {errc::internal, "internal"},
}};

bool is_blank(std::string_view line) {
    for (char c : line)
        if (c != ' ' && c != '\t' && c != '\r') return false;
    return true;
}

// Depth of the deepest array/object, counted outside strings; stops early past `limit`.
// nlohmann's parser is iterative, but dump() and the destructor recurse: a line of a million
// '[' would overflow the stack later, so it is refused before parsing.
std::size_t nesting_depth(std::string_view text, std::size_t limit) {
    std::size_t depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
            continue;
        }
        switch (c) {
        case '"':
            in_string = true;
            break;
        case '[':
        case '{':
            if (++depth > deepest) {
                deepest = depth;
                if (deepest > limit) return deepest;
            }
            break;
        case ']':
        case '}':
            if (depth > 0) --depth;
            break;
        default:
            break;
        }
    }
    return deepest;
}

// The id of an object, when it is usable: a non-negative integer ≤ max_id.
std::optional<std::uint64_t> usable_id(const json& id) {
    if (id.is_number_unsigned()) {
        const auto v = id.get<std::uint64_t>();
        if (v <= max_id) return v;
    } else if (id.is_number_integer()) {
        const auto v = id.get<std::int64_t>();
        if (v >= 0 && static_cast<std::uint64_t>(v) <= max_id) return static_cast<std::uint64_t>(v);
    }
    return std::nullopt;
}

decode_error make_decode_error(errc code, std::string message, std::optional<std::uint64_t> id = {}) {
    return decode_error{code, std::move(message), id};
}

} // namespace

bool is_final(std::string_view t) { return t == type::result || t == type::error; }

std::string_view to_string(errc code) {
    for (const auto& [c, name] : errc_names)
        if (c == code) return name;
    return "internal";
}

std::optional<errc> errc_from_string(std::string_view code) {
    for (const auto& [c, name] : errc_names)
        if (name == code) return c;
    return std::nullopt;
}

std::optional<decoded> decode_line(std::string_view line, const decoder_options& options) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (is_blank(line)) return std::nullopt;
    if (nesting_depth(line, max_nesting) > max_nesting)
        return make_decode_error(errc::invalid_json, "JSON nested deeper than 64 levels");

    json j = json::parse(line.data(), line.data() + line.size(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return make_decode_error(errc::invalid_json, "not valid JSON");
    if (!j.is_object()) return make_decode_error(errc::not_an_object, "a message must be a JSON object");

    // The id first, so every later error can be attributed to the request.
    std::optional<std::uint64_t> id;
    bool id_invalid = false;
    if (const auto it = j.find("id"); it != j.end() && !it->is_null()) {
        id = usable_id(*it);
        id_invalid = !id;
    }

    const auto v = j.find("v");
    if (v == j.end()) return make_decode_error(errc::bad_version, "missing protocol version 'v'", id);
    if (!(v->is_number_integer() && v->get<std::int64_t>() == version)) {
        return make_decode_error(errc::bad_version,
                                 "unsupported protocol version " + v->dump() + " (this side speaks 1)", id);
    }
    const auto t = j.find("type");
    if (t == j.end() || !t->is_string() || t->get_ref<const std::string&>().empty())
        return make_decode_error(errc::missing_type, "missing or empty 'type'", id);
    if (id_invalid)
        return make_decode_error(errc::bad_id, "'id' must be an integer from 0 to 2^53-1");
    if (!id && options.require_id) return make_decode_error(errc::bad_id, "missing 'id'");

    message m;
    m.id = id;
    m.type = t->get<std::string>();
    m.body = std::move(j);
    return decoded(std::move(m));
}

decoder::decoder(decoder_options options) : options_(options) {}

void decoder::line_done(std::string_view line, std::vector<decoded>& out) {
    ++lines_;
    if (auto d = decode_line(line, options_)) out.push_back(std::move(*d));
}

void decoder::feed(std::string_view bytes, std::vector<decoded>& out) {
    const std::size_t max = options_.max_line;
    while (!bytes.empty()) {
        const auto nl = bytes.find('\n');
        if (discarding_) {
            if (nl == std::string_view::npos) return;  // still inside the overlong line
            discarding_ = false;
            bytes.remove_prefix(nl + 1);
            continue;
        }
        if (nl == std::string_view::npos) {
            if (partial_.size() + bytes.size() > max) {
                // Reported now, not at the newline: a peer that never sends one still hears why.
                ++lines_;
                out.push_back(make_decode_error(errc::line_too_long, "line longer than " +
                                                                         std::to_string(max) + " bytes"));
                partial_.clear();
                partial_.shrink_to_fit();
                discarding_ = true;
                return;
            }
            partial_.append(bytes);
            return;
        }
        const std::string_view piece = bytes.substr(0, nl);
        bytes.remove_prefix(nl + 1);
        if (partial_.size() + piece.size() > max) {
            ++lines_;
            out.push_back(make_decode_error(errc::line_too_long,
                                            "line longer than " + std::to_string(max) + " bytes"));
            partial_.clear();
            partial_.shrink_to_fit();
        } else if (partial_.empty()) {
            line_done(piece, out);  // the common case: no copy
        } else {
            partial_.append(piece);
            line_done(partial_, out);
            partial_.clear();
            // Keep a small buffer for the next partial line, give back a big one.
            if (partial_.capacity() > (64u << 10)) partial_.shrink_to_fit();
        }
    }
}

std::vector<decoded> decoder::feed(std::string_view bytes) {
    std::vector<decoded> out;
    feed(bytes, out);
    return out;
}

void decoder::finish(std::vector<decoded>& out) {
    if (!partial_.empty() && !discarding_) {
        ++lines_;
        out.push_back(make_decode_error(errc::truncated, "the stream ended in the middle of a line (" +
                                                             std::to_string(partial_.size()) + " bytes)"));
    }
    partial_.clear();
    partial_.shrink_to_fit();
    discarding_ = false;
}

std::string encode(const json& message) {
    std::string line = message.dump(-1, ' ', false, json::error_handler_t::replace);
    if (line.size() > max_line_bytes)
        throw std::length_error("protocol message of " + std::to_string(line.size()) +
                                " bytes exceeds the line limit");
    line.push_back('\n');
    return line;
}

json make_envelope(std::optional<std::uint64_t> id, std::string_view t) {
    json j = json::object();
    j["v"] = version;
    if (id) j["id"] = *id;
    else j["id"] = nullptr;
    j["type"] = t;
    return j;
}

json make_result(std::optional<std::uint64_t> id, const json& fields) {
    json j = make_envelope(id, type::result);
    if (fields.is_object())
        for (const auto& [k, v] : fields.items()) j[k] = v;
    return j;
}

json make_error(std::optional<std::uint64_t> id, errc code, std::string_view message) {
    json j = make_envelope(id, type::error);
    j["code"] = to_string(code);
    j["message"] = message;
    return j;
}

json make_error(const decode_error& e) { return make_error(e.id, e.code, e.message); }

} // namespace machine::protocol
