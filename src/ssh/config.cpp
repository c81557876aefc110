// Pure helpers of the ssh module: Lima's ssh.config, fingerprints, pin files, signal names.
#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core.hpp"
#include "machine/paths.hpp"
#include "machine/text.hpp"

namespace machine::ssh {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// ssh_config(5) values may be double-quoted.
std::string unquote(std::string v) {
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') return v.substr(1, v.size() - 2);
    return v;
}

std::string read_text(const fs::path& file, const char* what) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw error("cannot read " + std::string(what) + " " + file.string() + ": " +
                         std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

} // namespace

endpoint endpoint_from_lima_ssh_config(const fs::path& ssh_config) {
    const std::string content = read_text(ssh_config, "SSH config");
    std::string host_alias;
    std::optional<std::string> hostname, port, user, identity;
    int hosts_seen = 0;
    for (const std::string& raw_line : text::split_lines(content)) {
        const std::string line = text::trim(raw_line);
        if (line.empty() || line.front() == '#') continue;
        // "Key value", "Key=value" or "Key = value".
        const auto sep = line.find_first_of(" \t=");
        if (sep == std::string::npos) continue;
        const std::string key = lower(line.substr(0, sep));
        std::string value = text::trim(line.substr(sep));
        if (!value.empty() && value.front() == '=') value = text::trim(value.substr(1));
        value = unquote(value);
        if (key == "host" || key == "match") {
            // Only the first block describes the instance (Lima writes exactly one).
            if (++hosts_seen > 1) break;
            host_alias = value;
            continue;
        }
        auto set_once = [&](std::optional<std::string>& field) {
            if (!field) field = value;  // first value wins, as in ssh(1)
        };
        if (key == "hostname") set_once(hostname);
        else if (key == "port") set_once(port);
        else if (key == "user") set_once(user);
        else if (key == "identityfile") set_once(identity);
    }

    const std::string where =
        ssh_config.string() + (host_alias.empty() ? "" : " (Host " + host_alias + ")");
    std::vector<std::string> missing;
    if (!hostname || hostname->empty()) missing.push_back("Hostname");
    if (!port || port->empty()) missing.push_back("Port");
    if (!user || user->empty()) missing.push_back("User");
    if (!identity || identity->empty()) missing.push_back("IdentityFile");
    if (!missing.empty()) {
        std::string list;
        for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
        throw error(where + ": missing " + list);
    }

    endpoint ep;
    ep.host = *hostname;
    ep.user = *user;
    try {
        std::size_t used = 0;
        ep.port = std::stoi(*port, &used);
        if (used != port->size() || ep.port < 1 || ep.port > 65535) throw std::out_of_range("port");
    } catch (const std::exception&) {
        throw error(where + ": invalid Port '" + *port + "'");
    }
    std::string id = *identity;
    if (id == "~") id = paths::home_dir().string();
    else if (id.rfind("~/", 0) == 0) id = (paths::home_dir() / id.substr(2)).string();
    ep.identity_file = id;
    return ep;
}

std::string fingerprint_sha256(const std::string& digest) {
    static constexpr char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out = "SHA256:";
    std::size_t i = 0;
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(digest[k]); };
    for (; i + 3 <= digest.size(); i += 3) {
        const unsigned v = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
        out += alphabet[v & 63];
    }
    // OpenSSH prints the tail without '=' padding.
    if (digest.size() - i == 1) {
        const unsigned v = byte(i) << 16;
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
    } else if (digest.size() - i == 2) {
        const unsigned v = (byte(i) << 16) | (byte(i + 1) << 8);
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
    }
    return out;
}

host_key_mismatch::host_key_mismatch(const std::string& vm_name, const std::string& expected,
                                     const std::string& actual, const fs::path& pin_file)
    : error("host key of VM '" + vm_name + "' changed: expected " + expected + ", got " + actual +
                "; if you recreated the VM outside machine, start over with `machine destroy " +
                vm_name + "` (or delete " + pin_file.string() +
                "), otherwise something may be intercepting the connection"),
      expected_(expected), actual_(actual) {}

int exec_result::status() const {
    if (!exit_signal.empty()) {
        const int n = detail::signal_number(exit_signal);
        return n ? 128 + n : -1;
    }
    return exit_code;
}

namespace detail {

int signal_number(const std::string& name) {
    static const std::array<std::pair<const char*, int>, 15> table{{{"HUP", 1},
                                                                   {"INT", 2},
                                                                   {"QUIT", 3},
                                                                   {"ILL", 4},
                                                                   {"TRAP", 5},
                                                                   {"ABRT", 6},
                                                                   {"BUS", 7},
                                                                   {"FPE", 8},
                                                                   {"KILL", 9},
                                                                   {"USR1", 10},
                                                                   {"SEGV", 11},
                                                                   {"USR2", 12},
                                                                   {"PIPE", 13},
                                                                   {"ALRM", 14},
                                                                   {"TERM", 15}}};
    for (const auto& [n, v] : table)
        if (name == n) return v;
    return 0;
}

std::optional<pinned_key> read_pin(const fs::path& file) {
    std::error_code ec;
    if (!fs::exists(file, ec)) return std::nullopt;
    const std::string content = read_text(file, "host key pin");
    for (const std::string& raw_line : text::split_lines(content)) {
        const std::string line = text::trim(raw_line);
        if (line.empty() || line.front() == '#') continue;
        std::istringstream in(line);
        pinned_key k;
        in >> k.fingerprint >> k.type;
        if (k.fingerprint.rfind("SHA256:", 0) != 0 || k.fingerprint.size() <= 7)
            throw error("malformed host key pin " + file.string() +
                        ": expected 'SHA256:<base64> <key type>'");
        return k;
    }
    throw error("malformed host key pin " + file.string() + ": the file is empty");
}

void write_pin(const fs::path& file, const pinned_key& key) {
    paths::write_file_atomic(file, key.fingerprint + " " + key.type + "\n", 0600);
}

std::string host_key_preference(const std::string& pinned_type) {
    // libssh 0.10's default order, minus certificates and the SHA-1 "ssh-rsa" signature.
    static const std::array<const char*, 6> defaults{"ssh-ed25519",         "ecdsa-sha2-nistp521",
                                                     "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp256",
                                                     "rsa-sha2-512",        "rsa-sha2-256"};
    std::vector<std::string> order;
    if (pinned_type == "ssh-rsa") {
        order = {"rsa-sha2-512", "rsa-sha2-256"};
    } else if (!pinned_type.empty()) {
        order.push_back(pinned_type);
    }
    for (const char* d : defaults) {
        if (std::find(order.begin(), order.end(), d) == order.end()) order.emplace_back(d);
    }
    std::string out;
    for (const auto& a : order) out += (out.empty() ? "" : ",") + a;
    return out;
}

} // namespace detail

} // namespace machine::ssh
