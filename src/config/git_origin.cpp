// Reading the origin remote ourselves keeps loading the configuration free of subprocesses:
// it is a pure read of two or three small files.
#include "git_origin.hpp"

#include "machine/text.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <system_error>

namespace machine::config::detail {

namespace fs = std::filesystem;

namespace {

std::optional<std::string> read_small_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string lowercase(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

std::string_view trim_left(std::string_view s) {
    const auto first = s.find_first_not_of(" \t");
    return first == std::string_view::npos ? std::string_view() : s.substr(first);
}

// The repository directory for a work tree: `<dir>/.git`, or where a `.git` file points
// ("gitdir: <path>", relative to the work tree), in `dir` or the nearest directory above it.
std::optional<fs::path> find_git_dir(const fs::path& dir) {
    std::error_code ec;
    for (fs::path d = dir;; d = d.parent_path()) {
        const fs::path dot_git = d / ".git";
        if (fs::is_directory(dot_git, ec)) return dot_git;
        if (fs::is_regular_file(dot_git, ec)) {
            const auto content = read_small_file(dot_git);
            const std::string line = content ? text::trim(*content) : std::string();
            if (!line.starts_with("gitdir:")) return std::nullopt;
            return d / fs::path(text::trim(std::string_view(line).substr(7)));
        }
        if (d == d.parent_path()) return std::nullopt;
    }
}

// A linked worktree keeps its config in the main repository: `commondir` names it.
fs::path config_file_of(const fs::path& git_dir) {
    if (const auto common = read_small_file(git_dir / "commondir"))
        return git_dir / fs::path(text::trim(*common)) / "config";
    return git_dir / "config";
}

// `remote "origin"`, or the old `remote.origin` form. Section names are case-insensitive,
// subsection names in quotes are not.
bool is_origin_section(std::string_view header) {
    const auto open = header.find('"');
    if (open == std::string_view::npos) return lowercase(text::trim(header)) == "remote.origin";
    const auto close = header.rfind('"');
    std::string subsection;
    for (std::size_t i = open + 1; i < close; ++i) {
        if (header[i] == '\\' && i + 1 < close) ++i;
        subsection += header[i];
    }
    return lowercase(text::trim(header.substr(0, open))) == "remote" && subsection == "origin";
}

// A value as git reads it: quotes group, backslash escapes, `#` and `;` start a comment outside
// quotes, whitespace around the value is dropped. (Continuation lines, which git never writes
// itself, are not supported.)
std::string parse_value(std::string_view raw) {
    std::string out;
    std::size_t keep = 0;  // out's length up to its last character that is not trailing space
    bool in_quotes = false;
    for (std::size_t i = 0; i < raw.size(); ++i) {
        const char c = raw[i];
        if (!in_quotes && (c == '#' || c == ';')) break;
        if (c == '"') {
            in_quotes = !in_quotes;
            continue;
        }
        if (c == '\\' && i + 1 < raw.size()) {
            const char e = raw[++i];
            out += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'b' ? '\b' : e;
            keep = out.size();
            continue;
        }
        out += c;
        if (in_quotes || (c != ' ' && c != '\t')) keep = out.size();
    }
    out.resize(keep);
    return out;
}

} // namespace

std::optional<std::string> origin_url_in(std::string_view git_config) {
    std::optional<std::string> url;
    bool in_origin = false;
    for (const std::string& full_line : text::split_lines(git_config)) {
        std::string_view line = trim_left(full_line);
        if (line.starts_with('[')) {
            const auto close = line.find(']');
            if (close == std::string_view::npos) continue;
            in_origin = is_origin_section(line.substr(1, close - 1));
            line = trim_left(line.substr(close + 1));  // `[section] key = value` is allowed
        }
        if (!in_origin || line.empty() || line[0] == '#' || line[0] == ';') continue;
        const auto name_end = line.find_first_of("= \t");
        if (lowercase(line.substr(0, name_end)) != "url" || name_end == std::string_view::npos)
            continue;
        const std::string_view rest = trim_left(line.substr(name_end));
        if (!rest.starts_with('=')) continue;  // `url` alone would be a boolean
        url = parse_value(trim_left(rest.substr(1)));  // the last one wins, as in git
    }
    return url;
}

std::optional<git_remote> find_origin(const fs::path& dir) {
    const auto git_dir = find_git_dir(dir);
    if (!git_dir) return std::nullopt;
    const fs::path config_file = config_file_of(*git_dir);
    const auto content = read_small_file(config_file);
    if (!content) return std::nullopt;
    if (auto url = origin_url_in(*content)) return git_remote{std::move(*url), config_file};
    return std::nullopt;
}

} // namespace machine::config::detail
