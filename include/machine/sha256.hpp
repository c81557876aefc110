// SHA-256 (FIPS 180-4), for checking that the agent in a VM is the one this host ships.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace machine {

class sha256 {
public:
    sha256();
    void update(std::string_view bytes);
    std::array<std::uint8_t, 32> digest();  // finishes; the object is then spent
    std::string hex_digest();

    static std::string hex(std::string_view bytes);
    // The hex digest of a file's contents; throws machine::error when it cannot be read.
    static std::string hex_of_file(const std::filesystem::path& file);

private:
    void block(const std::uint8_t* p);
    std::array<std::uint32_t, 8> h_;
    std::array<std::uint8_t, 64> buffer_{};
    std::size_t buffered_ = 0;
    std::uint64_t length_ = 0;
};

} // namespace machine
