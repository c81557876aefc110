// The agents' logins on the host (include/machine/credentials.hpp): token rules per tool, the
// credentials directory and its files, and reading a login's value from where it comes from.
#include "machine/credentials.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <nlohmann/json.hpp>

#include "machine/error.hpp"
#include "machine/events.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::credentials {

namespace fs = std::filesystem;

namespace {

// At most this much of a login's JSON file is read.
constexpr std::size_t max_login_file = 64 * 1024;

struct accepted_prefix {
    std::string_view prefix;
    std::string_view variable;
};

// What each tool's credential looks like, and the variable each form is exported as. A tool's
// CLI reads these itself: Claude Code CLAUDE_CODE_OAUTH_TOKEN (what `claude setup-token` prints)
// or ANTHROPIC_API_KEY, Codex OPENAI_API_KEY, gh GH_TOKEN (before its stored credentials).
struct tool_rule {
    std::string_view tool;
    std::vector<accepted_prefix> prefixes;
    std::string_view refused_prefix;  // looks like the tool's prefix but is another service's
    std::string_view expected;        // for the message when no prefix matches
    std::string_view hex40_variable;  // non-empty: a classic 40-hex token is accepted too
};

const std::vector<tool_rule>& rules() {
    static const std::vector<tool_rule> all{
        {"claude",
         {{"sk-ant-oat", "CLAUDE_CODE_OAUTH_TOKEN"}, {"sk-ant-api", "ANTHROPIC_API_KEY"}},
         {},
         "a long-lived OAuth token from `claude setup-token` (sk-ant-oat...) or an Anthropic API key (sk-ant-api...)",
         {}},
        {"codex",
         {{"sk-", "OPENAI_API_KEY"}},
         "sk-ant-",  // an Anthropic key is not OpenAI's
         "an OpenAI API key (sk-...)",
         {}},
        {"gh",
         {{"ghp_", "GH_TOKEN"},
          {"gho_", "GH_TOKEN"},
          {"ghu_", "GH_TOKEN"},
          {"ghs_", "GH_TOKEN"},
          {"ghr_", "GH_TOKEN"},
          {"github_pat_", "GH_TOKEN"}},
         {},
         "a GitHub token (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_, or a classic token of 40 hex digits)",
         "GH_TOKEN"},
    };
    return all;
}

const tool_rule& rule_for(std::string_view tool) {
    for (const auto& r : rules())
        if (r.tool == tool) return r;
    throw usage_error("unknown tool '" + text::escape_for_terminal(tool) + "' (expected claude, codex or gh)");
}

bool is_hex40(std::string_view v) {
    if (v.size() != 40) return false;
    for (char c : v)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

// The variable a source's value is read as, in provider messages ("`op read ...` (for gh_token)").
std::string provider_name(std::string_view tool) { return std::string(tool) + "_token"; }

std::string shown(const fs::path& p) { return text::escape_for_terminal(p.string()); }

[[noreturn]] void refuse(const fs::path& p, const std::string& why) {
    throw error("refusing " + shown(p) + ": " + why + " (machine keeps its credentials in files of its own only)");
}

// Refuses what is at `p` unless it is nothing, or a `want_dir` directory / a regular file this
// user owns. A symlink is refused, never followed. True when something is there.
bool check_own(const fs::path& p, bool want_dir) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) {
        if (errno == ENOENT) return false;
        throw error("cannot inspect " + shown(p) + ": " + std::strerror(errno));
    }
    if (S_ISLNK(st.st_mode)) refuse(p, "it is a symbolic link");
    if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
        refuse(p, want_dir ? "not a directory" : "not a regular file");
    if (st.st_uid != ::geteuid()) refuse(p, "another user owns it");
    return true;
}

// The credentials directory, made (0700) when missing; an existing one others could read is
// made private again.
void ensure_dir(const fs::path& dir) {
    if (!check_own(dir, true)) {
        fs::create_directories(dir.parent_path());
        if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
            throw error("cannot create " + shown(dir) + ": " + std::strerror(errno));
        check_own(dir, true);  // whoever won a race, it must be ours
    }
    struct stat st {};
    if (::lstat(dir.c_str(), &st) == 0 && (st.st_mode & 077) != 0 && ::chmod(dir.c_str(), 0700) != 0)
        throw error("cannot make " + shown(dir) + " private: " + std::strerror(errno));
}

// A file of ours, read without following a symlink; nullopt when it does not exist.
std::optional<std::string> read_own_file(const fs::path& p, std::size_t max) {
    const int fd = ::open(p.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) return std::nullopt;
        if (errno == ELOOP) refuse(p, "it is a symbolic link");
        throw error("cannot read " + shown(p) + ": " + std::strerror(errno));
    }
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } close_fd{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw error("cannot read " + shown(p) + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) refuse(p, "not a regular file");
    if (st.st_uid != ::geteuid()) refuse(p, "another user owns it");
    if (static_cast<std::uintmax_t>(st.st_size) > max) refuse(p, "larger than " + std::to_string(max) + " bytes");
    std::string out(static_cast<std::size_t>(st.st_size), '\0');
    std::size_t got = 0;
    while (got < out.size()) {
        const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int e = errno;
            secrets::wipe(out);
            throw error("cannot read " + shown(p) + ": " + std::strerror(e));
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    out.resize(got);
    return out;
}

std::string to_json(const login& l) {
    nlohmann::ordered_json j{{"tool", l.tool}, {"variable", l.variable}, {"kind", kind_name(l.kind)}};
    if (l.kind == source_kind::op) j["op_reference"] = l.op_reference;
    if (l.kind == source_kind::command) j["argv"] = l.argv;
    j["set_at"] = l.set_at;
    return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

login from_json(const std::string& text, const fs::path& file, std::string_view tool) {
    const auto bad = [&](const std::string& what) -> error {
        return error(shown(file) + ": " + what + " (`machine logout " + std::string(tool) + "` removes it)");
    };
    const auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_object()) throw bad("not a login file");
    login l;
    const auto str = [&](const char* key) -> std::string {
        const auto it = j.find(key);
        if (it == j.end() || !it->is_string()) throw bad(std::string("no string \"") + key + "\"");
        return it->get<std::string>();
    };
    l.tool = str("tool");
    if (l.tool != tool) throw bad("it is another tool's");
    l.variable = str("variable");
    l.set_at = str("set_at");
    const std::string kind = str("kind");
    if (kind == "stored") {
        l.kind = source_kind::stored;
    } else if (kind == "op") {
        l.kind = source_kind::op;
        l.op_reference = str("op_reference");
    } else if (kind == "command") {
        l.kind = source_kind::command;
        const auto it = j.find("argv");
        if (it == j.end() || !it->is_array() || it->empty()) throw bad("no \"argv\"");
        for (const auto& a : *it) {
            if (!a.is_string()) throw bad("\"argv\" holds a non-string");
            l.argv.push_back(a.get<std::string>());
        }
    } else {
        throw bad("unknown kind");
    }
    return l;
}

// The source of a login as the secrets providers read it: one value, named for messages.
secrets::source provider_source(std::string_view tool, source_kind kind, const std::string& op_reference,
                                const std::vector<std::string>& argv) {
    secrets::source src;
    src.name = provider_name(tool);
    if (kind == source_kind::op) {
        src.kind = secret_kind::op_reference;
        src.id_or_ref_or_path = op_reference;
    } else {
        src.kind = secret_kind::command;
        src.argv = argv;
    }
    return src;
}

// Reads an op or command source's value once (the provider already took one final "\n" off).
asio::awaitable<std::string> read_source(secrets::source src, fs::path op_binary) {
    std::vector<secrets::variable> vars = co_await secrets::read(std::move(src), std::move(op_binary));
    std::string value;
    if (!vars.empty()) value.swap(vars.front().value);
    secrets::wipe(vars);
    if (!value.empty() && value.back() == '\r') value.pop_back();
    co_return value;
}

std::string now() { return events::format_timestamp(std::chrono::system_clock::now()); }

// Wipes a string when the scope ends, whatever happens.
struct wipe_on_exit {
    std::string& s;
    ~wipe_on_exit() { secrets::wipe(s); }
};

} // namespace

std::string check_token(std::string_view tool, std::string_view value) {
    const tool_rule& rule = rule_for(tool);
    const std::string what = std::string(tool) + ": the token given (" + std::to_string(value.size()) + " bytes) ";
    const auto refused = [&](const std::string& why) {
        return usage_error(what + why + "; nothing was stored");
    };
    if (value.empty()) throw usage_error(std::string(tool) + ": the token given is empty; nothing was stored");
    if (value.size() > max_token_bytes)
        throw refused("is longer than " + std::to_string(max_token_bytes) + " bytes");
    for (const char c : value) {
        const auto b = static_cast<unsigned char>(c);
        if (b >= 0x80) throw refused("contains a non-ASCII character");
        if (b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f')
            throw refused("contains whitespace");
        if (b < 0x20 || b == 0x7F) throw refused("contains a control character");
    }
    if (!rule.refused_prefix.empty() && value.starts_with(rule.refused_prefix))
        throw refused("looks like another service's key (" + std::string(rule.refused_prefix) + "...), expected " +
                      std::string(rule.expected));
    for (const auto& p : rule.prefixes)
        if (value.starts_with(p.prefix) && value.size() > p.prefix.size()) return std::string(p.variable);
    if (!rule.hex40_variable.empty() && is_hex40(value)) return std::string(rule.hex40_variable);
    throw refused("does not have the form of " + std::string(rule.expected));
}

void trim_line_end(std::string& value) {
    if (!value.empty() && value.back() == '\n') value.pop_back();
    if (!value.empty() && value.back() == '\r') value.pop_back();
}

std::string_view kind_name(source_kind kind) {
    switch (kind) {
    case source_kind::stored: return "stored";
    case source_kind::op: return "op";
    case source_kind::command: return "command";
    }
    return "stored";
}

store::store(fs::path dir) : dir_(std::move(dir)) {}

store store::at_default() { return store(paths::state_dir() / "credentials"); }

std::optional<login> store::find(std::string_view tool) const {
    rule_for(tool);
    if (!check_own(dir_, true)) return std::nullopt;
    const fs::path file = dir_ / (std::string(tool) + ".json");
    const auto text = read_own_file(file, max_login_file);
    if (!text) return std::nullopt;
    return from_json(*text, file, tool);
}

void store::save(const login& l, std::string_view value) {
    rule_for(l.tool);
    ensure_dir(dir_);
    const fs::path json = dir_ / (l.tool + ".json");
    const fs::path token = dir_ / (l.tool + ".token");
    check_own(json, false);
    check_own(token, false);
    // The value first: until the JSON is replaced, a previous login stays whole (a stored one's
    // old value is replaced by the new one at once, which is what was asked).
    if (l.kind == source_kind::stored) paths::write_file_atomic(token, value, 0600);
    paths::write_file_atomic(json, to_json(l), 0600);
    // A login that no longer stores its value leaves none behind. Overwriting the old file before
    // the unlink would not reach the copies a filesystem (journal, snapshots, SSD remapping) keeps.
    if (l.kind != source_kind::stored && ::unlink(token.c_str()) != 0 && errno != ENOENT)
        throw error("cannot remove " + shown(token) + ": " + std::strerror(errno));
}

bool store::remove(std::string_view tool) {
    rule_for(tool);
    if (!check_own(dir_, true)) return false;
    const fs::path json = dir_ / (std::string(tool) + ".json");
    const fs::path token = dir_ / (std::string(tool) + ".token");
    const bool had_json = check_own(json, false);
    const bool had_token = check_own(token, false);
    for (const auto& p : {token, json})
        if (::unlink(p.c_str()) != 0 && errno != ENOENT)
            throw error("cannot remove " + shown(p) + ": " + std::strerror(errno));
    return had_json || had_token;
}

std::string store::read_stored(std::string_view tool) const {
    rule_for(tool);
    check_own(dir_, true);
    const fs::path token = dir_ / (std::string(tool) + ".token");
    auto value = read_own_file(token, max_token_bytes + 2);
    if (!value)
        throw error(std::string(tool) + ": the stored token " + shown(token) + " is missing (run `machine login " +
                    std::string(tool) + "` again)");
    return std::move(*value);
}

asio::awaitable<login> log_in(store& s, request r, fs::path op_binary) {
    wipe_on_exit guard{r.value};
    rule_for(r.tool);
    login l;
    l.tool = r.tool;
    l.kind = r.kind;
    if (r.kind == source_kind::stored) {
        trim_line_end(r.value);
        l.variable = check_token(r.tool, r.value);
    } else {
        l.op_reference = r.op_reference;
        l.argv = r.argv;
        // Read once now, so that a source that fails or gives a malformed token is refused here
        // rather than at the next `up`; its value is not kept.
        secrets::source src = provider_source(r.tool, r.kind, r.op_reference, r.argv);
        std::string value;
        wipe_on_exit value_guard{value};
        try {
            value = co_await read_source(std::move(src), op_binary);
        } catch (const secrets::provider_error& e) {
            throw secrets::provider_error(r.tool + ": " + e.what() + "; nothing was stored" +
                                          (s.find(r.tool) ? ", the previous login is kept" : ""));
        }
        l.variable = check_token(r.tool, value);
    }
    l.set_at = now();
    s.save(l, r.value);
    co_return l;
}

asio::awaitable<std::string> read_value(const store& s, const login& l, fs::path op_binary) {
    std::string value;
    if (l.kind == source_kind::stored) {
        value = s.read_stored(l.tool);
        trim_line_end(value);
    } else {
        value = co_await read_source(provider_source(l.tool, l.kind, l.op_reference, l.argv), std::move(op_binary));
    }
    try {
        check_token(l.tool, value);
    } catch (...) {
        secrets::wipe(value);
        throw;
    }
    co_return value;
}

asio::awaitable<std::vector<secrets::variable>> resolve_credentials(
    const store& s, const std::optional<std::vector<std::string>>& allowed, fs::path op_binary) {
    std::vector<secrets::variable> out;
    try {
        for (const auto tool : agent_tools) {
            if (allowed && std::find(allowed->begin(), allowed->end(), tool) == allowed->end()) continue;
            const std::optional<login> l = s.find(tool);
            if (!l) continue;
            secrets::variable v;
            v.value = co_await read_value(s, *l, op_binary);
            v.name = check_token(tool, v.value);
            out.push_back(std::move(v));
        }
    } catch (...) {
        secrets::wipe(out);
        throw;
    }
    co_return out;
}

} // namespace machine::credentials
