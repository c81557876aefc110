// A project's secrets, from their providers on this computer into its running VM (secrets.cpp):
// shared by `machine secrets`, `up` (secrets_on_up) and `watch` (a VM that booted again).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <asio/awaitable.hpp>

#include "cli.hpp"
#include "machine/config.hpp"

namespace machine::ssh {
class session;
}

namespace machine::cli {

struct secrets_sync_options {
    // Only the sets this repo's .envrc uses (`~/code/<repo>/.envrc`; a nested repo by its path
    // under ~/code or its last component).
    std::optional<std::string> repo;
    // Leave sets the VM already has alone (watch after a boot: `up` may have rendered them).
    bool only_missing = false;
    // Nothing to render is an error (`machine secrets`), or only a warning (`up` with
    // secrets_on_up, before any repo says `use op_env`).
    bool required = true;
};

// Reads every set the project declares ([[NAME.secrets]]) and every 1Password Environment the
// VM's repos ask for (`use op_env ID`), all of them into memory before anything is sent: a
// source that fails renders nothing. Then one `secrets.render` per set over `session`. Says
// which sets it rendered and how many variables, never a value. Throws machine::error (exit 1)
// when a source fails or nothing is there to render.
asio::awaitable<void> sync_secrets(context& ctx, const config::project& project,
                                   std::shared_ptr<ssh::session> session, secrets_sync_options options);

} // namespace machine::cli
