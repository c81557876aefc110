// The message of the error a piece of code throws: what the unit tests compare against the
// text a user would see. Kept apart from test_support.hpp (Asio) so that parser tests stay light.
#pragma once

#include <string>
#include <utility>

#include "machine/error.hpp"

namespace machine::test {

// What f() throws as an E (e.what()), or "(no error)" when it returns. Any other exception goes
// on: the test fails with it.
template <class E = machine::error, class F>
std::string message_of(F&& f) {
    try {
        std::forward<F>(f)();
    } catch (const E& e) {
        return e.what();
    }
    return "(no error)";
}

} // namespace machine::test
