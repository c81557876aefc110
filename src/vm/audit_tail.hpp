// Following a VM's audit log (its egress proxy's net.jsonl) for `machine watch`: the lines
// appended since the follower started, across the proxy's rotations (net.jsonl becomes
// net.jsonl.1 and a new net.jsonl starts) and truncations, a torn last line held until its end
// arrives. File I/O only, no loop: `watch` polls it, the tests drive it by hand.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace machine::vm {

class line_tail {
public:
    /// Follows `file`. From its current end when `from_start` is false and the file exists now
    /// (its past is not news); from the start of any file that appears later.
    explicit line_tail(std::filesystem::path file, bool from_start = false);
    ~line_tail();
    line_tail(const line_tail&) = delete;
    line_tail& operator=(const line_tail&) = delete;

    /// The complete lines appended since the last call (without their newlines), at most
    /// `max_bytes` read per call (the rest comes next time). A line longer than max_line is
    /// dropped whole, and counted in dropped_lines().
    std::vector<std::string> poll(std::size_t max_bytes = 256 * 1024);
    std::uint64_t dropped_lines() const { return dropped_; }

    static constexpr std::size_t max_line = 64 * 1024;

private:
    void open_current(bool at_end);
    bool replaced() const;  // the path now names another file than the one open
    std::size_t read_some(std::size_t max_bytes, std::vector<std::string>& lines);

    std::filesystem::path file_;
    int fd_ = -1;
    std::uint64_t dev_ = 0, ino_ = 0;
    std::string partial_;
    bool skipping_ = false;  // inside a line over max_line: dropped up to its newline
    std::uint64_t dropped_ = 0;
};

} // namespace machine::vm
