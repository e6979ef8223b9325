// Baseline ISA: NEON on aarch64 (always available there), portable C++ elsewhere.
#define QWEN35_ISA_NS isa_generic
#include "gdr_impl.h"

namespace qwen35 {
namespace detail {
void run_task_generic(const GdrProblem& p, int64_t task, int64_t chunk) {
  isa_generic::run_task(p, task, chunk);
}
const char* isa_name_generic() { return isa_generic::kIsaName; }
}  // namespace detail
}  // namespace qwen35
