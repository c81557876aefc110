#include "render_gate.hpp"

#include <algorithm>

namespace machine::vm {

bool render_gate::valid_boot_id(std::string_view id) {
    if (id.size() != 36) return false;
    for (std::size_t i = 0; i < id.size(); ++i) {
        const char c = id[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return false;
        }
    }
    return true;
}

render_gate::outcome render_gate::owe(time_point now) {
    const bool already = owed_;
    owed_ = true;
    if (already || (last_render_ && now - *last_render_ < min_interval)) return outcome::deferred;
    return outcome::owed;
}

void render_gate::remember(std::string_view boot_id) {
    if (rendered_for(boot_id)) return;
    rendered_.emplace_back(boot_id);
    if (rendered_.size() > remembered_boots) rendered_.pop_front();
}

bool render_gate::rendered_for(std::string_view boot_id) const {
    return std::find(rendered_.begin(), rendered_.end(), boot_id) != rendered_.end();
}

render_gate::outcome render_gate::lima_booted(time_point now) {
    if (lima_up_) return outcome::same_boot;
    lima_up_ = true;
    if (guest_awaits_lima_) {
        // The guest reported this boot first (its agent was reachable before Lima's
        // requirements were met): already rendered, or owed.
        guest_awaits_lima_ = false;
        return outcome::same_boot;
    }
    lima_awaits_boot_id_ = true;
    return owe(now);
}

void render_gate::lima_stopped() {
    lima_up_ = false;
    lima_awaits_boot_id_ = false;
    guest_awaits_lima_ = false;
    owed_ = false;  // nothing to render into; the next boot asks again
}

render_gate::outcome render_gate::guest_ready(std::string_view boot_id, time_point now) {
    if (!valid_boot_id(boot_id)) return outcome::invalid_boot_id;
    if (rendered_for(boot_id)) return outcome::same_boot;
    remember(boot_id);
    if (lima_awaits_boot_id_) {
        // The boot Lima reported, now with its id: rendered (or owed) already.
        lima_awaits_boot_id_ = false;
        return outcome::same_boot;
    }
    // A boot Lima did not report: the guest rebooted itself, or Lima's report is still to come.
    if (!lima_up_) guest_awaits_lima_ = true;
    return owe(now);
}

bool render_gate::take(time_point now) {
    if (!owed_ || (last_render_ && now - *last_render_ < min_interval)) return false;
    owed_ = false;
    last_render_ = now;
    return true;
}

std::optional<render_gate::time_point> render_gate::due() const {
    if (!owed_) return std::nullopt;
    return last_render_ ? *last_render_ + min_interval : time_point::min();
}

const char* to_string(render_gate::outcome o) {
    switch (o) {
    case render_gate::outcome::owed: return "owed";
    case render_gate::outcome::deferred: return "deferred";
    case render_gate::outcome::same_boot: return "same boot";
    case render_gate::outcome::invalid_boot_id: return "invalid boot_id";
    }
    return "?";
}

} // namespace machine::vm
