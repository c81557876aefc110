# ctest driver for the fuzzer: a fixed number of runs from a fixed seed and the seed corpus,
# nothing written back to the corpus; a crashing input lands in ARTIFACTS.
if(NOT DEFINED MAX_LEN)
  set(MAX_LEN 512)
endif()
file(GLOB seed_files ${SEEDS}/*)
string(JOIN "," seed_list ${seed_files})
file(MAKE_DIRECTORY ${ARTIFACTS})
# malloc_context_size=0: no allocation stack traces, which cost more than the codec itself;
# a failure is re-run by hand with full ASAN_OPTIONS.
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=malloc_context_size=0:detect_leaks=1
          ${FUZZER} -runs=${RUNS} -seed=1 -max_len=${MAX_LEN} -rss_limit_mb=2048 -timeout=10
          -print_final_stats=1 -artifact_prefix=${ARTIFACTS}/ -seed_inputs=${seed_list}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the fuzzer ${FUZZER} failed (exit ${rc}); the input is in ${ARTIFACTS}")
endif()
