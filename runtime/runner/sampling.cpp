#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace qwen_bench {

std::string SamplingConfig::invalid_field() const {
  if (!(temperature >= 0) || !std::isfinite(temperature)) return "temperature: must be a finite number >= 0";
  if (top_k < 0) return "top_k: must be an integer >= 0 (0 = off)";
  if (!(top_p > 0 && top_p <= 1)) return "top_p: must be in (0, 1] (1 = off)";
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty))
    return "repetition_penalty: must be a finite number > 0 (1 = off)";
  return "";
}

uint64_t SplitMix64::next() {
  state_ += 0x9E3779B97F4A7C15ull;
  uint64_t z = state_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int64_t Sampler::operator()(const float* logits, int64_t vocab, const std::vector<int64_t>& context) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const size_t V = static_cast<size_t>(vocab);
  s_.resize(V);
  for (size_t i = 0; i < V; ++i) {
    if (std::isnan(logits[i])) throw std::runtime_error("logits contain NaN at index " + std::to_string(i));
    s_[i] = static_cast<double>(logits[i]);
  }
  // 1. Repetition penalty, once per distinct id of the context.
  if (cfg_.repetition_penalty != 1.0 && !context.empty()) {
    seen_.assign(V, 0);
    for (int64_t id : context) {
      if (seen_[static_cast<size_t>(id)]) continue;
      seen_[static_cast<size_t>(id)] = 1;
      double& v = s_[static_cast<size_t>(id)];
      v = v < 0 ? v * cfg_.repetition_penalty : v / cfg_.repetition_penalty;
    }
  }
  // 2. Greedy: the lowest index among the largest.
  if (cfg_.temperature == 0) {
    size_t best = 0;
    for (size_t i = 1; i < V; ++i)
      if (s_[i] > s_[best]) best = i;
    return static_cast<int64_t>(best);
  }
  // 3. Temperature.
  for (auto& v : s_) v /= cfg_.temperature;
  // 4. top-k: the k-th largest value counting duplicates; ties with it survive.
  if (cfg_.top_k > 0 && static_cast<size_t>(cfg_.top_k) < V) {
    e_ = s_;
    std::nth_element(e_.begin(), e_.begin() + (cfg_.top_k - 1), e_.end(), std::greater<double>());
    const double kth = e_[static_cast<size_t>(cfg_.top_k - 1)];
    for (auto& v : s_)
      if (v < kth) v = neg_inf;
  }
  // 5. top-p over (score ascending, index ascending), cumulated left to right; the most likely token survives.
  if (cfg_.top_p < 1.0) {
    order_.resize(V);
    std::iota(order_.begin(), order_.end(), 0);
    std::stable_sort(order_.begin(), order_.end(), [&](int64_t a, int64_t b) { return s_[a] < s_[b]; });
    const double m = *std::max_element(s_.begin(), s_.end());
    e_.resize(V);
    double c = 0;
    for (size_t j = 0; j < V; ++j) {
      c += std::exp(s_[static_cast<size_t>(order_[j])] - m);
      e_[j] = c;  // c_j
    }
    const double total = e_[V - 1], cut = 1.0 - cfg_.top_p;
    for (size_t j = 0; j + 1 < V; ++j)
      if (e_[j] / total <= cut) s_[static_cast<size_t>(order_[j])] = neg_inf;
  }
  // 6. One draw over exp(s - max), cumulated in index order.
  const double m = *std::max_element(s_.begin(), s_.end());
  e_.resize(V);
  double a = 0;
  for (size_t i = 0; i < V; ++i) {
    a += std::exp(s_[i] - m);  // exp(-inf) = 0
    e_[i] = a;
  }
  const double u = static_cast<double>(rng_.next() >> 11) * 0x1.0p-53;
  const double target = u * e_[V - 1];
  int64_t last_positive = -1;
  for (size_t i = 0; i < V; ++i) {
    // p_i itself, not a_i - a_(i-1): a tiny p_i can leave a large running sum unchanged.
    const bool positive = std::exp(s_[i] - m) > 0;
    if (!positive) continue;
    if (e_[i] > target) return static_cast<int64_t>(i);
    last_positive = static_cast<int64_t>(i);
  }
  return last_positive;
}

}  // namespace qwen_bench
