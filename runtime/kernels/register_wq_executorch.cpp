// ExecuTorch registration of qwen35::linear_wq.out, linear_wq_a8.out and embedding_wq.out as boxed kernels.
//
// Schemas (runtime/wq.py):
//   linear_wq.out(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size, *, Tensor(a!) out) -> Tensor(a!)
//   linear_wq_a8.out(...)  the same arguments as linear_wq.out
//   embedding_wq.out(Tensor qweight, Tensor scales, Tensor indices, int bits, int group_size, *, Tensor(a!) out)
//       -> Tensor(a!)
// The emitter passes 5 arguments, `out`, and a slot for the returned value.
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/event_tracer_hooks.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/log.h>


#include "et_register.h"
#include "wq.h"

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

constexpr const char* kLinearName = "qwen35::linear_wq.out";
constexpr const char* kLinearA8Name = "qwen35::linear_wq_a8.out";
constexpr const char* kEmbeddingName = "qwen35::embedding_wq.out";
constexpr size_t kStackSize = 7;
constexpr int kMaxDim = TensorArg::kMaxDim;

int32_t to_dtype(ScalarType s) {
  switch (s) {
    case ScalarType::Float: return kWqF32;
    case ScalarType::Half: return kWqF16;
    case ScalarType::Char: return kWqI8;
    case ScalarType::Byte: return kWqU8;
    case ScalarType::Long: return kWqI64;
    default: return kWqOther;
  }
}

struct Desc : TensorArg {
  Desc(const char* name, const Tensor& t) : TensorArg(name, t, to_dtype(t.scalar_type())) {}
};

bool check_stack(KernelRuntimeContext& ctx, Span<EValue*> stack, const char* name) {
  if (stack.size() == kStackSize) return true;
  ET_LOG(Error, "%s: expected %zu stack values (5 arguments, out, return), got %zu", name, kStackSize,
         static_cast<size_t>(stack.size()));
  ctx.fail(Error::InvalidArgument);
  return false;
}

// linear_wq and linear_wq_a8 differ only in the activation path: A8 picks the validator's op name and the runner.
template <bool A8>
void linear_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  const char* const name = A8 ? kLinearA8Name : kLinearName;
  const char* const op = A8 ? "qwen35::linear_wq_a8" : "qwen35::linear_wq";
  // A profiling event named after this kernel: an ETDump that contains it proves the native kernel ran.
  ::executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(), name);
  if (!check_stack(ctx, stack, name)) return;
  const Tensor& x = stack[0]->toTensor();
  const Tensor& qweight = stack[1]->toTensor();
  const Tensor& scales = stack[2]->toTensor();
  const int64_t bits = stack[3]->toInt();
  const int64_t group_size = stack[4]->toInt();
  Tensor& out = stack[5]->toTensor();
  if (x.dim() > kMaxDim) {
    ET_LOG(Error, "%s: argument 'x' has more than %d dims", op, kMaxDim);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const Desc dx("x", x), dq("qweight", qweight), ds("scales", scales), dout("out", out);
  char err[512];
  const bool ok = A8 ? validate_linear_wq_a8(dx.d, dq.d, ds.d, bits, group_size, dout.d, /*out_resizable=*/true, err,
                                             sizeof err)
                    : validate_linear_wq(dx.d, dq.d, ds.d, bits, group_size, dout.d, /*out_resizable=*/true, err,
                                         sizeof err);
  if (!ok) {
    ET_LOG(Error, "%s", err);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  SizesType out_sizes[kMaxDim];
  for (int64_t i = 0; i + 1 < x.dim(); ++i) out_sizes[i] = static_cast<SizesType>(x.size(i));
  out_sizes[x.dim() - 1] = static_cast<SizesType>(qweight.size(0));
  if (::executorch::runtime::resize_tensor(out, {out_sizes, static_cast<size_t>(x.dim())}) != Error::Ok) {
    ET_LOG(Error, "%s: argument 'out' could not be resized to [..., N]", op);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const int64_t K = x.size(x.dim() - 1);
  const int64_t M = K ? x.numel() / K : 0;
  const WqLinear p{x.const_data_ptr<float>(), qweight.const_data_ptr(), scales.const_data_ptr(),
                   out.mutable_data_ptr<float>(), M, qweight.size(0), K, group_size, static_cast<int32_t>(bits),
                   ds.d.dtype};
  if (A8)
    run_linear_a8(p, /*max_threads=*/0);
  else
    run_linear(p, /*max_threads=*/0);
}

void embedding_wq_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  ::executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(), kEmbeddingName);
  if (!check_stack(ctx, stack, kEmbeddingName)) return;
  const Tensor& qweight = stack[0]->toTensor();
  const Tensor& scales = stack[1]->toTensor();
  const Tensor& indices = stack[2]->toTensor();
  const int64_t bits = stack[3]->toInt();
  const int64_t group_size = stack[4]->toInt();
  Tensor& out = stack[5]->toTensor();
  if (indices.dim() + 1 > kMaxDim) {
    ET_LOG(Error, "qwen35::embedding_wq: argument 'indices' has more than %d dims", kMaxDim - 1);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const Desc dq("qweight", qweight), ds("scales", scales), di("indices", indices), dout("out", out);
  char err[512];
  if (!validate_embedding_wq(dq.d, ds.d, di.d, bits, group_size, dout.d, /*out_resizable=*/true, err, sizeof err)) {
    ET_LOG(Error, "%s", err);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const int64_t K = bits == 4 ? 2 * qweight.size(1) : qweight.size(1);
  SizesType out_sizes[kMaxDim];
  for (int64_t i = 0; i < indices.dim(); ++i) out_sizes[i] = static_cast<SizesType>(indices.size(i));
  out_sizes[indices.dim()] = static_cast<SizesType>(K);
  if (::executorch::runtime::resize_tensor(out, {out_sizes, static_cast<size_t>(indices.dim() + 1)}) != Error::Ok) {
    ET_LOG(Error, "qwen35::embedding_wq: argument 'out' could not be resized to indices' shape + [K]");
    ctx.fail(Error::InvalidArgument);
    return;
  }
  run_embedding(WqEmbedding{qweight.const_data_ptr(), scales.const_data_ptr(), indices.const_data_ptr<int64_t>(),
                            out.mutable_data_ptr<float>(), indices.numel(), qweight.size(0), K, group_size,
                            static_cast<int32_t>(bits), ds.d.dtype},
                /*max_threads=*/0);
}

const Kernel kKernels[] = {Kernel(kLinearName, linear_out_boxed<false>), Kernel(kLinearA8Name, linear_out_boxed<true>),
                           Kernel(kEmbeddingName, embedding_wq_out_boxed)};

const bool kRegistered = register_kernels_once(kKernels, sizeof kKernels / sizeof kKernels[0]);

}  // namespace
}  // namespace qwen35

extern "C" QWEN35_API int32_t qwen35_wq_et_kernels_registered(void) { return qwen35::kRegistered ? 1 : 0; }
