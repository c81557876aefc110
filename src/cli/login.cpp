// `machine login TOOL [--with-token | --from-op REF | --from-command -- CMD...]`, `machine login
// --status` and `machine logout TOOL`: the agents' logins kept on this computer
// (include/machine/credentials.hpp). A token is asked at a hidden prompt, or read from stdin;
// nothing here prints, logs or passes on a value: only tools, variables, sources and times.
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "machine/credentials.hpp"
#include "machine/platform.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::cli {

using asio::awaitable;
namespace cred = credentials;

namespace {

// The `op` that `machine secrets` runs too: looked up in PATH.
const char* const op_binary = "op";

// Wipes a string when the scope ends, whatever happens.
struct wipe_on_exit {
    std::string& s;
    ~wipe_on_exit() { secrets::wipe(s); }
};

[[noreturn]] void too_long(const std::string& tool) {
    throw usage_error(tool + ": the token given is longer than " + std::to_string(cred::max_token_bytes) +
                      " bytes; nothing was stored");
}

// Standard input to its end, as `gh auth login --with-token` reads it. Reading stops past the
// longest token (and a line end): more is an error, not a reason to buffer it.
std::string read_token_from_stdin(const std::string& tool) {
    std::string value;
    value.reserve(cred::max_token_bytes + 3);  // never reallocated: no stray copy of a part of it
    char buf[512];
    for (;;) {
        const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            secrets::wipe(value);
            throw error(tool + ": cannot read the token from standard input: " + std::strerror(errno));
        }
        if (n == 0) break;
        if (value.size() + static_cast<std::size_t>(n) > cred::max_token_bytes + 2) {
            secrets::wipe(value);
            platform::wipe_memory(buf, sizeof buf);
            too_long(tool);
        }
        value.append(buf, static_cast<std::size_t>(n));
    }
    platform::wipe_memory(buf, sizeof buf);
    return value;
}

// Asks for the token on the terminal without echoing it. The terminal is put into
// non-canonical mode (a canonical line holds at most 4095 bytes, shorter than a token may be)
// without signals, so Ctrl-C arrives here as a byte: the terminal's settings are restored
// before anything is thrown, and on every other way out.
std::string read_hidden_token(const std::string& tool, const std::string& prompt) {
    termios saved{};
    if (::tcgetattr(STDIN_FILENO, &saved) != 0)
        throw error(tool + ": cannot read the terminal's settings: " + std::strerror(errno));
    termios hidden = saved;
    hidden.c_lflag &= static_cast<tcflag_t>(~(ECHO | ICANON | ISIG | IEXTEN));
    hidden.c_iflag &= static_cast<tcflag_t>(~(IXON | ICRNL));
    hidden.c_cc[VMIN] = 1;
    hidden.c_cc[VTIME] = 0;
    struct restore {
        const termios& saved;
        ~restore() {
            ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
            std::fputc('\n', stderr);
        }
    };
    std::string value;
    value.reserve(cred::max_token_bytes + 2);  // never reallocated (see read_token_from_stdin)
    {
        if (::tcsetattr(STDIN_FILENO, TCSAFLUSH, &hidden) != 0)
            throw error(tool + ": cannot switch the terminal's echo off: " + std::strerror(errno));
        restore guard{saved};
        std::fputs(prompt.c_str(), stderr);
        std::fflush(stderr);
        bool over = false;
        for (;;) {
            char c = 0;
            const ssize_t n = ::read(STDIN_FILENO, &c, 1);
            if (n < 0 && errno != EINTR) {
                secrets::wipe(value);
                throw error(tool + ": cannot read the terminal: " + std::strerror(errno));
            }
            if (n < 0 || c == 0x03) {  // a signal, or Ctrl-C
                secrets::wipe(value);
                throw interrupted_error();
            }
            if (n == 0 || c == '\r' || c == '\n' || (c == 0x04 && value.empty())) break;  // EOF, Enter, Ctrl-D
            if (c == 0x7F || c == 0x08) {  // backspace
                if (!value.empty()) {
                    value.back() = '\0';
                    value.pop_back();
                }
            } else if (c == 0x15) {  // Ctrl-U: start again
                secrets::zero_in_place(value);
                value.clear();
                over = false;
            } else if (value.size() <= cred::max_token_bytes) {
                value.push_back(c);
            } else {
                over = true;
            }
            c = 0;
        }
        if (over) {
            secrets::wipe(value);
            too_long(tool);
        }
    }
    return value;
}

std::string prompt_for(const std::string& tool) {
    if (tool == "claude")
        return "Paste Claude Code's token (from `claude setup-token`) or an Anthropic API key (input hidden): ";
    if (tool == "codex") return "Paste an OpenAI API key for Codex (input hidden): ";
    return "Paste a GitHub token for gh (input hidden): ";
}

// A command line as the user would type it, each word quoted where a shell needs it, and
// escaped so that nothing in it reaches the terminal raw.
std::string shown_argv(const std::vector<std::string>& argv) {
    std::string out;
    for (const auto& word : argv) out += (out.empty() ? "" : " ") + text::shell_quote(word);
    return text::escape_for_terminal(out);
}

std::string source_text(const cred::store& s, const cred::login& l) {
    switch (l.kind) {
    case cred::source_kind::stored: return "stored in " + text::escape_for_terminal((s.dir() / (l.tool + ".token")).string());
    case cred::source_kind::op: return "1Password " + text::escape_for_terminal(l.op_reference) + ", read at each use";
    case cred::source_kind::command: return "the command `" + shown_argv(l.argv) + "`, run at each use";
    }
    return {};
}

nlohmann::ordered_json login_json(const std::string& tool, const std::optional<cred::login>& l) {
    nlohmann::ordered_json j{{"tool", tool}, {"logged_in", l.has_value()}};
    if (!l) return j;
    j["variable"] = l->variable;
    j["source"] = cred::kind_name(l->kind);
    if (l->kind == cred::source_kind::op) j["op_reference"] = l->op_reference;
    if (l->kind == cred::source_kind::command) j["argv"] = l->argv;
    j["set_at"] = l->set_at;
    return j;
}

void print_json(const nlohmann::ordered_json& j) {
    const std::string line = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
}

// `--status`: per tool, logged in or not, the variable, where the value comes from and when it
// was set; a login file that is refused (a symlink, malformed) is said and makes the exit 1.
int print_status(context& ctx, const cred::store& s) {
    int code = 0;
    std::string out;
    if (!ctx.json) out = fmt::format("{:<7} {:<14} {:<24} {:<25} {}\n", "TOOL", "STATUS", "VARIABLE", "SET", "SOURCE");
    for (const auto tool_view : agent_tools) {
        const std::string tool(tool_view);
        std::optional<cred::login> l;
        std::string problem;
        try {
            l = s.find(tool);
        } catch (const error& e) {
            problem = text::sanitize_for_terminal(e.what());
            code = 1;
        }
        if (ctx.json) {
            auto j = login_json(tool, l);
            if (!problem.empty()) j["error"] = problem;
            print_json(j);
        } else if (!problem.empty()) {
            out += fmt::format("{:<7} {:<14} {}\n", tool, "unreadable", problem);
        } else if (!l) {
            out += fmt::format("{:<7} {:<14} {:<24} {:<25} machine login {}\n", tool, "not logged in", "-", "-", tool);
        } else {
            out += fmt::format("{:<7} {:<14} {:<24} {:<25} {}\n", tool, "logged in", text::escape_for_terminal(l->variable),
                               text::escape_for_terminal(l->set_at), source_text(s, *l));
        }
    }
    // What the VM of the project here (the directory's .machine.toml, else "default") receives.
    try {
        const config::project p = ctx.cfg().resolve(ctx.cfg().ambient_project());
        const std::vector<std::string> tools = vm::credentials_for(p, s);
        if (ctx.json) {
            print_json({{"project", p.name}, {"receives", tools}});
        } else {
            std::string list;
            for (const auto& t : tools) list += (list.empty() ? "" : ", ") + t;
            out += "\nproject '" + p.name + "'" +
                  (p.agent_auth ? " (agent_auth in " + text::escape_for_terminal(p.source.empty() ? "projects.toml" : p.source.string()) + ")"
                                : "") +
                  ": its VM receives " + (list.empty() ? std::string("no login") : list) +
                  " at `machine up`, at each attach and after a boot\n";
        }
    } catch (const error& e) {
        out += "\nwhat a project's VM receives: " + text::sanitize_for_terminal(e.what()) + "\n";
        code = 1;
    }
    if (!ctx.json) std::fwrite(out.data(), 1, out.size(), stdout);
    return code;
}

} // namespace

awaitable<int> cmd_login(context& ctx, login_options opt) {
    cred::store store = cred::store::at_default();
    if (opt.status) co_return print_status(ctx, store);
    if (!opt.tool) throw usage_error("machine login needs a tool: claude, codex or gh (or --status)");
    const std::string tool = *opt.tool;
    if (!opt.argv.empty() && !opt.from_command)
        throw usage_error("login " + tool + ": a command line was given without --from-command");
    if (opt.from_command && opt.argv.empty())
        throw usage_error("login " + tool + ": --from-command needs the command after --: machine login " + tool +
                          " --from-command -- CMD [ARGS...]");

    cred::request request;
    request.tool = tool;
    if (opt.from_op) {
        request.kind = cred::source_kind::op;
        request.op_reference = *opt.from_op;
    } else if (opt.from_command) {
        request.kind = cred::source_kind::command;
        request.argv = opt.argv;
    } else if (opt.with_token) {
        request.value = read_token_from_stdin(tool);
    } else if (stdin_is_terminal()) {
        request.value = read_hidden_token(tool, prompt_for(tool));
    } else {
        throw usage_error("login " + tool + ": no terminal to ask for the token on: pipe it in with --with-token, or "
                          "give --from-op REF or --from-command -- CMD...");
    }
    wipe_on_exit guard{request.value};
    const cred::login l = co_await cred::log_in(store, std::move(request), op_binary);
    if (ctx.json) {
        print_json(login_json(tool, l));
    } else {
        const std::string line = tool + ": logged in (" + l.variable + ", " + source_text(store, l) +
                                 "); `machine logout " + tool + "` removes it\n";
        std::fwrite(line.data(), 1, line.size(), stdout);
    }
    co_return 0;
}

awaitable<int> cmd_logout(context& ctx, std::string tool) {
    cred::store store = cred::store::at_default();
    const bool removed = store.remove(tool);
    // Then from every running VM, each on its own: one that cannot be reached is said, and gets
    // nothing at its next attach or boot (the login is gone from this computer).
    const std::vector<vm::removal_reach> vms = co_await vm::remove_credentials_everywhere(ctx.vm(), tool);
    if (ctx.json) {
        nlohmann::ordered_json reached = nlohmann::ordered_json::array(), missed = nlohmann::ordered_json::array();
        for (const auto& r : vms) {
            if (r.reached) reached.push_back(r.vm);
            else missed.push_back({{"vm", r.vm}, {"error", r.problem}});
        }
        print_json({{"tool", tool}, {"removed", removed}, {"vms_reached", reached}, {"vms_not_reached", missed}});
    } else {
        std::string line = removed ? tool + ": logged out (removed from " +
                                         text::escape_for_terminal(store.dir().string()) + ")"
                                   : tool + ": not logged in on this computer";
        std::string reached, missed;
        for (const auto& r : vms) {
            if (r.reached) reached += (reached.empty() ? "" : ", ") + r.vm;
            else missed += "\n  not reached: " + r.vm + ": " + r.problem;
        }
        if (!reached.empty()) line += "; removed from the running VMs: " + reached;
        else if (missed.empty()) line += "; no running VM";
        line += missed + "\n";
        std::fwrite(line.data(), 1, line.size(), stdout);
    }
    co_return std::all_of(vms.begin(), vms.end(), [](const vm::removal_reach& r) { return r.reached; }) ? 0 : 1;
}

} // namespace machine::cli
