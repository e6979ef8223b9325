// Validation, ISA dispatch, threading and the C ABI of qwen35::linear_wq, linear_wq_a8 and embedding_wq; the
// activation quantizer of linear_wq_a8.
#include "wq.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "arg_check.h"

#ifdef ET_USE_THREADPOOL
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#endif

#if defined(QWEN35_HAVE_NEON_DOT_TU) && defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define QWEN35_NEON_DOT_DISPATCH 1
#endif

namespace qwen35 {
namespace {

const char* dtype_name(int32_t dt) {
  switch (dt) {
    case kWqF32: return "float32";
    case kWqF16: return "float16";
    case kWqI8: return "int8";
    case kWqU8: return "uint8";
    case kWqI64: return "int64";
    default: return "an unsupported dtype";
  }
}

using check::fail;
using check::overlaps;
using check::shape_str;

// qweight / scales / bits / group_size, shared by both ops. K is the unpacked row length.
bool validate_table(const char* op, const ArgDesc& qweight, const ArgDesc& scales, int64_t bits, int64_t group_size,
                    int64_t K, char* err, size_t len) {
  char sb[128];
  if (bits != 4 && bits != 8) return fail(op, err, len, "argument 'bits' must be 4 or 8, got %lld", (long long)bits);
  const int32_t want = bits == 8 ? kWqI8 : kWqU8;
  if (qweight.dtype != want)
    return fail(op, err, len, "argument 'qweight' must be %s for bits=%lld, got %s", dtype_name(want),
                (long long)bits, dtype_name(qweight.dtype));
  if (qweight.ndim != 2)
    return fail(op, err, len, "argument 'qweight' must be 2D [N, %s], got %lldD", bits == 8 ? "K" : "K/2",
                (long long)qweight.ndim);
  if (K < 1 || (bits == 4 && K % 2))
    return fail(op, err, len, "argument 'qweight': K=%lld must be %s", (long long)K,
                bits == 4 ? "positive and even for bits=4" : "positive");
  const int64_t cols = bits == 4 ? K / 2 : K;
  if (qweight.sizes[1] != cols) {
    shape_str(qweight, sb, sizeof sb);
    return fail(op, err, len, "argument 'qweight' has shape %s, must be [N, %lld] for K=%lld and bits=%lld", sb,
                (long long)cols, (long long)K, (long long)bits);
  }
  if (group_size < 1 || K % group_size || (bits == 4 && group_size % 2))
    return fail(op, err, len, "argument 'group_size'=%lld must divide K=%lld%s", (long long)group_size,
                (long long)K, bits == 4 ? " and be even" : "");
  if (scales.dtype != kWqF32 && scales.dtype != kWqF16)
    return fail(op, err, len, "argument 'scales' must be float32 or float16, got %s", dtype_name(scales.dtype));
  const int64_t N = qweight.sizes[0];
  if (scales.ndim != 2 || scales.sizes[0] != N || scales.sizes[1] != K / group_size) {
    shape_str(scales, sb, sizeof sb);
    return fail(op, err, len, "argument 'scales' has shape %s, must be [N, K/group_size] = [%lld, %lld]", sb,
                (long long)N, (long long)(K / group_size));
  }
  if (!qweight.contiguous) return fail(op, err, len, "argument 'qweight' must be contiguous");
  if (!scales.contiguous) return fail(op, err, len, "argument 'scales' must be contiguous");
  return true;
}

template <typename Fn>
void parallel_rows(int64_t n, int64_t work, int max_threads, Fn&& body) {
#ifdef ET_USE_THREADPOOL
  int64_t nthreads = ::executorch::extension::get_thread_count();
  if (max_threads > 0) nthreads = std::min<int64_t>(nthreads, max_threads);
  // Below ~64k multiply-adds a thread hand-off costs more than it saves (nano decode: 1<<18 was 20 % slower).
  if (nthreads > 1 && n > 1 && work >= (int64_t{1} << 16)) {
    const int64_t grain = (n + nthreads - 1) / nthreads;
    ::executorch::extension::parallel_for(0, n, grain, body);
    return;
  }
#else
  (void)work;
  (void)max_threads;
#endif
  body(int64_t{0}, n);
}

}  // namespace

// linear_wq and linear_wq_a8 take the same arguments; only the op name in the messages differs.
static bool validate_linear(const char* op, const ArgDesc& x, const ArgDesc& qweight, const ArgDesc& scales,
                            int64_t bits, int64_t group_size, const ArgDesc& out, bool out_resizable, char* err,
                            size_t len) {
  char sb[128];
  if (x.dtype != kWqF32) return fail(op, err, len, "argument 'x' must be float32, got %s", dtype_name(x.dtype));
  if (x.ndim < 1) return fail(op, err, len, "argument 'x' must be at least 1D [..., K], got 0D");
  if (!x.contiguous) return fail(op, err, len, "argument 'x' must be contiguous");
  const int64_t K = x.sizes[x.ndim - 1];
  if (bits == 4 && qweight.ndim == 2 && qweight.sizes[1] * 2 != K) {
    shape_str(qweight, sb, sizeof sb);
    return fail(op, err, len, "argument 'qweight' has shape %s, must be [N, K/2] = [N, %lld] for x's K=%lld", sb,
                (long long)(K / 2), (long long)K);
  }
  if (!validate_table(op, qweight, scales, bits, group_size, K, err, len)) return false;
  if (out.dtype != kWqF32) return fail(op, err, len, "argument 'out' must be float32, got %s", dtype_name(out.dtype));
  if (!out_resizable) {
    bool ok = out.ndim == x.ndim && out.sizes[out.ndim - 1] == qweight.sizes[0];
    for (int64_t i = 0; ok && i + 1 < x.ndim; ++i) ok = out.sizes[i] == x.sizes[i];
    if (!ok) {
      shape_str(out, sb, sizeof sb);
      return fail(op, err, len, "argument 'out' has shape %s, must be x's leading dims + [N=%lld]", sb,
                  (long long)qweight.sizes[0]);
    }
  }
  if (!out.contiguous) return fail(op, err, len, "argument 'out' must be contiguous");
  if (overlaps(out, x)) return fail(op, err, len, "argument 'out' must not alias 'x'");
  return true;
}

bool validate_linear_wq(const ArgDesc& x, const ArgDesc& qweight, const ArgDesc& scales, int64_t bits,
                        int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t len) {
  return validate_linear("linear_wq", x, qweight, scales, bits, group_size, out, out_resizable, err, len);
}

bool validate_linear_wq_a8(const ArgDesc& x, const ArgDesc& qweight, const ArgDesc& scales, int64_t bits,
                           int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t len) {
  return validate_linear("linear_wq_a8", x, qweight, scales, bits, group_size, out, out_resizable, err, len);
}

bool validate_embedding_wq(const ArgDesc& qweight, const ArgDesc& scales, const ArgDesc& indices, int64_t bits,
                           int64_t group_size, const ArgDesc& out, bool out_resizable, char* err, size_t len) {
  const char* op = "embedding_wq";
  char sb[128];
  if (qweight.ndim != 2)
    return fail(op, err, len, "argument 'qweight' must be 2D [N, K or K/2], got %lldD", (long long)qweight.ndim);
  const int64_t K = bits == 4 ? 2 * qweight.sizes[1] : qweight.sizes[1];
  if (!validate_table(op, qweight, scales, bits, group_size, K, err, len)) return false;
  if (indices.dtype != kWqI64)
    return fail(op, err, len, "argument 'indices' must be int64, got %s", dtype_name(indices.dtype));
  if (!indices.contiguous) return fail(op, err, len, "argument 'indices' must be contiguous");
  int64_t count = 1;
  for (int64_t i = 0; i < indices.ndim; ++i) count *= indices.sizes[i];
  const int64_t N = qweight.sizes[0];
  if (count > 0 && indices.data) {
    const int64_t* idx = static_cast<const int64_t*>(indices.data);
    for (int64_t i = 0; i < count; ++i)
      if (idx[i] < 0 || idx[i] >= N)
        return fail(op, err, len, "argument 'indices' holds %lld at flat position %lld, outside [0, %lld)",
                    (long long)idx[i], (long long)i, (long long)N);
  }
  if (out.dtype != kWqF32) return fail(op, err, len, "argument 'out' must be float32, got %s", dtype_name(out.dtype));
  if (!out_resizable) {
    bool ok = out.ndim == indices.ndim + 1 && out.sizes[out.ndim - 1] == K;
    for (int64_t i = 0; ok && i < indices.ndim; ++i) ok = out.sizes[i] == indices.sizes[i];
    if (!ok) {
      shape_str(out, sb, sizeof sb);
      return fail(op, err, len, "argument 'out' has shape %s, must be indices' shape + [K=%lld]", sb, (long long)K);
    }
  }
  if (!out.contiguous) return fail(op, err, len, "argument 'out' must be contiguous");
  if (overlaps(out, indices)) return fail(op, err, len, "argument 'out' must not alias 'indices'");
  return true;
}

void run_linear(const WqLinear& p, int max_threads) {
  if (p.M == 0 || p.N == 0) return;
  auto rows = avx2_active() ? &detail::wq_linear_rows_avx2 : &detail::wq_linear_rows_generic;
  parallel_rows(p.N, p.M * p.N * p.K, max_threads, [&](int64_t n0, int64_t n1) { rows(p, n0, n1); });
}

namespace detail {
void quantize_act_q8(const float* x, int64_t M, int64_t K, int64_t gs, int32_t bits, bool paired, int8_t* q, float* sx,
                     int32_t* qsum) {
  const int64_t G = K / gs, body = gs - gs % kA8Block;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      const float* xg = x + m * K + g * gs;
      int8_t* qg = q + m * K + g * gs;
      float amax = 0.f;
      bool finite = true;
      for (int64_t k = 0; k < gs; ++k) {
        const float a = std::fabs(xg[k]);
        finite = finite && a <= std::numeric_limits<float>::max();  // false for inf and NaN
        amax = std::max(amax, a);
      }
      const float s = finite ? amax / 127.f : std::numeric_limits<float>::quiet_NaN();
      int32_t sum = 0;
      for (int64_t k = 0; k < gs; ++k) {
        // nearbyint rounds half to even in the default rounding mode, which nothing in the process changes; the
        // fp32 division is correctly rounded, so torch's round(x / sx) gives the same code.
        const float v = s > 0.f ? std::nearbyint(xg[k] / s) : 0.f;  // s NaN or 0: code 0
        const int8_t c = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
        int64_t pos = k;
        if (paired) {  // a pair of 32-blocks holds [even b0 | even b1 | odd b0 | odd b1], 16 codes each
          const int64_t b = (g * gs + k) / kA8Block, i = k % kA8Block;  // block along the row, index in it
          const int64_t pair_start = (b & ~int64_t{1}) * kA8Block - g * gs;  // relative to this group's start
          pos = pair_start + ((i & 1) ? kA8Block : 0) + ((b & 1) ? kA8Block / 2 : 0) + i / 2;
        } else if (bits == 4 && k < body) {  // nibble order inside each block: even elements, then odd ones
          const int64_t i = k % kA8Block;
          pos = k - i + ((i & 1) ? kA8Block / 2 + i / 2 : i / 2);
        }
        qg[pos] = c;
        if (k < body) sum += c;
      }
      sx[m * G + g] = s;
      qsum[m * G + g] = sum;
    }
}
}  // namespace detail

bool a8_paired_layout(const WqLinear& p) {
  const int64_t gs = p.group_size;
  return avx2_active() && p.bits == 4 && (gs == 32 || gs == 64 || gs == 128) && p.K % (8 * kA8Block) == 0;
}

namespace {
using A8Rows = void (*)(const WqLinear&, const WqActQ8&, int64_t, int64_t);

#ifdef QWEN35_NEON_DOT_DISPATCH
bool neon_dot_active() {
  static const bool on = (getauxval(AT_HWCAP) & (1ul << 20)) != 0;  // HWCAP_ASIMDDP (asm/hwcap.h)
  return on;
}
#endif

A8Rows a8_rows() {
  if (avx2_active()) return &detail::wq_linear_a8_rows_avx2;
#ifdef QWEN35_NEON_DOT_DISPATCH
  if (neon_dot_active()) return &detail::wq_linear_a8_rows_neon_dot;
#endif
  return &detail::wq_linear_a8_rows_generic;
}
}  // namespace

void run_linear_a8(const WqLinear& p, int max_threads) {
  if (p.M == 0 || p.N == 0) return;
  const int64_t G = p.K / p.group_size;
  std::vector<int8_t> q(static_cast<size_t>(p.M * p.K));
  std::vector<float> sx(static_cast<size_t>(p.M * G));
  std::vector<int32_t> qsum(static_cast<size_t>(p.M * G));
  const bool paired = a8_paired_layout(p);
  detail::quantize_act_q8(p.x, p.M, p.K, p.group_size, p.bits, paired, q.data(), sx.data(), qsum.data());
  const WqActQ8 a{q.data(), sx.data(), qsum.data(), paired};
  auto rows = a8_rows();
  parallel_rows(p.N, p.M * p.N * p.K, max_threads, [&](int64_t n0, int64_t n1) { rows(p, a, n0, n1); });
}

void run_embedding(const WqEmbedding& p, int max_threads) {
  if (p.n_indices == 0) return;
  auto rows = avx2_active() ? &detail::wq_embedding_rows_avx2 : &detail::wq_embedding_rows_generic;
  parallel_rows(p.n_indices, p.n_indices * p.K, max_threads, [&](int64_t i0, int64_t i1) { rows(p, i0, i1); });
}

#ifndef QWEN35_HAVE_AVX2_TU
namespace detail {
void wq_linear_rows_avx2(const WqLinear& p, int64_t n0, int64_t n1) { wq_linear_rows_generic(p, n0, n1); }
void wq_linear_a8_rows_avx2(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1) {
  wq_linear_a8_rows_generic(p, a, n0, n1);
}
void wq_embedding_rows_avx2(const WqEmbedding& p, int64_t i0, int64_t i1) { wq_embedding_rows_generic(p, i0, i1); }
}  // namespace detail
#endif

}  // namespace qwen35

namespace {
using LinearValidator = bool (*)(const qwen35::ArgDesc&, const qwen35::ArgDesc&, const qwen35::ArgDesc&, int64_t,
                                 int64_t, const qwen35::ArgDesc&, bool, char*, size_t);

// The C entry points of linear_wq and linear_wq_a8 take the same arguments; only the validator's op name and the
// runner differ.
int linear_entry(LinearValidator validate, void (*run)(const qwen35::WqLinear&, int), const float* x,
                 const void* qweight, const void* scales, float* out, const int64_t* dims, int32_t bits,
                 int64_t group_size, int32_t scale_dtype, int32_t max_threads, char* err, size_t err_len) {
  using namespace qwen35;
  const int64_t M = dims[0], N = dims[1], K = dims[2];
  const int64_t cols = bits == 4 ? K / 2 : K, G = group_size > 0 ? K / group_size : 0;
  const int64_t xs[2] = {M, K}, qs[2] = {N, cols}, ss[2] = {N, G}, os[2] = {M, N};
  // The Python caller flattens x to [M, K]; this re-checks with the same messages.
  const ArgDesc ax{"x", kWqF32, 2, xs, true, x, M * K * 4};
  const ArgDesc aq{"qweight", bits == 8 ? kWqI8 : kWqU8, 2, qs, true, qweight, N * cols};
  const ArgDesc as{"scales", scale_dtype, 2, ss, true, scales, N * G * (scale_dtype == kWqF16 ? 2 : 4)};
  const ArgDesc ao{"out", kWqF32, 2, os, true, out, M * N * 4};
  if (!validate(ax, aq, as, bits, group_size, ao, false, err, err_len)) return 1;
  run(WqLinear{x, qweight, scales, out, M, N, K, group_size, bits, scale_dtype}, max_threads);
  return 0;
}
}  // namespace

extern "C" {

int qwen35_linear_wq(const float* x, const void* qweight, const void* scales, float* out, const int64_t* dims,
                     int32_t bits, int64_t group_size, int32_t scale_dtype, int32_t max_threads, char* err,
                     size_t err_len) {
  return linear_entry(qwen35::validate_linear_wq, qwen35::run_linear, x, qweight, scales, out, dims, bits,
                      group_size, scale_dtype, max_threads, err, err_len);
}

int qwen35_linear_wq_a8(const float* x, const void* qweight, const void* scales, float* out, const int64_t* dims,
                        int32_t bits, int64_t group_size, int32_t scale_dtype, int32_t max_threads, char* err,
                        size_t err_len) {
  return linear_entry(qwen35::validate_linear_wq_a8, qwen35::run_linear_a8, x, qweight, scales, out, dims, bits,
                      group_size, scale_dtype, max_threads, err, err_len);
}

int qwen35_embedding_wq(const void* qweight, const void* scales, const int64_t* indices, float* out,
                        const int64_t* dims, int32_t bits, int64_t group_size, int32_t scale_dtype,
                        int32_t max_threads, char* err, size_t err_len) {
  using namespace qwen35;
  const int64_t n = dims[0], N = dims[1], K = dims[2];
  const int64_t cols = bits == 4 ? K / 2 : K, G = group_size > 0 ? K / group_size : 0;
  const int64_t is[1] = {n}, qs[2] = {N, cols}, ss[2] = {N, G}, os[2] = {n, K};
  const ArgDesc ai{"indices", kWqI64, 1, is, true, indices, n * 8};
  const ArgDesc aq{"qweight", bits == 8 ? kWqI8 : kWqU8, 2, qs, true, qweight, N * cols};
  const ArgDesc as{"scales", scale_dtype, 2, ss, true, scales, N * G * (scale_dtype == kWqF16 ? 2 : 4)};
  const ArgDesc ao{"out", kWqF32, 2, os, true, out, n * K * 4};
  if (!validate_embedding_wq(aq, as, ai, bits, group_size, ao, false, err, err_len)) return 1;
  run_embedding(WqEmbedding{qweight, scales, indices, out, n, N, K, group_size, bits, scale_dtype}, max_threads);
  return 0;
}
}
