# Turns a text file into a C++ raw string literal named ${NAME} (default kTemplate), so the
# binary needs no data files at run time.
if(NOT NAME)
  set(NAME kTemplate)
endif()
file(READ "${INPUT}" content)
file(WRITE "${OUTPUT}" "constexpr const char* ${NAME} = R\"MACHINE_EMBED(${content})MACHINE_EMBED\";\n")
