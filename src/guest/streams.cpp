// The two ways to the guest agent's relay (guest.hpp, class stream): a channel of machine's own
// libssh connection, or the pipes of an `ssh` client riding the VM's OpenSSH master.
#include <exception>
#include <system_error>

#include "machine/guest.hpp"
#include "machine/platform.hpp"
#include "machine/proc.hpp"
#include "machine/ssh.hpp"

namespace machine::guest {

using asio::awaitable;

namespace {

class channel_stream_impl final : public stream {
public:
    explicit channel_stream_impl(std::shared_ptr<ssh::channel> ch) : ch_(std::move(ch)) {}
    ~channel_stream_impl() override { ch_->close(); }

    awaitable<std::optional<std::string>> read() override { return ch_->read(); }
    awaitable<void> write(std::string data) override { return ch_->write(std::move(data)); }
    awaitable<void> write_secret(std::string& data) override { return ch_->write_secret(data); }
    awaitable<std::optional<int>> exit_status() override {
        try {
            co_return co_await ch_->exit_status();
        } catch (const ssh::connection_lost&) {
        } catch (const error&) {  // closed without an exit status
        }
        co_return std::nullopt;
    }
    bool closed_by_remote() const override { return ch_->closed_by_remote(); }
    void close() override { ch_->close(); }

private:
    std::shared_ptr<ssh::channel> ch_;
};

// ssh's own exit status when it fails (the master is gone, the connection broke): not the relay's.
constexpr int ssh_failed = 255;

class process_stream_impl final : public stream {
public:
    explicit process_stream_impl(std::unique_ptr<proc::child> relay) : relay_(std::move(relay)) {}

    awaitable<std::optional<std::string>> read() override {
        auto chunk = co_await relay_->read();
        if (!chunk && !closed_) ended_ = true;
        co_return chunk;
    }
    awaitable<void> write(std::string data) override {
        try {
            co_await relay_->write(data);
        } catch (const std::system_error&) {
            throw;  // cancelled
        } catch (const error&) {
            if (!closed_) ended_ = true;  // it stopped reading: it has ended
            throw;
        }
    }
    awaitable<void> write_secret(std::string& data) override {
        std::exception_ptr failure;
        try {
            co_await relay_->write(data);  // straight from the caller's buffer; the pipe copies it
        } catch (const error&) {
            if (!closed_) ended_ = true;
            failure = std::current_exception();
        } catch (...) {
            failure = std::current_exception();
        }
        if (data.capacity() > 0) platform::wipe_memory(data.data(), data.capacity());
        data.clear();
        if (failure) std::rethrow_exception(failure);
    }
    awaitable<std::optional<int>> exit_status() override {
        const int status = co_await relay_->wait();
        if (status == ssh_failed) co_return std::nullopt;
        co_return status;
    }
    bool closed_by_remote() const override { return ended_; }
    void close() override {
        closed_ = true;
        relay_->close();
    }

private:
    std::unique_ptr<proc::child> relay_;
    bool ended_ = false;   // its output ended, or it stopped reading, before we closed it
    bool closed_ = false;
};

} // namespace

std::unique_ptr<stream> channel_stream(std::shared_ptr<ssh::channel> channel) {
    return std::make_unique<channel_stream_impl>(std::move(channel));
}

std::unique_ptr<stream> process_stream(std::unique_ptr<proc::child> relay) {
    return std::make_unique<process_stream_impl>(std::move(relay));
}

std::string relay_command(const std::string& socket, const std::string& relay) {
    return text::shell_quote(relay) + " relay --socket " + text::shell_quote(socket);
}

} // namespace machine::guest
