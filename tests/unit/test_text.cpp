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

BOOST_AUTO_TEST_CASE(shell_quoting) {
    BOOST_TEST(text::shell_quote("simple/path-1.2") == "simple/path-1.2");
    BOOST_TEST(text::shell_quote("") == "''");
    BOOST_TEST(text::shell_quote("a b") == "'a b'");
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
