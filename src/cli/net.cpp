// `machine net [NAME] [--json] [--last N]`: what a project's VM did on the network, from the
// audit log its egress proxy keeps (<state>/<name>/net.jsonl and its rotated predecessor): the
// last connections, then a summary by destination. Every record came from a VM's traffic: host
// names and reasons are escaped before they reach the terminal.
#include <algorithm>
#include <cstdio>
#include <map>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "machine/net.hpp"
#include "machine/text.hpp"

namespace machine::cli {

namespace fs = std::filesystem;
using asio::awaitable;
using json = nlohmann::ordered_json;

namespace {

// Both files together hold at most 2 MiB: every record they keep is read for the summary.
constexpr std::size_t every_record = 1u << 20;

struct destination_summary {
    std::string destination;
    std::int64_t allowed = 0;
    std::int64_t refused = 0;
    std::int64_t bytes_up = 0;
    std::int64_t bytes_down = 0;
    std::int64_t count() const { return allowed + refused; }
};

// "github.com:443", or "github.com (dns)" for a question.
std::string destination_of(const net::audit_record& r) {
    return r.kind == "dns" ? r.host + " (dns)" : r.host + ":" + std::to_string(r.port);
}

// Most connections first; ties by name, so the order is stable.
std::vector<destination_summary> summarize(const std::vector<net::audit_record>& records) {
    std::map<std::string, destination_summary> by;
    for (const auto& r : records) {
        auto& s = by[destination_of(r)];
        s.destination = destination_of(r);
        // A record the proxy's rate limit folded others into stands for all of them.
        (r.allowed ? s.allowed : s.refused) += 1 + std::max<std::int64_t>(0, r.suppressed);
        s.bytes_up += r.bytes_up;
        s.bytes_down += r.bytes_down;
    }
    std::vector<destination_summary> out;
    for (auto& [k, s] : by) out.push_back(std::move(s));
    std::stable_sort(out.begin(), out.end(),
                     [](const destination_summary& a, const destination_summary& b) { return a.count() > b.count(); });
    return out;
}

json record_json(const net::audit_record& r) {
    return json{{"ts", events::format_timestamp(r.ts)}, {"allowed", r.allowed},  {"kind", r.kind},
                {"host", r.host},                       {"port", r.port},        {"bytes_up", r.bytes_up},
                {"bytes_down", r.bytes_down},           {"duration_ms", r.duration_ms},
                {"reason", r.reason},                   {"suppressed", r.suppressed}};
}

std::string shown(std::string_view from_vm) { return text::escape_for_terminal(from_vm); }

std::string human(const std::string& name, const std::vector<net::audit_record>& records, std::size_t last) {
    std::string out;
    char line[1024];
    const std::size_t first = records.size() > last ? records.size() - last : 0;
    std::snprintf(line, sizeof line, "last %zu of %zu connections of '%s':\n", records.size() - first, records.size(),
                  name.c_str());
    out += line;
    std::snprintf(line, sizeof line, "%-24s %-8s %-4s %-40s %10s %10s %8s  %s\n", "TIME", "RESULT", "KIND",
                  "DESTINATION", "UP", "DOWN", "TOOK", "REASON");
    out += line;
    for (std::size_t i = first; i < records.size(); ++i) {
        const auto& r = records[i];
        std::string reason = shown(r.reason);
        if (r.suppressed > 0) reason += (reason.empty() ? "" : " ") + ("(+" + std::to_string(r.suppressed) + " like it)");
        std::snprintf(line, sizeof line, "%-24s %-8s %-4s %-40s %10s %10s %6lldms  %s\n",
                      events::format_timestamp(r.ts).c_str(), r.allowed ? "allowed" : "REFUSED", shown(r.kind).c_str(),
                      shown(destination_of(r)).c_str(), human_bytes(r.bytes_up).c_str(),
                      human_bytes(r.bytes_down).c_str(), static_cast<long long>(r.duration_ms), reason.c_str());
        out += line;
    }
    out += "\nby destination:\n";
    std::snprintf(line, sizeof line, "%-40s %8s %8s %10s %10s\n", "DESTINATION", "ALLOWED", "REFUSED", "UP", "DOWN");
    out += line;
    for (const auto& s : summarize(records)) {
        std::snprintf(line, sizeof line, "%-40s %8lld %8lld %10s %10s\n", shown(s.destination).c_str(),
                      static_cast<long long>(s.allowed), static_cast<long long>(s.refused),
                      human_bytes(s.bytes_up).c_str(), human_bytes(s.bytes_down).c_str());
        out += line;
    }
    return out;
}

} // namespace

awaitable<int> cmd_net(context& ctx, std::optional<std::string> name_opt, int last) {
    const std::string name = resolve_name(ctx, name_opt);
    if (last < 1) throw usage_error("--last must be at least 1, got " + std::to_string(last));
    const fs::path log = vm::audit_log_of(name);
    std::error_code ec;
    if (!fs::exists(log, ec) && !fs::exists(log.string() + ".1", ec)) {
        if (ctx.json) {
            const json empty{{"vm", name}, {"records", json::array()}, {"summary", json::array()}};
            std::printf("%s\n", empty.dump().c_str());
        } else {
            std::printf("no connections recorded for '%s' yet (its egress proxy writes %s)\n", name.c_str(),
                        log.string().c_str());
        }
        co_return 0;
    }
    const std::vector<net::audit_record> records = net::read_audit_log(log, every_record);
    std::string out;
    if (ctx.json) {
        json doc{{"vm", name}, {"records", json::array()}, {"summary", json::array()}};
        const std::size_t first = records.size() > static_cast<std::size_t>(last) ? records.size() - last : 0;
        for (std::size_t i = first; i < records.size(); ++i) doc["records"].push_back(record_json(records[i]));
        for (const auto& s : summarize(records))
            doc["summary"].push_back(json{{"destination", s.destination}, {"allowed", s.allowed}, {"refused", s.refused},
                                          {"bytes_up", s.bytes_up}, {"bytes_down", s.bytes_down}});
        // A VM's bytes may not be UTF-8: replaced, never a throw halfway through the output.
        out = doc.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    } else if (records.empty()) {
        out = "no connections recorded for '" + name + "' yet\n";
    } else {
        out = human(name, records, static_cast<std::size_t>(last));
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    co_return 0;
}

} // namespace machine::cli
