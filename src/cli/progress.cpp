#include "progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>

#include "machine/text.hpp"

namespace machine::cli {

progress_view::progress_view(std::FILE* out, const std::vector<std::string>& vms) : out_(out) {
    for (const auto& vm : vms) {
        rows_.push_back(row{text::escape_for_terminal(vm)});
        name_width_ = std::max(name_width_, rows_.back().vm.size());
    }
}

progress_view::row* progress_view::find(const std::string& vm) {
    for (auto& r : rows_)
        if (r.vm == vm) return &r;
    return nullptr;
}

void progress_view::write(const events::event& raw) {
    // Rows keep only escaped text: one terminal row per VM, or the cursor arithmetic of
    // redraw() breaks, and nothing a VM sends may rewrite the screen.
    const events::event e = events::escaped_for_terminal(raw);
    row* r = find(e.vm);
    if (!r) return;
    const auto now = std::chrono::steady_clock::now();
    if (!r->started) r->started = now;
    const std::string_view t = e.type;
    if (t == events::type::vm_state) {
        r->state = e.text("state");
        r->detail = e.text("detail");
    } else if (t == events::type::step_started) {
        r->step = e.text("step");
        r->detail.clear();
    } else if (t == events::type::message) {
        r->detail = e.text("text");
    } else if (t == events::type::step_output) {
        r->detail = e.text("line");
    } else if (t == events::type::error) {
        r->state = "failed";
        r->detail = e.text("message");
    } else if (t == events::type::vm_done) {
        r->state = e.text("outcome");
        r->step.clear();
        r->took = now - *r->started;
    }
    redraw();
}

std::vector<std::string> progress_view::lines(std::size_t width) const {
    std::vector<std::string> out;
    const auto now = std::chrono::steady_clock::now();
    for (const auto& r : rows_) {
        std::string line = "  " + r.vm + std::string(name_width_ - r.vm.size() + 2, ' ');
        std::string state = r.state;
        state.resize(std::max<std::size_t>(state.size(), 10), ' ');
        line += state + " ";
        std::string step = r.step;
        step.resize(std::max<std::size_t>(step.size(), 8), ' ');
        line += step + " ";
        if (r.started) {
            const auto d = r.took ? *r.took : now - *r.started;
            const auto secs = std::chrono::duration_cast<std::chrono::seconds>(d).count();
            char buf[16];
            std::snprintf(buf, sizeof buf, "%4llds", static_cast<long long>(secs));
            line += buf;
        } else {
            line += "     ";
        }
        if (!r.detail.empty()) line += "  " + r.detail;
        if (width > 1 && line.size() > width - 1) {
            line.resize(width - 1);
            // Never cut a UTF-8 sequence in half.
            while (!line.empty() && (static_cast<unsigned char>(line.back()) & 0xC0) == 0x80) line.pop_back();
            if (!line.empty() && static_cast<unsigned char>(line.back()) >= 0xC0) line.pop_back();
        }
        out.push_back(line);
    }
    return out;
}

void progress_view::redraw() {
    winsize ws{};
    std::size_t width = 100;
    if (::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) width = ws.ws_col;
    std::string frame;
    if (drawn_ > 0) frame += "\x1b[" + std::to_string(drawn_) + "A";  // back to our first line
    for (const auto& line : lines(width)) frame += "\r\x1b[2K" + line + "\n";
    drawn_ = rows_.size();
    std::fwrite(frame.data(), 1, frame.size(), out_);
    std::fflush(out_);
}

} // namespace machine::cli
