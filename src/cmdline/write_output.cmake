# cmake -DPROGRAM=... -DARGS="a;b" -DOUTPUT=file [-DGZIP=gzip] -P write_output.cmake: the
# program's stdout into the file, gzipped when GZIP names gzip (the build's man page and
# completion scripts, from `machine` itself).
if(GZIP)
  execute_process(COMMAND ${PROGRAM} ${ARGS} COMMAND ${GZIP} -9n OUTPUT_FILE ${OUTPUT} RESULTS_VARIABLE rcs)
else()
  execute_process(COMMAND ${PROGRAM} ${ARGS} OUTPUT_FILE ${OUTPUT} RESULTS_VARIABLE rcs)
endif()
foreach(rc IN LISTS rcs)
  if(NOT rc EQUAL 0)
    file(REMOVE ${OUTPUT})
    message(FATAL_ERROR "${PROGRAM} ${ARGS} failed: ${rcs}")
  endif()
endforeach()
