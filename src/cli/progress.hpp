// The live multi-line progress view of `machine up` with several VMs on a terminal: one line
// per VM (state, current step, elapsed, latest detail), redrawn in place.
#pragma once

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "machine/events.hpp"

namespace machine::cli {

class progress_view : public events::sink {
public:
    progress_view(std::FILE* out, const std::vector<std::string>& vms);
    void write(const events::event& e) override;
    // Redraws every line (the CLI calls this once a second so elapsed times move).
    void redraw();

    // The lines as they would be drawn (tests).
    std::vector<std::string> lines(std::size_t width) const;

private:
    struct row {
        std::string vm;
        std::string state = "waiting";
        std::string step;
        std::string detail;
        std::optional<std::chrono::steady_clock::time_point> started;
        std::optional<std::chrono::steady_clock::duration> took;
    };
    row* find(const std::string& vm);

    std::FILE* out_;
    std::vector<row> rows_;
    std::size_t drawn_ = 0;
    std::size_t name_width_ = 4;
};

} // namespace machine::cli
