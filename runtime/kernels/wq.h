// qwen35::linear_wq, linear_wq_a8 and embedding_wq -- weight-only int8 / int4 kernels, the framework-free C++ core.
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
//   linear_wq_a8(x, qweight, scales, bits, group_size) -> y   the same arguments, shapes and checks as linear_wq
//     x is first quantized to int8 per row m and per group g of group_size along K (the weight scales' groups):
//       amax[m,g] = max_{k in g} |x[m,k]|
//       sx[m,g]   = amax[m,g] / 127                                   (fp32 division)
//       qx[m,k]   = clamp(rne(x[m,k] / sx[m,g]), -127, 127)          (fp32 division; rne = round half to even)
//                   and qx = 0 where sx == 0 (an all-zero group, or amax / 127 underflowing to 0)
//     y[m,n] = sum_g sx[m,g] * scales[n,g] * sum_{k in g} qx[m,k] * q[n,k]   (exact int32 sum inside a group,
//                                                                            fp32 across groups)
//     A group whose amax is not finite (inf / NaN in x) gets sx = NaN, so every output of that row is NaN.
// group_size divides K (group_size == K is per-channel); for bits=4 K and group_size are even.
// Accumulation is fp32; no dequantized weight matrix is ever formed (decode unpacks in registers; a
// prefill of M > 1 rows dequantizes one weight row at a time into a per-thread buffer).
//
// Why linear_wq_a8 exists and why these semantics: it is the shared head of the 8da recipes (the tied table read by
// embedding_wq and by this op), so that head gets int8 activations x int4/int8 weights with integer dot products like
// the XNNPACK 8da linears, instead of linear_wq's fp32 FMAs over unpacked weights. Scaling x per group of the weight
// scales (as llama.cpp's Q8_0 x Q4_0 does) lets each group be one exact int32 dot product followed by one fp32 multiply
// by sx * scale, and bounds the activation error by each group's own range, not the whole token's: more accurate than
// per-token int8 for the same work. [-127, 127] keeps the code symmetric like the weights. Round half to even is what
// torch.round, x86's cvtps2dq and arm64's fcvtns do by default, so a plain torch reference reproduces the codes bit for
// bit and no vector body pays for a different tie rule (llama.cpp's scalar reference rounds half away from zero while
// its SIMD paths round half to even; we pick one). Dividing (not multiplying by 127 / amax) makes qx one correctly
// rounded operation, which any reference can repeat.
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

// The block along K that the int8-activation bodies consume at once (32 codes: one AVX2 register, two NEON ones).
constexpr int64_t kA8Block = 32;

// x quantized for linear_wq_a8, once per call (quantize_act_q8), then read by every thread.
//   q    [M, K] codes. Inside each group, the leading gs - gs % kA8Block elements form blocks of kA8Block; for bits=4
//        each block is stored in nibble order: its 16 even elements (0, 2, .., 30) then its 16 odd ones, matching the
//        low and high nibbles of the block's 16 weight bytes so no body interleaves nibbles. bits=8 and the tails
//        keep x's order.
//   sx   [M, K/group_size] activation scales
//   qsum [M, K/group_size] sum of each group's block codes (the AVX2 int4 body multiplies raw nibbles 0..15 and takes
//        off 8 * qsum once per group)
//   paired: bits=4, group_size 32, 64 or 128 and K a multiple of 256, on the AVX2 path (a8_paired_layout): the
//        32-blocks of a row go in pairs and each pair stores both blocks' even elements, then both blocks' odd ones
//        (64 codes: even of block j, even of block j+1, odd of block j, odd of block j+1), so one 32-byte load of
//        weights (two blocks) meets its activations in two 32-byte loads.
struct WqActQ8 {
  const int8_t* q;
  const float* sx;
  const int32_t* qsum;
  bool paired;
};

// Whether linear_wq_a8 takes the paired layout and the 8-groups-at-a-time AVX2 body for this problem.
bool a8_paired_layout(const WqLinear& p);

// Validate every argument before anything is written. On failure write a message that starts with
// "qwen35::<op>: argument '<name>'" into err and return false. `out` may have any shape when
// out_resizable is true (ExecuTorch resizes it after validation). The embedding check also scans the
// indices for values outside [0, N).
bool validate_linear_wq(const ArgDesc& x, const ArgDesc& qweight, const ArgDesc& scales, int64_t bits,
                        int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t err_len);
bool validate_linear_wq_a8(const ArgDesc& x, const ArgDesc& qweight, const ArgDesc& scales, int64_t bits,
                           int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t err_len);
bool validate_embedding_wq(const ArgDesc& qweight, const ArgDesc& scales, const ArgDesc& indices, int64_t bits,
                           int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t err_len);

// max_threads <= 0: the whole ExecuTorch thread pool; n: at most n parts; output rows (linear) or
// indices (embedding) are split into contiguous slabs.
void run_linear(const WqLinear& p, int max_threads);
// linear_wq_a8: quantizes x on the calling thread (quantize_act_q8), then splits the output rows like run_linear.
void run_linear_a8(const WqLinear& p, int max_threads);
void run_embedding(const WqEmbedding& p, int max_threads);

namespace detail {
// Per-ISA bodies, one per translation unit (wq_generic.cpp, wq_avx2.cpp): rows [n0, n1) of the output.
void wq_linear_rows_generic(const WqLinear& p, int64_t n0, int64_t n1);
void wq_linear_rows_avx2(const WqLinear& p, int64_t n0, int64_t n1);
void wq_linear_a8_rows_generic(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1);
void wq_linear_a8_rows_avx2(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1);
// aarch64 with the dot-product extension (wq_neon_dot.cpp; built when QWEN35_HAVE_NEON_DOT_TU is defined).
void wq_linear_a8_rows_neon_dot(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1);
// x [M, K] -> q, sx, qsum as WqActQ8 describes them (portable C++: M * K divisions, noise next to the M * N * K dot).
void quantize_act_q8(const float* x, int64_t M, int64_t K, int64_t group_size, int32_t bits, bool paired, int8_t* q,
                     float* sx, int32_t* qsum);
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
QWEN35_API int qwen35_linear_wq_a8(const float* x, const void* qweight, const void* scales, float* out,
                                   const int64_t* dims, int32_t bits, int64_t group_size, int32_t scale_dtype,
                                   int32_t max_threads, char* err, size_t err_len);
QWEN35_API int qwen35_embedding_wq(const void* qweight, const void* scales, const int64_t* indices, float* out,
                                   const int64_t* dims, int32_t bits, int64_t group_size, int32_t scale_dtype,
                                   int32_t max_threads, char* err, size_t err_len);
QWEN35_API int32_t qwen35_wq_et_kernels_registered(void);
}
