// Weight-only kernels, baseline ISA: NEON on aarch64 (always available there), portable C++ elsewhere.
#define QWEN35_ISA_NS isa_generic
#include "wq_impl.h"

namespace qwen35 {
namespace detail {
void wq_linear_rows_generic(const WqLinear& p, int64_t n0, int64_t n1) { isa_generic::wq::linear(p, n0, n1); }
void wq_linear_a8_rows_generic(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1) {
  isa_generic::wq::linear_a8(p, a, n0, n1);
}
void wq_embedding_rows_generic(const WqEmbedding& p, int64_t i0, int64_t i1) {
  isa_generic::wq::embedding(p, i0, i1);
}
}  // namespace detail
}  // namespace qwen35
