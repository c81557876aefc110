// Renders the hardened Lima template (templates/lima.yaml, compiled into the binary) for one
// project.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "machine/config.hpp"

namespace machine::render {

// A guest disk on this host that Lima (or the Linux stand-in) can boot directly.
struct local_image {
    std::filesystem::path disk;
    std::filesystem::path kernel;  // optional: direct kernel boot
    std::filesystem::path initrd;
    std::string cmdline;
};

// The VM's normal user, as the template creates it (agents run as this user, never root).
inline constexpr const char* vm_user = "dev";

struct host_facts {
    std::string os = "linux";     // "linux" or "darwin"
    std::string arch = "x86_64";  // Lima's names: x86_64, aarch64
    std::optional<local_image> image;
    // Directory of locally added CAs, what `ca_certs = ["host"]` means.
    std::filesystem::path host_ca_dir = "/usr/local/share/ca-certificates";
};

// uname(), plus the guest image built by tools/build-guest-image when present
// ($XDG_CACHE_HOME/machine/guest/current/).
host_facts detect_host();

// The PEM certificates a project's `ca_certs` names: files (relative to the config file's
// directory, `~` expanded) and "host". Throws config::config_error naming the project, the
// entry and the reason.
std::vector<std::string> resolve_ca_certs(const config::project& p, const host_facts& host);

// The rendered lima.yaml for `p`. With `egress_socket` (a Lima that isolates the VM's
// network, lima::driver::isolates_network), it ends with `machineEgress: {socket: PATH}`: the
// Unix socket of machine's egress proxy, the VM's only way out.
std::string lima_yaml(const config::project& p, const host_facts& host,
                      const std::filesystem::path& egress_socket = {});

// What a clone of a cached base must change to become project `p`'s VM: a `limactl clone
// --set` expression (yq) assigning p's own cpus, memory, disk, agent forwarding, port rules and
// CA certificates. Every value is JSON, never raw text from the config.
// With `egress_socket`, the clone's `machineEgress.socket` is set to it (a base has its own).
std::string clone_settings(const config::project& p, const host_facts& host,
                           const std::filesystem::path& egress_socket = {});

// The template's text as compiled in.
std::string_view base_template();

} // namespace machine::render
