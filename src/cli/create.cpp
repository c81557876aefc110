// `machine create [NAME]`: asks what the reference tool's wizard asked (repos, profiles, shell,
// cpus, memory, disk), or takes it from flags (--yes for scripts), and adds the project's table
// to projects.toml (config::add_project), never over an existing project.
#include "create.hpp"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>

#include "cli.hpp"
#include "machine/paths.hpp"
#include "machine/provision.hpp"
#include "machine/text.hpp"
#include "machine/vm.hpp"

namespace machine::cli {

namespace {

std::string joined(const std::vector<std::string>& words, const char* separator = ", ") {
    std::string out;
    for (const auto& w : words) out += (out.empty() ? "" : separator) + w;
    return out;
}

// A value from the user, quoted for a message: escaped, so nothing typed reaches the terminal raw.
std::string in_quotes(std::string_view s) { return "\"" + text::escape_for_terminal(s) + "\""; }

std::string ask(const questioner& q, const std::string& prompt) {
    auto answer = q.ask(prompt);
    if (!answer) throw error("no answer (end of input); nothing was written");
    return text::trim(*answer);
}

// What a typed value means for one key, or why it cannot be used.
template <typename T>
using rule = std::function<std::string(const std::string& typed, T& value)>;

// One question: the flag's value when given (a bad one is a usage_error naming the flag);
// else nothing without a questioner (--yes); else the answer, asked until it passes `check`.
// Nothing (the default) when the answer is empty.
template <typename T>
std::optional<T> settle(const std::optional<std::string>& flag_value, const std::string& flag, const std::string& prompt,
                        const questioner* q, const rule<T>& check) {
    T value{};
    if (flag_value) {
        if (const std::string problem = check(*flag_value, value); !problem.empty())
            throw usage_error(flag + ": " + problem);
        return value;
    }
    if (!q) return std::nullopt;
    for (;;) {
        const std::string answer = ask(*q, prompt);
        if (answer.empty()) return std::nullopt;
        if (const std::string problem = check(answer, value); problem.empty()) return value;
        else q->say("machine: " + problem);
    }
}

std::string name_problem(const create_context& ctx, const std::string& name) {
    try {
        text::require_valid_project_name(name);
    } catch (const usage_error& e) {
        return e.what();
    }
    if (ctx.taken(name))
        return ctx.projects_file.string() + ": there is a project [" + name + "] already; edit it there, or choose another name";
    return {};
}

std::string profiles_check(const create_context& ctx, const std::vector<std::string>& names) {
    for (const auto& n : names)
        if (std::string problem = config::profile_problem(n); !problem.empty()) return problem;
    return ctx.profiles_problem(names);
}

std::string cpus_check(const std::string& typed, int& value) {
    long long n = 0;
    const auto [end, ec] = std::from_chars(typed.data(), typed.data() + typed.size(), n);
    if (ec != std::errc() || end != typed.data() + typed.size()) return "expected a whole number, got " + in_quotes(typed);
    if (std::string problem = config::cpus_problem(n); !problem.empty()) return problem;
    value = static_cast<int>(n);
    return {};
}

std::string size_check(const std::string& typed, std::string& value) {
    if (std::string problem = config::size_problem(typed); !problem.empty()) return problem;
    value = *config::normalize_size(typed);
    return {};
}

} // namespace

std::vector<std::string> split_profiles(const std::string& answer) {
    std::vector<std::string> out;
    std::string word;
    for (const char c : answer + ",") {
        if (c == ',' || c == ' ' || c == '\t') {
            if (!word.empty()) out.push_back(word);
            word.clear();
        } else {
            word += c;
        }
    }
    if (out.size() == 1 && out.front() == "none") out.clear();
    return out;
}

config::project_draft draft_project(const create_options& opt, const create_context& ctx, const questioner* q) {
    config::project_draft d;

    // The name first: everything else is about it.
    if (opt.name) {
        if (std::string problem = name_problem(ctx, *opt.name); !problem.empty()) {
            if (ctx.taken(*opt.name)) throw config::config_error(problem);
            throw usage_error(problem);
        }
        d.name = *opt.name;
    } else if (!q) {
        throw usage_error("machine create --yes needs the project's NAME");
    } else {
        for (;;) {
            d.name = ask(*q, "Project name (a-z, 0-9, hyphen): ");
            const std::string problem = d.name.empty() ? "a name is needed" : name_problem(ctx, d.name);
            if (problem.empty()) break;
            q->say("machine: " + problem);
        }
    }
    const config::project defaults = ctx.defaults.defaults_for(d.name);
    if (q) q->say("Creating [" + d.name + "] in " + text::escape_for_terminal(ctx.projects_file.string()));

    // Repos: cloned in order into ~/code/<repo>; the first is where ssh, run and the agents start.
    if (!opt.repos.empty()) {
        for (const auto& url : opt.repos) {
            if (std::string problem = config::repo_problem(url); !problem.empty()) throw usage_error("--repo: " + problem);
            d.repos.push_back(url);
        }
    } else if (q) {
        for (;;) {
            const std::string prompt = "Repo URL #" + std::to_string(d.repos.size() + 1) +
                                       (d.repos.empty() ? " (the primary one; Enter for none): " : " (Enter to finish): ");
            const std::string url = ask(*q, prompt);
            if (url.empty()) break;
            if (std::string problem = config::repo_problem(url); !problem.empty())
                q->say("machine: " + problem);
            else
                d.repos.push_back(url);
        }
    }

    // Profiles: the flags together are one answer.
    const std::vector<std::string>& default_profiles =
        defaults.builtin_profiles ? provision::default_profiles() : defaults.profiles;
    std::optional<std::string> profiles_flag;
    if (!opt.profiles.empty()) profiles_flag = joined(opt.profiles, ",");
    if (q && !profiles_flag) q->say("Available profiles: " + joined(ctx.profiles));
    const rule<std::vector<std::string>> profiles_rule = [&ctx](const std::string& typed, std::vector<std::string>& v) {
        v = split_profiles(typed);
        return profiles_check(ctx, v);
    };
    d.profiles = settle(profiles_flag, "--profile",
                        "Profiles (comma-separated, 'none' for none) [" + joined(default_profiles) + "]: ", q,
                        profiles_rule);

    const rule<std::string> shell_rule = [](const std::string& typed, std::string& v) {
        v = typed;
        return config::shell_problem(typed);
    };
    d.shell = settle(opt.shell, "--shell", "Shell (zsh/bash) [" + defaults.shell + "]: ", q, shell_rule);
    d.cpus = settle<int>(opt.cpus, "--cpus", "CPUs [" + std::to_string(defaults.cpus) + "]: ", q, cpus_check);
    d.memory = settle<std::string>(opt.memory, "--memory", "Memory (8 = 8GiB; or 512MiB...) [" + defaults.memory + "]: ",
                                   q, size_check);
    d.disk = settle<std::string>(opt.disk, "--disk", "Disk (grows only) [" + defaults.disk + "]: ", q, size_check);
    return d;
}

namespace {

// Longer answers are refused (asked again) rather than cut: a cut URL could still be valid.
constexpr std::size_t max_answer_bytes = 4096;

// One line from standard input, read a byte at a time so that nothing after it is consumed;
// nullopt at end of input. Ctrl-C (SIGINT, caught by machine's signal set, interrupts the read)
// is interrupted_error.
std::optional<std::string> read_line(bool& too_long) {
    std::string line;
    too_long = false;
    for (;;) {
        char c = 0;
        const ssize_t n = ::read(STDIN_FILENO, &c, 1);
        if (n < 0 && errno == EINTR) throw interrupted_error();
        if (n < 0) throw error(std::string("cannot read the answer: ") + std::strerror(errno));
        if (n == 0) return line.empty() ? std::nullopt : std::optional(line);
        if (c == '\n') return line;
        if (line.size() < max_answer_bytes) line += c;
        else too_long = true;
    }
}

questioner terminal_questioner() {
    questioner q;
    q.say = [](const std::string& line) {
        std::fprintf(stderr, "%s\n", text::sanitize_for_terminal(line).c_str());
    };
    q.ask = [say = q.say](const std::string& prompt) -> std::optional<std::string> {
        for (;;) {
            std::fprintf(stderr, "%s", text::sanitize_for_terminal(prompt).c_str());
            std::fflush(stderr);
            bool too_long = false;
            auto line = read_line(too_long);
            if (!line) std::fputc('\n', stderr);
            if (!too_long) return line;
            say("machine: that answer is longer than " + std::to_string(max_answer_bytes) + " bytes");
        }
    };
    return q;
}

} // namespace

asio::awaitable<int> cmd_create(context&, create_options opt) {
    if (!opt.yes && !stdin_is_terminal())
        throw usage_error("machine create asks its questions on a terminal, and standard input is not one: pass --yes "
                          "(with --repo, --profile, --shell, --cpus, --memory, --disk for what to set)");
    const std::filesystem::path file = paths::config_dir() / "projects.toml";
    // A projects.toml that does not load stops here, before any question: its own error.
    const config::config existing = config::load_projects_file(file);
    const provision::catalog catalog = vm::load_catalog();
    create_context c;
    c.defaults = existing.defaults;
    c.projects_file = file;
    c.taken = [&existing](const std::string& name) { return existing.projects.count(name) > 0; };
    c.profiles = catalog.names();
    c.profiles_problem = [&catalog](const std::vector<std::string>& names) -> std::string {
        try {
            provision::resolve_profiles(catalog, names, [](std::size_t i) { return "profile #" + std::to_string(i + 1); });
            return {};
        } catch (const config::config_error& e) {
            return e.what();
        }
    };
    const questioner q = terminal_questioner();
    const config::project_draft draft = draft_project(opt, c, opt.yes ? nullptr : &q);
    const config::added_project added = config::add_project(file, draft);
    std::printf("%s\n", text::sanitize_for_terminal(added.table).c_str());
    std::printf("%s\n", text::sanitize_for_terminal((added.created ? "created " : "wrote [" + draft.name + "] to ") +
                                                    added.file.string() +
                                                    (added.created ? " with [" + draft.name + "]" : "") +
                                                    ": run 'machine up " + draft.name + "' to create and start it")
                            .c_str());
    co_return 0;
}

} // namespace machine::cli
