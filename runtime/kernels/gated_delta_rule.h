// qwen35::gated_delta_rule -- the framework-free C++ core.
//
// Contract (the same text lives in runtime/ops.py and runtime/README.md):
//   q, k  [B, T, Hk, K]     fp32 / fp16 / bf16, contiguous
//   v     [B, T, Hv, V]     fp32 / fp16 / bf16, Hv a multiple of Hk; value head j
//                           reads key head j / (Hv / Hk) (repeat_interleave, not tile)
//   g     [B, T, Hv]        log-decay (<= 0); the kernel applies exp(g)
//   beta  [B, T, Hv]        write strength (post-sigmoid)
//   state [B, Hv, K, V]     float32, updated in place
//   out   [B, T, Hv, V]     dtype of v; must not overlap state
// Semantics: transformers' torch_recurrent_gated_delta_rule with head-repeated
// q, k; optional l2norm (eps 1e-6) of q and k, then q *= 1/sqrt(K); all
// accumulation and the state in fp32.
//
// Nothing in this header depends on torch or ExecuTorch types: the ExecuTorch
// boxed kernel and the ctypes entry point used by eager torch both call it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qwen35 {

enum DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kUnsupported = -1 };

struct GdrProblem {
  const void* q;
  const void* k;
  const void* v;
  const void* g;
  const void* beta;
  float* state;
  void* out;
  int32_t q_dtype, k_dtype, v_dtype, g_dtype, beta_dtype, out_dtype;
  int64_t B, T, Hk, Hv, K, V;
  bool use_qk_l2norm;
};

// Shape / dtype / layout description of one argument, for validation.
struct ArgDesc {
  const char* name;
  int32_t dtype;      // DType
  int64_t ndim;
  const int64_t* sizes;
  bool contiguous;
  const void* data;
  int64_t nbytes;
};

// Validates the seven tensors (q, k, v, g, beta, state, out). Returns true if
// valid; otherwise writes a message that starts with the offending argument's
// name into err and returns false. Fills *problem (except data pointers'
// constness) on success. `out` may have any shape when out_resizable is true
// (ExecuTorch resizes it after validation).
bool validate(const ArgDesc& q, const ArgDesc& k, const ArgDesc& v, const ArgDesc& g,
              const ArgDesc& beta, const ArgDesc& state, const ArgDesc& out,
              bool out_resizable, char* err, size_t err_len);

// Runs the op. max_threads <= 0: use every thread of the ExecuTorch thread pool;
// 1: run on the calling thread; n: split the (batch, head) tasks into at most n
// parts. The problem must already be validated.
void run(const GdrProblem& p, int max_threads);

// Which SIMD path run() takes on this CPU ("avx2+fma", "neon", "portable").
const char* isa_name();

// Chunk size used for T > 1 (tuned by measurement, see runtime/README.md).
int64_t chunk_size();
void set_chunk_size(int64_t c);  // for benchmarking; 0 restores the default
// Force the portable/NEON path even where AVX2 is available (tests). Also set by
// the environment variable QWEN35_GDR_ISA=portable.
void set_force_portable(int32_t portable);
// True when run() takes the AVX2 path (CPU has AVX2+FMA, the TU is built, not forced portable).
// The weight-only ops (wq.h) follow the same switch.
bool avx2_active();

namespace detail {
// Per-ISA entry points, one per translation unit.
void run_task_generic(const GdrProblem& p, int64_t task, int64_t chunk);
void run_task_avx2(const GdrProblem& p, int64_t task, int64_t chunk);
}  // namespace detail

}  // namespace qwen35

#if defined(_WIN32)
#define QWEN35_API __declspec(dllexport)
#else
#define QWEN35_API __attribute__((visibility("default")))
#endif

// C ABI used from Python through ctypes (eager torch path).
extern "C" {
// Returns 0 on success; otherwise writes a message naming the argument into err.
QWEN35_API int qwen35_gated_delta_rule(const void* q, const void* k, const void* v, const void* g,
                            const void* beta, float* state, void* out,
                            const int32_t* dtypes /* q,k,v,g,beta,out */,
                            const int64_t* dims /* B,T,Hk,Hv,K,V */, int32_t use_qk_l2norm,
                            int32_t max_threads, char* err, size_t err_len);
QWEN35_API const char* qwen35_isa_name(void);
QWEN35_API int64_t qwen35_chunk_size(void);
QWEN35_API void qwen35_set_chunk_size(int64_t c);
QWEN35_API int32_t qwen35_abi_version(void);
QWEN35_API void qwen35_set_isa(int32_t portable);
// Tests: how many slabs (parallel parts) the last call was split into; 1 when it ran on the calling thread alone.
QWEN35_API int64_t qwen35_last_run_slabs(void);
}
