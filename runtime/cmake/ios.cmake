# iOS arm64 (device) or the arm64 simulator with Xcode's clang. NOT BUILT HERE: Xcode exists only on macOS (see
# runtime/README.md, "Native runner"). Usage (the Xcode generator is required for iOS):
#   cmake -S runtime -B build-ios --preset ios            # device
#   cmake -S runtime -B build-ios-sim --preset ios-simulator
# The kernel library is built static (QWEN35_LIBRARY_TYPE=STATIC): an app links it with -force_load, because it is
# registration-only and the linker would otherwise drop it.
set(CMAKE_SYSTEM_NAME iOS)
set(CMAKE_OSX_ARCHITECTURES "arm64" CACHE STRING "")
set(CMAKE_OSX_DEPLOYMENT_TARGET "17.0" CACHE STRING "")
if(QWEN35_IOS_SIMULATOR)
  set(CMAKE_OSX_SYSROOT iphonesimulator)
else()
  set(CMAKE_OSX_SYSROOT iphoneos)
endif()
set(QWEN35_LIBRARY_TYPE STATIC CACHE STRING "")
# find_package must look in the ExecuTorch install given by executorch_DIR, not only in the iOS SDK.
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
