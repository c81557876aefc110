// core's socket-file helpers (machine/paths.hpp): the private directory and stale-socket rules
// of prepare_socket_path, and owned_socket_file, which both host helpers (the agent filter, the
// egress proxy) use for the socket they serve on.
#include <boost/test/unit_test.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "machine/error.hpp"
#include "machine/paths.hpp"
#include "test_support.hpp"

using namespace machine;
namespace fs = std::filesystem;

namespace {

// A bound (not listening) Unix socket at `path`, with the umask's mode; the fd is returned.
int bind_socket(const fs::path& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
    BOOST_REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) == 0);
    return fd;
}

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    BOOST_REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st.st_mode & 0777;
}

struct private_dir : test::temp_dir {
    private_dir() { fs::permissions(path, fs::perms::owner_all, fs::perm_options::replace); }
};

} // namespace

BOOST_AUTO_TEST_SUITE(core_paths)

BOOST_AUTO_TEST_CASE(an_owned_socket_is_private_while_it_lives_and_removed_after) {
    private_dir dir;
    const auto sock = dir.path / "s.sock";
    const mode_t old_umask = ::umask(0);  // the socket would be 0777 without the chmod
    const int fd = bind_socket(sock);
    ::umask(old_umask);
    {
        const paths::owned_socket_file file(sock, "test");
        BOOST_TEST(mode_of(sock) == 0600u);
    }
    BOOST_TEST(!fs::exists(fs::symlink_status(sock)));
    ::close(fd);
}

BOOST_AUTO_TEST_CASE(a_socket_that_another_process_has_put_in_its_place_is_left_alone) {
    // An old helper ending after a new one took the path over must not remove the new socket.
    private_dir dir;
    const auto sock = dir.path / "s.sock";
    const int old_fd = bind_socket(sock);
    int new_fd = -1;
    {
        const paths::owned_socket_file file(sock, "test");
        fs::remove(sock);
        new_fd = bind_socket(sock);
    }
    BOOST_TEST(fs::is_socket(fs::symlink_status(sock)));
    ::close(old_fd);
    ::close(new_fd);
}

BOOST_AUTO_TEST_CASE(a_missing_socket_file_is_an_error_naming_who_and_where) {
    private_dir dir;
    try {
        const paths::owned_socket_file file(dir.path / "never-bound.sock", "net proxy");
        BOOST_FAIL("no error");
    } catch (const error& e) {
        const std::string what = e.what();
        BOOST_TEST(what.find("net proxy: cannot use") == 0, what);
        BOOST_TEST(what.find("never-bound.sock") != std::string::npos, what);
    }
}

BOOST_AUTO_TEST_CASE(the_socket_directory_must_be_private_and_a_stale_socket_is_replaced) {
    private_dir dir;
    const auto sock = dir.path / "s.sock";
    BOOST_TEST(!paths::prepare_socket_path(sock, "test"));  // nothing there yet
    const int stale = bind_socket(sock);                    // bound, nobody listening: stale
    BOOST_TEST(paths::prepare_socket_path(sock, "test"));
    BOOST_TEST(!fs::exists(fs::symlink_status(sock)));
    ::close(stale);

    std::ofstream(sock) << "not a socket";
    BOOST_CHECK_THROW(paths::prepare_socket_path(sock, "test"), error);
    BOOST_TEST(fs::exists(sock));  // nothing of someone else's is removed

    fs::permissions(dir.path, fs::perms::group_read | fs::perms::group_exec, fs::perm_options::add);
    BOOST_CHECK_THROW(paths::prepare_socket_path(dir.path / "other.sock", "test"), error);
}

BOOST_AUTO_TEST_SUITE_END()
