#include "users.hpp"

#include <algorithm>
#include <charconv>

#include "files.hpp"

namespace machine::agent {

namespace {

std::vector<std::string_view> split_colons(std::string_view line) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    for (;;) {
        const auto c = line.find(':', start);
        out.push_back(line.substr(start, c == std::string_view::npos ? std::string_view::npos : c - start));
        if (c == std::string_view::npos) break;
        start = c + 1;
    }
    return out;
}

template <class T>
std::optional<T> parse_id(std::string_view s) {
    T v{};
    const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
    return v;
}

// Calls fn(fields) for each well-formed line of `path`; stops when fn returns true.
template <class Fn>
void for_each_entry(const std::string& path, std::size_t min_fields, Fn fn) {
    const auto text = read_file(path);
    if (!text) return;
    std::string_view rest = *text;
    while (!rest.empty()) {
        const auto nl = rest.find('\n');
        const std::string_view line = rest.substr(0, nl);
        rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
        if (line.empty() || line[0] == '#' || line[0] == '+' || line[0] == '-') continue;
        const auto f = split_colons(line);
        if (f.size() < min_fields) continue;
        if (fn(f)) return;
    }
}

std::optional<user_info> find_passwd(const account_files& files, std::string_view name,
                                     std::optional<uid_t> uid) {
    std::optional<user_info> found;
    for_each_entry(files.passwd, 7, [&](const std::vector<std::string_view>& f) {
        const auto u = parse_id<uid_t>(f[2]);
        const auto g = parse_id<gid_t>(f[3]);
        if (!u || !g) return false;
        if (uid ? *u != *uid : f[0] != name) return false;
        found = user_info{std::string(f[0]), *u, *g, std::string(f[5]), std::string(f[6]), {*g}};
        return true;
    });
    return found;
}

} // namespace

std::optional<user_info> find_user(std::string_view name, const account_files& files) {
    if (name.empty()) return std::nullopt;
    auto user = find_passwd(files, name, std::nullopt);
    if (!user) return std::nullopt;
    for_each_entry(files.group, 4, [&](const std::vector<std::string_view>& f) {
        const auto g = parse_id<gid_t>(f[2]);
        if (!g) return false;
        std::string_view members = f[3];
        while (!members.empty()) {
            const auto comma = members.find(',');
            const auto member = members.substr(0, comma);
            if (member == user->name &&
                std::find(user->groups.begin(), user->groups.end(), *g) == user->groups.end())
                user->groups.push_back(*g);
            if (comma == std::string_view::npos) break;
            members.remove_prefix(comma + 1);
        }
        return false;
    });
    return user;
}

std::optional<user_info> find_uid(uid_t uid, const account_files& files) {
    return find_passwd(files, {}, uid);
}

std::optional<gid_t> find_group(std::string_view name, const account_files& files) {
    if (name.empty()) return std::nullopt;
    std::optional<gid_t> found;
    for_each_entry(files.group, 3, [&](const std::vector<std::string_view>& f) {
        if (f[0] != name) return false;
        found = parse_id<gid_t>(f[2]);
        return found.has_value();
    });
    if (!found) found = parse_id<gid_t>(name);
    return found;
}

} // namespace machine::agent
