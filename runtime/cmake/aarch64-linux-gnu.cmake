# Cross toolchain: aarch64 Linux (glibc) from an x86-64 Debian host with g++-aarch64-linux-gnu, linked against the
# aarch64 executorch wheel (-Dexecutorch_DIR=<unzipped wheel>/executorch/lib/cmake/executorch). Used by
# runtime/scripts/check_arm64.sh; binaries run under qemu-aarch64-static (CMAKE_CROSSCOMPILING_EMULATOR).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(QWEN35_AARCH64_PREFIX "aarch64-linux-gnu" CACHE STRING "cross compiler prefix")
set(CMAKE_C_COMPILER ${QWEN35_AARCH64_PREFIX}-gcc)
set(CMAKE_CXX_COMPILER ${QWEN35_AARCH64_PREFIX}-g++)
set(CMAKE_FIND_ROOT_PATH /usr/${QWEN35_AARCH64_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# BOTH: the executorch package lives outside the sysroot (an unzipped wheel), and find_package must still see it.
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static;-L;/usr/${QWEN35_AARCH64_PREFIX})
