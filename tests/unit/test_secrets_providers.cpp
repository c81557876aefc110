// Secret providers: the dotenv parser (rules, round trip, errors without values), the fake
// `op` in every mode, and commands (success, failure, oversized output).
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/io_context.hpp>

#include "machine/proc.hpp"
#include "machine/protocol.hpp"
#include "machine/secrets.hpp"
#include "test_support.hpp"

using namespace machine;
using machine::secrets::variable;
namespace pr = machine::protocol;
using machine::test::co_run;
using machine::test::temp_dir;

namespace {

// Appears in values only: any message containing it leaks a secret.
const std::string marker = "S3CRET-MARKER-7f1c";

std::vector<variable> parse(std::string_view text) { return secrets::parse_dotenv(text, ".env"); }

// Every byte of a string's buffer, up to its capacity: past size() too, where the end of a
// longer earlier value may still be (the bytes secrets::zero_in_place overwrites).
std::string_view whole_buffer(const std::string& s) { return {s.data(), s.capacity()}; }

// How many bytes of `bytes` are not zero (a count, so a failure prints no secret).
std::size_t nonzero_bytes(std::string_view bytes) {
    return static_cast<std::size_t>(std::count_if(bytes.begin(), bytes.end(), [](char c) { return c != '\0'; }));
}

std::string value_of(const std::vector<variable>& vars, const std::string& name) {
    for (const auto& v : vars)
        if (v.name == name) return v.value;
    BOOST_FAIL("no variable " + name);
    return {};
}

// The message of the dotenv_error `text` raises; checks it names no value.
std::string parse_error(std::string_view text) {
    try {
        parse(text);
    } catch (const secrets::dotenv_error& e) {
        const std::string what = e.what();
        BOOST_TEST(what.find(marker) == std::string::npos, "value leaked: " << what);
        BOOST_TEST(what.find("SECRET") == std::string::npos, "value leaked: " << what);
        return what;
    }
    BOOST_FAIL("no error for: " << text);
    return {};
}

void write_file(const std::filesystem::path& p, const std::string& content) {
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
}

const std::filesystem::path fake_op = std::filesystem::path(MACHINE_FIXTURES_DIR) / "fake-op";

// Sets (or unsets) an environment variable for the scope of a test; proc children inherit it.
struct scoped_env {
    std::string name;
    std::optional<std::string> old;
    scoped_env(std::string n, const std::string& value) : name(std::move(n)) {
        if (const char* o = std::getenv(name.c_str())) old = o;
        ::setenv(name.c_str(), value.c_str(), 1);
    }
    ~scoped_env() {
        if (old)
            ::setenv(name.c_str(), old->c_str(), 1);
        else
            ::unsetenv(name.c_str());
    }
};

// A fake 1Password: one Environment `abc123` and one item op://dev/db/password.
struct fake_1password {
    temp_dir dir;
    scoped_env envs{"FAKE_OP_ENVIRONMENTS_DIR", (dir.path / "environments").string()};
    scoped_env items{"FAKE_OP_ITEMS_DIR", (dir.path / "items").string()};
    scoped_env log{"FAKE_OP_ARGV_LOG", (dir.path / "argv.log").string()};
    fake_1password() {
        write_file(dir.path / "environments" / "abc123",
                   "API_KEY=" + marker + "-api\nDB_URL=\"postgres://u:" + marker + "@h/db\"\n");
        write_file(dir.path / "items" / "dev" / "db" / "password", marker + "-pw\n");
    }
    std::string argv_log() const {
        std::ifstream in(dir.path / "argv.log");
        return std::string(std::istreambuf_iterator<char>(in), {});
    }
};

std::vector<variable> read_source(const secrets::source& src,
                                  const std::filesystem::path& op = fake_op) {
    asio::io_context ctx;
    return co_run(ctx, secrets::read(src, op));
}

// The message of the error reading `src` raises; checks it names no value.
std::string read_error(const secrets::source& src, const std::filesystem::path& op = fake_op) {
    try {
        read_source(src, op);
    } catch (const machine::error& e) {
        const std::string what = e.what();
        BOOST_TEST(what.find(marker) == std::string::npos, "value leaked: " << what);
        return what;
    }
    BOOST_FAIL("no error");
    return {};
}

secrets::source environment(const std::string& id) {
    secrets::source s;
    s.kind = secret_kind::op_environment;
    s.id_or_ref_or_path = id;
    return s;
}

secrets::source reference(const std::string& name, const std::string& ref) {
    secrets::source s;
    s.kind = secret_kind::op_reference;
    s.name = name;
    s.id_or_ref_or_path = ref;
    return s;
}

secrets::source command(std::vector<std::string> argv) {
    secrets::source s;
    s.kind = secret_kind::command;
    s.argv = std::move(argv);
    return s;
}

bool contains(const std::string& hay, const std::string& needle) {
    return hay.find(needle) != std::string::npos;
}

} // namespace

BOOST_AUTO_TEST_SUITE(secrets_dotenv)

BOOST_AUTO_TEST_CASE(basic_lines_comments_blanks_and_export) {
    const auto vars = parse("# a comment\n\nA=1\n  export B=two\n\t# indented comment\nC = 3 \r\nexport=4\n");
    BOOST_TEST(vars.size() == 4u);
    BOOST_TEST(vars[0].name == "A");
    BOOST_TEST(vars[0].value == "1");
    BOOST_TEST(value_of(vars, "B") == "two");
    BOOST_TEST(value_of(vars, "C") == "3");
    BOOST_TEST(value_of(vars, "export") == "4");
}

BOOST_AUTO_TEST_CASE(unquoted_values_are_trimmed_and_end_at_an_inline_comment) {
    const auto vars = parse("A=  x y  \nB=x # comment\nC=x#not-a-comment\nD=\nE= # only a comment\nF=a\"b'c\nG=last");
    BOOST_TEST(value_of(vars, "A") == "x y");
    BOOST_TEST(value_of(vars, "B") == "x");
    BOOST_TEST(value_of(vars, "C") == "x#not-a-comment");
    BOOST_TEST(value_of(vars, "D") == "");
    BOOST_TEST(value_of(vars, "E") == "");
    BOOST_TEST(value_of(vars, "F") == "a\"b'c");
    BOOST_TEST(value_of(vars, "G") == "last");
}

BOOST_AUTO_TEST_CASE(single_quotes_are_literal) {
    const auto vars = parse("A='a \\n $HOME \"x\" # not a comment'  # a comment\nB='two\nlines'\nC=''\n");
    BOOST_TEST(value_of(vars, "A") == "a \\n $HOME \"x\" # not a comment");
    BOOST_TEST(value_of(vars, "B") == "two\nlines");
    BOOST_TEST(value_of(vars, "C") == "");
}

BOOST_AUTO_TEST_CASE(double_quotes_understand_escapes) {
    const auto vars = parse(R"(A="l1\nl2\ttab \"q\" back\\slash \$HOME $PATH C:\dir" # c
B="multi
line"
C=""
)");
    BOOST_TEST(value_of(vars, "A") == "l1\nl2\ttab \"q\" back\\slash $HOME $PATH C:\\dir");
    BOOST_TEST(value_of(vars, "B") == "multi\nline");
    BOOST_TEST(value_of(vars, "C") == "");
}

BOOST_AUTO_TEST_CASE(a_later_definition_replaces_the_earlier_one) {
    const auto vars = parse("A=1\nB=2\nA=3\n");
    BOOST_TEST(vars.size() == 2u);
    BOOST_TEST(vars[0].name == "A");
    BOOST_TEST(vars[0].value == "3");
}

BOOST_AUTO_TEST_CASE(hard_values_round_trip_exactly) {
    std::string big(64 * 1024, 'x');
    for (std::size_t k = 0; k < big.size(); k += 97) big[k] = "\n\"'$\\\t #="[k % 9];
    std::vector<variable> vars{
        {"NEWLINES", "a\nb\n\nc\n"},
        {"QUOTES", "\"double\" 'single' \"\"\"''"},
        {"DOLLAR", "$HOME ${PATH} $(rm -rf /) `id`"},
        {"BACKSLASH", "\\ \\\\ \\n \\\" trailing\\"},
        {"UNICODE", "pässwörd ☃ 秘密 🔑"},
        {"CR", "a\r\nb\r"},
        {"SPACES", "  padded  "},
        {"HASH", "a #b #c"},
        {"EMPTY", ""},
        {"BIG", big},
    };
    std::string text = secrets::render_dotenv(vars);
    const auto back = parse(text);
    secrets::wipe(text);
    BOOST_TEST(text.empty());
    BOOST_REQUIRE(back.size() == vars.size());
    for (std::size_t k = 0; k < vars.size(); ++k) {
        BOOST_TEST(back[k].name == vars[k].name);
        BOOST_TEST((back[k].value == vars[k].value), "value of " << vars[k].name << " changed");
    }
}

BOOST_AUTO_TEST_CASE(render_refuses_nul_and_bad_names) {
    std::vector<variable> nul{{"A", std::string("a\0b", 3)}};
    BOOST_CHECK_THROW(secrets::render_dotenv(nul), machine::usage_error);
    std::vector<variable> bad{{"1A", "x"}};
    BOOST_CHECK_THROW(secrets::render_dotenv(bad), machine::usage_error);
}

BOOST_AUTO_TEST_CASE(errors_name_file_line_and_column_never_a_value) {
    BOOST_TEST(parse_error("A=1\nB=\"SECRET " + marker + "\n\nC=2\n") ==
               ".env:2:3: unterminated double-quoted value of B");
    BOOST_TEST(parse_error("A=1\n\nB= 'SECRET " + marker) ==
               ".env:3:4: unterminated single-quoted value of B");
    BOOST_TEST(parse_error("A=1\nghp_SECRETtoken123\n") ==
               ".env:2:19: expected `=` after the variable name");
    BOOST_TEST(parse_error("A=1\n" + marker + "\n") ==
               ".env:2:7: invalid variable name (use letters, digits and _, not starting with a digit)");
    BOOST_TEST(parse_error("export  SECRET_TOKEN\n") ==
               ".env:1:21: expected `=` after the variable name");
    BOOST_TEST(parse_error("1A=SECRET" + marker + "\n") ==
               ".env:1:1: invalid variable name (use letters, digits and _, not starting with a digit)");
    BOOST_TEST(parse_error("A=1\nMY-VAR=SECRET" + marker + "\n") ==
               ".env:2:3: invalid variable name (use letters, digits and _, not starting with a digit)");
    BOOST_TEST(parse_error("  =SECRET" + marker) == ".env:1:3: missing variable name before `=`");
    BOOST_TEST(parse_error("A=\"SECRET" + marker + "\" trailing\n") ==
               ".env:1:30: unexpected text after the closing quote of A's value");
    BOOST_TEST(parse_error("A='x\ny'z\n") == ".env:2:3: unexpected text after the closing quote of A's value");
    BOOST_TEST(parse_error(std::string("A=1\nB=SECRET\0x\n", 13)) ==
               ".env:2:9: the value of B contains a NUL byte");
    BOOST_TEST(parse_error(std::string("B=\"SE\nCRET\0\"\n", 13)) ==
               ".env:2:5: the value of B contains a NUL byte");
}

// A value shortened after it held more keeps the longer text past its size(): only zeros up to
// the capacity wipe that. The variable keeps its buffers, which the test then reads whole.
BOOST_AUTO_TEST_CASE(zero_in_place_zeroes_whole_buffers_and_keeps_them) {
    variable v{"TOKEN_" + std::string(40, 'N'), marker + std::string(1000, 'z')};
    v.value.resize(marker.size());
    const char* const name_buffer = v.name.data();
    const char* const value_buffer = v.value.data();
    const std::size_t name_capacity = v.name.capacity();
    const std::size_t value_capacity = v.value.capacity();
    BOOST_REQUIRE(whole_buffer(v.value).find('z') != std::string_view::npos);  // a stale tail to wipe
    secrets::zero_in_place(v);
    BOOST_REQUIRE(v.name.data() == name_buffer);
    BOOST_REQUIRE(v.value.data() == value_buffer);
    BOOST_REQUIRE(v.name.capacity() == name_capacity);
    BOOST_REQUIRE(v.value.capacity() == value_capacity);
    BOOST_TEST(v.value.size() == marker.size());
    BOOST_TEST(nonzero_bytes(whole_buffer(v.name)) == 0u);
    BOOST_TEST(nonzero_bytes(whole_buffer(v.value)) == 0u);

    std::string small = "s3cret";  // in the string itself (small-string buffer), not the heap
    secrets::zero_in_place(small);
    BOOST_TEST(nonzero_bytes(whole_buffer(small)) == 0u);
}

BOOST_AUTO_TEST_CASE(wipe_zeroes_and_empties) {
    std::vector<variable> vars = parse("A=" + marker + "\nB=" + std::string(1000, 'z') + "\n");
    secrets::wipe(vars);
    BOOST_TEST(vars.empty());
    BOOST_TEST(vars.capacity() == 0u);
    std::string text = marker + std::string(1000, 'z');
    secrets::wipe(text);
    BOOST_TEST(text.empty());
    BOOST_TEST(text.capacity() == std::string().capacity());  // the heap buffer is gone
}

// The protocol's wipes, which the host applies to a secrets.render request and its encoded
// message once sent: each value's bytes become zeros in the buffer the emptied string keeps.
BOOST_AUTO_TEST_CASE(protocol_wipes_zero_values_in_place) {
    std::string bytes = marker + std::string(1000, 'z');
    const std::string_view before(bytes.data(), bytes.size());
    pr::wipe_secret_bytes(bytes);
    BOOST_TEST(bytes.empty());
    BOOST_REQUIRE_MESSAGE(bytes.data() == before.data(), "the test reads the buffer the emptied string keeps");
    BOOST_TEST(nonzero_bytes(before) == 0u);

    pr::secrets_render_request request;
    request.set = "web";
    request.variables = {{"A", marker}, {"B", marker + std::string(1000, 'z')}};
    std::vector<std::string_view> values;
    for (const auto& v : request.variables) values.emplace_back(v.value.data(), v.value.size());
    pr::json message = pr::make_secrets_render_request(1, request);
    std::vector<std::string_view> encoded;
    for (auto& v : message["variables"]) {
        const auto& b64 = v["value_b64"].get_ref<const std::string&>();
        encoded.emplace_back(b64.data(), b64.size());
    }
    BOOST_REQUIRE(encoded.size() == 2u);

    pr::wipe_secrets(request);
    for (std::size_t i = 0; i < values.size(); ++i) {
        BOOST_TEST(request.variables[i].value.empty());
        BOOST_REQUIRE(request.variables[i].value.data() == values[i].data());
        BOOST_TEST(nonzero_bytes(values[i]) == 0u, "value " << i);
    }
    pr::wipe_secrets(message);
    for (std::size_t i = 0; i < encoded.size(); ++i) {
        const auto& b64 = message["variables"][i]["value_b64"].get_ref<const std::string&>();
        BOOST_TEST(b64.empty());
        BOOST_REQUIRE(b64.data() == encoded[i].data());
        BOOST_TEST(nonzero_bytes(encoded[i]) == 0u, "value_b64 " << i);
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(secrets_providers)

BOOST_AUTO_TEST_CASE(op_environment_read_succeeds) {
    fake_1password op;
    const auto vars = read_source(environment("abc123"));
    BOOST_REQUIRE(vars.size() == 2u);
    BOOST_TEST(vars[0].name == "API_KEY");
    BOOST_TEST(vars[0].value == marker + "-api");
    BOOST_TEST(vars[1].name == "DB_URL");
    BOOST_TEST(vars[1].value == "postgres://u:" + marker + "@h/db");
    const std::string log = op.argv_log();
    BOOST_TEST(contains(log, "\"environment\", \"read\", \"abc123\", \"--no-masking\""));
    BOOST_TEST(!contains(log, marker));
}

BOOST_AUTO_TEST_CASE(op_reference_read_strips_exactly_one_newline) {
    fake_1password op;
    const auto vars = read_source(reference("DB_PASSWORD", "op://dev/db/password"));
    BOOST_REQUIRE(vars.size() == 1u);
    BOOST_TEST(vars[0].name == "DB_PASSWORD");
    BOOST_TEST(vars[0].value == marker + "-pw\n");  // the file's own newline stays
    BOOST_TEST(!contains(op.argv_log(), marker));
}

BOOST_AUTO_TEST_CASE(op_signed_out) {
    fake_1password op;
    scoped_env mode{"FAKE_OP_MODE", "signed-out"};
    const auto what = read_error(environment("abc123"));
    BOOST_TEST(contains(what, "not signed in to the 1Password CLI"), what);
    BOOST_TEST(contains(what, "You are not currently signed in. Please run `op signin --help`"), what);
    BOOST_TEST(!contains(what, "[ERROR]"), what);
    BOOST_TEST(contains(read_error(reference("X", "op://dev/db/password")), "not signed in"));
}

BOOST_AUTO_TEST_CASE(op_locked) {
    fake_1password op;
    scoped_env mode{"FAKE_OP_MODE", "locked"};
    const auto what = read_error(reference("X", "op://dev/db/password"));
    BOOST_TEST(contains(what, "1Password is locked or did not authorize the CLI"), what);
    BOOST_TEST(contains(what, "account is not signed in"), what);
}

BOOST_AUTO_TEST_CASE(op_item_not_found) {
    fake_1password op;
    const auto what = read_error(reference("X", "op://dev/nope/password"));
    BOOST_TEST(contains(what, "not found"), what);
    BOOST_TEST(contains(what, "\"nope\" isn't an item in the \"dev\" vault"), what);
    BOOST_TEST(contains(what, "`op read op://dev/nope/password` (for X)"), what);
    BOOST_TEST(contains(read_error(environment("zzz999")), "isn't an environment"));
}

BOOST_AUTO_TEST_CASE(op_missing) {
    fake_1password op;
    const auto what = read_error(environment("abc123"), "/nonexistent/bin/op");
    BOOST_TEST(what == std::string(secrets::op_missing_message));
    BOOST_TEST(read_error(reference("X", "op://dev/db/password"), "/nonexistent/op") ==
               std::string(secrets::op_missing_message));
}

BOOST_AUTO_TEST_CASE(bad_ids_references_and_names_are_refused_before_running) {
    fake_1password op;
    BOOST_CHECK_THROW(read_source(environment("ABC")), machine::usage_error);
    BOOST_CHECK_THROW(read_source(environment("--help")), machine::usage_error);
    BOOST_CHECK_THROW(read_source(environment("")), machine::usage_error);
    BOOST_CHECK_THROW(read_source(reference("X", "https://x/y/z")), machine::usage_error);
    BOOST_CHECK_THROW(read_source(reference("X", "op://dev/db")), machine::usage_error);
    BOOST_CHECK_THROW(read_source(reference("X", "op://dev//password")), machine::usage_error);
    BOOST_CHECK_THROW(read_source(reference("1X", "op://dev/db/password")), machine::usage_error);
    BOOST_TEST(op.argv_log().empty());
}

BOOST_AUTO_TEST_CASE(dotenv_file_reads_and_reports_the_file) {
    temp_dir dir;
    const auto path = dir.path / "app.env";
    write_file(path, "export A='" + marker + "'\nB=2\n");
    secrets::source s;
    s.kind = secret_kind::dotenv_file;
    s.id_or_ref_or_path = path.string();
    auto vars = read_source(s);
    BOOST_TEST(value_of(vars, "A") == marker);
    secrets::wipe(vars);

    write_file(path, "A=1\nB=\"" + marker + "\n");
    BOOST_TEST(read_error(s) == path.string() + ":2:3: unterminated double-quoted value of B");

    s.id_or_ref_or_path = (dir.path / "missing.env").string();
    BOOST_TEST(contains(read_error(s), "cannot read " + s.id_or_ref_or_path));
}

BOOST_AUTO_TEST_CASE(command_output_is_parsed) {
    const auto vars = read_source(command({"/bin/sh", "-c", "printf 'A=1\\nexport B=\"x y\"\\n'"}));
    BOOST_REQUIRE(vars.size() == 2u);
    BOOST_TEST(vars[0].value == "1");
    BOOST_TEST(vars[1].value == "x y");
    BOOST_TEST(proc::live_children() == 0u);
}

BOOST_AUTO_TEST_CASE(command_output_errors_name_the_line_of_the_output) {
    const auto what = read_error(command({"/bin/sh", "-c", "printf 'A=1\\nB=\"" + marker + "\\n'"}));
    BOOST_TEST(contains(what, "line 2, column 3 of `/bin/sh`'s output"), what);
    BOOST_TEST(contains(what, "'s output: unterminated double-quoted value of B"), what);
}

BOOST_AUTO_TEST_CASE(failing_command_reports_its_last_stderr_line) {
    const auto what = read_error(
        command({"/bin/sh", "-c", "printf 'A=" + marker + "\\n'; echo first >&2; printf 'vault \\033[31msealed\\n' >&2; exit 3"}));
    BOOST_TEST(what == "`/bin/sh` failed (exit 3): vault sealed", what);
    BOOST_TEST(!contains(what, "\033"), what);
    BOOST_TEST(!contains(what, "first"), what);
    const auto missing = read_error(command({"/nonexistent/secret-tool"}));
    BOOST_TEST(contains(missing, "cannot run /nonexistent/secret-tool"), missing);
}

BOOST_AUTO_TEST_CASE(long_stderr_is_capped_in_the_message) {
    const auto what = read_error(command({"/bin/sh", "-c", "head -c 5000 /dev/zero | tr '\\0' e >&2; exit 1"}));
    BOOST_TEST(what.size() < 400u, what.size());
}

BOOST_AUTO_TEST_CASE(command_printing_5_mib_is_capped_and_refused) {
    const auto what = read_error(command({"/bin/sh", "-c", "head -c 5242880 /dev/zero | tr '\\0' A; echo =1"}));
    BOOST_TEST(contains(what, "printed more than 4 MiB"), what);
    BOOST_TEST(proc::live_children() == 0u);
}

BOOST_AUTO_TEST_CASE(empty_command_is_a_usage_error) {
    BOOST_CHECK_THROW(read_source(command({})), machine::usage_error);
}

BOOST_AUTO_TEST_SUITE_END()
