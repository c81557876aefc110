// libFuzzer target for the guest protocol codec (machine::protocol).
//
// Input: byte 0 picks the decoder options (small line limits exercise line_too_long), byte 1
// seeds the chunking, the rest is the stream. Checked on every input:
//  - no crash, no sanitizer report, the decoder never holds more than max_line bytes;
//  - feeding it all at once and in pseudo-random chunks gives identical results;
//  - every decoded message re-encodes to one line that decodes to the same object;
//  - the typed parsers accept or reject any decoded message without crashing;
//  - base64 round-trips the raw bytes, and decoding arbitrary text never crashes.
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "machine/protocol.hpp"

namespace proto = machine::protocol;

namespace {

[[noreturn]] void fail(const char* why) {
    __builtin_trap();
    (void)why;
}

std::string render(const proto::decoded& d) {
    if (const auto* e = std::get_if<proto::decode_error>(&d)) {
        return "E" + std::string(proto::to_string(e->code)) + ":" + (e->id ? std::to_string(*e->id) : "-") + ":" +
               e->message;
    }
    const auto& m = std::get<proto::message>(d);
    return "M" + m.type + ":" + (m.id ? std::to_string(*m.id) : "-") + ":" +
           m.body.dump(-1, ' ', false, proto::json::error_handler_t::replace);
}

void exercise_parsers(const proto::json& body) {
    (void)proto::parse_hello_request(body);
    (void)proto::parse_hello_result(body);
    (void)proto::parse_run_request(body);
    (void)proto::parse_output(body);
    (void)proto::parse_run_result(body);
    (void)proto::parse_cancel_request(body);
    (void)proto::parse_health_result(body);
    (void)proto::parse_subscribe_request(body);
    (void)proto::parse_event(body);
    (void)proto::parse_gap(body);
    (void)proto::parse_emit_request(body);
    (void)proto::parse_error(body);
    (void)proto::parse_provision_request(body);
    (void)proto::parse_provision_result(body);
    (void)proto::parse_session_list_result(body);
    (void)proto::parse_secrets_clear_request(body);
    (void)proto::parse_secrets_clear_result(body);
    (void)proto::parse_secrets_list_result(body);
    (void)proto::parse_secrets_render_result(body);
    (void)proto::parse_secrets_discover_result(body);
    auto render = proto::parse_secrets_render_request(body);
    if (render) proto::wipe_secrets(*render);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    proto::decoder_options opt;
    opt.require_id = (data[0] & 0x40) != 0;
    opt.max_line = (data[0] & 0x80) ? proto::max_line_bytes : 8 + (data[0] & 0x3f) * 4;
    const std::string_view input(reinterpret_cast<const char*>(data + 2), size - 2);

    proto::decoder whole(opt);
    std::vector<proto::decoded> a;
    whole.feed(input, a);
    if (whole.buffered() > opt.max_line) fail("buffered beyond the line limit");
    whole.finish(a);

    proto::decoder chunked(opt);
    std::vector<proto::decoded> b;
    std::uint32_t x = data[1] * 2654435761u + 1;
    for (std::size_t pos = 0; pos < input.size();) {
        x = x * 1103515245u + 12345u;
        const std::size_t n = std::min<std::size_t>(1 + (x >> 16) % 48, input.size() - pos);
        chunked.feed(input.substr(pos, n), b);
        if (chunked.buffered() > opt.max_line) fail("buffered beyond the line limit");
        pos += n;
    }
    chunked.finish(b);

    if (a.size() != b.size()) fail("chunking changed the number of items");
    for (std::size_t i = 0; i < a.size(); ++i)
        if (render(a[i]) != render(b[i])) fail("chunking changed an item");

    for (const auto& d : a) {
        const auto* m = std::get_if<proto::message>(&d);
        if (!m) {
            (void)proto::encode(proto::make_error(std::get<proto::decode_error>(d)));
            continue;
        }
        exercise_parsers(m->body);
        std::string line;
        try {
            line = proto::encode(m->body);
        } catch (const std::length_error&) {
            continue;  // escaping can make a line longer than the limit it arrived under
        }
        if (line.empty() || line.back() != '\n' || line.find('\n') != line.size() - 1) fail("encode is not one line");
        line.pop_back();
        auto again = proto::decode_line(line, {.max_line = proto::max_line_bytes, .require_id = opt.require_id});
        if (!again || !std::holds_alternative<proto::message>(*again)) fail("re-encoded message does not decode");
        if (std::get<proto::message>(*again).body != m->body) fail("re-encoded message differs");
    }

    const auto encoded = proto::base64_encode(input);
    const auto decoded = proto::base64_decode(encoded);
    if (!decoded || *decoded != input) fail("base64 round trip");
    if (const auto raw = proto::base64_decode(input))
        if (proto::base64_encode(*raw) != input) fail("base64 accepted a non-canonical form");
    return 0;
}
