// XNNPACK's packed-weight cache, switched on from the runtime that loads our programs.
//
// A qwen-mobile .pte has two methods (forward, decode) that call the same XNNPACK-lowered linears. The .pte stores
// each weight once (named data, keyed by its sha256), but without the cache every method's delegate packs its own
// copy at load: on the 0.8B shape that is one extra copy of every packed weight resident for the life of the
// program. With the cache, packed data is keyed by the weight's name, so the second method finds what the first
// packed, and the unpacked source bytes are released after packing.
//
// The wheel's XNNPACK backend is built without ENABLE_XNNPACK_WEIGHTS_CACHE, so the cache is off unless a
// backend option turns it on; ExecuTorch's Python bindings have no call for backend options, hence this entry point
// (the native runner calls it too). It must run before the program's methods are loaded: the option is read at
// delegate init.
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>

namespace {
constexpr char kXnnpackBackendName[] = "XnnpackBackend";
}  // namespace

// Returns 0 on success, otherwise ExecuTorch's Error code (e.g. NotFound when no XNNPACK backend is linked).
extern "C" __attribute__((visibility("default"))) int qwen35_xnnpack_set_weight_cache(int enabled) {
  executorch::runtime::BackendOptions<1> options;
  auto err = options.set_option("weight_cache_enabled", enabled != 0);
  if (err != executorch::runtime::Error::Ok) {
    return static_cast<int>(err);
  }
  return static_cast<int>(executorch::runtime::set_option(kXnnpackBackendName, options.view()));
}
