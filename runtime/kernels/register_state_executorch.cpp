// ExecuTorch registration of qwen35::kv_cache_update.out and qwen35::reset_state.out as boxed kernels.
//
// Schemas (runtime/state_ops.py):
//   kv_cache_update.out(Tensor(a!) cache, Tensor values, Tensor input_pos, *, Tensor(b!) out) -> Tensor(b!)
//   reset_state.out(Tensor(a!) state, Tensor input_pos, *, Tensor(b!) out) -> Tensor(b!)
// The emitter passes the arguments, `out`, and a slot for the returned value. `cache` / `state` is the program's
// mutable buffer itself (ExecuTorch removes the functionalization around the op), so the writes land in place.
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/event_tracer_hooks.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/log.h>

#include <cstring>

#include "et_register.h"
#include "state_ops.h"

namespace qwen35 {
namespace {

using ::executorch::aten::ScalarType;
using ::executorch::aten::SizesType;
using ::executorch::aten::Tensor;
using ::executorch::runtime::Error;
using ::executorch::runtime::EValue;
using ::executorch::runtime::Kernel;
using ::executorch::runtime::KernelRuntimeContext;
using ::executorch::runtime::Span;

constexpr const char* kOpName = "qwen35::kv_cache_update.out";
constexpr const char* kResetName = "qwen35::reset_state.out";
constexpr size_t kStackSize = 5;       // 3 arguments, out, return
constexpr size_t kResetStackSize = 4;  // 2 arguments, out, return

int32_t to_dtype(ScalarType s) {
  switch (s) {
    case ScalarType::Float: return kFloat32;
    case ScalarType::Half: return kFloat16;
    case ScalarType::BFloat16: return kBFloat16;
    case ScalarType::Long: return kKvInt64;
    default: return kUnsupported;
  }
}

struct Desc : TensorArg {
  Desc(const char* name, const Tensor& t) : TensorArg(name, t, to_dtype(t.scalar_type())) {}
};

bool check_stack(KernelRuntimeContext& ctx, Span<EValue*> stack, const char* name, size_t expected) {
  if (stack.size() == expected) return true;
  ET_LOG(Error, "%s: expected %zu stack values (the arguments, out, return), got %zu", name, expected,
         static_cast<size_t>(stack.size()));
  ctx.fail(Error::InvalidArgument);
  return false;
}

// The ops' [1] result: resized and zeroed, or a failure naming `out`, before the state is touched.
bool set_dummy(KernelRuntimeContext& ctx, const Tensor& like, Tensor& out, const char* op) {
  const SizesType one[1] = {1};
  if (out.scalar_type() != like.scalar_type() || ::executorch::runtime::resize_tensor(out, {one, 1}) != Error::Ok) {
    ET_LOG(Error, "%s: argument 'out' must be a [1] tensor of the state's dtype", op);
    ctx.fail(Error::InvalidArgument);
    return false;
  }
  std::memset(out.mutable_data_ptr(), 0, out.nbytes());
  return true;
}

void kv_cache_update_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  // A profiling event named after this kernel: an ETDump that contains it proves the in-place write ran.
  ::executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(), kOpName);
  if (!check_stack(ctx, stack, kOpName, kStackSize)) return;
  Tensor& cache = stack[0]->toTensor();
  const Tensor& values = stack[1]->toTensor();
  const Tensor& input_pos = stack[2]->toTensor();
  Tensor& out = stack[3]->toTensor();
  const Desc dc("cache", cache), dv("values", values), dp("input_pos", input_pos);
  char err[512];
  if (!validate_kv_cache_update(dc.d, dv.d, dp.d, err, sizeof err)) {
    ET_LOG(Error, "%s", err);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  if (!set_dummy(ctx, cache, out, "qwen35::kv_cache_update")) return;
  run_kv_cache_update(KvCacheUpdate{cache.mutable_data_ptr(), values.const_data_ptr(),
                                    input_pos.const_data_ptr<int64_t>(), cache.size(0), cache.size(1), cache.size(2),
                                    values.size(2), cache.size(3), static_cast<int64_t>(cache.element_size())});
}

void reset_state_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  ::executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(), kResetName);
  if (!check_stack(ctx, stack, kResetName, kResetStackSize)) return;
  Tensor& state = stack[0]->toTensor();
  const Tensor& input_pos = stack[1]->toTensor();
  Tensor& out = stack[2]->toTensor();
  const Desc ds("state", state), dp("input_pos", input_pos);
  char err[512];
  if (!validate_reset_state(ds.d, dp.d, err, sizeof err)) {
    ET_LOG(Error, "%s", err);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  if (!set_dummy(ctx, state, out, "qwen35::reset_state")) return;
  run_reset_state(state.mutable_data_ptr(), static_cast<int64_t>(state.nbytes()), input_pos.const_data_ptr<int64_t>());
}

const Kernel kKernels[] = {Kernel(kOpName, kv_cache_update_out_boxed), Kernel(kResetName, reset_state_out_boxed)};

const bool kRegistered = register_kernels_once(kKernels, sizeof kKernels / sizeof kKernels[0]);

}  // namespace
}  // namespace qwen35

extern "C" QWEN35_API int32_t qwen35_state_et_kernels_registered(void) { return qwen35::kRegistered ? 1 : 0; }
