# Turns templates/lima.yaml into a C++ raw string literal, so the binary needs no data files.
file(READ "${INPUT}" content)
file(WRITE "${OUTPUT}" "constexpr const char* kTemplate = R\"MACHINE_TEMPLATE(${content})MACHINE_TEMPLATE\";\n")
