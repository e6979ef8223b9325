// Registering our boxed kernels with ExecuTorch exactly once (register_executorch.cpp, register_wq_executorch.cpp).
#pragma once

#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/log.h>

#include <cstddef>
#include <cstring>

#include "gated_delta_rule.h"  // ArgDesc

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

// An ExecuTorch tensor as the framework-free validators see it (ArgDesc), with the op's own code for its dtype.
// At most kMaxDim dims are described; a kernel that may see more checks that first.
struct TensorArg {
  static constexpr int64_t kMaxDim = 8;
  int64_t sizes[kMaxDim];
  ArgDesc d;
  TensorArg(const char* name, const ::executorch::aten::Tensor& t, int32_t dtype) {
    const int64_t n = t.dim() < kMaxDim ? t.dim() : kMaxDim;
    for (int64_t i = 0; i < n; ++i) sizes[i] = t.size(i);
    d = ArgDesc{name, dtype, n, sizes, ::executorch::runtime::tensor_is_default_dim_order(t), t.const_data_ptr(),
                static_cast<int64_t>(t.nbytes())};
  }
};

}  // namespace qwen35
