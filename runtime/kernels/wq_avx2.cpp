// Weight-only kernels, AVX2 + FMA. CMake compiles only this TU with -mavx2 -mfma; wq.cpp calls it only
// after the same runtime CPU check as the gated-delta op (avx2_active()).
#define QWEN35_ISA_AVX2 1
#define QWEN35_ISA_NS isa_avx2
#include "wq_impl.h"

namespace qwen35 {
namespace detail {
void wq_linear_rows_avx2(const WqLinear& p, int64_t n0, int64_t n1) { isa_avx2::wq::linear(p, n0, n1); }
void wq_linear_a8_rows_avx2(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1) {
  isa_avx2::wq::linear_a8(p, a, n0, n1);
}
void wq_embedding_rows_avx2(const WqEmbedding& p, int64_t i0, int64_t i1) { isa_avx2::wq::embedding(p, i0, i1); }
}  // namespace detail
}  // namespace qwen35
