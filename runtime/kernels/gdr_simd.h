// Tiny SIMD abstraction for the gated-delta kernels: one "Vec" of W floats.
//
// Compile-time dispatch: AVX2+FMA when the translation unit is compiled with
// -mavx2 -mfma (the dispatcher only calls that TU after a runtime CPU check),
// NEON when __ARM_NEON is defined (always true on aarch64), otherwise a portable
// 4-wide struct the compiler may or may not vectorise.
//
// Everything here lives in the namespace named by QWEN35_ISA_NS so that the
// same header compiled with different flags in two TUs never shares a symbol
// (an ODR clash would let the linker pick the AVX2 copy for the generic path).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(QWEN35_ISA_AVX2)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#ifndef QWEN35_ISA_NS
#error "define QWEN35_ISA_NS before including gdr_simd.h"
#endif

namespace qwen35 {
namespace QWEN35_ISA_NS {

#if defined(QWEN35_ISA_AVX2)
constexpr int W = 8;
struct Vec {
  __m256 v;
};
static inline Vec vzero() { return {_mm256_setzero_ps()}; }
static inline Vec vload(const float* p) { return {_mm256_loadu_ps(p)}; }
static inline void vstore(float* p, Vec a) { _mm256_storeu_ps(p, a.v); }
static inline Vec vset1(float x) { return {_mm256_set1_ps(x)}; }
static inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
static inline Vec vfnma(Vec a, Vec b, Vec c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a*b
static inline Vec vmul(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
static inline Vec vadd(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
static inline Vec vsub(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
static inline float vhsum(Vec a) {
  __m128 lo = _mm256_castps256_ps128(a.v);
  __m128 hi = _mm256_extractf128_ps(a.v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}
static const char* const kIsaName = "avx2+fma";

#elif defined(__ARM_NEON)
constexpr int W = 4;
struct Vec {
  float32x4_t v;
};
static inline Vec vzero() { return {vdupq_n_f32(0.f)}; }
static inline Vec vload(const float* p) { return {vld1q_f32(p)}; }
static inline void vstore(float* p, Vec a) { vst1q_f32(p, a.v); }
static inline Vec vset1(float x) { return {vdupq_n_f32(x)}; }
static inline Vec vfma(Vec a, Vec b, Vec c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
static inline Vec vfnma(Vec a, Vec b, Vec c) { return {vfmsq_f32(c.v, a.v, b.v)}; }
static inline Vec vmul(Vec a, Vec b) { return {vmulq_f32(a.v, b.v)}; }
static inline Vec vadd(Vec a, Vec b) { return {vaddq_f32(a.v, b.v)}; }
static inline Vec vsub(Vec a, Vec b) { return {vsubq_f32(a.v, b.v)}; }
static inline float vhsum(Vec a) { return vaddvq_f32(a.v); }
static const char* const kIsaName = "neon";

#else
constexpr int W = 4;
struct Vec {
  float v[4];
};
static inline Vec vzero() { return {{0.f, 0.f, 0.f, 0.f}}; }
static inline Vec vload(const float* p) {
  Vec r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
static inline void vstore(float* p, Vec a) { std::memcpy(p, a.v, sizeof(a.v)); }
static inline Vec vset1(float x) { return {{x, x, x, x}}; }
#define QWEN35_VOP(name, expr)                  \
  static inline Vec name(Vec a, Vec b) {        \
    Vec r;                                      \
    for (int i = 0; i < 4; ++i) r.v[i] = (expr); \
    return r;                                   \
  }
QWEN35_VOP(vmul, a.v[i] * b.v[i])
QWEN35_VOP(vadd, a.v[i] + b.v[i])
QWEN35_VOP(vsub, a.v[i] - b.v[i])
#undef QWEN35_VOP
static inline Vec vfma(Vec a, Vec b, Vec c) {
  Vec r;
  for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
  return r;
}
static inline Vec vfnma(Vec a, Vec b, Vec c) {
  Vec r;
  for (int i = 0; i < 4; ++i) r.v[i] = c.v[i] - a.v[i] * b.v[i];
  return r;
}
static inline float vhsum(Vec a) { return (a.v[0] + a.v[1]) + (a.v[2] + a.v[3]); }
static const char* const kIsaName = "portable";
#endif

}  // namespace QWEN35_ISA_NS
}  // namespace qwen35
