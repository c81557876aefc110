// When `machine watch` renders a project's secrets again after a boot (pure: no I/O, no Asio,
// the clock passed in; tested directly). Internal to the vm module.
//
// The guest chooses when it says `user.ready` and which boot_id it puts in it, so a guest event
// alone must not decide how often the host runs a secret provider. The gate renders:
//   - on a boot Lima reports (its host agent saying the VM runs), once per such report;
//   - on a guest `user.ready` with a well-formed boot_id it has not rendered for;
// pairs the two reports of one boot (Lima's and the guest's, in either order) into one render;
// and never renders more than once per `min_interval`: a render asked for inside the window is
// owed and happens when the window ends (several asks make one render).
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

namespace machine::vm {

class render_gate {
public:
    using clock = std::chrono::steady_clock;
    using time_point = clock::time_point;

    /// Renders of one VM are at least this far apart.
    static constexpr std::chrono::seconds min_interval{30};
    /// boot_ids remembered as rendered (a guest can name any number of them).
    static constexpr std::size_t remembered_boots = 64;

    /// What an input did, for the caller's debug log (the guest controls how often they come).
    enum class outcome {
        owed,             ///< a render is owed: take() returns true once the window allows
        deferred,         ///< owed, but inside the window of the last render (or one already owed)
        same_boot,        ///< this boot is already rendered for, or paired with the other report
        invalid_boot_id,  ///< not a boot_id: missing, malformed or oversized; ignored
    };

    /// Lima's host agent reports the VM running (ha.stdout.log). A report while Lima already
    /// says it runs (a second report of the same boot) is the same boot.
    outcome lima_booted(time_point now);
    /// Lima reports the VM stopped or stopping (`limactl list` no longer says Running, or the
    /// host agent is exiting): the next report is a new boot; an owed render is dropped.
    void lima_stopped();
    /// The guest agent's `user.ready` for `boot_id` (empty when absent or not a string).
    outcome guest_ready(std::string_view boot_id, time_point now);

    /// True when a render is owed and the window allows it now; it is then counted as done.
    bool take(time_point now);
    /// When an owed render becomes due (nullopt: none is owed).
    std::optional<time_point> due() const;

    /// A boot_id as the kernel writes it (/proc/sys/kernel/random/boot_id): a UUID, 36
    /// characters of lowercase hex and dashes (8-4-4-4-12).
    static bool valid_boot_id(std::string_view id);

private:
    outcome owe(time_point now);
    void remember(std::string_view boot_id);
    bool rendered_for(std::string_view boot_id) const;

    std::optional<time_point> last_render_;
    bool owed_ = false;
    // Lima has reported this VM running since it last reported it stopped.
    bool lima_up_ = false;
    // A render made (or owed) for a Lima boot whose guest boot_id is not known yet: the next new
    // boot_id is that boot.
    bool lima_awaits_boot_id_ = false;
    // A render made (or owed) for a guest boot before Lima reported the VM running: Lima's
    // report, when it comes, is that boot.
    bool guest_awaits_lima_ = false;
    std::deque<std::string> rendered_;  // boot_ids rendered for, oldest first
};

const char* to_string(render_gate::outcome o);

} // namespace machine::vm
