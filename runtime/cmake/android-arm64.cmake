# Android arm64-v8a through the NDK's own toolchain file. NOT BUILT HERE: no NDK is reachable from the machine this
# project is developed on (see runtime/README.md, "Native runner"). Usage:
#   cmake -S runtime -B build-android --preset android-arm64      (needs $ANDROID_NDK and -Dexecutorch_DIR=...)
# executorch_DIR must be an ExecuTorch built for Android with the same NDK (the PyPI wheel is glibc-only).
if(NOT ANDROID_NDK AND DEFINED ENV{ANDROID_NDK})
  set(ANDROID_NDK "$ENV{ANDROID_NDK}")
endif()
if(NOT ANDROID_NDK OR NOT EXISTS "${ANDROID_NDK}/build/cmake/android.toolchain.cmake")
  message(FATAL_ERROR "android-arm64.cmake: set ANDROID_NDK (environment or -DANDROID_NDK=) to an NDK r26 or newer; "
                      "'${ANDROID_NDK}/build/cmake/android.toolchain.cmake' does not exist")
endif()
set(ANDROID_ABI "arm64-v8a" CACHE STRING "")
# The app's minSdk (android_app targets API 23); bionic features above it are not used by the kernels or runner.
set(ANDROID_PLATFORM "android-23" CACHE STRING "")
# Must match the STL ExecuTorch was built with; the ExecuTorch Android build uses the shared libc++.
set(ANDROID_STL "c++_shared" CACHE STRING "")
include("${ANDROID_NDK}/build/cmake/android.toolchain.cmake")
