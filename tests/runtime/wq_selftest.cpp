// Standalone self-test of the weight-only kernels (runtime/kernels/wq*.{h,cpp}) against an fp64 reference, with no
// torch or ExecuTorch: built by tests/runtime/test_wq_aarch64.py for aarch64 (NEON, run under qemu; once more for
// armv8.2-a+dotprod, where linear_wq_a8 takes sdot) and for the host without the AVX2 TU (portable). Exit code 0 iff
// every case is within tolerance; prints "isa=<name>", "dotprod=<0|1>" and "ALL OK".
#include <algorithm>
#include <cmath>
#include <string_view>
#include <cstdio>
#include <random>
#include <vector>

#include "wq.h"

namespace {

// Codes of row n, element k, decoded here independently of the kernel.
double code(const std::vector<uint8_t>& q, int bits, int64_t K, int64_t n, int64_t k) {
  if (bits == 8) return static_cast<double>(static_cast<int8_t>(q[n * K + k]));
  const uint8_t b = q[n * (K / 2) + k / 2];
  return static_cast<double>(((k % 2) ? (b >> 4) : (b & 15)) - 8);
}

// fp16 bits -> double for normal numbers (the only kind generated here).
double half_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  return ((h & 0x8000) ? -1.0 : 1.0) * std::ldexp(1024.0 + m, e - 25);
}

bool run_case(int bits, int64_t M, int64_t N, int64_t K, int64_t gs, bool f16 = false) {
  std::mt19937 rng(static_cast<unsigned>(bits * 1000 + M * 31 + N * 7 + K));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> ud(1e-3f, 2e-2f);
  std::normal_distribution<float> nd;
  std::vector<uint8_t> q(static_cast<size_t>(N * (bits == 4 ? K / 2 : K)));
  for (auto& b : q) b = static_cast<uint8_t>(byte(rng));
  std::vector<float> s(static_cast<size_t>(N * (K / gs))), x(static_cast<size_t>(M * K)), y(M * N), e(3 * K);
  for (auto& v : s) v = ud(rng);
  std::vector<uint16_t> s16(s.size());
  if (f16)  // normal halves in [2^-8, 2^-6): exponent field 7..8, random mantissa; the reference reads them back
    for (size_t i = 0; i < s.size(); ++i) {
      s16[i] = static_cast<uint16_t>(((7 + byte(rng) % 2) << 10) | (byte(rng) * 4 + byte(rng) % 4));
      s[i] = static_cast<float>(half_value(s16[i]));
    }
  const void* sp = f16 ? static_cast<const void*>(s16.data()) : static_cast<const void*>(s.data());
  const int32_t sd = f16 ? qwen35::kWqF16 : qwen35::kWqF32;
  for (auto& v : x) v = nd(rng);
  char err[256];
  const int64_t dims[3] = {M, N, K};
  if (qwen35_linear_wq(x.data(), q.data(), sp, y.data(), dims, bits, gs, sd, 1, err, sizeof err)) {
    std::printf("error: %s\n", err);
    return false;
  }
  double worst = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double w = code(q, bits, K, n, k) * s[n * (K / gs) + k / gs];
        ref += w * x[m * K + k];
        mag += std::fabs(w * x[m * K + k]);
      }
      const double r = std::fabs(y[m * N + n] - ref) / (mag + 1e-30);
      if (!(r <= worst)) worst = r;  // NaN-safe
    }
  const int64_t idx[3] = {N - 1, 0, N / 2};
  const int64_t edims[3] = {3, N, K};
  if (qwen35_embedding_wq(q.data(), sp, idx, e.data(), edims, bits, gs, sd, 1, err, sizeof err)) {
    std::printf("error: %s\n", err);
    return false;
  }
  double gather = 0;
  for (int i = 0; i < 3; ++i)
    for (int64_t k = 0; k < K; ++k)
      gather = std::fmax(gather, std::fabs(e[i * K + k] - code(q, bits, K, idx[i], k) * s[idx[i] * (K / gs) + k / gs]));
  const bool ok = worst <= 1e-5 && gather <= 1e-6;
  std::printf("bits=%d%s M=%lld N=%lld K=%lld gs=%lld: linear rel err %.3g, gather abs err %.3g %s\n", bits, f16 ? " fp16-scales" : "",
              (long long)M, (long long)N, (long long)K, (long long)gs, worst, gather, ok ? "ok" : "FAIL");
  return ok;
}

// linear_wq_a8 against its contract (kernels/wq.h), written out here: fp32 amax / 127, fp32 x / sx rounded half to
// even (nearbyint in the default mode), clamp to [-127, 127], code 0 where sx == 0; int64 dot per group; fp64 outside.
bool run_case_a8(int bits, int64_t M, int64_t N, int64_t K, int64_t gs, bool f16 = false) {
  std::mt19937 rng(static_cast<unsigned>(bits * 977 + M * 13 + N * 5 + K + gs));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> ud(1e-3f, 2e-2f);
  std::normal_distribution<float> nd;
  const int64_t G = K / gs;
  std::vector<uint8_t> q(static_cast<size_t>(N * (bits == 4 ? K / 2 : K)));
  for (auto& b : q) b = static_cast<uint8_t>(byte(rng));
  std::vector<float> s(static_cast<size_t>(N * G)), x(static_cast<size_t>(M * K)), y(M * N);
  for (auto& v : s) v = ud(rng);
  std::vector<uint16_t> s16(s.size());
  if (f16)
    for (size_t i = 0; i < s.size(); ++i) {
      s16[i] = static_cast<uint16_t>(((7 + byte(rng) % 2) << 10) | (byte(rng) * 4 + byte(rng) % 4));
      s[i] = static_cast<float>(half_value(s16[i]));
    }
  for (auto& v : x) v = 3 * nd(rng);
  for (int64_t k = 0; k < std::min<int64_t>(K, gs); ++k) x[k] = 0.f;  // row 0's first group is all zero: sx = 0
  const void* sp = f16 ? static_cast<const void*>(s16.data()) : static_cast<const void*>(s.data());
  char err[256];
  const int64_t dims[3] = {M, N, K};
  if (qwen35_linear_wq_a8(x.data(), q.data(), sp, y.data(), dims, bits, gs, f16 ? qwen35::kWqF16 : qwen35::kWqF32, 1,
                          err, sizeof err)) {
    std::printf("error: %s\n", err);
    return false;
  }
  double worst = 0;
  for (int64_t m = 0; m < M; ++m) {
    std::vector<float> sx(G);
    std::vector<int> qx(K);
    for (int64_t g = 0; g < G; ++g) {
      float amax = 0.f;
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k) amax = std::max(amax, std::fabs(x[m * K + k]));
      sx[g] = amax / 127.f;
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k)
        qx[k] = sx[g] > 0.f
                    ? static_cast<int>(std::max(-127.f, std::min(127.f, std::nearbyint(x[m * K + k] / sx[g]))))
                    : 0;
    }
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t g = 0; g < G; ++g) {
        int64_t isum = 0, iabs = 0;
        for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
          const int64_t c = static_cast<int64_t>(code(q, bits, K, n, k));
          isum += c * qx[k];
          iabs += std::llabs(c * qx[k]);
        }
        const double both = static_cast<double>(sx[g]) * s[n * G + g];
        ref += both * static_cast<double>(isum);
        mag += both * static_cast<double>(iabs);
      }
      const double r = std::fabs(y[m * N + n] - ref) / (mag + 1e-30);
      if (!(r <= worst)) worst = r;
    }
  }
  const bool ok = worst <= 1e-5;
  std::printf("a8 bits=%d%s M=%lld N=%lld K=%lld gs=%lld: rel err %.3g %s\n", bits, f16 ? " fp16-scales" : "",
              (long long)M, (long long)N, (long long)K, (long long)gs, worst, ok ? "ok" : "FAIL");
  return ok;
}

// Ties: x / sx = 2.5, -3.5, 0.5 exactly (sx = 1) round to 2, -4, 0; with every weight code 1 and scale 1, y = 125.
bool a8_rounds_half_to_even(int bits) {
  const int64_t K = 32, dims[3] = {1, 2, K};
  std::vector<float> x(K, 0.f), s(2, 1.f), y(2);
  x[0] = 127.f, x[1] = 2.5f, x[2] = -3.5f, x[3] = 0.5f;
  std::vector<uint8_t> q(bits == 4 ? K : 2 * K, bits == 4 ? 0x99 : 1);  // nibble 9 = code 1; int8 code 1
  char err[256];
  const bool ok = qwen35_linear_wq_a8(x.data(), q.data(), s.data(), y.data(), dims, bits, K, qwen35::kWqF32, 1, err,
                                      sizeof err) == 0 && y[0] == 125.f && y[1] == 125.f;
  std::printf("a8 bits=%d ties round half to even: %g %s\n", bits, y[0], ok ? "ok" : "FAIL");
  return ok;
}

}  // namespace

int main() {
  std::printf("isa=%s\n", qwen35::isa_name());
#if defined(__ARM_FEATURE_DOTPROD)
  std::printf("dotprod=1\n");
#else
  std::printf("dotprod=0\n");
#endif
  bool ok = true;
  // decode, prefill, scalar tails inside a group (K % 16 != 0), per-channel int8
  ok &= run_case(4, 1, 37, 64, 32);
  ok &= run_case(4, 3, 19, 72, 24);
  ok &= run_case(4, 1, 5, 256, 128);
  ok &= run_case(8, 1, 21, 40, 40);
  ok &= run_case(8, 5, 37, 80, 16);
  ok &= run_case(8, 2, 9, 512, 512);
  ok &= run_case(4, 1, 33, 128, 32, true);
  ok &= run_case(8, 3, 17, 96, 96, true);
  // int8 activations: groups 32/64/128 (several 32-blocks), tails (gs % 32 != 0, gs < 32), per-channel, M > 1
  for (int bits : {4, 8})
    for (int64_t gs : {32, 64, 128}) {
      ok &= run_case_a8(bits, 1, 37, 256, gs);
      ok &= run_case_a8(bits, 3, 19, 256, gs, true);
    }
  ok &= run_case_a8(4, 2, 21, 72, 24);
  ok &= run_case_a8(4, 1, 13, 192, 32, true);  // 6 groups: NEON's 4-group step, then 2 single groups
  ok &= run_case_a8(4, 1, 9, 160, 80);
  // the decode head's shape class (M = 1, group 32, fp16 scales, K % 256 == 0): NEON's two-row body over 18 row
  // pairs whose accumulators carry from pair to pair, then the odd last row; and a single pair of one 8-group trip
  ok &= run_case_a8(4, 1, 37, 1024, 32, true);
  ok &= run_case_a8(4, 1, 2, 256, 32, true);
  ok &= run_case_a8(8, 2, 11, 80, 40);
  ok &= run_case_a8(8, 1, 33, 1024, 1024);
  ok &= a8_rounds_half_to_even(4);
  ok &= a8_rounds_half_to_even(8);
  // a bad argument is refused with its name
  char err[256];
  const int64_t dims[3] = {1, 4, 64};
  std::vector<uint8_t> q(4 * 32);
  std::vector<float> s(4 * 2), x(64), y(4);
  const bool refused = qwen35_linear_wq(x.data(), q.data(), s.data(), y.data(), dims, 5, 32, 0, 1, err, sizeof err) &&
                       std::string_view(err).find("argument 'bits'") != std::string_view::npos;
  std::printf("bad bits refused: %s\n", refused ? "ok" : "FAIL");
  ok &= refused;
  const bool refused_a8 =
      qwen35_linear_wq_a8(x.data(), q.data(), s.data(), y.data(), dims, 4, 24, 0, 1, err, sizeof err) &&
      std::string_view(err).find("qwen35::linear_wq_a8: argument 'group_size'") != std::string_view::npos;
  std::printf("a8 bad group_size refused: %s\n", refused_a8 ? "ok" : "FAIL");
  ok &= refused_a8;
  std::printf(ok ? "ALL OK\n" : "FAILED\n");
  return ok ? 0 : 1;
}
