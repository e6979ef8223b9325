// Weight-only int8 / int4 GEMV, row-dequantizing GEMM and gather, for one ISA.
// Included by one TU per ISA (wq_generic.cpp, wq_avx2.cpp) with QWEN35_ISA_NS set; see gdr_simd.h.
//
// Decode (M == 1) is memory bound: per output row, each group of weights is unpacked 16 at a time into
// float vectors in registers, multiplied into a per-group vector accumulator, and the group's scale is
// applied once per group (acc += scale * group_acc). Prefill (M > 1) dequantizes one weight row into a
// per-thread buffer of K floats and takes M dot products with it, so the unpacking is paid once per row.
//
// linear_wq_a8 (int8 activations, quantized once per call by wq.cpp) takes integer dot products per group instead:
// maddubs/madd on AVX2, widening multiplies (or sdot when the build targets it) on NEON, plain int32 in portable C++.
#pragma once

#include <algorithm>
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
// Decode streams the weights once: prefetch this far ahead of the unpacking (a few rows at 0.8B shapes). Without it a
// single thread reached about a quarter of the fp32 GEMV's DRAM bandwidth on the 248320-row head (bench/README.md).
constexpr int64_t kPrefetchBytes = 1024;

static inline float half_to_float(uint16_t h) {
#if defined(QWEN35_ISA_AVX2)
  return _cvtsh_ss(h);  // F16C: the TU is built with -mf16c and only called on CPUs that report it
#elif defined(__aarch64__)
  __fp16 f;
  std::memcpy(&f, &h, 2);
  return static_cast<float>(f);
#else
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
#endif
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

#if defined(__ARM_NEON) && !defined(QWEN35_ISA_AVX2)
// 16 int8 lanes -> the 4 float32x4 vectors of a 16-wide step (int4 and int8 unpacking end the same way).
static inline void widen_s8x16(int8x16_t e, Vec* v) {
  const int16x8_t a = vmovl_s8(vget_low_s8(e)), c = vmovl_s8(vget_high_s8(e));
  v[0].v = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a)));
  v[1].v = vcvtq_f32_s32(vmovl_s16(vget_high_s16(a)));
  v[2].v = vcvtq_f32_s32(vmovl_s16(vget_low_s16(c)));
  v[3].v = vcvtq_f32_s32(vmovl_s16(vget_high_s16(c)));
}
#endif

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
  widen_s8x16(vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(z.val[0], z.val[1])), vdupq_n_s8(8)), v);
#else
  for (int j = 0; j < kVecs; ++j)
    for (int i = 0; i < W; ++i) v[j].v[i] = q4_at(p, j * W + i);
#endif
}

// 16 int4 weights (8 bytes) -> kVecs float vectors of the raw nibbles (0..15, not yet offset by -8) in "split" order:
// the 8 low nibbles (elements 0, 2, .., 14) then the 8 high nibbles (1, 3, .., 15). Decode pairs them with x permuted
// the same way (permute_x) and applies the -8 once per group through sum(x): cheaper than interleaving the nibbles.
static inline void unpack_q4_split(const uint8_t* p, Vec* v) {
#if defined(QWEN35_ISA_AVX2)
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));  // 8 bytes -> i32
  v[0].v = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(0x0f)));
  v[1].v = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
#elif defined(__ARM_NEON)
  const uint8x8_t b = vld1_u8(p);
  const uint16x8_t lo = vmovl_u8(vand_u8(b, vdup_n_u8(0x0f))), hi = vmovl_u8(vshr_n_u8(b, 4));
  v[0].v = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
  v[1].v = vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)));
  v[2].v = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
  v[3].v = vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)));
#else
  for (int i = 0; i < 8; ++i) {
    v[i / W].v[i % W] = static_cast<float>(p[i] & 0x0f);
    v[(8 + i) / W].v[(8 + i) % W] = static_cast<float>(p[i] >> 4);
  }
#endif
}

// x [K] -> xp [K] in unpack_q4_split's order inside every 16-wide block of each group's vector body (the scalar tails
// keep x's order), and xsum [G] = sum of x over each group's vector body (for the -8 offset).
static void permute_x(const float* x, int64_t K, int64_t gs, float* xp, float* xsum) {
  const int64_t G = K / gs, body = gs - gs % kStep;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs;
    float sum = 0.f;
    for (int64_t k = k0; k < k0 + body; k += kStep)
      for (int i = 0; i < 8; ++i) {
        xp[k + i] = x[k + 2 * i];
        xp[k + 8 + i] = x[k + 2 * i + 1];
        sum += x[k + 2 * i] + x[k + 2 * i + 1];
      }
    for (int64_t k = k0 + body; k < k0 + gs; ++k) xp[k] = x[k];
    xsum[g] = sum;
  }
}

// 16 int8 weights -> kVecs float vectors.
static inline void unpack_q8(const int8_t* p, Vec* v) {
#if defined(QWEN35_ISA_AVX2)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  v[0].v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  v[1].v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
#elif defined(__ARM_NEON)
  widen_s8x16(vld1q_s8(p), v);
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
      __builtin_prefetch(row + (BITS == 4 ? k >> 1 : k) + kPrefetchBytes);
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

// Fused int4 decode over a permuted x (permute_x): sum_g s_g * (sum_k nibble_k * xp_k - 8 * xsum_g) + tails.
static float dot_row_q4(const WqLinear& p, const uint8_t* row, const float* x, const float* xp, const float* xsum,
                        int64_t n) {
  const int64_t G = p.K / p.group_size, gs = p.group_size, body = gs - gs % kStep;
  Vec acc = vzero();
  float offset = 0.f, tail = 0.f;
  Vec w[kVecs];
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs;
    const float s = scale_at(p.scales, p.scale_dtype, n * G + g);
    Vec ga = vzero(), gb = vzero();
    for (int64_t k = k0; k < k0 + body; k += kStep) {
      __builtin_prefetch(row + (k >> 1) + kPrefetchBytes);
      unpack_q4_split(row + (k >> 1), w);
      for (int j = 0; j < kVecs; j += 2) {
        ga = vfma(w[j], vload(xp + k + j * W), ga);
        gb = vfma(w[j + 1], vload(xp + k + (j + 1) * W), gb);
      }
    }
    acc = vfma(vset1(s), vadd(ga, gb), acc);
    offset += s * xsum[g];
    if (body < gs) {
      float t = 0.f;
      for (int64_t k = k0 + body; k < k0 + gs; ++k) t += q4_at(row, k) * x[k];
      tail += s * t;
    }
  }
  return vhsum(acc) - 8.f * offset + tail;
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

// Prefill micro-kernel (BLIS style): an MR x NR block of out from a k-major panel of NR dequantized weight rows
// (panel[k * NR + j] = w[n + j, k]) and MR rows of x, broadcast one element at a time. MR * 2 vector accumulators stay
// in registers; per k: 2 panel loads, MR broadcasts, 2 * MR FMAs.
constexpr int kNR = 2 * W;
constexpr int kMR = 6;

template <int MR>
static inline void micro(const float* panel, const float* const* x, int64_t K, float (*out)[kNR]) {
  Vec acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = vzero();
  for (int64_t k = 0; k < K; ++k) {
    const Vec b0 = vload(panel + k * kNR), b1 = vload(panel + k * kNR + W);
    for (int i = 0; i < MR; ++i) {
      const Vec a = vset1(x[i][k]);
      acc[i][0] = vfma(a, b0, acc[i][0]);
      acc[i][1] = vfma(a, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    vstore(out[i], acc[i][0]);
    vstore(out[i] + W, acc[i][1]);
  }
}

template <int BITS>
static void linear_rows(const WqLinear& p, int64_t n0, int64_t n1) {
  const int64_t row_bytes = BITS == 4 ? p.K / 2 : p.K;
  const uint8_t* qw = static_cast<const uint8_t*>(p.qweight);
  if (p.M == 1) {
    if (BITS == 4) {
      std::vector<float> xp(static_cast<size_t>(p.K)), xsum(static_cast<size_t>(p.K / p.group_size));
      permute_x(p.x, p.K, p.group_size, xp.data(), xsum.data());
      for (int64_t n = n0; n < n1; ++n) p.out[n] = dot_row_q4(p, qw + n * row_bytes, p.x, xp.data(), xsum.data(), n);
    } else {
      for (int64_t n = n0; n < n1; ++n) p.out[n] = dot_row<BITS>(p, qw + n * row_bytes, p.x, n);
    }
    return;
  }
  // Prefill: dequantize kNR weight rows into a k-major panel (per thread, never the matrix), then kMR x kNR blocks.
  std::vector<float> panel(static_cast<size_t>(p.K * kNR)), row(static_cast<size_t>(p.K));
  float block[kMR][kNR];
  for (int64_t n = n0; n < n1; n += kNR) {
    const int nr = static_cast<int>(std::min<int64_t>(kNR, n1 - n));
    for (int j = 0; j < kNR; ++j) {
      if (j < nr)
        dequant_row<BITS>(p.scales, p.scale_dtype, p.K, p.group_size, qw + (n + j) * row_bytes, n + j, row.data());
      else
        std::fill(row.begin(), row.end(), 0.f);  // padding columns, discarded
      for (int64_t k = 0; k < p.K; ++k) panel[k * kNR + j] = row[k];
    }
    for (int64_t m = 0; m < p.M; m += kMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kMR, p.M - m));
      const float* x[kMR];
      for (int i = 0; i < kMR; ++i) x[i] = p.x + (m + std::min(i, mr - 1)) * p.K;
      switch (mr) {
        case 6: micro<6>(panel.data(), x, p.K, block); break;
        case 5: micro<5>(panel.data(), x, p.K, block); break;
        case 4: micro<4>(panel.data(), x, p.K, block); break;
        case 3: micro<3>(panel.data(), x, p.K, block); break;
        case 2: micro<2>(panel.data(), x, p.K, block); break;
        default: micro<1>(panel.data(), x, p.K, block); break;
      }
      for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) p.out[(m + i) * p.N + n + j] = block[i][j];
    }
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

// ---- linear_wq_a8: int8 activations (WqActQ8, already quantized) x int4 / int8 weights ------------------------------
// One group = one exact int32 dot product, then one fp32 multiply-add by sx * scale. The bodies take kA8Block codes at
// a time; the elements of a group past its last whole block (only when kA8Block does not divide group_size) are a
// scalar integer tail. sc[g] is row n's scales already in fp32.

// Integer weight code k of a row, for the tails and the portable body.
template <int BITS>
static inline int32_t icode(const uint8_t* row, int64_t k) {
  if (BITS == 8) return reinterpret_cast<const int8_t*>(row)[k];
  const uint8_t b = row[k >> 1];
  return static_cast<int32_t>((k & 1) ? (b >> 4) : (b & 0x0f)) - 8;
}

#if defined(__ARM_NEON) && !defined(QWEN35_ISA_AVX2)
// acc += the 16 products a * b, 4 at a time per lane. Without the dot-product extension (not in baseline armv8.0-a,
// so only when the build targets it) widening multiplies are exact: |a * b| <= 128 * 127, two of them fit int16.
static inline int32x4_t dot16_s8(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(acc, a, b);
#else
  int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
  p = vmlal_high_s8(p, a, b);
  return vpadalq_s16(acc, p);
#endif
}
#endif

template <int BITS>
static float dot_row_a8(const uint8_t* row, const float* sc, const int8_t* qx, const float* sx, const int32_t* qsum,
                        int64_t K, int64_t gs) {
  const int64_t G = K / gs, body = gs - gs % kA8Block;
#if defined(QWEN35_ISA_AVX2)
  const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0f);
  // Two accumulators, even and odd groups: at group 32 one FMA per group on a single chain would wait on its latency.
  __m256 accs[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs;
    __m256i gi = _mm256_setzero_si256();
    for (int64_t k = k0; k < k0 + body; k += kA8Block) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + k));
      __m256i prod;
      if (BITS == 4) {
        __builtin_prefetch(row + (k >> 1) + kPrefetchBytes);
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (k >> 1)));
        // Raw nibbles 0..15 are maddubs' unsigned operand as they are (the -8 comes off once per group through qsum):
        // low lane = low nibbles (even elements), high lane = high nibbles (odd), the order quantize_act_q8 wrote q in.
        const __m256i w = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1),
                                           low4);
        prod = _mm256_maddubs_epi16(w, q);  // |pair| <= 2 * 15 * 127: no int16 saturation
      } else {
        __builtin_prefetch(row + k + kPrefetchBytes);
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
        // maddubs wants one unsigned operand: |w| and q carrying w's sign. |w| rather than |q| because the weight may
        // be -128 (abs gives 0x80, read as unsigned 128) while q is in [-127, 127] and negates safely.
        // |pair| <= 2 * 128 * 127.
        prod = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(q, w));
      }
      gi = _mm256_add_epi32(gi, _mm256_madd_epi16(prod, ones));
    }
    int32_t adj = BITS == 4 ? -8 * qsum[g] : 0;
    for (int64_t k = k0 + body; k < k0 + gs; ++k) adj += icode<BITS>(row, k) * qx[k];
    gi = _mm256_add_epi32(gi, _mm256_setr_epi32(adj, 0, 0, 0, 0, 0, 0, 0));  // exact: the group stays integer
    accs[g & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(gi), _mm256_set1_ps(sc[g] * sx[g]), accs[g & 1]);
  }
  return vhsum(Vec{_mm256_add_ps(accs[0], accs[1])});
#elif defined(__ARM_NEON)
  (void)qsum;  // NEON multiplies signed codes directly
  float acc = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs;
    int32x4_t gi = vdupq_n_s32(0);
    for (int64_t k = k0; k < k0 + body; k += kA8Block) {
      int8x16_t w0, w1;
      if (BITS == 4) {
        __builtin_prefetch(row + (k >> 1) + kPrefetchBytes);
        const uint8x16_t b = vld1q_u8(row + (k >> 1));
        w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0f))), vdupq_n_s8(8));  // even elements
        w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), vdupq_n_s8(8));              // odd elements
      } else {
        __builtin_prefetch(row + k + kPrefetchBytes);
        w0 = vld1q_s8(reinterpret_cast<const int8_t*>(row) + k);
        w1 = vld1q_s8(reinterpret_cast<const int8_t*>(row) + k + 16);
      }
      gi = dot16_s8(gi, w0, vld1q_s8(qx + k));
      gi = dot16_s8(gi, w1, vld1q_s8(qx + k + 16));
    }
    int32_t isum = vaddvq_s32(gi);
    for (int64_t k = k0 + body; k < k0 + gs; ++k) isum += icode<BITS>(row, k) * qx[k];
    acc += static_cast<float>(isum) * (sc[g] * sx[g]);
  }
  return acc;
#else
  (void)qsum;
  float acc = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs;
    int32_t isum = 0;
    for (int64_t k = k0; k < k0 + body; k += kA8Block) {
      if (BITS == 4) {
        for (int64_t i = 0; i < kA8Block / 2; ++i) {  // byte i of the block: elements 2i (low), 2i+1 (high)
          const uint8_t b = row[(k >> 1) + i];
          isum += (static_cast<int32_t>(b & 0x0f) - 8) * qx[k + i] +
                  (static_cast<int32_t>(b >> 4) - 8) * qx[k + 16 + i];
        }
      } else {
        for (int64_t i = 0; i < kA8Block; ++i) isum += icode<8>(row, k + i) * qx[k + i];
      }
    }
    for (int64_t k = k0 + body; k < k0 + gs; ++k) isum += icode<BITS>(row, k) * qx[k];
    acc += static_cast<float>(isum) * (sc[g] * sx[g]);
  }
  return acc;
#endif
}

#if defined(QWEN35_ISA_AVX2)
// int4 over the paired activation layout (WqActQ8::paired), 8 blocks of 32 (256 codes) at a time. Per pair of blocks:
// one 32-byte weight load, its low and high nibbles as maddubs' unsigned operand against the pair's even and odd
// codes, the two int16 products added (|sum| <= 4 * 15 * 127, no saturation) and widened by madd: 8 int32 lanes, 4
// per block. Three hadds reduce the four pair vectors to the 8 exact block sums in the order 0 2 4 6 | 1 3 5 7; for
// group 32 one permute puts them in order, for group 64 the two 128-bit halves add to 4 group sums, for group 128 one
// more hadd gives 2. The -8 offsets (-8 * qsum) are taken off as integers and one FMA applies the scale products, so
// each group is still one exact int32 sum times sx * scale. The per-group body (dot_row_a8) spent ~15 instructions
// per group outside the dot product and kept its float accumulators on the stack (indexed by g & 1).
template <int GS, bool F16>
static float dot_row_a8_q4_paired(const uint8_t* row, const void* scales_row, const int8_t* qx, const float* sx,
                                  const int32_t* qsum, int64_t G) {
  constexpr int kGroups = 256 / GS;  // groups per step of 8 blocks
  const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const __m256i natural = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // lane i of the hadd result holds block order[i]
  __m256 acc8 = _mm256_setzero_ps();
  __m128 acc4 = _mm_setzero_ps();
  for (int64_t g = 0; g < G; g += kGroups) {
    const uint8_t* w8 = row + g * (GS / 2);  // 8 blocks x 16 bytes
    const int8_t* q8 = qx + g * GS;          // 8 blocks x 32 codes, paired
    __builtin_prefetch(w8 + kPrefetchBytes);
    __builtin_prefetch(w8 + kPrefetchBytes + 64);
    __m256i pairs[4];
    for (int j = 0; j < 4; ++j) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w8 + 32 * j));
      const __m256i lo = _mm256_and_si256(w, low4), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
      const __m256i even = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 64 * j));
      const __m256i odd = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 64 * j + 32));
      const __m256i prod = _mm256_add_epi16(_mm256_maddubs_epi16(lo, even), _mm256_maddubs_epi16(hi, odd));
      pairs[j] = _mm256_madd_epi16(prod, ones);  // lanes 0-3: block 2j, lanes 4-7: block 2j + 1
    }
    const __m256i ab = _mm256_hadd_epi32(pairs[0], pairs[1]), cd = _mm256_hadd_epi32(pairs[2], pairs[3]);
    const __m256i blocks = _mm256_hadd_epi32(ab, cd);  // blocks 0 2 4 6 | 1 3 5 7
    if (GS == 32) {
      const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qsum + g));
      const __m256i sums = _mm256_sub_epi32(_mm256_permutevar8x32_epi32(blocks, natural), _mm256_slli_epi32(qs, 3));
      const __m256 sc = F16 ? _mm256_cvtph_ps(_mm_loadu_si128(
                                  reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(scales_row) + g)))
                            : _mm256_loadu_ps(static_cast<const float*>(scales_row) + g);
      acc8 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(sc, _mm256_loadu_ps(sx + g)), acc8);
    } else {
      // group 64: blocks (0,1) (2,3) (4,5) (6,7) are the halves' lanes added; group 128: then (01,23) and (45,67)
      __m128i sums = _mm_add_epi32(_mm256_castsi256_si128(blocks), _mm256_extracti128_si256(blocks, 1));
      if (GS == 128) sums = _mm_hadd_epi32(sums, sums);  // lanes 0, 1 (2, 3 repeat them)
      __m128i qs;
      __m128 sc, sxv;
      if (GS == 64) {
        qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qsum + g));
        sxv = _mm_loadu_ps(sx + g);
        sc = F16 ? _mm_cvtph_ps(_mm_loadl_epi64(
                       reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(scales_row) + g)))
                 : _mm_loadu_ps(static_cast<const float*>(scales_row) + g);
      } else {  // two groups: the upper lanes get zero scales so their repeated sums add nothing
        qs = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qsum + g));
        sxv = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(sx + g)));
        if (F16) {
          uint32_t two;
          std::memcpy(&two, static_cast<const uint16_t*>(scales_row) + g, 4);
          sc = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(two)));
        } else {
          sc = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(static_cast<const float*>(scales_row) + g)));
        }
      }
      sums = _mm_sub_epi32(sums, _mm_slli_epi32(qs, 3));
      acc4 = _mm_fmadd_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(sc, sxv), acc4);
    }
  }
  if (GS == 32) return vhsum(Vec{acc8});
  __m128 s = _mm_add_ps(acc4, _mm_movehl_ps(acc4, acc4));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

template <bool F16>
static float dot_row_a8_q4_paired_gs(int64_t gs, const uint8_t* row, const void* scales_row, const int8_t* qx,
                                     const float* sx, const int32_t* qsum, int64_t G) {
  switch (gs) {
    case 32: return dot_row_a8_q4_paired<32, F16>(row, scales_row, qx, sx, qsum, G);
    case 64: return dot_row_a8_q4_paired<64, F16>(row, scales_row, qx, sx, qsum, G);
    default: return dot_row_a8_q4_paired<128, F16>(row, scales_row, qx, sx, qsum, G);
  }
}
#endif

#if defined(__ARM_NEON) && !defined(QWEN35_ISA_AVX2)
// Sum over one 32-block of raw nibbles (0..15) times the block's codes (16 even, then 16 odd, as quantize_act_q8
// wrote them). One 16-byte weight load gives both halves. With the dot-product extension two sdots; without it four
// widening multiplies into one int16 vector (4 products per lane, each |.| <= 15 * 127: at most 7,620, no overflow)
// and one pairwise widening add.
static inline int32x4_t block_q4_raw_reg(int32x4_t acc, uint8x16_t b, int8x16_t qe, int8x16_t qo) {
  const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0f)));
  const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(vdotq_s32(acc, lo, qe), hi, qo);
#else
  int16x8_t p = vmull_s8(vget_low_s8(lo), vget_low_s8(qe));
  p = vmlal_high_s8(p, lo, qe);
  p = vmlal_s8(p, vget_low_s8(hi), vget_low_s8(qo));
  p = vmlal_high_s8(p, hi, qo);
  return vpadalq_s16(acc, p);
#endif
}
static inline int32x4_t block_q4_raw(int32x4_t acc, const uint8_t* w, const int8_t* q) {
  return block_q4_raw_reg(acc, vld1q_u8(w), vld1q_s8(q), vld1q_s8(q + 16));
}

// int4, group size 32, 64 or 128, 4 groups per step. Raw nibbles against the codes, the -8 offsets taken off
// as integers through qsum (8 * qsum per group), then three pairwise adds turn the 4 groups' lane sums into one vector
// of 4 exact group sums, and one multiply by sc * sx and one FMA apply the scales. The per-group body (dot_row_a8)
// subtracted 8 from every weight byte, reduced each group across lanes on its own and converted its fp16 scale as a
// scalar: about 15 instructions per group beyond the products. Now the odd last row of a slab; rows_a8_q4_neon below
// takes the others two at a time.
template <int GS, bool F16>
static float dot_row_a8_q4_neon(const uint8_t* row, const void* scales_row, const int8_t* qx, const float* sx,
                                const int32_t* qsum, int64_t G) {
  // GS a compile-time constant: the block loops unroll and the 4 group accumulators stay in registers (with GS a
  // run-time value they were kept on the stack: 173 MB of stores per 0.8B token, bench/README.md "ARM cost").
  constexpr int kBlocks = GS / kA8Block, kWBytes = GS / 2;
  float32x4_t acc = vdupq_n_f32(0.f);
  int64_t g = 0;
  for (; g + 4 <= G; g += 4) {
    const uint8_t* w = row + g * kWBytes;
    const int8_t* q = qx + g * GS;
    __builtin_prefetch(w + kPrefetchBytes);
    int32x4_t gi[4];
    for (int j = 0; j < 4; ++j) {
      gi[j] = vdupq_n_s32(0);
      for (int b = 0; b < kBlocks; ++b)
        gi[j] = block_q4_raw(gi[j], w + j * kWBytes + b * (kA8Block / 2), q + j * GS + b * kA8Block);
    }
    int32x4_t sums = vpaddq_s32(vpaddq_s32(gi[0], gi[1]), vpaddq_s32(gi[2], gi[3]));  // groups g .. g+3
    sums = vsubq_s32(sums, vshlq_n_s32(vld1q_s32(qsum + g), 3));
    const float32x4_t sc = F16 ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(scales_row) + g)))
                               : vld1q_f32(static_cast<const float*>(scales_row) + g);
    acc = vfmaq_f32(acc, vcvtq_f32_s32(sums), vmulq_f32(sc, vld1q_f32(sx + g)));
  }
  float tail = 0.f;
  for (; g < G; ++g) {
    int32x4_t gi = vdupq_n_s32(0);
    for (int b = 0; b < kBlocks; ++b)
      gi = block_q4_raw(gi, row + g * kWBytes + b * (kA8Block / 2), qx + g * GS + b * kA8Block);
    const int32_t isum = vaddvq_s32(gi) - 8 * qsum[g];
    tail += static_cast<float>(isum) * (scale_at(scales_row, F16 ? kWqF16 : kWqF32, g) * sx[g]);
  }
  return vaddvq_f32(acc) + tail;
}

// Two rows per step: the codes are loaded once for both (they were half of the single-row body's loads), weights
// and codes come in 64-byte ld1 {4 regs}, and the int32 group accumulators are never zeroed: each of the 4 group
// slots keeps summing across steps, so a step's group sums are the pairwise-added running totals minus the previous
// step's (one subtraction per row and step instead of 4 zeroing moves; the difference is exact, the running totals
// may wrap and the wrap cancels). Per 32-block and row: 2 nibble ops and 2 sdots; per 4 groups and row: 3 addp, 2
// integer subtractions (previous totals, 8 * qsum), and the scale convert, multiply, int->float and FMA.
// Blocks of a step: 4 groups x GS/32 blocks, weights 16 bytes and codes 32 bytes per block, both contiguous.
template <int GS>
__attribute__((always_inline)) static inline void step4_q4_rows2(const uint8_t* w0, const uint8_t* w1,
                                                                 const int8_t* q, int32x4_t (&gi)[2][4]) {
  constexpr int kBlocks = GS / kA8Block;
  for (int c = 0; c < kBlocks; ++c) {  // chunk c: blocks 4c .. 4c+3 of the step, 64 weight bytes per row
    const uint8x16x4_t a = vld1q_u8_x4(w0 + 64 * c), b = vld1q_u8_x4(w1 + 64 * c);
    for (int h = 0; h < 2; ++h) {  // two blocks at a time: their 64 bytes of codes in one load
      const int8x16x4_t qq = vld1q_s8_x4(q + 128 * c + 64 * h);
      for (int i = 0; i < 2; ++i) {
        const int grp = (4 * c + 2 * h + i) / kBlocks;
        gi[0][grp] = block_q4_raw_reg(gi[0][grp], a.val[2 * h + i], qq.val[2 * i], qq.val[2 * i + 1]);
        gi[1][grp] = block_q4_raw_reg(gi[1][grp], b.val[2 * h + i], qq.val[2 * i], qq.val[2 * i + 1]);
      }
    }
  }
}

// The 4 group sums of one row's step from its running totals (8 * qsum already taken off); prev becomes the totals.
__attribute__((always_inline)) static inline int32x4_t step_sums(const int32x4_t (&gi)[4], int32x4_t& prev,
                                                                 int32x4_t qsum8) {
  const int32x4_t total = vpaddq_s32(vpaddq_s32(gi[0], gi[1]), vpaddq_s32(gi[2], gi[3]));
  const int32x4_t sums = vsubq_s32(vsubq_s32(total, prev), qsum8);
  prev = total;
  return sums;
}

template <bool F16>
__attribute__((always_inline)) static inline float32x4_t scales4(const void* scales_row, int64_t g) {
  return F16 ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(scales_row) + g)))
             : vld1q_f32(static_cast<const float*>(scales_row) + g);
}

#if defined(__ARM_FEATURE_DOTPROD) && defined(__aarch64__)
// The decode head's body (M = 1, group 32, fp16 scales, K a multiple of 256: every 8da head the exporter writes) as
// one asm loop: the same arithmetic as step4_q4_rows2 / step_sums above, two steps per trip so the running totals and
// the previous ones swap registers (v29/v30 <-> v24/v25) instead of being copied, all 31 vector registers assigned
// by hand (GCC spilled the scales and accumulators, or copied registers, at 68 instructions per 8 group-rows and
// ~85 per row pair around the loop). Per step of 2 rows x 4 groups: 4 loads of 64 bytes (weights of both rows, the
// codes), 16 nibble ops, 16 sdots, 6 addp, 4 integer subtractions, 4 loads for scales / sx / 8 * qsum, 2 fcvtl,
// 2 fmul, 2 scvtf, 2 fmla and 2 prefetches: 60 instructions, 61 with the loop's 2 per trip (7.6 per 32 weights and
// row; the single-row body above ran 12). The group accumulators and totals carry over from one row pair to the next
// (only differences are used), so a pair costs about 20 instructions outside its steps.
#define QWEN35_A8_STEP(T0, T1, P0, P1)                                                         \
  "ld1 {v0.16b-v3.16b}, [%[w0]], #64\n\t"                                                      \
  "ld1 {v4.16b-v7.16b}, [%[w1]], #64\n\t"                                                      \
  "ld1 {v8.16b-v11.16b}, [%[q]], #64\n\t"                                                      \
  "prfm pldl1keep, [%[w0], #1024]\n\t"                                                         \
  "prfm pldl1keep, [%[w1], #1024]\n\t"                                                         \
  "and v12.16b, v0.16b, v28.16b\n\t"                                                           \
  "ushr v13.16b, v0.16b, #4\n\t"                                                               \
  "and v14.16b, v4.16b, v28.16b\n\t"                                                           \
  "ushr v15.16b, v4.16b, #4\n\t"                                                               \
  "sdot v16.4s, v12.16b, v8.16b\n\t"                                                           \
  "sdot v20.4s, v14.16b, v8.16b\n\t"                                                           \
  "sdot v16.4s, v13.16b, v9.16b\n\t"                                                           \
  "sdot v20.4s, v15.16b, v9.16b\n\t"                                                           \
  "and v12.16b, v1.16b, v28.16b\n\t"                                                           \
  "ushr v13.16b, v1.16b, #4\n\t"                                                               \
  "and v14.16b, v5.16b, v28.16b\n\t"                                                           \
  "ushr v15.16b, v5.16b, #4\n\t"                                                               \
  "sdot v17.4s, v12.16b, v10.16b\n\t"                                                          \
  "sdot v21.4s, v14.16b, v10.16b\n\t"                                                          \
  "sdot v17.4s, v13.16b, v11.16b\n\t"                                                          \
  "sdot v21.4s, v15.16b, v11.16b\n\t"                                                          \
  "ld1 {v8.16b-v11.16b}, [%[q]], #64\n\t"                                                      \
  "and v12.16b, v2.16b, v28.16b\n\t"                                                           \
  "ushr v13.16b, v2.16b, #4\n\t"                                                               \
  "and v14.16b, v6.16b, v28.16b\n\t"                                                           \
  "ushr v15.16b, v6.16b, #4\n\t"                                                               \
  "sdot v18.4s, v12.16b, v8.16b\n\t"                                                           \
  "sdot v22.4s, v14.16b, v8.16b\n\t"                                                           \
  "sdot v18.4s, v13.16b, v9.16b\n\t"                                                           \
  "sdot v22.4s, v15.16b, v9.16b\n\t"                                                           \
  "and v12.16b, v3.16b, v28.16b\n\t"                                                           \
  "ushr v13.16b, v3.16b, #4\n\t"                                                               \
  "and v14.16b, v7.16b, v28.16b\n\t"                                                           \
  "ushr v15.16b, v7.16b, #4\n\t"                                                               \
  "sdot v19.4s, v12.16b, v10.16b\n\t"                                                          \
  "sdot v23.4s, v14.16b, v10.16b\n\t"                                                          \
  "sdot v19.4s, v13.16b, v11.16b\n\t"                                                          \
  "sdot v23.4s, v15.16b, v11.16b\n\t"                                                          \
  "addp v12.4s, v16.4s, v17.4s\n\t"                                                            \
  "addp v13.4s, v18.4s, v19.4s\n\t"                                                            \
  "addp " T0 ".4s, v12.4s, v13.4s\n\t"                                                         \
  "addp v14.4s, v20.4s, v21.4s\n\t"                                                            \
  "addp v15.4s, v22.4s, v23.4s\n\t"                                                            \
  "addp " T1 ".4s, v14.4s, v15.4s\n\t"                                                         \
  "ld1 {v8.4s}, [%[q8]], #16\n\t"                                                              \
  "ld1 {v9.4s}, [%[sx]], #16\n\t"                                                              \
  "ldr d0, [%[s0]], #8\n\t"                                                                    \
  "ldr d4, [%[s1]], #8\n\t"                                                                    \
  "sub v12.4s, " T0 ".4s, " P0 ".4s\n\t"                                                       \
  "sub v14.4s, " T1 ".4s, " P1 ".4s\n\t"                                                       \
  "sub v12.4s, v12.4s, v8.4s\n\t"                                                              \
  "sub v14.4s, v14.4s, v8.4s\n\t"                                                              \
  "fcvtl v0.4s, v0.4h\n\t"                                                                     \
  "fcvtl v4.4s, v4.4h\n\t"                                                                     \
  "fmul v0.4s, v0.4s, v9.4s\n\t"                                                               \
  "fmul v4.4s, v4.4s, v9.4s\n\t"                                                               \
  "scvtf v12.4s, v12.4s\n\t"                                                                   \
  "scvtf v14.4s, v14.4s\n\t"                                                                   \
  "fmla v26.4s, v12.4s, v0.4s\n\t"                                                             \
  "fmla v27.4s, v14.4s, v4.4s\n\t"

// Rows [n, n + 2 * pairs) of the head: out[0 .. 2 * pairs). w: row n's packed weights, s: row n's fp16 scales, q / sx /
// q8: the codes, their group scales and 8 * qsum of the one activation row; G % 8 == 0.
static void rows2_a8_q4_g32_f16_asm(const uint8_t* w, const uint16_t* s, const int8_t* q, const float* sx,
                                    const int32_t* q8, int64_t G, int64_t pairs, float* out) {
  const int64_t row_bytes = G * 16, trips = G / 8;
  const uint8_t* w1;
  const uint16_t* s1;
  const int8_t* qp;
  const float* sxp;
  const int32_t* q8p;
  int64_t left;
  asm volatile(
      "movi v28.16b, #0x0f\n\t"
      "movi v16.4s, #0\n\tmovi v17.4s, #0\n\tmovi v18.4s, #0\n\tmovi v19.4s, #0\n\t"
      "movi v20.4s, #0\n\tmovi v21.4s, #0\n\tmovi v22.4s, #0\n\tmovi v23.4s, #0\n\t"
      "movi v24.4s, #0\n\tmovi v25.4s, #0\n\t"
      "1:\n\t"
      "add %[w1], %[w0], %[row_bytes]\n\t"
      "add %[s1], %[s0], %[G], lsl #1\n\t"
      "mov %[q], %[q_in]\n\t"
      "mov %[sx], %[sx_in]\n\t"
      "mov %[q8], %[q8_in]\n\t"
      "mov %[left], %[trips]\n\t"
      "movi v26.4s, #0\n\t"
      "movi v27.4s, #0\n\t"
      "2:\n\t"
      QWEN35_A8_STEP("v29", "v30", "v24", "v25")
      QWEN35_A8_STEP("v24", "v25", "v29", "v30")
      "subs %[left], %[left], #1\n\t"
      "b.ne 2b\n\t"
      "faddp v26.4s, v26.4s, v27.4s\n\t"  // row n: lanes 0, 1; row n + 1: lanes 2, 3
      "faddp v26.4s, v26.4s, v26.4s\n\t"
      "str d26, [%[out]], #8\n\t"
      "mov %[w0], %[w1]\n\t"  // w1 ends where row n + 2 starts
      "mov %[s0], %[s1]\n\t"
      "subs %[pairs], %[pairs], #1\n\t"
      "b.ne 1b\n\t"
      : [w0] "+r"(w), [s0] "+r"(s), [out] "+r"(out), [pairs] "+r"(pairs), [w1] "=&r"(w1), [s1] "=&r"(s1),
        [q] "=&r"(qp), [sx] "=&r"(sxp), [q8] "=&r"(q8p), [left] "=&r"(left)
      : [row_bytes] "r"(row_bytes), [G] "r"(G), [trips] "r"(trips), [q_in] "r"(q), [sx_in] "r"(sx), [q8_in] "r"(q8)
      : "memory", "cc", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13",
        "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28",
        "v29", "v30");
}
#undef QWEN35_A8_STEP
#endif

// Output rows [n0, n1) of int4 group-32/64/128 weights against the M rows of codes: rows two at a time (the last odd
// one through dot_row_a8_q4_neon), with GS and the scale type fixed for the whole slab.
template <int GS, bool F16>
static void rows_a8_q4_neon(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1) {
  constexpr int kWBytes = GS / 2;
  const int64_t G = p.K / GS, row_bytes = p.K / 2, scale_bytes = F16 ? 2 : 4, steps = G / 4;
  const uint8_t* qw = static_cast<const uint8_t*>(p.qweight);
  const char* scales = static_cast<const char*>(p.scales);
  std::vector<int32_t> qsum8(static_cast<size_t>(p.M * G));  // 8 * qsum, the -8 offsets of the raw nibbles
  for (int64_t i = 0; i < p.M * G; ++i) qsum8[i] = 8 * a.qsum[i];
  int64_t n = n0;
#if defined(__ARM_FEATURE_DOTPROD) && defined(__aarch64__)
  if (GS == 32 && F16 && p.M == 1 && G % 8 == 0 && n1 - n0 >= 2) {
    const int64_t pairs = (n1 - n0) / 2;
    rows2_a8_q4_g32_f16_asm(qw + n0 * row_bytes, static_cast<const uint16_t*>(p.scales) + n0 * G, a.q, a.sx,
                            qsum8.data(), G, pairs, p.out + n0);
    n += 2 * pairs;
  }
#endif
  for (; n + 2 <= n1; n += 2)
    for (int64_t m = 0; m < p.M; ++m) {
      const uint8_t* w0 = qw + n * row_bytes;
      const uint8_t* w1 = w0 + row_bytes;
      const char* s0 = scales + n * G * scale_bytes;
      const char* s1 = s0 + G * scale_bytes;
      const int8_t* q = a.q + m * p.K;
      const float* sx = a.sx + m * G;
      const int32_t* q8 = qsum8.data() + m * G;
      int32x4_t gi[2][4], prev[2];
      for (int r = 0; r < 2; ++r) {
        prev[r] = vdupq_n_s32(0);
        for (int j = 0; j < 4; ++j) gi[r][j] = vdupq_n_s32(0);
      }
      float32x4_t acc0 = vdupq_n_f32(0.f), acc1 = vdupq_n_f32(0.f);
      for (int64_t t = 0; t < steps; ++t) {
        __builtin_prefetch(w0 + kPrefetchBytes);
        __builtin_prefetch(w1 + kPrefetchBytes);
        step4_q4_rows2<GS>(w0, w1, q, gi);
        const int32x4_t qs8 = vld1q_s32(q8);
        const float32x4_t sxv = vld1q_f32(sx);
        const int32x4_t d0 = step_sums(gi[0], prev[0], qs8), d1 = step_sums(gi[1], prev[1], qs8);
        acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(d0), vmulq_f32(scales4<F16>(s0, 0), sxv));
        acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(d1), vmulq_f32(scales4<F16>(s1, 0), sxv));
        w0 += 4 * kWBytes;
        w1 += 4 * kWBytes;
        s0 += 4 * scale_bytes;
        s1 += 4 * scale_bytes;
        q += 4 * GS;
        sx += 4;
        q8 += 4;
      }
      const float32x4_t both = vpaddq_f32(acc0, acc1);  // row n: lanes 0 + 1, row n + 1: lanes 2 + 3
      float r0 = vgetq_lane_f32(both, 0) + vgetq_lane_f32(both, 1), r1 = vgetq_lane_f32(both, 2) + vgetq_lane_f32(both, 3);
      for (int64_t g = steps * 4; g < G; ++g) {  // groups past the last whole step
        const int64_t k = g * GS;
        int32x4_t t0 = vdupq_n_s32(0), t1 = vdupq_n_s32(0);
        for (int b = 0; b < GS / kA8Block; ++b) {
          t0 = block_q4_raw(t0, qw + n * row_bytes + (k + b * kA8Block) / 2, a.q + m * p.K + k + b * kA8Block);
          t1 = block_q4_raw(t1, qw + (n + 1) * row_bytes + (k + b * kA8Block) / 2, a.q + m * p.K + k + b * kA8Block);
        }
        const float sxg = a.sx[m * G + g];
        const int32_t off = qsum8[m * G + g];
        r0 += static_cast<float>(vaddvq_s32(t0) - off) * (scale_at(p.scales, p.scale_dtype, n * G + g) * sxg);
        r1 += static_cast<float>(vaddvq_s32(t1) - off) * (scale_at(p.scales, p.scale_dtype, (n + 1) * G + g) * sxg);
      }
      p.out[m * p.N + n] = r0;
      p.out[m * p.N + n + 1] = r1;
    }
  for (; n < n1; ++n)  // an odd row at the end of the slab
    for (int64_t m = 0; m < p.M; ++m)
      p.out[m * p.N + n] = dot_row_a8_q4_neon<GS, F16>(qw + n * row_bytes, scales + n * G * scale_bytes,
                                                       a.q + m * p.K, a.sx + m * G, a.qsum + m * G, G);
}

#endif

template <int BITS>
static void linear_a8_rows(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1) {
  const int64_t G = p.K / p.group_size, row_bytes = BITS == 4 ? p.K / 2 : p.K;
  const uint8_t* qw = static_cast<const uint8_t*>(p.qweight);
#if defined(__ARM_NEON) && !defined(QWEN35_ISA_AVX2)
  if (BITS == 4 && (p.group_size == 32 || p.group_size == 64 || p.group_size == 128)) {
    const bool f16 = p.scale_dtype == kWqF16;
    switch (p.group_size) {
      case 32: return f16 ? rows_a8_q4_neon<32, true>(p, a, n0, n1) : rows_a8_q4_neon<32, false>(p, a, n0, n1);
      case 64: return f16 ? rows_a8_q4_neon<64, true>(p, a, n0, n1) : rows_a8_q4_neon<64, false>(p, a, n0, n1);
      default: return f16 ? rows_a8_q4_neon<128, true>(p, a, n0, n1) : rows_a8_q4_neon<128, false>(p, a, n0, n1);
    }
  }
#endif
#if defined(QWEN35_ISA_AVX2)
  if (BITS == 4 && a.paired) {
    const int64_t scale_bytes = p.scale_dtype == kWqF16 ? 2 : 4;
    const char* scales = static_cast<const char*>(p.scales);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < p.M; ++m)
        p.out[m * p.N + n] =
            p.scale_dtype == kWqF16
                ? dot_row_a8_q4_paired_gs<true>(p.group_size, qw + n * row_bytes, scales + n * G * scale_bytes,
                                                a.q + m * p.K, a.sx + m * G, a.qsum + m * G, G)
                : dot_row_a8_q4_paired_gs<false>(p.group_size, qw + n * row_bytes, scales + n * G * scale_bytes,
                                                 a.q + m * p.K, a.sx + m * G, a.qsum + m * G, G);
    return;
  }
#endif
  std::vector<float> sc(static_cast<size_t>(G));  // row n's scales in fp32, converted once for all M rows of x
  for (int64_t n = n0; n < n1; ++n) {
    int64_t g = 0;
#if defined(QWEN35_ISA_AVX2)
    if (p.scale_dtype == kWqF16)  // 8 at a time: a scalar conversion per group cost as much as a group's dot product
      for (const uint16_t* h = static_cast<const uint16_t*>(p.scales) + n * G; g + 8 <= G; g += 8)
        _mm256_storeu_ps(sc.data() + g, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + g))));
#endif
    for (; g < G; ++g) sc[g] = scale_at(p.scales, p.scale_dtype, n * G + g);
    // A weight row (K/2 or K bytes) stays in L1 across the M rows of x, so prefill re-unpacks it from cache.
    for (int64_t m = 0; m < p.M; ++m)
      p.out[m * p.N + n] = dot_row_a8<BITS>(qw + n * row_bytes, sc.data(), a.q + m * p.K, a.sx + m * G,
                                            a.qsum + m * G, p.K, p.group_size);
  }
}

static inline void linear_a8(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1) {
  if (p.bits == 4)
    linear_a8_rows<4>(p, a, n0, n1);
  else
    linear_a8_rows<8>(p, a, n0, n1);
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
