// ExecuTorch registration of qwen35::gated_delta_rule.out as a boxed kernel.
//
// Schema (runtime/ops.py):
//   gated_delta_rule.out(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta,
//                        Tensor(a!) state, bool use_qk_l2norm=True, *,
//                        Tensor(b!) out) -> Tensor(b!)
// The emitter passes 7 arguments, `out`, and a slot for the returned value.
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/event_tracer_hooks.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/log.h>


#include "et_register.h"
#include "gated_delta_rule.h"

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

constexpr const char* kOpName = "qwen35::gated_delta_rule.out";
constexpr size_t kStackSize = 9;

int32_t to_dtype(ScalarType s) {
  switch (s) {
    case ScalarType::Float: return kFloat32;
    case ScalarType::Half: return kFloat16;
    case ScalarType::BFloat16: return kBFloat16;
    default: return kUnsupported;
  }
}

struct Desc {
  int64_t sizes[8];
  ArgDesc d;
  Desc(const char* name, const Tensor& t) {
    const int64_t n = t.dim() < 8 ? t.dim() : 8;
    for (int64_t i = 0; i < n; ++i) sizes[i] = t.size(i);
    d = ArgDesc{name,
                to_dtype(t.scalar_type()),
                static_cast<int64_t>(t.dim()),
                sizes,
                ::executorch::runtime::tensor_is_default_dim_order(t),
                t.const_data_ptr(),
                static_cast<int64_t>(t.nbytes())};
  }
};

void gated_delta_rule_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  // A profiling event named after this kernel: an ETDump that contains it proves
  // the native kernel ran (tests/runtime/test_pte.py checks for it).
  ::executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(), kOpName);
  if (stack.size() != kStackSize) {
    ET_LOG(Error, "%s: expected %zu stack values (7 arguments, out, return), got %zu", kOpName, kStackSize,
           static_cast<size_t>(stack.size()));
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const Tensor& q = stack[0]->toTensor();
  const Tensor& k = stack[1]->toTensor();
  const Tensor& v = stack[2]->toTensor();
  const Tensor& g = stack[3]->toTensor();
  const Tensor& beta = stack[4]->toTensor();
  Tensor& state = stack[5]->toTensor();
  const bool use_qk_l2norm = stack[6]->toBool();
  Tensor& out = stack[7]->toTensor();

  const Desc dq("q", q), dk("k", k), dv("v", v), dg("g", g), db("beta", beta), ds("state", state), dout("out", out);
  char err[512];
  // Everything is validated before anything is written.
  if (!validate(dq.d, dk.d, dv.d, dg.d, db.d, ds.d, dout.d, /*out_resizable=*/true, err, sizeof err)) {
    ET_LOG(Error, "%s", err);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const SizesType out_sizes[4] = {static_cast<SizesType>(v.size(0)), static_cast<SizesType>(v.size(1)),
                                  static_cast<SizesType>(v.size(2)), static_cast<SizesType>(v.size(3))};
  if (::executorch::runtime::resize_tensor(out, {out_sizes, 4}) != Error::Ok) {
    ET_LOG(Error, "qwen35::gated_delta_rule: argument 'out' could not be resized to v's shape");
    ctx.fail(Error::InvalidArgument);
    return;
  }
  GdrProblem p{q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), g.const_data_ptr(),
               beta.const_data_ptr(), state.mutable_data_ptr<float>(), out.mutable_data_ptr(),
               dq.d.dtype, dk.d.dtype, dv.d.dtype, dg.d.dtype, db.d.dtype, to_dtype(out.scalar_type()),
               q.size(0), q.size(1), q.size(2), v.size(2), q.size(3), v.size(3), use_qk_l2norm};
  run(p, /*max_threads=*/0);
}

const Kernel kKernels[] = {Kernel(kOpName, gated_delta_rule_out_boxed)};

const bool kRegistered = register_kernels_once(kKernels, 1);

}  // namespace
}  // namespace qwen35

extern "C" QWEN35_API int32_t qwen35_et_kernel_registered(void) { return qwen35::kRegistered ? 1 : 0; }
