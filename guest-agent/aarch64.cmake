# Toolchain for the guest agent's aarch64 cross build (Debian's g++-aarch64-linux-gnu; the
# machine-agent-aarch64 target in ../CMakeLists.txt configures a build with it and
# -DMACHINE_AGENT_ONLY=ON). Asio and nlohmann/json are header-only: the host's headers serve.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
if(NOT CMAKE_CXX_COMPILER)
  set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
endif()
