// AVX2 + FMA path. CMake compiles only this TU with -mavx2 -mfma; the dispatcher
// in gated_delta_rule.cpp calls it only after a runtime CPU check.
#define QWEN35_ISA_AVX2 1
#define QWEN35_ISA_NS isa_avx2
#include "gdr_impl.h"

namespace qwen35 {
namespace detail {
void run_task_avx2(const GdrProblem& p, int64_t task, int64_t chunk) { isa_avx2::run_task(p, task, chunk); }
}  // namespace detail
}  // namespace qwen35
