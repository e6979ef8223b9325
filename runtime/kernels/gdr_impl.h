// Implementation of the gated delta rule for one (batch, value-head) task.
// Included by one TU per ISA (gdr_generic.cpp, gdr_avx2.cpp) with
// QWEN35_ISA_NS set to a distinct namespace; see gdr_simd.h.
//
// Two algorithms, same semantics (transformers' torch_recurrent_gated_delta_rule):
//  * recurrent(): the fused decode step. For a block of 4 vectors of state
//    columns it reads S once for both Sᵀk and Sᵀq, forms the delta
//    e = β(v − α Sᵀk), the output o = α Sᵀq + (q·k) e, then writes
//    S ← α S + k eᵀ while the block is still in L1. Columns of S are
//    independent, so a multi-token run keeps the block resident across tokens.
//  * chunked(): the WY / UT form from the architecture notes §2.3, with the
//    unit-lower-triangular system solved by forward substitution (never the
//    Neumann power series). Ragged tails are handled by running the last chunk
//    with n < C rows, which is exactly what zero padding (g = β = 0) computes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gated_delta_rule.h"
#include "gdr_simd.h"

namespace qwen35 {
namespace QWEN35_ISA_NS {

// ---------------------------------------------------------------- dtypes ---

static inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    const float mag = static_cast<float>(man) * (1.0f / 16777216.0f);  // man * 2^-24
    return bits_to_float(sign | float_to_bits(mag));
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round to nearest even, like torch's .to(torch.float16).
static inline uint16_t float_to_half(float f) {
  const uint32_t x = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                        // below 2^-14: subnormal half
    const float scaled = bits_to_float(ax) * 16777216.0f;  // units of 2^-24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1;
  return sign | static_cast<uint16_t>(h);
}

static inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

static inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

static inline void load_row(const void* base, int32_t dt, int64_t off, int64_t n, float* dst) {
  if (dt == kFloat32) {
    std::memcpy(dst, static_cast<const float*>(base) + off, sizeof(float) * n);
  } else if (dt == kFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(base) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(base) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
  }
}

static inline float load_scalar(const void* base, int32_t dt, int64_t idx) {
  if (dt == kFloat32) return static_cast<const float*>(base)[idx];
  const uint16_t bits = static_cast<const uint16_t*>(base)[idx];
  return dt == kFloat16 ? half_to_float(bits) : bf16_to_float(bits);
}

static inline void store_row(void* base, int32_t dt, int64_t off, int64_t n, const float* src) {
  if (dt == kFloat32) {
    std::memcpy(static_cast<float*>(base) + off, src, sizeof(float) * n);
  } else if (dt == kFloat16) {
    uint16_t* d = static_cast<uint16_t*>(base) + off;
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_half(src[i]);
  } else {
    uint16_t* d = static_cast<uint16_t*>(base) + off;
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
  }
}

// ----------------------------------------------------------- small BLAS ---

static inline float dot(const float* a, const float* b, int64_t n) {
  Vec acc0 = vzero(), acc1 = vzero();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 = vfma(vload(a + i), vload(b + i), acc0);
    acc1 = vfma(vload(a + i + W), vload(b + i + W), acc1);
  }
  for (; i + W <= n; i += W) acc0 = vfma(vload(a + i), vload(b + i), acc0);
  float s = vhsum(vadd(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

static inline void scale(float* a, float s, int64_t n) {
  const Vec vs = vset1(s);
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(a + i, vmul(vload(a + i), vs));
  for (; i < n; ++i) a[i] *= s;
}

// C[M×N] = cscale·C + alpha·A[M×Kd]·B[Kd×N]; all row-major with leading dims.
// cscale == 0 never reads C (it may hold garbage). Register tile MR rows × NV vectors.
template <int MR, int NV>
static inline void gemm_tile(int64_t Kd, const float* A, int64_t lda, const float* B, int64_t ldb,
                             float* C, int64_t ldc, float alpha, float cscale) {
  Vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) acc[r][u] = vzero();
  for (int64_t p = 0; p < Kd; ++p) {
    Vec b[NV];
    for (int u = 0; u < NV; ++u) b[u] = vload(B + p * ldb + u * W);
    for (int r = 0; r < MR; ++r) {
      const Vec a = vset1(A[r * lda + p]);
      for (int u = 0; u < NV; ++u) acc[r][u] = vfma(a, b[u], acc[r][u]);
    }
  }
  const Vec va = vset1(alpha), vc = vset1(cscale);
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) {
      float* c = C + r * ldc + u * W;
      Vec res = vmul(acc[r][u], va);
      if (cscale != 0.f) res = vfma(vc, vload(c), res);
      vstore(c, res);
    }
}

template <int MR>
static inline void gemm_tail_cols(int64_t Kd, int64_t ncols, const float* A, int64_t lda, const float* B,
                                  int64_t ldb, float* C, int64_t ldc, float alpha, float cscale) {
  for (int r = 0; r < MR; ++r)
    for (int64_t j = 0; j < ncols; ++j) {
      float s = 0.f;
      for (int64_t p = 0; p < Kd; ++p) s += A[r * lda + p] * B[p * ldb + j];
      float* c = C + r * ldc + j;
      *c = alpha * s + (cscale != 0.f ? cscale * *c : 0.f);
    }
}

template <int MR>
static inline void gemm_rows(int64_t N, int64_t Kd, const float* A, int64_t lda, const float* B, int64_t ldb,
                             float* C, int64_t ldc, float alpha, float cscale) {
  int64_t j = 0;
  for (; j + 2 * W <= N; j += 2 * W) gemm_tile<MR, 2>(Kd, A, lda, B + j, ldb, C + j, ldc, alpha, cscale);
  for (; j + W <= N; j += W) gemm_tile<MR, 1>(Kd, A, lda, B + j, ldb, C + j, ldc, alpha, cscale);
  if (j < N) gemm_tail_cols<MR>(Kd, N - j, A, lda, B + j, ldb, C + j, ldc, alpha, cscale);
}

static void gemm(int64_t M, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* B, int64_t ldb,
                 float* C, int64_t ldc, float alpha, float cscale) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) gemm_rows<4>(N, Kd, A + i * lda, lda, B, ldb, C + i * ldc, ldc, alpha, cscale);
  for (; i < M; ++i) gemm_rows<1>(N, Kd, A + i * lda, lda, B, ldb, C + i * ldc, ldc, alpha, cscale);
}

// ------------------------------------------------------------- scratch ---

static float* scratch(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Loads q and k rows of token t (key head kh) as fp32, l2-normalised if asked
// (x · rsqrt(Σx² + 1e-6), not F.normalize), q scaled by 1/sqrt(K).
static inline void prep_qk(const GdrProblem& p, int64_t b, int64_t kh, int64_t t, float* qrow, float* krow) {
  const int64_t K = p.K;
  const int64_t off = ((b * p.T + t) * p.Hk + kh) * K;
  load_row(p.q, p.q_dtype, off, K, qrow);
  load_row(p.k, p.k_dtype, off, K, krow);
  float qs = 1.0f / std::sqrt(static_cast<float>(K));
  if (p.use_qk_l2norm) {
    qs *= 1.0f / std::sqrt(dot(qrow, qrow, K) + 1e-6f);
    scale(krow, 1.0f / std::sqrt(dot(krow, krow, K) + 1e-6f), K);
  }
  scale(qrow, qs, K);
}

// ------------------------------------------------------ fused recurrence ---

// One token on a block of NV vectors of state columns (ld = V).
template <int NV>
static inline void step_block(float* S, int64_t K, int64_t ld, const float* qn, const float* kn,
                              const float* vrow, float alpha, float beta, float qk, float* orow) {
  Vec kv[NV], qv[NV];
  for (int u = 0; u < NV; ++u) kv[u] = qv[u] = vzero();
  for (int64_t i = 0; i < K; ++i) {
    const Vec ki = vset1(kn[i]), qi = vset1(qn[i]);
    const float* row = S + i * ld;
    for (int u = 0; u < NV; ++u) {
      const Vec s = vload(row + u * W);
      kv[u] = vfma(ki, s, kv[u]);
      qv[u] = vfma(qi, s, qv[u]);
    }
  }
  const Vec va = vset1(alpha), vb = vset1(beta), vqk = vset1(qk);
  Vec e[NV];
  for (int u = 0; u < NV; ++u) {
    e[u] = vmul(vb, vfnma(va, kv[u], vload(vrow + u * W)));  // β (v − α Sᵀk)
    vstore(orow + u * W, vfma(vqk, e[u], vmul(va, qv[u])));   // α Sᵀq + (q·k) e
  }
  for (int64_t i = 0; i < K; ++i) {
    const Vec ki = vset1(kn[i]);
    float* row = S + i * ld;
    for (int u = 0; u < NV; ++u) vstore(row + u * W, vfma(ki, e[u], vmul(va, vload(row + u * W))));
  }
}

static inline void step_cols_scalar(float* S, int64_t K, int64_t ld, int64_t ncols, const float* qn,
                                    const float* kn, const float* vrow, float alpha, float beta, float qk,
                                    float* orow) {
  for (int64_t c = 0; c < ncols; ++c) {
    float kv = 0.f, qv = 0.f;
    for (int64_t i = 0; i < K; ++i) {
      kv += kn[i] * S[i * ld + c];
      qv += qn[i] * S[i * ld + c];
    }
    const float e = beta * (vrow[c] - alpha * kv);
    orow[c] = alpha * qv + qk * e;
    for (int64_t i = 0; i < K; ++i) S[i * ld + c] = alpha * S[i * ld + c] + kn[i] * e;
  }
}

static void recurrent(const GdrProblem& p, int64_t b, int64_t h, int64_t t0, int64_t n) {
  const int64_t K = p.K, V = p.V, Hv = p.Hv, kh = h / (Hv / p.Hk);
  float* S = p.state + (b * Hv + h) * K * V;
  float* buf = scratch(static_cast<size_t>(n) * (2 * K + 2 * V + 3));
  float* qn = buf;
  float* kn = qn + n * K;
  float* vv = kn + n * K;
  float* oo = vv + n * V;
  float* al = oo + n * V;
  float* be = al + n;
  float* qk = be + n;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t t = t0 + j;
    prep_qk(p, b, kh, t, qn + j * K, kn + j * K);
    load_row(p.v, p.v_dtype, ((b * p.T + t) * Hv + h) * V, V, vv + j * V);
    const int64_t gi = (b * p.T + t) * Hv + h;
    al[j] = std::exp(load_scalar(p.g, p.g_dtype, gi));
    be[j] = load_scalar(p.beta, p.beta_dtype, gi);
    qk[j] = dot(qn + j * K, kn + j * K, K);
  }
  constexpr int NB = 4;  // 4 vectors of columns: 8 accumulators + loads fit 16 AVX2 registers
  int64_t c = 0;
  for (; c + NB * W <= V; c += NB * W)
    for (int64_t j = 0; j < n; ++j)
      step_block<NB>(S + c, K, V, qn + j * K, kn + j * K, vv + j * V + c, al[j], be[j], qk[j], oo + j * V + c);
  for (; c + W <= V; c += W)
    for (int64_t j = 0; j < n; ++j)
      step_block<1>(S + c, K, V, qn + j * K, kn + j * K, vv + j * V + c, al[j], be[j], qk[j], oo + j * V + c);
  if (c < V)
    for (int64_t j = 0; j < n; ++j)
      step_cols_scalar(S + c, K, V, V - c, qn + j * K, kn + j * K, vv + j * V + c, al[j], be[j], qk[j],
                       oo + j * V + c);
  for (int64_t j = 0; j < n; ++j) store_row(p.out, p.out_dtype, ((b * p.T + t0 + j) * Hv + h) * V, V, oo + j * V);
}

// --------------------------------------------------------- chunked (WY) ---

// X[i,:] -= Σ_{j<i} L[i,j] X[j,:] for a unit lower-triangular L (diagonal implicit).
static void forward_substitute(int64_t n, const float* L, int64_t ldl, float* X, int64_t ldx, int64_t ncols) {
  constexpr int NB = 4;
  for (int64_t i = 1; i < n; ++i) {
    const float* Li = L + i * ldl;
    float* Xi = X + i * ldx;
    int64_t c = 0;
    for (; c + NB * W <= ncols; c += NB * W) {
      Vec acc[NB];
      for (int u = 0; u < NB; ++u) acc[u] = vload(Xi + c + u * W);
      for (int64_t j = 0; j < i; ++j) {
        const Vec l = vset1(Li[j]);
        const float* Xj = X + j * ldx + c;
        for (int u = 0; u < NB; ++u) acc[u] = vfnma(l, vload(Xj + u * W), acc[u]);
      }
      for (int u = 0; u < NB; ++u) vstore(Xi + c + u * W, acc[u]);
    }
    for (; c + W <= ncols; c += W) {
      Vec acc = vload(Xi + c);
      for (int64_t j = 0; j < i; ++j) acc = vfnma(vset1(Li[j]), vload(X + j * ldx + c), acc);
      vstore(Xi + c, acc);
    }
    for (; c < ncols; ++c) {
      float s = Xi[c];
      for (int64_t j = 0; j < i; ++j) s -= Li[j] * X[j * ldx + c];
      Xi[c] = s;
    }
  }
}

static void chunked(const GdrProblem& p, int64_t b, int64_t h, int64_t C) {
  const int64_t K = p.K, V = p.V, T = p.T, Hv = p.Hv, kh = h / (Hv / p.Hk);
  const int64_t XW = V + K;  // X = [U | W]
  float* S = p.state + (b * Hv + h) * K * V;
  float* buf = scratch(static_cast<size_t>(2 * C * K + K * C + 2 * C * C + C * XW + C * V + 4 * C));
  float* KQ = buf;            // rows 0..n-1: k̂, rows n..2n-1: q̂ (then e^γ ⊙ q̂)
  float* KT = KQ + 2 * C * K; // K × n: k̂ᵀ (then scaled by e^{Γ−γ})
  float* G = KT + K * C;      // 2n × n: rows 0..n-1 → A (strict lower), rows n.. → P (lower incl. diag)
  float* X = G + 2 * C * C;   // n × (V+K)
  float* O = X + C * XW;      // n × V
  float* gam = O + C * V;
  float* bt = gam + C;
  for (int64_t t0 = 0; t0 < T; t0 += C) {
    const int64_t n = std::min(C, T - t0);
    float* Q = KQ + n * K;
    float acc = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = t0 + j;
      prep_qk(p, b, kh, t, Q + j * K, KQ + j * K);
      const int64_t gi = (b * T + t) * Hv + h;
      acc += load_scalar(p.g, p.g_dtype, gi);
      gam[j] = acc;
      bt[j] = load_scalar(p.beta, p.beta_dtype, gi);
      float* Xj = X + j * XW;
      load_row(p.v, p.v_dtype, gi * V, V, Xj);
      scale(Xj, bt[j], V);                        // β v
      std::memcpy(Xj + V, KQ + j * K, sizeof(float) * K);
      scale(Xj + V, bt[j] * std::exp(gam[j]), K);  // β e^γ k
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t d = 0; d < K; ++d) KT[d * n + j] = KQ[j * K + d];
    gemm(2 * n, n, K, KQ, K, KT, n, G, n, 1.f, 0.f);  // [k̂; q̂] k̂ᵀ
    float* P = G + n * n;
    for (int64_t i = 0; i < n; ++i) {
      float* Ai = G + i * n;
      float* Pi = P + i * n;
      for (int64_t j = 0; j < i; ++j) {
        const float d = std::exp(gam[i] - gam[j]);
        Ai[j] *= bt[i] * d;
        Pi[j] *= d;
      }
      for (int64_t j = i + 1; j < n; ++j) Pi[j] = 0.f;
    }
    forward_substitute(n, G, n, X, XW, XW);  // [U | W] = (I + A)⁻¹ [βV | βe^γK]
    // V' = U − W S   (stored over U)
    gemm(n, V, K, X + V, XW, S, V, X, XW, -1.f, 1.f);
    // O = (e^γ ⊙ q̂) S + P V'
    for (int64_t j = 0; j < n; ++j) scale(Q + j * K, std::exp(gam[j]), K);
    gemm(n, V, K, Q, K, S, V, O, V, 1.f, 0.f);
    gemm(n, V, n, P, n, X, XW, O, V, 1.f, 1.f);
    // S = e^Γ S + (e^{Γ−γ} ⊙ k̂)ᵀ V'
    const float Gam = gam[n - 1];
    for (int64_t j = 0; j < n; ++j) {
      const float s = std::exp(Gam - gam[j]);
      for (int64_t d = 0; d < K; ++d) KT[d * n + j] *= s;
    }
    gemm(K, V, n, KT, n, X, XW, S, V, 1.f, std::exp(Gam));
    for (int64_t j = 0; j < n; ++j) store_row(p.out, p.out_dtype, ((b * T + t0 + j) * Hv + h) * V, V, O + j * V);
  }
}

static inline void run_task(const GdrProblem& p, int64_t task, int64_t chunk) {
  const int64_t b = task / p.Hv, h = task % p.Hv;
  if (p.T == 1 || chunk <= 1) {
    // Decode (or forced recurrence): tokens in slabs so the scratch stays small.
    constexpr int64_t kSlab = 256;
    for (int64_t t0 = 0; t0 < p.T; t0 += kSlab) recurrent(p, b, h, t0, std::min(kSlab, p.T - t0));
  } else {
    chunked(p, b, h, chunk);
  }
}

}  // namespace QWEN35_ISA_NS
}  // namespace qwen35
