// Registering our boxed kernels with ExecuTorch exactly once (register_executorch.cpp, register_wq_executorch.cpp).
#pragma once

#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/log.h>

#include <cstddef>
#include <cstring>

namespace qwen35 {

// Registering a name twice aborts the process, so a second copy of a library (or a second dlopen under another
// path) must not register again: true only when this call registered the kernels.
inline bool register_kernels_once(const ::executorch::runtime::Kernel* kernels, size_t n) {
  // Scans the registry instead of registry_has_op_function(), which logs an error for every miss.
  const auto registered = ::executorch::runtime::get_registered_kernels();
  for (size_t i = 0; i < registered.size(); ++i) {
    if (!registered[i].name_) continue;
    for (size_t j = 0; j < n; ++j) {
      if (std::strcmp(registered[i].name_, kernels[j].name_) == 0) {
        ET_LOG(Info, "%s is already registered; not registering again", kernels[j].name_);
        return false;
      }
    }
  }
  return ::executorch::runtime::register_kernels(::executorch::runtime::Span<const ::executorch::runtime::Kernel>(
             kernels, n)) == ::executorch::runtime::Error::Ok;
}

}  // namespace qwen35
