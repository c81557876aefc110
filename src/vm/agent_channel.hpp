// The guest agent's requests as the secrets and credentials workflows make them (secrets.cpp,
// agent_credentials.cpp): one definition of what an agent too old for a request says.
#pragma once

#include <memory>
#include <string>

#include <asio/awaitable.hpp>

#include "machine/guest.hpp"
#include "machine/vm.hpp"

namespace machine::vm::detail {

// A request to the agent; an agent too old to know it says how to update it.
template <typename T>
asio::awaitable<T> agent_request(asio::awaitable<T> request, std::string name) {
    try {
        co_return co_await std::move(request);
    } catch (const guest::agent_error& e) {
        if (e.code() == "unknown_type")
            throw error("the agent in VM '" + name + "' predates secrets; run 'machine up " + name + "' to update it");
        throw;
    }
}

} // namespace machine::vm::detail
