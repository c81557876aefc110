// The agents' logins on the host (include/machine/credentials.hpp): each tool's token rules,
// never a value in a message; the store's files (modes, no value in the JSON, symlinks and
// others' files refused, nothing written on refusal, the previous login kept); sources read
// once at login (a command, the fake `op`); the credentials a project's agent_auth allows.
#include <boost/test/unit_test.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>

#include <asio/io_context.hpp>

#include "machine/credentials.hpp"
#include "machine/error.hpp"
#include "test_support.hpp"

using namespace machine;
namespace cred = machine::credentials;
namespace fs = std::filesystem;
using machine::test::co_run;
using machine::test::temp_dir;

namespace {

// Appears in tokens only: a message containing it leaks a secret.
const std::string marker = "S3CRETmarker7f1c";

const std::string claude_oauth = "sk-ant-oat01-" + marker;
const std::string claude_api = "sk-ant-api03-" + marker;
const std::string codex_key = "sk-proj-" + marker;
const std::string gh_token = "ghp_" + marker;

std::string read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

unsigned mode_of(const fs::path& p) {
    struct stat st {};
    BOOST_REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// Every file under `dir` with its content: what a refused operation must leave as it was.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
    std::map<std::string, std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
        out[e.path().filename().string()] = e.is_symlink() ? "-> " + fs::read_symlink(e.path()).string()
                                                            : read_all(e.path());
    return out;
}

// The message check_token throws for `value`; checks that it names no value.
std::string refusal(const std::string& tool, const std::string& value) {
    try {
        cred::check_token(tool, value);
    } catch (const usage_error& e) {
        const std::string what = e.what();
        BOOST_TEST(what.find(marker) == std::string::npos, "value leaked");
        BOOST_TEST(what.find(tool + ": ") == 0, what);
        BOOST_TEST(what.find("nothing was stored") != std::string::npos, what);
        return what;
    }
    BOOST_FAIL("accepted a bad token for " << tool);
    return {};
}

bool has(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

cred::login log_in(cred::store& s, cred::request r) {
    asio::io_context io;
    return co_run(io, cred::log_in(s, std::move(r), fs::path(MACHINE_FIXTURES_DIR) / "fake-op"));
}

cred::request pasted(const std::string& tool, const std::string& value) {
    cred::request r;
    r.tool = tool;
    r.value = value;
    return r;
}

cred::request from_command(const std::string& tool, std::vector<std::string> argv) {
    cred::request r;
    r.tool = tool;
    r.kind = cred::source_kind::command;
    r.argv = std::move(argv);
    return r;
}

// A store in a fresh state directory.
struct world {
    temp_dir tmp;
    fs::path dir = tmp.path / "state" / "credentials";
    cred::store store{dir};
};

} // namespace

BOOST_AUTO_TEST_SUITE(credentials_tokens)

BOOST_AUTO_TEST_CASE(each_tool_accepts_its_forms_and_names_the_variable) {
    BOOST_TEST(cred::check_token("claude", claude_oauth) == "CLAUDE_CODE_OAUTH_TOKEN");
    BOOST_TEST(cred::check_token("claude", claude_api) == "ANTHROPIC_API_KEY");
    BOOST_TEST(cred::check_token("codex", codex_key) == "OPENAI_API_KEY");
    for (const char* prefix : {"ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"})
        BOOST_TEST(cred::check_token("gh", prefix + marker) == "GH_TOKEN", prefix);
    BOOST_TEST(cred::check_token("gh", std::string(40, 'a')) == "GH_TOKEN");  // a classic token
    BOOST_TEST(cred::check_token("gh", std::string(cred::max_token_bytes - 4, 'x').insert(0, "ghp_")) == "GH_TOKEN");
}

BOOST_AUTO_TEST_CASE(every_rule_refuses_for_every_tool_without_echoing_the_value) {
    const std::map<std::string, std::string> good{{"claude", claude_oauth}, {"codex", codex_key}, {"gh", gh_token}};
    for (const auto& [tool, token] : good) {
        BOOST_TEST_CONTEXT(tool) {
            BOOST_TEST(has(refusal(tool, ""), "is empty"));
            const std::string inner_space = token.substr(0, 8) + " " + token.substr(8);
            BOOST_TEST(has(refusal(tool, inner_space), "(" + std::to_string(inner_space.size()) + " bytes) contains whitespace"));
            BOOST_TEST(has(refusal(tool, token + "\n"), "contains whitespace"));  // only a trailing line end is trimmed, by the caller
            BOOST_TEST(has(refusal(tool, " " + token), "contains whitespace"));
            BOOST_TEST(has(refusal(tool, token + "\x1b[31m"), "contains a control character"));
            BOOST_TEST(has(refusal(tool, token + std::string(1, '\0')), "contains a control character"));
            BOOST_TEST(has(refusal(tool, token + "\x7f"), "contains a control character"));
            BOOST_TEST(has(refusal(tool, token + "\xc3\xa9"), "contains a non-ASCII character"));
            BOOST_TEST(has(refusal(tool, token + std::string(cred::max_token_bytes, 'x')), "is longer than 4096 bytes"));
            BOOST_TEST(has(refusal(tool, "xx" + marker), "does not have the form of"));
        }
    }
    // Another tool's token is not this one's.
    BOOST_TEST(has(refusal("claude", codex_key), "sk-ant-oat"));
    BOOST_TEST(has(refusal("claude", gh_token), "does not have the form of"));
    BOOST_TEST(has(refusal("codex", claude_api), "another service's key"));
    BOOST_TEST(has(refusal("gh", codex_key), "does not have the form of a GitHub token"));
    BOOST_TEST(has(refusal("gh", std::string(40, 'G')), "does not have the form of"));  // not hex
    BOOST_TEST(has(refusal("gh", "ghp_"), "does not have the form of"));                // a prefix alone
    BOOST_CHECK_THROW(cred::check_token("copilot", gh_token), usage_error);
}

BOOST_AUTO_TEST_CASE(one_line_end_is_trimmed) {
    for (const auto& [in, out] : std::vector<std::pair<std::string, std::string>>{
             {"a\n", "a"}, {"a\r\n", "a"}, {"a", "a"}, {"a\n\n", "a\n"}, {"\n", ""}}) {
        std::string v = in;
        cred::trim_line_end(v);
        BOOST_TEST(v == out);
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(credentials_store)

BOOST_AUTO_TEST_CASE(a_pasted_token_is_kept_private_and_apart_from_its_description) {
    world w;
    const cred::login l = log_in(w.store, pasted("gh", gh_token + "\n"));
    BOOST_TEST(l.variable == "GH_TOKEN");
    BOOST_TEST(mode_of(w.dir) == 0700u);
    BOOST_TEST(mode_of(w.dir / "gh.json") == 0600u);
    BOOST_TEST(mode_of(w.dir / "gh.token") == 0600u);
    BOOST_TEST(read_all(w.dir / "gh.token") == gh_token);  // the trailing newline trimmed
    const std::string json = read_all(w.dir / "gh.json");
    BOOST_TEST(!has(json, marker), "the value is in the JSON");
    BOOST_TEST(has(json, "\"kind\": \"stored\""), json);
    BOOST_TEST(has(json, "\"variable\": \"GH_TOKEN\""), json);
    // Written atomically: nothing but the two files (no staging file left behind).
    BOOST_TEST(snapshot(w.dir).size() == 2u);
    const auto found = w.store.find("gh");
    BOOST_REQUIRE(found.has_value());
    BOOST_TEST(found->variable == "GH_TOKEN");
    BOOST_TEST(found->set_at == l.set_at);
    BOOST_TEST(!w.store.find("claude").has_value());
    // A directory others could read is made private again at the next save.
    fs::permissions(w.dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
    log_in(w.store, pasted("claude", claude_api));
    BOOST_TEST(mode_of(w.dir) == 0700u);
}

BOOST_AUTO_TEST_CASE(a_refused_token_writes_nothing_and_keeps_the_previous_login) {
    world w;
    BOOST_CHECK_THROW(log_in(w.store, pasted("gh", "not-a-token")), usage_error);
    BOOST_TEST(!fs::exists(w.dir));  // nothing at all, not even the directory
    log_in(w.store, pasted("gh", gh_token));
    const auto before = snapshot(w.dir);
    for (const std::string& bad : std::vector<std::string>{"", "ghp_a b", "ghp_\x1b]0;x\x07", codex_key, std::string(5000, 'a')})
        BOOST_CHECK_THROW(log_in(w.store, pasted("gh", bad)), usage_error);
    BOOST_TEST((snapshot(w.dir) == before));
}

BOOST_AUTO_TEST_CASE(symlinks_and_foreign_files_are_refused_not_followed) {
    world w;
    log_in(w.store, pasted("gh", gh_token));
    const fs::path elsewhere = w.tmp.path / "elsewhere";
    { std::ofstream(elsewhere) << "untouched"; }
    for (const char* name : {"gh.json", "gh.token"}) {
        BOOST_TEST_CONTEXT(name) {
            const fs::path p = w.dir / name;
            const std::string kept = read_all(p);
            fs::remove(p);
            fs::create_symlink(elsewhere, p);
            const auto before = snapshot(w.dir);
            try {
                log_in(w.store, pasted("gh", "gho_" + marker));
                BOOST_FAIL("saved over a symlink");
            } catch (const error& e) {
                BOOST_TEST(has(e.what(), "symbolic link"), e.what());
            }
            BOOST_TEST(read_all(elsewhere) == "untouched");
            BOOST_TEST((snapshot(w.dir) == before));
            BOOST_CHECK_THROW(w.store.remove("gh"), error);
            BOOST_TEST(fs::is_symlink(p));
            if (std::string(name) == "gh.json") BOOST_CHECK_THROW(w.store.find("gh"), error);
            if (std::string(name) == "gh.token") BOOST_CHECK_THROW(w.store.read_stored("gh"), error);
            fs::remove(p);
            std::ofstream(p, std::ios::binary) << kept;
            fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
        }
    }
    // The directory itself a symlink (to a directory the user might not mean): refused too.
    const fs::path real = w.tmp.path / "real";
    fs::create_directories(real);
    cred::store linked(w.tmp.path / "link");
    fs::create_directory_symlink(real, w.tmp.path / "link");
    BOOST_CHECK_THROW(log_in(linked, pasted("gh", gh_token)), error);
    BOOST_CHECK_THROW(linked.find("gh"), error);
    BOOST_TEST(fs::is_empty(real));
}

BOOST_AUTO_TEST_CASE(logout_removes_both_files) {
    world w;
    log_in(w.store, pasted("codex", codex_key));
    BOOST_TEST(w.store.remove("codex"));
    BOOST_TEST(!fs::exists(w.dir / "codex.json"));
    BOOST_TEST(!fs::exists(w.dir / "codex.token"));
    BOOST_TEST(!w.store.remove("codex"));
    BOOST_TEST(!w.store.find("codex").has_value());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(credentials_sources)

// --from-command: the command runs once at login (its token checked), then only its argv is
// kept; a stored value it replaces is removed.
BOOST_AUTO_TEST_CASE(a_command_source_is_read_once_and_kept_as_argv) {
    world w;
    log_in(w.store, pasted("gh", gh_token));
    const cred::login l = log_in(w.store, from_command("gh", {"printf", "%s\\r\\n", "github_pat_" + marker}));
    BOOST_TEST(l.variable == "GH_TOKEN");
    BOOST_TEST(!fs::exists(w.dir / "gh.token"));
    const std::string json = read_all(w.dir / "gh.json");
    BOOST_TEST(has(json, "\"kind\": \"command\""), json);
    BOOST_TEST(has(json, "\"argv\""), json);
    asio::io_context io;
    std::string value = co_run(io, cred::read_value(w.store, *w.store.find("gh"), "op"));
    BOOST_TEST((value == "github_pat_" + marker));
}

BOOST_AUTO_TEST_CASE(a_failing_or_malformed_source_keeps_the_previous_login) {
    world w;
    log_in(w.store, pasted("gh", gh_token));
    const auto before = snapshot(w.dir);
    try {
        log_in(w.store, from_command("gh", {"sh", "-c", "echo locked >&2; exit 1"}));
        BOOST_FAIL("a failing command was accepted");
    } catch (const secrets::provider_error& e) {
        BOOST_TEST(has(e.what(), "gh: `sh` failed (exit 1): locked; nothing was stored, the previous login is kept"),
                   e.what());
    }
    // It succeeds but prints what is not a GitHub token: refused as a pasted one would be.
    try {
        log_in(w.store, from_command("gh", {"printf", "%s", "sk-" + marker}));
        BOOST_FAIL("a malformed token was accepted");
    } catch (const usage_error& e) {
        BOOST_TEST(!has(e.what(), marker));
    }
    BOOST_TEST((snapshot(w.dir) == before));
}

BOOST_AUTO_TEST_CASE(a_1password_reference_is_read_through_op) {
    world w;
    temp_dir items;
    fs::create_directories(items.path / "dev" / "gh");
    std::ofstream(items.path / "dev" / "gh" / "token") << gh_token;  // fake-op adds the "\n" op prints
    ::setenv("FAKE_OP_ITEMS_DIR", items.path.c_str(), 1);
    cred::request r;
    r.tool = "gh";
    r.kind = cred::source_kind::op;
    r.op_reference = "op://dev/gh/token";
    const cred::login l = log_in(w.store, r);
    BOOST_TEST(l.op_reference == "op://dev/gh/token");
    BOOST_TEST(!has(read_all(w.dir / "gh.json"), marker));
    r.op_reference = "op://dev/gh/missing";
    BOOST_CHECK_THROW(log_in(w.store, r), secrets::provider_error);
    BOOST_TEST(w.store.find("gh")->op_reference == "op://dev/gh/token");
    ::unsetenv("FAKE_OP_ITEMS_DIR");
}

BOOST_AUTO_TEST_CASE(a_project_receives_only_what_agent_auth_allows) {
    world w;
    log_in(w.store, pasted("claude", claude_oauth));
    log_in(w.store, pasted("gh", gh_token));
    const auto names = [&](const std::optional<std::vector<std::string>>& allowed) {
        asio::io_context io;
        std::vector<secrets::variable> vars = co_run(io, cred::resolve_credentials(w.store, allowed, "op"));
        std::set<std::string> out;
        for (const auto& v : vars) {
            out.insert(v.name);
            if (v.name == "GH_TOKEN") BOOST_TEST((v.value == gh_token));
        }
        secrets::wipe(vars);
        return out;
    };
    BOOST_TEST((names(std::nullopt) == std::set<std::string>{"CLAUDE_CODE_OAUTH_TOKEN", "GH_TOKEN"}));
    BOOST_TEST((names(std::vector<std::string>{"gh", "codex"}) == std::set<std::string>{"GH_TOKEN"}));
    BOOST_TEST(names(std::vector<std::string>{}).empty());
}

BOOST_AUTO_TEST_SUITE_END()
