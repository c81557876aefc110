// `machine create [NAME]`: the questions that make a project table (the reference tool's wizard:
// repos, profiles, shell, cpus, memory, disk), each answer checked by the rule projects.toml's
// loader applies to that key. Internal to the CLI module; the table is written by
// config::add_project.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "cli.hpp"
#include "machine/config.hpp"

namespace machine::cli {

/// What `machine create`'s command line gave: values as typed, checked like answers.
struct create_options {
    std::optional<std::string> name;
    std::vector<std::string> repos;     ///< --repo, in order; the first is the primary repo
    std::vector<std::string> profiles;  ///< --profile, in order ("none": no profiles at all)
    std::optional<std::string> shell;
    std::optional<std::string> cpus;
    std::optional<std::string> memory;
    std::optional<std::string> disk;
    bool yes = false;  ///< ask nothing: the defaults for what no flag gives
};

/// The terminal, for the wizard: `ask` shows a prompt and returns the line typed (nullopt at end
/// of input); `say` shows one line. Both get text the wizard made: it escapes what came from
/// the user.
struct questioner {
    std::function<std::optional<std::string>(const std::string& prompt)> ask;
    std::function<void(const std::string& line)> say;
};

/// What the answers are checked against.
struct create_context {
    config::settings defaults;                            ///< projects.toml's settings
    std::filesystem::path projects_file;                  ///< for "Creating [web] in ..."
    std::function<bool(const std::string&)> taken;        ///< a project of that name exists
    std::vector<std::string> profiles;                    ///< the profiles there are
    /// Why these profiles cannot be used ("" when they can): unknown, or requiring each other in
    /// a cycle (provision::resolve_profiles).
    std::function<std::string(const std::vector<std::string>&)> profiles_problem;
};

/// The table to write. Flags answer their questions (a bad value is a usage_error naming the
/// flag); with `yes` nothing is asked and what no flag gave is left to the defaults; otherwise
/// every other question is asked through `q`, its default shown, and a bad answer is asked
/// again with the reason. An answer typed (or a flag given) is written even when it equals the
/// default; a question left empty takes the default and writes nothing. End of input is an
/// error (nothing is written).
config::project_draft draft_project(const create_options& opt, const create_context& ctx, const questioner* q);

/// `machine create`: the draft from flags and questions (on standard input, which must be a
/// terminal unless `yes`), added to projects.toml; prints the table and where it went.
asio::awaitable<int> cmd_create(context& ctx, create_options opt);

/// The profiles an answer names: split at commas and whitespace; "none" alone is none.
std::vector<std::string> split_profiles(const std::string& answer);

} // namespace machine::cli
