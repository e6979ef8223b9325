// qwen35::linear_wq and qwen35::embedding_wq -- weight-only int8 / int4 kernels, the framework-free C++ core.
//
// Contract (the same text lives in runtime/wq.py and runtime/README.md, "Weight-only ops"):
//   linear_wq(x, qweight, scales, bits, group_size) -> y
//     x        [..., K]                 float32, contiguous
//     qweight  bits=8: int8  [N, K]     row n holds q[n, 0..K-1]
//              bits=4: uint8 [N, K/2]   byte j of row n: low nibble = element 2j, high nibble = element 2j+1;
//                                       each nibble is offset binary, q = nibble - 8 in [-8, 7]
//     scales   [N, K/group_size]        float32 or float16; symmetric, no zero point
//     y        [..., N] float32         y[m, n] = sum_k x[m, k] * q[n, k] * scales[n, k / group_size]
//   embedding_wq(qweight, scales, indices, bits, group_size) -> e
//     indices  [...] int64, each in [0, N)
//     e        [..., K] float32         e[i, k] = q[indices[i], k] * scales[indices[i], k / group_size]
// group_size divides K (group_size == K is per-channel); for bits=4 K and group_size are even.
// Accumulation is fp32; no dequantized weight matrix is ever formed (decode unpacks in registers; a
// prefill of M > 1 rows dequantizes one weight row at a time into a per-thread buffer).
//
// The ExecuTorch boxed kernels (register_wq_executorch.cpp) and the ctypes entry points used by eager
// torch (runtime/wq.py) both call run_linear / run_embedding after validate_*.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gated_delta_rule.h"  // ArgDesc, QWEN35_API

namespace qwen35 {

// Element types of the weight-only ops' arguments (ArgDesc::dtype). Float codes match DType.
enum WqDType : int32_t { kWqF32 = 0, kWqF16 = 1, kWqI8 = 3, kWqU8 = 4, kWqI64 = 5, kWqOther = -1 };

struct WqLinear {
  const float* x;
  const void* qweight;
  const void* scales;
  float* out;
  int64_t M, N, K, group_size;
  int32_t bits, scale_dtype;
};

struct WqEmbedding {
  const void* qweight;
  const void* scales;
  const int64_t* indices;
  float* out;
  int64_t n_indices, N, K, group_size;
  int32_t bits, scale_dtype;
};

// Validate every argument before anything is written. On failure write a message that starts with
// "qwen35::<op>: argument '<name>'" into err and return false. `out` may have any shape when
// out_resizable is true (ExecuTorch resizes it after validation). The embedding check also scans the
// indices for values outside [0, N).
bool validate_linear_wq(const ArgDesc& x, const ArgDesc& qweight, const ArgDesc& scales, int64_t bits,
                        int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t err_len);
bool validate_embedding_wq(const ArgDesc& qweight, const ArgDesc& scales, const ArgDesc& indices, int64_t bits,
                           int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t err_len);

// max_threads <= 0: the whole ExecuTorch thread pool; n: at most n parts; output rows (linear) or
// indices (embedding) are split into contiguous slabs.
void run_linear(const WqLinear& p, int max_threads);
void run_embedding(const WqEmbedding& p, int max_threads);

namespace detail {
// Per-ISA bodies, one per translation unit (wq_generic.cpp, wq_avx2.cpp): rows [n0, n1) of the output.
void wq_linear_rows_generic(const WqLinear& p, int64_t n0, int64_t n1);
void wq_linear_rows_avx2(const WqLinear& p, int64_t n0, int64_t n1);
void wq_embedding_rows_generic(const WqEmbedding& p, int64_t i0, int64_t i1);
void wq_embedding_rows_avx2(const WqEmbedding& p, int64_t i0, int64_t i1);
}  // namespace detail

}  // namespace qwen35

extern "C" {
// Return 0 on success; otherwise write a message naming the argument into err.
// dims: M, N, K (linear) and n_indices, N, K (embedding). dtypes: scales' WqDType.
QWEN35_API int qwen35_linear_wq(const float* x, const void* qweight, const void* scales, float* out,
                                const int64_t* dims, int32_t bits, int64_t group_size, int32_t scale_dtype,
                                int32_t max_threads, char* err, size_t err_len);
QWEN35_API int qwen35_embedding_wq(const void* qweight, const void* scales, const int64_t* indices, float* out,
                                   const int64_t* dims, int32_t bits, int64_t group_size, int32_t scale_dtype,
                                   int32_t max_threads, char* err, size_t err_len);
QWEN35_API int32_t qwen35_wq_et_kernels_registered(void);
}
