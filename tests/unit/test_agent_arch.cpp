// Which guest agent a VM gets: the one for its Lima `arch` (guest::find_agent).
#include <boost/test/unit_test.hpp>

#include <stdlib.h>

#include <fstream>
#include <string>

#include "error_message.hpp"
#include "machine/error.hpp"
#include "machine/guest.hpp"
#include "machine/sha256.hpp"
#include "test_support.hpp"

using namespace machine;
namespace fs = std::filesystem;

namespace {

// An ELF header (little-endian, 64-bit) claiming `machine` (62 x86_64, 183 aarch64), and padding.
void write_elf(const fs::path& p, unsigned machine) {
    std::string h(64, '\0');
    h[0] = 0x7f, h[1] = 'E', h[2] = 'L', h[3] = 'F', h[4] = 2, h[5] = 1, h[6] = 1;
    h[16] = 2;  // ET_EXEC
    h[18] = static_cast<char>(machine & 0xff), h[19] = static_cast<char>(machine >> 8);
    std::ofstream(p, std::ios::binary) << h;
}

std::string error_of(std::string_view arch, std::string_view vm) {
    return test::message_of([&] { guest::find_agent(arch, vm); });
}

// Sets an environment variable for one test (the sandbox starts without MACHINE_*).
struct env_var {
    std::string name;
    env_var(std::string n, const std::string& value) : name(std::move(n)) { ::setenv(name.c_str(), value.c_str(), 1); }
    ~env_var() { ::unsetenv(name.c_str()); }
};

} // namespace

BOOST_AUTO_TEST_SUITE(agent_by_arch)

BOOST_AUTO_TEST_CASE(the_native_agent_is_the_built_one_and_an_empty_arch_means_native) {
    BOOST_TEST(guest::native_agent_arch() == "x86_64");
    env_var agent("MACHINE_AGENT", MACHINE_AGENT_BINARY);
    BOOST_TEST(guest::find_agent("x86_64", "web").binary == fs::path(MACHINE_AGENT_BINARY));
    BOOST_TEST(guest::find_agent("", "web").binary == fs::path(MACHINE_AGENT_BINARY));
    BOOST_TEST(guest::find_agent().sha256 == sha256::hex_of_file(MACHINE_AGENT_BINARY));
}

BOOST_AUTO_TEST_CASE(an_aarch64_vm_gets_the_aarch64_agent_and_never_the_x86_64_one) {
    machine::test::temp_dir dir;
    env_var native("MACHINE_AGENT", MACHINE_AGENT_BINARY);
    // Not set, and nothing next to the test binary: missing, naming the variable to set.
    const std::string missing = error_of("aarch64", "web");
    BOOST_TEST(missing.find("VM 'web': the guest agent binary (machine-agent-aarch64) is missing") != std::string::npos, missing);
    BOOST_TEST(missing.find("MACHINE_AGENT_AARCH64") != std::string::npos, missing);
    {
        env_var wrong("MACHINE_AGENT_AARCH64", MACHINE_AGENT_BINARY);
        const std::string e = error_of("aarch64", "web");
        BOOST_TEST(e.find("VM 'web': the guest agent " MACHINE_AGENT_BINARY " is built for x86_64, not for aarch64") !=
                       std::string::npos, e);
    }
    const fs::path arm = dir.path / "machine-agent-aarch64";
    write_elf(arm, 183);
    env_var right("MACHINE_AGENT_AARCH64", arm.string());
    const auto files = guest::find_agent("aarch64", "web");
    BOOST_TEST(files.binary == arm);
    BOOST_TEST(files.sha256 == sha256::hex_of_file(arm));
    // The x86_64 VM next door still gets the x86_64 agent.
    BOOST_TEST(guest::find_agent("x86_64", "api").binary == fs::path(MACHINE_AGENT_BINARY));
}

BOOST_AUTO_TEST_CASE(a_file_that_is_not_an_agent_is_refused) {
    machine::test::temp_dir dir;
    const fs::path script = dir.path / "agent.sh";
    std::ofstream(script) << "#!/bin/sh\n";
    env_var agent("MACHINE_AGENT", script.string());
    const std::string e = error_of("x86_64", "web");
    BOOST_TEST(e.find("is not a Linux executable, not for x86_64") != std::string::npos, e);
}

BOOST_AUTO_TEST_CASE(an_unknown_architecture_is_a_clear_error_naming_the_vm) {
    const std::string e = error_of("riscv64", "web");
    BOOST_TEST(e == "VM 'web': machine has no guest agent for the architecture 'riscv64' (it has one for x86_64 and aarch64)");
}

BOOST_AUTO_TEST_SUITE_END()
