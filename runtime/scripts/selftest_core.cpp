// Standalone self-test of the C++ core against a float64 recurrence, with no torch or ExecuTorch.
// Used to check the NEON path under qemu (runtime/scripts/cross_check_aarch64.sh) and the portable
// path on any host. Exit code 0 iff every case is within tolerance.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "gated_delta_rule.h"

namespace {

// transformers' torch_recurrent_gated_delta_rule in double, head-repeated by index.
void reference(int B, int T, int Hk, int Hv, int K, int V, const std::vector<float>& q, const std::vector<float>& k,
               const std::vector<float>& v, const std::vector<float>& g, const std::vector<float>& beta,
               std::vector<double>& S, std::vector<double>& out) {
  const int rep = Hv / Hk;
  std::vector<double> qn(K), kn(K), kv(V);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hv; ++h) {
      double* s = &S[((size_t)b * Hv + h) * K * V];
      for (int t = 0; t < T; ++t) {
        const size_t qo = (((size_t)b * T + t) * Hk + h / rep) * K;
        double qq = 0, kk = 0;
        for (int i = 0; i < K; ++i) qq += (double)q[qo + i] * q[qo + i], kk += (double)k[qo + i] * k[qo + i];
        for (int i = 0; i < K; ++i) {
          qn[i] = q[qo + i] / std::sqrt(qq + 1e-6) / std::sqrt((double)K);
          kn[i] = k[qo + i] / std::sqrt(kk + 1e-6);
        }
        const size_t gi = ((size_t)b * T + t) * Hv + h;
        const double a = std::exp((double)g[gi]), bt = beta[gi];
        for (int j = 0; j < V; ++j) {
          double acc = 0;
          for (int i = 0; i < K; ++i) acc += a * s[i * V + j] * kn[i];
          kv[j] = acc;
        }
        for (int i = 0; i < K; ++i)
          for (int j = 0; j < V; ++j) s[i * V + j] = a * s[i * V + j] + kn[i] * bt * (v[gi * V + j] - kv[j]);
        for (int j = 0; j < V; ++j) {
          double acc = 0;
          for (int i = 0; i < K; ++i) acc += s[i * V + j] * qn[i];
          out[gi * V + j] = acc;
        }
      }
    }
}

bool run_case(int B, int T, int Hk, int Hv, int K, int V, int chunk) {
  std::mt19937 rng(1234 + T * 7 + K);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  const size_t nq = (size_t)B * T * Hk * K, nv = (size_t)B * T * Hv * V, ng = (size_t)B * T * Hv,
               ns = (size_t)B * Hv * K * V;
  std::vector<float> q(nq), k(nq), v(nv), g(ng), beta(ng), S(ns), out(nv);
  for (auto& x : q) x = nd(rng);
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  for (auto& x : g) x = -ud(rng);
  for (auto& x : beta) x = ud(rng);
  for (auto& x : S) x = 0.5f * nd(rng);
  std::vector<double> Sd(S.begin(), S.end()), outd(nv);
  reference(B, T, Hk, Hv, K, V, q, k, v, g, beta, Sd, outd);
  qwen35::GdrProblem p{q.data(), k.data(), v.data(), g.data(), beta.data(), S.data(), out.data(),
                       qwen35::kFloat32, qwen35::kFloat32, qwen35::kFloat32, qwen35::kFloat32, qwen35::kFloat32,
                       qwen35::kFloat32, B, T, Hk, Hv, K, V, true};
  qwen35::set_chunk_size(chunk);
  qwen35::run(p, 1);
  double eo = 0, es = 0;
  for (size_t i = 0; i < nv; ++i) eo = std::fmax(eo, std::fabs(out[i] - outd[i]));
  for (size_t i = 0; i < ns; ++i) es = std::fmax(es, std::fabs(S[i] - Sd[i]));
  const bool ok = eo < 1e-4 && es < 1e-4 && std::isfinite(eo) && std::isfinite(es);
  std::printf("%-4s B%d-T%d-HK%d-HV%d-K%d-V%d chunk=%d isa=%s  max|out err|=%.3g max|state err|=%.3g\n",
              ok ? "ok" : "FAIL", B, T, Hk, Hv, K, V, chunk, qwen35::isa_name(), eo, es);
  return ok;
}

}  // namespace

int main() {
  bool ok = true;
  const int shapes[][6] = {{2, 1, 2, 4, 128, 128}, {2, 130, 2, 4, 128, 128}, {1, 65, 1, 2, 5, 7},
                           {1, 70, 2, 4, 12, 20},  {1, 1, 1, 2, 12, 20}};
  for (const auto& s : shapes)
    for (int chunk : {0, 1, 64}) ok = run_case(s[0], s[1], s[2], s[3], s[4], s[5], chunk) && ok;
  std::printf(ok ? "ALL OK\n" : "FAILURES\n");
  return ok ? 0 : 1;
}
