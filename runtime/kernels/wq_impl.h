// Weight-only int8 / int4 GEMV, row-dequantizing GEMM and gather, for one ISA.
// Included by one TU per ISA (wq_generic.cpp, wq_avx2.cpp) with QWEN35_ISA_NS set; see gdr_simd.h.
//
// Decode (M == 1) is memory bound: per output row, each group of weights is unpacked 16 at a time into
// float vectors in registers, multiplied into a per-group vector accumulator, and the group's scale is
// applied once per group (acc += scale * group_acc). Prefill (M > 1) dequantizes one weight row into a
// per-thread buffer of K floats and takes M dot products with it, so the unpacking is paid once per row.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "gdr_simd.h"
#include "wq.h"

namespace qwen35 {
namespace QWEN35_ISA_NS {
namespace wq {

constexpr int kStep = 16;       // weights unpacked per step
constexpr int kVecs = kStep / W;

static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    float mag = static_cast<float>(man) * (1.0f / 16777216.0f);  // subnormal: man * 2^-24
    std::memcpy(&bits, &mag, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline float scale_at(const void* scales, int32_t dtype, int64_t i) {
  return dtype == kWqF16 ? half_to_float(static_cast<const uint16_t*>(scales)[i])
                         : static_cast<const float*>(scales)[i];
}

// Scalar element k of a packed row (tails and the reference for the vector unpackers).
static inline float q4_at(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k >> 1];
  return static_cast<float>(static_cast<int>((k & 1) ? (b >> 4) : (b & 0x0f)) - 8);
}
static inline float q8_at(const int8_t* row, int64_t k) { return static_cast<float>(row[k]); }

// 16 int4 weights (8 bytes) -> kVecs float vectors in element order.
static inline void unpack_q4(const uint8_t* p, Vec* v) {
#if defined(QWEN35_ISA_AVX2)
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(b, m);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  const __m128i e = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), _mm_set1_epi8(8));  // e0..e15, signed
  v[0].v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e));
  v[1].v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e, 8)));
#elif defined(__ARM_NEON)
  const uint8x8_t b = vld1_u8(p);
  const uint8x8x2_t z = vzip_u8(vand_u8(b, vdup_n_u8(0x0f)), vshr_n_u8(b, 4));  // e0..e7 | e8..e15
  const int8x16_t e = vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(z.val[0], z.val[1])), vdupq_n_s8(8));
  const int16x8_t a = vmovl_s8(vget_low_s8(e)), c = vmovl_s8(vget_high_s8(e));
  v[0].v = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a)));
  v[1].v = vcvtq_f32_s32(vmovl_s16(vget_high_s16(a)));
  v[2].v = vcvtq_f32_s32(vmovl_s16(vget_low_s16(c)));
  v[3].v = vcvtq_f32_s32(vmovl_s16(vget_high_s16(c)));
#else
  for (int j = 0; j < kVecs; ++j)
    for (int i = 0; i < W; ++i) v[j].v[i] = q4_at(p, j * W + i);
#endif
}

// 16 int8 weights -> kVecs float vectors.
static inline void unpack_q8(const int8_t* p, Vec* v) {
#if defined(QWEN35_ISA_AVX2)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  v[0].v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  v[1].v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
#elif defined(__ARM_NEON)
  const int8x16_t e = vld1q_s8(p);
  const int16x8_t a = vmovl_s8(vget_low_s8(e)), c = vmovl_s8(vget_high_s8(e));
  v[0].v = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a)));
  v[1].v = vcvtq_f32_s32(vmovl_s16(vget_high_s16(a)));
  v[2].v = vcvtq_f32_s32(vmovl_s16(vget_low_s16(c)));
  v[3].v = vcvtq_f32_s32(vmovl_s16(vget_high_s16(c)));
#else
  for (int j = 0; j < kVecs; ++j)
    for (int i = 0; i < W; ++i) v[j].v[i] = q8_at(p, j * W + i);
#endif
}

// Element offset k0 of a row, as a pointer to its packed bytes (k0 is even for int4: groups are even).
template <int BITS>
static inline void unpack(const uint8_t* row, int64_t k0, Vec* v) {
  if (BITS == 4)
    unpack_q4(row + (k0 >> 1), v);
  else
    unpack_q8(reinterpret_cast<const int8_t*>(row) + k0, v);
}
template <int BITS>
static inline float elem(const uint8_t* row, int64_t k) {
  return BITS == 4 ? q4_at(row, k) : q8_at(reinterpret_cast<const int8_t*>(row), k);
}

// Fused decode: one output row, x of length K.
template <int BITS>
static float dot_row(const WqLinear& p, const uint8_t* row, const float* x, int64_t n) {
  const int64_t G = p.K / p.group_size, gs = p.group_size, body = gs - gs % kStep;
  Vec acc = vzero();
  float tail = 0.f;
  Vec w[kVecs];
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs;
    const float s = scale_at(p.scales, p.scale_dtype, n * G + g);
    Vec ga = vzero(), gb = vzero();  // two chains: the FMA latency is not the bound, the loads are
    for (int64_t k = k0; k < k0 + body; k += kStep) {
      unpack<BITS>(row, k, w);
      for (int j = 0; j < kVecs; j += 2) {
        ga = vfma(w[j], vload(x + k + j * W), ga);
        gb = vfma(w[j + 1], vload(x + k + (j + 1) * W), gb);
      }
    }
    acc = vfma(vset1(s), vadd(ga, gb), acc);
    if (body < gs) {
      float t = 0.f;
      for (int64_t k = k0 + body; k < k0 + gs; ++k) t += elem<BITS>(row, k) * x[k];
      tail += s * t;
    }
  }
  return vhsum(acc) + tail;
}

// Dequantize one row into dst[K].
template <int BITS>
static void dequant_row(const void* scales, int32_t scale_dtype, int64_t K, int64_t gs, const uint8_t* row, int64_t n,
                        float* dst) {
  const int64_t G = K / gs, body = gs - gs % kStep;
  Vec w[kVecs];
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs;
    const float s = scale_at(scales, scale_dtype, n * G + g);
    const Vec sv = vset1(s);
    for (int64_t k = k0; k < k0 + body; k += kStep) {
      unpack<BITS>(row, k, w);
      for (int j = 0; j < kVecs; ++j) vstore(dst + k + j * W, vmul(w[j], sv));
    }
    for (int64_t k = k0 + body; k < k0 + gs; ++k) dst[k] = elem<BITS>(row, k) * s;
  }
}

static inline float dot_f32(const float* a, const float* b, int64_t K) {
  Vec s0 = vzero(), s1 = vzero();
  int64_t k = 0;
  for (; k + 2 * W <= K; k += 2 * W) {
    s0 = vfma(vload(a + k), vload(b + k), s0);
    s1 = vfma(vload(a + k + W), vload(b + k + W), s1);
  }
  float t = vhsum(vadd(s0, s1));
  for (; k < K; ++k) t += a[k] * b[k];
  return t;
}

template <int BITS>
static void linear_rows(const WqLinear& p, int64_t n0, int64_t n1) {
  const int64_t row_bytes = BITS == 4 ? p.K / 2 : p.K;
  const uint8_t* qw = static_cast<const uint8_t*>(p.qweight);
  if (p.M == 1) {
    for (int64_t n = n0; n < n1; ++n) p.out[n] = dot_row<BITS>(p, qw + n * row_bytes, p.x, n);
    return;
  }
  std::vector<float> wrow(static_cast<size_t>(p.K));  // one dequantized row per thread, never the matrix
  for (int64_t n = n0; n < n1; ++n) {
    dequant_row<BITS>(p.scales, p.scale_dtype, p.K, p.group_size, qw + n * row_bytes, n, wrow.data());
    for (int64_t m = 0; m < p.M; ++m) p.out[m * p.N + n] = dot_f32(wrow.data(), p.x + m * p.K, p.K);
  }
}

template <int BITS>
static void embedding_rows(const WqEmbedding& p, int64_t i0, int64_t i1) {
  const int64_t row_bytes = BITS == 4 ? p.K / 2 : p.K;
  const uint8_t* qw = static_cast<const uint8_t*>(p.qweight);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = p.indices[i];
    dequant_row<BITS>(p.scales, p.scale_dtype, p.K, p.group_size, qw + n * row_bytes, n, p.out + i * p.K);
  }
}

static inline void linear(const WqLinear& p, int64_t n0, int64_t n1) {
  if (p.bits == 4)
    linear_rows<4>(p, n0, n1);
  else
    linear_rows<8>(p, n0, n1);
}
static inline void embedding(const WqEmbedding& p, int64_t i0, int64_t i1) {
  if (p.bits == 4)
    embedding_rows<4>(p, i0, i1);
  else
    embedding_rows<8>(p, i0, i1);
}

}  // namespace wq
}  // namespace QWEN35_ISA_NS
}  // namespace qwen35
