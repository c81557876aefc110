// The dotenv parser and renderer (see machine/secrets.hpp for the accepted syntax), and wipe().
//
// Values are secrets: they are never copied into messages, and each is built in a buffer of
// its final (or an upper-bound) size so that no reallocation leaves stray copies behind.
#include <cstring>
#include <unordered_map>

#include "machine/platform.hpp"
#include "machine/secrets.hpp"

namespace machine::secrets {

dotenv_error::dotenv_error(const std::string& origin, std::size_t line, std::size_t column,
                           std::string problem)
    : error(origin + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + problem,
            exit_code::usage),
      line_(line),
      column_(column),
      problem_(std::move(problem)) {}

void zero_in_place(std::string& s) {
    if (s.capacity() > 0) platform::wipe_memory(s.data(), s.capacity());
}

void zero_in_place(variable& v) {
    zero_in_place(v.name);
    zero_in_place(v.value);
}

void wipe(std::string& s) {
    zero_in_place(s);
    std::string().swap(s);
}

void wipe(std::vector<variable>& vars) {
    for (auto& v : vars) zero_in_place(v);
    vars.clear();
    vars.shrink_to_fit();
}

namespace {

bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool is_name_start(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

constexpr std::string_view invalid_name =
    "invalid variable name (use letters, digits and _, not starting with a digit)";

class parser {
public:
    parser(std::string_view text, const std::string& origin) : s_(text), origin_(origin) {}

    std::vector<variable> run() {
        std::vector<variable> vars;
        std::unordered_map<std::string, std::size_t> index;
        try {
            while (skip_to_statement()) {
                variable v = statement();
                if (auto it = index.find(v.name); it != index.end()) {
                    wipe(vars[it->second].value);
                    vars[it->second].value = std::move(v.value);
                } else {
                    index.emplace(v.name, vars.size());
                    vars.push_back(std::move(v));
                }
            }
        } catch (...) {
            wipe(vars);
            throw;
        }
        return vars;
    }

private:
    std::string_view s_;
    const std::string& origin_;
    std::size_t i_ = 0;
    std::size_t line_ = 1;
    std::size_t line_start_ = 0;

    bool at_end() const { return i_ >= s_.size(); }
    char peek() const { return at_end() ? '\0' : s_[i_]; }
    std::size_t column(std::size_t pos) const { return pos - line_start_ + 1; }

    [[noreturn]] void fail(std::size_t pos, std::string problem) const {
        throw dotenv_error(origin_, line_, column(pos), std::move(problem));
    }
    [[noreturn]] void fail_at(std::size_t line, std::size_t col, std::string problem) const {
        throw dotenv_error(origin_, line, col, std::move(problem));
    }

    // Moves past a '\n' at i_ (which must be one).
    void newline() {
        ++i_;
        ++line_;
        line_start_ = i_;
    }
    // Accounts for the newlines inside [from, to) (a quoted value spanning lines).
    void count_lines(std::size_t from, std::size_t to) {
        for (std::size_t k = from; k < to; ++k) {
            if (s_[k] == '\n') {
                ++line_;
                line_start_ = k + 1;
            }
        }
    }
    void skip_blanks() {
        while (!at_end() && is_blank(s_[i_])) ++i_;
    }
    void skip_rest_of_line() {
        while (!at_end() && s_[i_] != '\n') ++i_;
    }
    // At a line end (optionally "\r\n") or the end of the text.
    bool at_line_end() const {
        return at_end() || s_[i_] == '\n' || (s_[i_] == '\r' && (i_ + 1 == s_.size() || s_[i_ + 1] == '\n'));
    }
    void finish_line() {
        if (!at_end() && s_[i_] == '\r') ++i_;
        if (!at_end()) newline();
    }

    // Skips blank lines and comments; false at the end of the text.
    bool skip_to_statement() {
        for (;;) {
            skip_blanks();
            if (at_end()) return false;
            if (s_[i_] == '#') skip_rest_of_line();
            if (at_line_end()) {
                if (at_end()) return false;
                finish_line();
                continue;
            }
            return true;
        }
    }

    variable statement() {
        if (s_.substr(i_, 6) == "export" && i_ + 6 < s_.size() && is_blank(s_[i_ + 6])) {
            i_ += 6;
            skip_blanks();
        }
        variable v;
        const std::size_t name_start = i_;
        while (!at_end() && is_name_char(s_[i_])) ++i_;
        if (i_ == name_start) {
            if (peek() == '=') fail(i_, "missing variable name before `=`");
            fail(i_, std::string(invalid_name));
        }
        if (!is_name_start(s_[name_start])) fail(name_start, std::string(invalid_name));
        if (!at_line_end() && !is_blank(s_[i_]) && s_[i_] != '=') fail(i_, std::string(invalid_name));
        v.name.assign(s_.substr(name_start, i_ - name_start));
        skip_blanks();
        if (peek() != '=' || at_end()) fail(i_, "expected `=` after the variable name");
        ++i_;
        const std::size_t value_start = i_;
        skip_blanks();
        if (peek() == '\'' && !at_end()) {
            single_quoted(v);
        } else if (peek() == '"' && !at_end()) {
            double_quoted(v);
        } else {
            unquoted(v, value_start);
        }
        return v;
    }

    void check_no_nul(std::size_t from, std::size_t to, const std::string& name) {
        for (std::size_t k = from; k < to; ++k) {
            if (s_[k] == '\0') {
                count_lines(from, k);
                fail(k, "the value of " + name + " contains a NUL byte");
            }
        }
    }

    // After a closing quote: blanks, then a comment or the line end.
    void after_quote(const std::string& name) {
        skip_blanks();
        if (peek() == '#' && !at_end()) skip_rest_of_line();
        if (!at_line_end())
            fail(i_, "unexpected text after the closing quote of " + name + "'s value");
        finish_line();
    }

    void single_quoted(variable& v) {
        const std::size_t open = i_;
        const std::size_t open_line = line_, open_col = column(open);
        const std::size_t close = s_.find('\'', open + 1);
        if (close == std::string_view::npos)
            fail_at(open_line, open_col, "unterminated single-quoted value of " + v.name);
        check_no_nul(open + 1, close, v.name);
        v.value.assign(s_.substr(open + 1, close - open - 1));
        count_lines(open + 1, close);
        i_ = close + 1;
        after_quote(v.name);
    }

    void double_quoted(variable& v) {
        const std::size_t open = i_;
        const std::size_t open_line = line_, open_col = column(open);
        // First find the closing quote, so the value's buffer is sized once.
        std::size_t close = open + 1;
        while (close < s_.size() && s_[close] != '"') close += (s_[close] == '\\') ? 2 : 1;
        if (close >= s_.size())
            fail_at(open_line, open_col, "unterminated double-quoted value of " + v.name);
        check_no_nul(open + 1, close, v.name);
        v.value.reserve(close - open - 1);
        for (std::size_t k = open + 1; k < close; ++k) {
            char c = s_[k];
            if (c == '\\') {
                const char e = s_[k + 1];
                switch (e) {
                case 'n': c = '\n'; break;
                case 't': c = '\t'; break;
                case 'r': c = '\r'; break;
                case '"': case '\\': case '$': c = e; break;
                default:  // not an escape: the backslash stays
                    v.value.push_back('\\');
                    continue;
                }
                ++k;
            }
            v.value.push_back(c);
        }
        count_lines(open + 1, close);
        i_ = close + 1;
        after_quote(v.name);
    }

    void unquoted(variable& v, std::size_t value_start) {
        std::size_t end = value_start;
        while (end < s_.size() && s_[end] != '\n') {
            if (s_[end] == '#' && end > value_start && is_blank(s_[end - 1])) break;
            ++end;
        }
        std::size_t line_end = end;
        while (line_end < s_.size() && s_[line_end] != '\n') ++line_end;
        std::size_t a = value_start, b = end;
        while (a < b && is_blank(s_[a])) ++a;
        while (b > a && (is_blank(s_[b - 1]) || s_[b - 1] == '\r')) --b;
        check_no_nul(a, b, v.name);
        v.value.assign(s_.substr(a, b - a));
        i_ = line_end;
        if (!at_end()) newline();
    }
};

} // namespace

std::vector<variable> parse_dotenv(std::string_view text, const std::string& origin) {
    return parser(text, origin).run();
}

std::string render_dotenv(const std::vector<variable>& vars) {
    std::size_t size = 0;
    for (const auto& v : vars) {
        if (v.name.empty() || !is_name_start(v.name[0]))
            throw usage_error("cannot write the variable name '" + v.name.substr(0, 64) + "'");
        for (char c : v.name)
            if (!is_name_char(c))
                throw usage_error("cannot write the variable name '" + v.name.substr(0, 64) + "'");
        if (v.value.find('\0') != std::string::npos)
            throw usage_error("the value of " + v.name + " contains a NUL byte");
        size += v.name.size() + 4 + 2 * v.value.size();
    }
    std::string out;
    out.reserve(size);
    for (const auto& v : vars) {
        out += v.name;
        out += "=\"";
        for (char c : v.value) {
            switch (c) {
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '$': out += "\\$"; break;
            default: out.push_back(c);
            }
        }
        out += "\"\n";
    }
    return out;
}

} // namespace machine::secrets
