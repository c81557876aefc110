#include "tmux.hpp"

namespace machine::agent::tmux {

std::string literal_arg(std::string_view arg) {
    std::string out(arg);
    // tmux (cmd_parse_from_arguments) strips a trailing ';' and ends the command there, unless
    // a backslash precedes it, in which case the backslash goes and the ';' stays.
    if (!out.empty() && out.back() == ';') out.insert(out.size() - 1, 1, '\\');
    return out;
}

std::string format_literal(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        out.push_back(c);
        if (c == '#') out.push_back('#');
    }
    return out;
}

std::vector<std::string> attach_argv(const attach_spec& spec) {
    // -u: UTF-8 whatever locale the SSH connection brought (ssh -F does not send LANG), so the
    // agents' interfaces keep their characters.
    std::vector<std::string> argv = {spec.tmux,
                                     "-u",
                                     "new-session",
                                     "-A",
                                     "-s",
                                     spec.name,
                                     "-c",
                                     literal_arg(format_literal(spec.dir)),
                                     "--",
                                     literal_arg(spec.self),
                                     "session",
                                     "run",
                                     "--name",
                                     spec.name,
                                     "--agent",
                                     spec.agent};
    if (!spec.socket.empty()) {
        argv.push_back("--socket");
        argv.push_back(literal_arg(spec.socket));
    }
    if (spec.missing_dir) {
        // The pane's command is an argv that tmux runs as it is (no format expansion, no shell).
        argv.push_back("--missing-dir");
        argv.push_back(literal_arg(*spec.missing_dir));
    }
    // A separate tmux command, run by the server right after the session is made (or found).
    argv.push_back(";");
    for (const char* a : {"set-option", "-w", "-t"}) argv.emplace_back(a);
    argv.push_back("=" + spec.name + ":");
    argv.emplace_back("remain-on-exit");
    argv.emplace_back("off");
    return argv;
}

std::map<std::string, std::uint64_t> parse_list(std::string_view text) {
    std::map<std::string, std::uint64_t> out;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
        const auto tab = line.rfind('\t');
        if (tab == std::string_view::npos || tab == 0) continue;
        const std::string_view count = line.substr(tab + 1);
        if (count.empty() || count.size() > 9) continue;
        std::uint64_t n = 0;
        bool ok = true;
        for (char c : count) {
            if (c < '0' || c > '9') {
                ok = false;
                break;
            }
            n = n * 10 + static_cast<std::uint64_t>(c - '0');
        }
        if (ok) out[std::string(line.substr(0, tab))] = n;
    }
    return out;
}

} // namespace machine::agent::tmux
