// Users and groups from /etc/passwd and /etc/group, read directly.
//
// The agent is linked statically, and glibc's getpwnam/initgroups in a static binary need the
// NSS shared libraries of the exact glibc it was built with at run time. VM users are local
// accounts (Lima and cloud-init write them to /etc/passwd), so the files are the whole truth.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace machine::agent {

struct user_info {
    std::string name;
    uid_t uid = 0;
    gid_t gid = 0;               ///< primary group
    std::string home;
    std::string shell;
    std::vector<gid_t> groups;   ///< primary group first, then every group listing the user
};

struct account_files {
    std::string passwd = "/etc/passwd";
    std::string group = "/etc/group";
};

/// The user called `name`, with supplementary groups; nullopt when there is none.
std::optional<user_info> find_user(std::string_view name, const account_files& files = {});
/// The user with this uid (the first entry), without supplementary groups.
std::optional<user_info> find_uid(uid_t uid, const account_files& files = {});
/// The gid of the group called `name`, or a numeric gid given as text.
std::optional<gid_t> find_group(std::string_view name, const account_files& files = {});

} // namespace machine::agent
