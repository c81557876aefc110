#include <boost/test/unit_test.hpp>

#include "machine/error.hpp"
#include "machine/sha256.hpp"
#include "machine/text.hpp"
#include "test_support.hpp"

#include <fstream>

using namespace machine;

BOOST_AUTO_TEST_SUITE(core_text)

BOOST_AUTO_TEST_CASE(project_names) {
    for (const char* ok : {"default", "web", "web-2", "0day", "a"})
        BOOST_TEST(text::is_valid_project_name(ok), ok);
    for (const char* bad : {"", "../x", "a;rm -rf ~", "Web", "-lead", "a_b", "a.b", "a b", "é"})
        BOOST_TEST(!text::is_valid_project_name(bad), bad);
    BOOST_TEST(!text::is_valid_project_name(std::string(64, 'a')));
}

BOOST_AUTO_TEST_CASE(invalid_name_message) {
    try {
        text::require_valid_project_name("a;rm -rf ~");
        BOOST_FAIL("accepted");
    } catch (const usage_error& e) {
        BOOST_TEST(std::string(e.what()) ==
                   "invalid project name 'a;rm -rf ~' (use a-z, 0-9 and hyphens, starting with "
                   "a letter or digit, at most 63 characters)");
        BOOST_TEST(static_cast<int>(e.code()) == 2);
    }
}

BOOST_AUTO_TEST_CASE(did_you_mean) {
    const std::vector<std::string> keys{"repos", "profiles", "cpus", "memory", "disk", "shell"};
    BOOST_TEST(text::closest_match("cpu", keys) == "cpus");
    BOOST_TEST(text::closest_match("memroy", keys) == "memory");
    BOOST_TEST(text::closest_match("banana", keys) == "");
    BOOST_TEST(text::closest_match("wbe", {"web", "api"}) == "web");
    BOOST_TEST(text::edit_distance("ab", "ba") == 1u);
}

BOOST_AUTO_TEST_CASE(terminal_sanitizing) {
    BOOST_TEST(text::sanitize_for_terminal("plain\ttext\n") == "plain\ttext\n");
    BOOST_TEST(text::sanitize_for_terminal("\x1b[31mred\x1b[0m") == "red");
    BOOST_TEST(text::sanitize_for_terminal("a\x1b]0;title\x07" "b") == "ab");
    BOOST_TEST(text::sanitize_for_terminal("a\x1b]52;c;ZXZpbA==\x1b\\b") == "ab");
    BOOST_TEST(text::sanitize_for_terminal("over\rwrite\b") == "overwrite");
    BOOST_TEST(text::sanitize_for_terminal("caf\xc3\xa9") == "caf\xc3\xa9");
    BOOST_TEST(text::sanitize_for_terminal("bad\xff") == "bad\xef\xbf\xbd");
    BOOST_TEST(text::sanitize_for_terminal("c1\xc2\x9b" "31m") == "c131m");
}

// Issue 13, item 6: a value from a VM, escaped for one terminal line, keeps every character
// visible and cannot break, rewrite, reorder or hide part of the line.
BOOST_AUTO_TEST_CASE(terminal_escaping_shows_every_class) {
    // Line breaks and tabs.
    BOOST_TEST(text::escape_for_terminal("a\nb\r\nc\td") == "a\\nb\\r\\nc\\td");
    // C0 controls, ESC (a whole CSI or OSC sequence stays readable and inert), DEL.
    BOOST_TEST(text::escape_for_terminal(std::string("\0\x01\x07\x08\x1f", 5)) == "\\x00\\x01\\x07\\x08\\x1f");
    BOOST_TEST(text::escape_for_terminal("\x1b[31mred\x1b]0;t\x07") == "\\x1b[31mred\\x1b]0;t\\x07");
    BOOST_TEST(text::escape_for_terminal("x\x7f") == "x\\x7f");
    // C1 controls (CSI U+009B, NEL U+0085) and the Unicode line and paragraph separators.
    BOOST_TEST(text::escape_for_terminal("\xc2\x9b" "2J\xc2\x85\xc2\x80\xc2\x9f") == "\\u009b2J\\u0085\\u0080\\u009f");
    BOOST_TEST(text::escape_for_terminal("\xe2\x80\xa8\xe2\x80\xa9") == "\\u2028\\u2029");
    // Bidi controls: embeddings and overrides, isolates, marks.
    BOOST_TEST(text::escape_for_terminal("\xe2\x80\xaa\xe2\x80\xab\xe2\x80\xac\xe2\x80\xad\xe2\x80\xae") ==
               "\\u202a\\u202b\\u202c\\u202d\\u202e");
    BOOST_TEST(text::escape_for_terminal("\xe2\x81\xa6\xe2\x81\xa7\xe2\x81\xa8\xe2\x81\xa9") ==
               "\\u2066\\u2067\\u2068\\u2069");
    BOOST_TEST(text::escape_for_terminal("\xe2\x80\x8e\xe2\x80\x8f\xd8\x9c") == "\\u200e\\u200f\\u061c");
    // Invisible characters: zero-width ones, word joiner, BOM, soft hyphen, Hangul filler,
    // variation selector, a tag character (U+E0041, "A" in the invisible tag block).
    BOOST_TEST(text::escape_for_terminal("\xe2\x80\x8b\xe2\x80\x8c\xe2\x80\x8d\xe2\x81\xa0\xef\xbb\xbf") ==
               "\\u200b\\u200c\\u200d\\u2060\\ufeff");
    BOOST_TEST(text::escape_for_terminal("\xc2\xad\xe3\x85\xa4\xef\xb8\x8f\xf3\xa0\x81\x81") ==
               "\\u00ad\\u3164\\ufe0f\\U000e0041");
    // The backslash itself, so an escape in the output always means an escaped character.
    BOOST_TEST(text::escape_for_terminal("C:\\n") == "C:\\\\n");
}

BOOST_AUTO_TEST_CASE(terminal_escaping_shows_invalid_utf8_bytes) {
    BOOST_TEST(text::escape_for_terminal("bad\xff") == "bad\\xff");
    BOOST_TEST(text::escape_for_terminal("\x80" "x") == "\\x80x");            // stray continuation byte
    BOOST_TEST(text::escape_for_terminal("cut\xe2\x80") == "cut\\xe2\\x80");  // truncated sequence
    BOOST_TEST(text::escape_for_terminal("\xc0\x8a") == "\\xc0\\x8a");         // overlong '\n'
    BOOST_TEST(text::escape_for_terminal("\xe0\x80\x8a") == "\\xe0\\x80\\x8a"); // overlong '\n', 3 bytes
    BOOST_TEST(text::escape_for_terminal("\xed\xa0\x80") == "\\xed\\xa0\\x80"); // a surrogate
    BOOST_TEST(text::escape_for_terminal("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // above U+10FFFF
}

BOOST_AUTO_TEST_CASE(terminal_escaping_keeps_ordinary_text) {
    for (const char* kept : {"plain ASCII: port 8080 -> 127.0.0.1:8080 (tcp) [ok] {x} ~", "caf\xc3\xa9",
                             "\xe2\x80\x94 \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82", "\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d"})
        BOOST_TEST(text::escape_for_terminal(kept) == kept);
    BOOST_TEST(text::escape_for_terminal("") == "");
}

BOOST_AUTO_TEST_CASE(shell_quoting) {
    BOOST_TEST(text::shell_quote("simple/path-1.2") == "simple/path-1.2");
    BOOST_TEST(text::shell_quote("") == "''");
    BOOST_TEST(text::shell_quote("a b") == "'a b'");
    // zsh's EQUALS expansion: an unquoted `=claude` becomes the path of `claude`.
    BOOST_TEST(text::shell_quote("=claude") == "'=claude'");
    BOOST_TEST(text::shell_quote("KEY=value") == "KEY=value");
    BOOST_TEST(text::shell_quote("it's $(rm -rf ~)") == "'it'\\''s $(rm -rf ~)'");
}

BOOST_AUTO_TEST_CASE(lines_and_tails) {
    BOOST_TEST(text::split_lines("a\r\nb\n\nc") == (std::vector<std::string>{"a", "b", "", "c"}));
    BOOST_TEST(text::split_lines("a\n") == (std::vector<std::string>{"a"}));
    BOOST_TEST(text::tail("one\ntwo\nthree\n", 8) == "three\n");
    BOOST_TEST(text::trim("  x y \n") == "x y");
    BOOST_TEST(text::last_line("warning: a\nfatal: b  \r\n\n \n") == "fatal: b");
    BOOST_TEST(text::last_line("only") == "only");
    BOOST_TEST(text::last_line("\n \n").empty());
}

BOOST_AUTO_TEST_CASE(sha256_known_answers) {
    BOOST_TEST(sha256::hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    BOOST_TEST(sha256::hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    BOOST_TEST(sha256::hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
               "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    BOOST_TEST(sha256::hex(std::string(1000000, 'a')) ==
               "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    machine::test::temp_dir dir;
    std::ofstream(dir.path / "f", std::ios::binary) << std::string(100000, 'x');
    sha256 streamed;
    for (int i = 0; i < 1000; ++i) streamed.update(std::string(100, 'x'));
    BOOST_TEST(sha256::hex_of_file(dir.path / "f") == streamed.hex_digest());
}

BOOST_AUTO_TEST_SUITE_END()
