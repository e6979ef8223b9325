// The portable sampling rule (runtime/SAMPLING.md; Python reference: runtime/sampling.py). Every runtime implements
// the same steps in float64 with the same SplitMix64 stream, so the same seed, logits and context give the same token
// in Python, C++, Java and Swift. Pure C++: no ExecuTorch, so it builds wherever the runner's core does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qwen_bench {

struct SamplingConfig {
  double temperature = 0.0;         // 0 = greedy
  int64_t top_k = 0;                // 0 = off
  double top_p = 1.0;               // 1 = off
  double repetition_penalty = 1.0;  // 1 = off
  uint64_t seed = 0;

  // Empty when valid, else "<field>: <why>" naming the request field (serve protocol names).
  std::string invalid_field() const;
};

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();

 private:
  uint64_t state_;
};

class Sampler {
 public:
  explicit Sampler(const SamplingConfig& cfg) : cfg_(cfg), rng_(cfg.seed) {}
  // One token from float32 logits [vocab]; `context` = every token id so far (prompt and generated), each in
  // 0..vocab-1. Throws std::runtime_error on NaN logits. Draws exactly one RNG value unless greedy.
  int64_t operator()(const float* logits, int64_t vocab, const std::vector<int64_t>& context);

 private:
  SamplingConfig cfg_;
  SplitMix64 rng_;
  std::vector<double> s_, e_;
  std::vector<int64_t> order_;
  std::vector<uint8_t> seen_;
};

}  // namespace qwen_bench
