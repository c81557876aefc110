// The kinds of secret source: one list for the configuration, which reads them from
// projects.toml, and for the providers (src/secrets), which read the secrets they name.
#pragma once

namespace machine {

enum class secret_kind { op_environment, op_reference, dotenv_file, command };

} // namespace machine
