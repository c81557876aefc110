#include <sys/utsname.h>

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "machine/paths.hpp"
#include "machine/render.hpp"
#include "machine/text.hpp"

namespace machine::render {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {
#include "lima_template.inc"  // defines kTemplate, generated from templates/lima.yaml

// Debian 13 cloud images for a real Lima (macOS, or Linux with Lima installed): the dated
// genericcloud release and its digest, as Lima's own templates/debian-13.yaml pins them (Lima
// checks the download against the digest).
struct cloud_image {
    const char* arch;
    const char* location;
    const char* digest;
};
constexpr cloud_image debian_images[] = {
    {"x86_64",
     "https://cloud.debian.org/images/cloud/trixie/20260712-2537/debian-13-genericcloud-amd64-20260712-2537.qcow2",
     "sha512:7ae53e9dbee282bfc16f289dec483dde3a8598769c38a267948310f7a2a52c662620198603bc52c142627efba379863d16079698a10b34102d55bcedd40e8d32"},
    {"aarch64",
     "https://cloud.debian.org/images/cloud/trixie/20260712-2537/debian-13-genericcloud-arm64-20260712-2537.qcow2",
     "sha512:8543d795f2fde630eb66c492f245a8c1da19dedc636e0a8e7b3d0f95920e1a05aa911ef2d82d177d41cc53ced5fccbd2a3945d07fa5e15018914c4d864bb07ed"},
};

std::string lima_arch(const std::string& machine) {
    if (machine == "arm64" || machine == "aarch64") return "aarch64";
    return machine;
}

json images(const host_facts& host) {
    json list = json::array();
    if (host.image) {
        json local{{"location", host.image->disk.string()}, {"arch", host.arch}};
        if (!host.image->kernel.empty()) {
            local["kernel"] = {{"location", host.image->kernel.string()},
                               {"cmdline", host.image->cmdline}};
            if (!host.image->initrd.empty()) local["initrd"] = {{"location", host.image->initrd.string()}};
        }
        list.push_back(local);
    }
    for (const auto& img : debian_images)
        list.push_back({{"location", img.location}, {"arch", img.arch}, {"digest", img.digest}});
    return list;
}

json port_forwards(const config::port_forwarding& ports) {
    // guestIPMustBeZero:false makes a 0.0.0.0 rule match listeners on any address; without it
    // the rule only matches listeners bound exactly to 0.0.0.0 (contract §5).
    const json ignore_rest{{"guestIP", "0.0.0.0"}, {"guestIPMustBeZero", false}, {"proto", "any"},
                           {"ignore", true}};
    json rules = json::array();
    switch (ports.mode) {
    case config::port_forwarding::policy::all:
        rules.push_back({{"guestIP", "0.0.0.0"}, {"guestIPMustBeZero", false},
                         {"guestPortRange", {1, 65535}}, {"hostIP", "127.0.0.1"},
                         {"hostPortRange", {1, 65535}}, {"proto", "any"}});
        break;
    case config::port_forwarding::policy::listed:
        for (int port : ports.ports)
            rules.push_back({{"guestIP", "0.0.0.0"}, {"guestIPMustBeZero", false},
                             {"guestPort", port}, {"hostIP", "127.0.0.1"}, {"hostPort", port},
                             {"proto", "tcp"}});
        rules.push_back(ignore_rest);
        break;
    case config::port_forwarding::policy::none:
        rules.push_back(ignore_rest);
        break;
    }
    return rules;
}

[[noreturn]] void ca_error(const config::project& p, const std::string& entry, const std::string& why) {
    std::string where = p.source.empty() ? std::string("projects.toml") : p.source.string();
    throw config::config_error(where + ": " + p.name + ".ca_certs: " + text::sanitize_for_terminal(entry) + ": " + why);
}

// The CERTIFICATE blocks of a PEM file, each exactly as written: nothing else in the file
// (text around the blocks, other block types) reaches the VM. A file with a private key in
// it is refused outright: whoever named it did not mean to send what it holds.
std::vector<std::string> pem_certificates(const config::project& p, const std::string& entry, const std::string& text) {
    std::vector<std::string> certs;
    constexpr std::string_view begin = "-----BEGIN ";
    for (std::size_t at = text.find(begin); at != std::string::npos; at = text.find(begin, at + 1)) {
        const std::size_t label_end = text.find("-----", at + begin.size());
        if (label_end == std::string::npos) break;
        const std::string label = text.substr(at + begin.size(), label_end - at - begin.size());
        if (label.find("PRIVATE KEY") != std::string::npos)
            ca_error(p, entry, "holds a private key (a \"" + text::sanitize_for_terminal(label) +
                                   "\" block); only certificates may be sent to a VM");
        if (label != "CERTIFICATE") continue;
        const std::string end = "-----END CERTIFICATE-----";
        const std::size_t stop = text.find(end, label_end);
        if (stop == std::string::npos) break;
        certs.push_back(text.substr(at, stop + end.size() - at) + "\n");
        at = stop;
    }
    return certs;
}

// A CA file is small (a whole system bundle is ~200 KiB); a repository could name a huge one.
constexpr std::size_t max_ca_file_bytes = 1 << 20;

std::string read_ca_file(const config::project& p, const std::string& entry, const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) ca_error(p, entry, "cannot read " + file.string());
    std::string text(max_ca_file_bytes + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (text.size() > max_ca_file_bytes) ca_error(p, entry, "larger than 1 MiB: not a CA certificate file");
    return text;
}

// A repository's file may name files inside the repository only; the path checks at parse
// time cannot see symlinks, so the real path is checked here, when the file is read.
void require_inside_repository(const config::project& p, const std::string& entry, const fs::path& file) {
    std::error_code ec;
    const fs::path root = fs::weakly_canonical(p.source.parent_path(), ec);
    const fs::path real = fs::weakly_canonical(file, ec);
    const auto [root_end, real_it] = std::mismatch(root.begin(), root.end(), real.begin(), real.end());
    if (ec || root_end != root.end())
        ca_error(p, entry, "resolves to " + text::sanitize_for_terminal(real.string()) +
                               ", outside the repository; a repository's .machine.toml may name files inside it only");
}

} // namespace

std::string_view base_template() { return kTemplate; }

host_facts detect_host() {
    host_facts host;
    utsname u{};
    if (::uname(&u) == 0) {
        host.os = std::string(u.sysname) == "Darwin" ? "darwin" : "linux";
        host.arch = lima_arch(u.machine);
    }
    const fs::path current = paths::cache_dir() / "guest" / "current";
    std::error_code ec;
    if (fs::exists(current / "disk.qcow2", ec)) {
        local_image image;
        const fs::path dir = fs::canonical(current, ec);
        image.disk = dir / "disk.qcow2";
        if (fs::exists(dir / "vmlinuz", ec)) {
            image.kernel = dir / "vmlinuz";
            image.initrd = dir / "initrd.img";
            image.cmdline = "root=/dev/vda rw console=ttyS0";
        }
        host.image = image;
    }
    return host;
}

std::vector<std::string> resolve_ca_certs(const config::project& p, const host_facts& host) {
    std::vector<std::string> pems;
    const fs::path base = p.source.empty() ? fs::current_path() : p.source.parent_path();
    for (const auto& entry : p.ca_certs) {
        if (entry == "host") {
            std::error_code ec;
            if (!fs::is_directory(host.host_ca_dir, ec)) continue;  // nothing added locally
            std::vector<fs::path> files;
            for (auto it = fs::recursive_directory_iterator(host.host_ca_dir, ec);
                 !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
                if (it->is_regular_file(ec) && it->path().extension() == ".crt") files.push_back(it->path());
            }
            std::sort(files.begin(), files.end());
            for (const auto& f : files)
                for (auto& cert : pem_certificates(p, f.string(), read_ca_file(p, f.string(), f)))
                    pems.push_back(std::move(cert));
            continue;
        }
        fs::path file = entry;
        if (entry.rfind("~/", 0) == 0 && !p.from_repository) file = paths::home_dir() / entry.substr(2);
        else if (file.is_relative()) file = base / file;
        if (p.from_repository) require_inside_repository(p, entry, file);
        auto certs = pem_certificates(p, entry, read_ca_file(p, entry, file));
        if (certs.empty()) ca_error(p, entry, "not a PEM certificate");
        for (auto& cert : certs) pems.push_back(std::move(cert));
    }
    return pems;
}

std::string clone_settings(const config::project& p, const host_facts& host, const fs::path& egress_socket) {
    std::vector<std::pair<std::string, json>> values{
        {".cpus", p.cpus},
        {".memory", p.memory},
        {".disk", p.disk},
        {".ssh.forwardAgent", p.forward_agent},
        {".portForwards", port_forwards(p.ports)},
        {".caCerts.certs", resolve_ca_certs(p, host)},
    };
    if (!egress_socket.empty()) values.emplace_back(".machineEgress.socket", egress_socket.string());
    std::string expr;
    for (const auto& [path, value] : values) expr += (expr.empty() ? "" : " | ") + path + " = " + value.dump();
    return expr;
}

std::string lima_yaml(const config::project& p, const host_facts& host, const fs::path& egress_socket) {
    const std::vector<std::pair<std::string, json>> values{
        {"vm_type", host.os == "darwin" ? "vz" : "qemu"},
        {"arch", p.arch.value_or(host.arch)},
        {"images", images(host)},
        {"cpus", p.cpus},
        {"memory", p.memory},
        {"disk", p.disk},
        {"forward_agent", p.forward_agent},
        {"port_forwards", port_forwards(p.ports)},
        {"ca_certs", resolve_ca_certs(p, host)},
    };
    std::string out(kTemplate);
    for (const auto& [key, value] : values) {
        const std::string placeholder = "{{" + key + "}}";
        const std::string rendered = value.dump();
        for (auto pos = out.find(placeholder); pos != std::string::npos;
             pos = out.find(placeholder, pos + rendered.size()))
            out.replace(pos, placeholder.size(), rendered);
    }
    // Only for a Lima that knows the key (the stand-in): Lima itself would refuse it.
    if (!egress_socket.empty())
        out += "\n# The VM's only way out: machine's egress proxy on the host (net-proxy).\nmachineEgress:\n  socket: " +
               json(egress_socket.string()).dump() + "\n";
    return "# Generated by `machine up` for project \"" + p.name + "\"; do not edit.\n" + out;
}

} // namespace machine::render
