// linear_wq_a8 with the Armv8.2 dot-product extension (FEAT_DotProd: Cortex-A55/A75 and every later phone core).
// CMake compiles only this TU with -march=armv8.2-a+dotprod on aarch64 (GCC's vdotq_s32 wants Armv8.2; every core
// with the extension implements Armv8.2); wq.cpp calls it only when the kernel reports the extension (HWCAP_ASIMDDP),
// so the library still runs on Armv8.0 cores such as the Cortex-A53 (tests/runtime/test_wq_aarch64.py runs both).
#define QWEN35_ISA_NS isa_neon_dot
#include "wq_impl.h"

namespace qwen35 {
namespace detail {
void wq_linear_a8_rows_neon_dot(const WqLinear& p, const WqActQ8& a, int64_t n0, int64_t n1) {
  isa_neon_dot::wq::linear_a8(p, a, n0, n1);
}
}  // namespace detail
}  // namespace qwen35
