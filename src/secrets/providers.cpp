// Secret providers: `op environment read`, `op read`, dotenv files and commands.
//
// Children run through machine::proc with argv vectors (no shell), a timeout and output caps.
// Their captured stdout is wiped as soon as it is parsed; values never reach a message.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <asio/this_coro.hpp>

#include "machine/proc.hpp"
#include "machine/secrets.hpp"
#include "machine/text.hpp"

namespace machine::secrets {

namespace {

using namespace std::chrono_literals;

constexpr std::chrono::milliseconds op_timeout = 120s;  // Touch ID / unlock prompts
constexpr std::chrono::milliseconds command_timeout = 60s;
constexpr std::size_t max_detail = 200;  // characters of a tool's stderr in a message

// Zeroes a captured output when the scope ends, whatever happens.
struct scrub {
    std::string& s;
    ~scrub() { wipe(s); }
};

bool is_valid_name(std::string_view name) {
    if (name.empty()) return false;
    const auto start = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
    if (!start(name[0])) return false;
    for (char c : name)
        if (!start(c) && !(c >= '0' && c <= '9')) return false;
    return true;
}

// op://vault/item/field or op://vault/item/section/field; no control characters.
bool is_valid_reference(std::string_view ref) {
    constexpr std::string_view scheme = "op://";
    if (ref.size() > 1024 || ref.substr(0, scheme.size()) != scheme) return false;
    for (char c : ref)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) return false;
    std::size_t segments = 0;
    std::size_t start = scheme.size();
    for (;;) {
        const auto slash = ref.find('/', start);
        const auto seg = ref.substr(start, slash == std::string_view::npos ? std::string_view::npos
                                                                          : slash - start);
        if (seg.empty()) return false;
        ++segments;
        if (slash == std::string_view::npos) break;
        start = slash + 1;
    }
    return segments == 3 || segments == 4;
}

// Text from outside, made safe and short for a one-line message.
std::string shown(std::string_view s, std::size_t max = max_detail) {
    std::string out = text::sanitize_for_terminal(s);
    for (char& c : out)
        if (c == '\n' || c == '\t') c = ' ';
    if (out.size() > max) {
        std::size_t cut = max;
        while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;  // UTF-8
        out.resize(cut);
        out += "…";
    }
    return out;
}

// Names a command by its program only: its arguments are not shown, in case one carries a
// token despite the rule that secrets never go in argv.
std::string command_label(const std::vector<std::string>& argv) {
    return "`" + shown(argv.front(), 80) + "`";
}

// The gist of a tool's stderr: its last line, without op's "[ERROR] 2026/11/27 12:00:00 ".
std::string stderr_gist(std::string_view err) {
    std::string line = text::last_line(err);
    constexpr std::string_view tag = "[ERROR] ";
    if (line.compare(0, tag.size(), tag) == 0) {
        line.erase(0, tag.size());
        // "YYYY/MM/DD HH:MM:SS "
        const std::string_view shape = "dddd/dd/dd dd:dd:dd ";
        bool stamp = line.size() >= shape.size();
        for (std::size_t k = 0; stamp && k < shape.size(); ++k) {
            const char c = line[k];
            stamp = shape[k] == 'd' ? (c >= '0' && c <= '9') : c == shape[k];
        }
        if (stamp) line.erase(0, shape.size());
    }
    return shown(line);
}

bool contains(std::string_view hay, std::string_view needle) {
    return hay.find(needle) != std::string_view::npos;
}

std::string exit_description(const proc::result& r) {
    return r.signal ? "killed by signal " + std::to_string(r.signal)
                    : "exit " + std::to_string(r.exit_code);
}

// Throws provider_error unless the child succeeded within the limits. `label` names what ran.
void check(const proc::result& r, const std::string& label, bool is_op) {
    if (r.cancelled) throw interrupted_error();
    if (r.out.size() > max_provider_output)
        throw provider_error(label + " printed more than 4 MiB; nothing was read");
    if (r.timed_out) {
        const auto limit = is_op ? op_timeout : command_timeout;
        throw provider_error(label + " did not finish within " +
                             std::to_string(limit.count() / 1000) + " seconds");
    }
    if (r.ok()) return;
    const std::string gist = stderr_gist(r.err);
    const std::string detail = gist.empty() ? "" : ": " + gist;
    if (is_op) {
        const std::string lower = [&] {
            std::string l(text::last_line(r.err));
            for (char& c : l) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            return l;
        }();
        if (contains(lower, "not currently signed in"))
            throw provider_error(
                "1Password: not signed in to the 1Password CLI (run `op signin`, or turn on "
                "Settings → Developer → Integrate with 1Password CLI in the 1Password app); " +
                label + " failed" + detail);
        if (contains(lower, "account is not signed in") || contains(lower, "locked") ||
            contains(lower, "authorization prompt dismissed"))
            throw provider_error(
                "1Password is locked or did not authorize the CLI (unlock the 1Password app and "
                "approve the prompt); " + label + " failed" + detail);
        if (contains(lower, "isn't an item") || contains(lower, "isn't a vault") ||
            contains(lower, "isn't a field") || contains(lower, "isn't an environment") ||
            contains(lower, "not found"))
            throw provider_error("1Password: not found; " + label + " failed" + detail);
    }
    throw provider_error(label + " failed (" + exit_description(r) + ")" + detail);
}

// The place of a dotenv error inside a child's output.
[[noreturn]] void rethrow_in_output(const dotenv_error& e, const std::string& label) {
    throw provider_error("line " + std::to_string(e.line()) + ", column " +
                         std::to_string(e.column()) + " of " + label + "'s output: " + e.problem());
}

proc::run_options capped(std::chrono::milliseconds timeout) {
    proc::run_options o;
    o.limit.timeout = timeout;
    o.limit.max_output = max_provider_output + 1;  // one byte more: "too much" is detectable
    o.secret_stdout = true;
    return o;
}

std::filesystem::path resolve_op(const std::filesystem::path& op_binary) {
    const auto found = proc::find_program(op_binary.empty() ? "op" : op_binary.string());
    if (!found) throw provider_error(std::string(op_missing_message));
    return *found;
}

// Runs `op` into `r` (the caller's scrub guards its output): a missing `op` and a failed
// run become provider_error.
asio::awaitable<void> run_op(proc::command cmd, std::string label, proc::result& r) {
    proc::run_options options = capped(op_timeout);
    try {
        r = co_await proc::run(std::move(cmd), std::move(options));
    } catch (const proc::spawn_error&) {
        throw provider_error(std::string(op_missing_message));
    }
    check(r, label, true);
}

// One value's text from a child's stdout: without its last line end, and never with a NUL.
std::vector<variable> single_value(const std::string& out, const std::string& name, const std::string& label) {
    std::size_t n = out.size();
    if (n > 0 && out[n - 1] == '\n') --n;
    if (out.find('\0') < n) throw provider_error("the value of " + name + " from " + label + " contains a NUL byte");
    std::vector<variable> vars(1);
    vars[0].name = name;
    vars[0].value.assign(out, 0, n);
    return vars;
}

asio::awaitable<std::vector<variable>> read_op_environment(std::string id,
                                                           std::filesystem::path op) {
    if (!text::is_op_environment_id(id))
        throw usage_error("invalid 1Password Environment ID '" + shown(id, 64) +
                          "' (expected lowercase letters and digits)");
    proc::command cmd;
    cmd.argv = {resolve_op(op).string(), "environment", "read", id, "--no-masking"};
    const std::string label = "`op environment read " + id + "`";
    proc::result r;
    scrub guard_out{r.out};
    co_await run_op(std::move(cmd), label, r);
    try {
        co_return parse_dotenv(r.out, label);
    } catch (const dotenv_error& e) {
        rethrow_in_output(e, label);
    }
}

asio::awaitable<std::vector<variable>> read_op_reference(std::string ref, std::string name,
                                                         std::filesystem::path op) {
    if (!is_valid_name(name))
        throw usage_error("invalid variable name '" + shown(name, 64) +
                          "' (use letters, digits and _, not starting with a digit)");
    if (!is_valid_reference(ref))
        throw usage_error(name + ": invalid 1Password reference '" + shown(ref, 120) +
                          "' (expected op://vault/item/field)");
    proc::command cmd;
    cmd.argv = {resolve_op(op).string(), "read", ref};
    const std::string label = "`op read " + shown(ref, 120) + "` (for " + name + ")";
    proc::result r;
    scrub guard_out{r.out};
    co_await run_op(std::move(cmd), label, r);
    co_return single_value(r.out, name, label);
}

std::vector<variable> read_dotenv_file(const std::filesystem::path& path) {
    const std::string where = shown(path.string(), 200);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw provider_error("cannot read " + where + ": " + std::strerror(errno));
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } close_fd{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw provider_error("cannot read " + where + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw provider_error("cannot read " + where + ": not a regular file");
    if (static_cast<std::uintmax_t>(st.st_size) > max_provider_output)
        throw provider_error(where + " is larger than 4 MiB");
    std::string text(static_cast<std::size_t>(st.st_size), '\0');
    scrub guard{text};
    std::size_t got = 0;
    while (got < text.size()) {
        const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw provider_error("cannot read " + where + ": " + std::strerror(errno));
        if (n == 0) break;  // the file shrank meanwhile
        got += static_cast<std::size_t>(n);
    }
    return parse_dotenv(std::string_view(text).substr(0, got), path.string());
}

asio::awaitable<std::vector<variable>> read_command(std::vector<std::string> argv, std::string name) {
    if (argv.empty()) throw usage_error("a secrets command needs at least a program");
    const std::string label = command_label(argv);
    proc::command cmd;
    cmd.argv = std::move(argv);
    proc::run_options options = capped(command_timeout);
    proc::result r;
    scrub guard_out{r.out};
    try {
        r = co_await proc::run(std::move(cmd), std::move(options));
    } catch (const proc::spawn_error& e) {
        throw provider_error(shown(e.what()));
    }
    check(r, label, false);
    if (!name.empty()) co_return single_value(r.out, name, label);
    try {
        co_return parse_dotenv(r.out, label);
    } catch (const dotenv_error& e) {
        rethrow_in_output(e, label);
    }
}

} // namespace

asio::awaitable<std::vector<variable>> read(source src, std::filesystem::path op_binary) {
    switch (src.kind) {
    case secret_kind::op_environment:
        co_return co_await read_op_environment(std::move(src.id_or_ref_or_path), std::move(op_binary));
    case secret_kind::op_reference:
        co_return co_await read_op_reference(std::move(src.id_or_ref_or_path), std::move(src.name),
                                             std::move(op_binary));
    case secret_kind::dotenv_file:
        co_return read_dotenv_file(src.id_or_ref_or_path);
    case secret_kind::command:
        co_return co_await read_command(std::move(src.argv), std::move(src.name));
    }
    throw usage_error("unknown secrets source");
}

} // namespace machine::secrets
