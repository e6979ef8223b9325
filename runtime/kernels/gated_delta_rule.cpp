// Dispatcher, validation, threading and the C ABI of qwen35::gated_delta_rule.
#include "gated_delta_rule.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "arg_check.h"

#ifdef ET_USE_THREADPOOL
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#endif

namespace qwen35 {
namespace detail {
const char* isa_name_generic();
}

namespace {

// Chunk size for T > 1, chosen by measurement (bench/bench_gated_delta.py --sweep-chunk).
constexpr int64_t kDefaultChunk = 16;
std::atomic<int64_t> g_chunk{0};
std::atomic<int32_t> g_force_portable{-1};  // -1: read QWEN35_GDR_ISA once
// Slabs the last run() split its tasks into: lets a test see that the thread count reached the kernel (one relaxed
// add per slab, not per task). Meaningful only when calls do not overlap.
std::atomic<int64_t> g_last_run_slabs{0};

const char* dtype_name(int32_t dt) {
  switch (dt) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "an unsupported dtype";
  }
}

constexpr const char* kOp = "gated_delta_rule";
using check::fail;
using check::overlaps;
using check::shape_str;

bool has_avx2() {
#if defined(QWEN35_HAVE_AVX2_TU) && (defined(__x86_64__) || defined(__i386__))
  // F16C too: the weight-only kernels' AVX2 TU converts fp16 scales with it (every AVX2 CPU has it).
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

bool force_portable() {
  int32_t f = g_force_portable.load();
  if (f < 0) {
    const char* env = std::getenv("QWEN35_GDR_ISA");
    f = (env && std::strcmp(env, "portable") == 0) ? 1 : 0;
    g_force_portable.store(f);
  }
  return f == 1;
}

}  // namespace

bool validate(const ArgDesc& q, const ArgDesc& k, const ArgDesc& v, const ArgDesc& g, const ArgDesc& beta,
              const ArgDesc& state, const ArgDesc& out, bool out_resizable, char* err, size_t len) {
  char sbuf[128];
  const ArgDesc* floats[] = {&q, &k, &v, &g, &beta};
  for (const ArgDesc* a : floats)
    if (a->dtype != kFloat32 && a->dtype != kFloat16 && a->dtype != kBFloat16)
      return fail(kOp, err, len, "argument '%s' must be float32, float16 or bfloat16, got %s", a->name,
                  dtype_name(a->dtype));
  if (state.dtype != kFloat32)
    return fail(kOp, err, len, "argument 'state' must be float32, got %s", dtype_name(state.dtype));
  if (out.dtype != v.dtype)
    return fail(kOp, err, len, "argument 'out' must have v's dtype %s, got %s", dtype_name(v.dtype),
                dtype_name(out.dtype));
  const struct {
    const ArgDesc* a;
    int64_t rank;
    const char* layout;
  } ranks[] = {{&q, 4, "[B, T, Hk, K]"}, {&k, 4, "[B, T, Hk, K]"},  {&v, 4, "[B, T, Hv, V]"},
               {&g, 3, "[B, T, Hv]"},    {&beta, 3, "[B, T, Hv]"}, {&state, 4, "[B, Hv, K, V]"}};
  for (const auto& r : ranks)
    if (r.a->ndim != r.rank)
      return fail(kOp, err, len, "argument '%s' must be %lldD %s, got %lldD", r.a->name,
                  static_cast<long long>(r.rank), r.layout, static_cast<long long>(r.a->ndim));
  const int64_t B = q.sizes[0], T = q.sizes[1], Hk = q.sizes[2], K = q.sizes[3];
  const int64_t Hv = v.sizes[2], V = v.sizes[3];
  if (Hk < 1 || K < 1) {
    shape_str(q, sbuf, sizeof sbuf);
    return fail(kOp, err, len, "argument 'q' needs Hk >= 1 and K >= 1, got %s", sbuf);
  }
  for (int i = 0; i < 4; ++i)
    if (k.sizes[i] != q.sizes[i]) {
      char qb[128];
      shape_str(q, qb, sizeof qb);
      shape_str(k, sbuf, sizeof sbuf);
      return fail(kOp, err, len, "argument 'k' has shape %s, must equal q's %s [B, T, Hk, K]", sbuf, qb);
    }
  if (v.sizes[0] != B || v.sizes[1] != T) {
    shape_str(v, sbuf, sizeof sbuf);
    return fail(kOp, err, len, "argument 'v' has shape %s, its B, T must match q's (%lld, %lld)", sbuf,
                static_cast<long long>(B), static_cast<long long>(T));
  }
  if (Hv < 1 || V < 1 || Hv % Hk != 0)
    return fail(kOp, err, len, "argument 'v' has Hv=%lld value heads, must be a positive multiple of Hk=%lld",
                static_cast<long long>(Hv), static_cast<long long>(Hk));
  for (const ArgDesc* a : {&g, &beta})
    if (a->sizes[0] != B || a->sizes[1] != T || a->sizes[2] != Hv) {
      shape_str(*a, sbuf, sizeof sbuf);
      return fail(kOp, err, len, "argument '%s' has shape %s, must be [B, T, Hv] = [%lld, %lld, %lld]", a->name, sbuf,
                  static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(Hv));
    }
  if (state.sizes[0] != B || state.sizes[1] != Hv || state.sizes[2] != K || state.sizes[3] != V) {
    shape_str(state, sbuf, sizeof sbuf);
    return fail(kOp, err, len, "argument 'state' has shape %s, must be [B, Hv, K, V] = [%lld, %lld, %lld, %lld]", sbuf,
                static_cast<long long>(B), static_cast<long long>(Hv), static_cast<long long>(K),
                static_cast<long long>(V));
  }
  if (!out_resizable) {
    if (out.ndim != 4 || out.sizes[0] != B || out.sizes[1] != T || out.sizes[2] != Hv || out.sizes[3] != V) {
      shape_str(out, sbuf, sizeof sbuf);
      return fail(kOp, err, len, "argument 'out' has shape %s, must be [B, T, Hv, V] = [%lld, %lld, %lld, %lld]", sbuf,
                  static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(Hv),
                  static_cast<long long>(V));
    }
  }
  for (const ArgDesc* a : {&q, &k, &v, &g, &beta, &state, &out})
    if (!a->contiguous) return fail(kOp, err, len, "argument '%s' must be contiguous", a->name);
  // out must not overlap state (state is read while out is written).
  if (overlaps(out, state)) return fail(kOp, err, len, "argument 'out' must not alias 'state'");
  return true;
}

int64_t chunk_size() {
  const int64_t c = g_chunk.load();
  return c > 0 ? c : kDefaultChunk;
}
void set_chunk_size(int64_t c) { g_chunk.store(c < 0 ? 0 : c); }
void set_force_portable(int32_t portable) { g_force_portable.store(portable ? 1 : 0); }

bool avx2_active() { return has_avx2() && !force_portable(); }

const char* isa_name() {
  if (avx2_active()) return "avx2+fma";
  return detail::isa_name_generic();
}

void run(const GdrProblem& p, int max_threads) {
  g_last_run_slabs.store(0, std::memory_order_relaxed);
  const int64_t ntasks = p.B * p.Hv;
  if (ntasks == 0 || p.T == 0) return;
  const int64_t chunk = chunk_size();
  auto task_fn = (has_avx2() && !force_portable()) ? &detail::run_task_avx2 : &detail::run_task_generic;
  auto body = [&](int64_t begin, int64_t end) {
    g_last_run_slabs.fetch_add(1, std::memory_order_relaxed);
    for (int64_t t = begin; t < end; ++t) task_fn(p, t, chunk);
  };
#ifdef ET_USE_THREADPOOL
  int64_t nthreads = ::executorch::extension::get_thread_count();
  if (max_threads > 0) nthreads = std::min<int64_t>(nthreads, max_threads);
  if (nthreads <= 1 || ntasks == 1) {
    body(0, ntasks);
    return;
  }
  // One contiguous slab of (batch, head) tasks per thread: the tasks cost the same.
  const int64_t grain = (ntasks + nthreads - 1) / nthreads;
  ::executorch::extension::parallel_for(0, ntasks, grain, body);
#else
  (void)max_threads;
  body(0, ntasks);
#endif
}

#ifndef QWEN35_HAVE_AVX2_TU
namespace detail {
void run_task_avx2(const GdrProblem& p, int64_t task, int64_t chunk) { run_task_generic(p, task, chunk); }
}  // namespace detail
#endif

}  // namespace qwen35

extern "C" {

int qwen35_gated_delta_rule(const void* q, const void* k, const void* v, const void* g, const void* beta,
                            float* state, void* out, const int32_t* dt, const int64_t* dims,
                            int32_t use_qk_l2norm, int32_t max_threads, char* err, size_t err_len) {
  using namespace qwen35;
  const int64_t B = dims[0], T = dims[1], Hk = dims[2], Hv = dims[3], K = dims[4], V = dims[5];
  const int64_t qs[4] = {B, T, Hk, K}, vs[4] = {B, T, Hv, V}, gs[3] = {B, T, Hv}, ss[4] = {B, Hv, K, V};
  auto nb = [](int32_t dtype, const int64_t* s, int n) {
    int64_t c = dtype == kFloat32 ? 4 : 2;
    for (int i = 0; i < n; ++i) c *= s[i];
    return c;
  };
  // The Python caller has already checked shapes against the real tensors; this
  // re-checks dtypes, head grouping and aliasing with the same messages.
  const ArgDesc aq{"q", dt[0], 4, qs, true, q, nb(dt[0], qs, 4)};
  const ArgDesc ak{"k", dt[1], 4, qs, true, k, nb(dt[1], qs, 4)};
  const ArgDesc av{"v", dt[2], 4, vs, true, v, nb(dt[2], vs, 4)};
  const ArgDesc ag{"g", dt[3], 3, gs, true, g, nb(dt[3], gs, 3)};
  const ArgDesc ab{"beta", dt[4], 3, gs, true, beta, nb(dt[4], gs, 3)};
  const ArgDesc as{"state", kFloat32, 4, ss, true, state, nb(kFloat32, ss, 4)};
  const ArgDesc ao{"out", dt[5], 4, vs, true, out, nb(dt[5], vs, 4)};
  if (!validate(aq, ak, av, ag, ab, as, ao, false, err, err_len)) return 1;
  GdrProblem p{q, k, v, g, beta, state, out, dt[0], dt[1], dt[2], dt[3], dt[4], dt[5], B, T, Hk, Hv, K, V,
               use_qk_l2norm != 0};
  run(p, max_threads);
  return 0;
}

const char* qwen35_isa_name(void) { return qwen35::isa_name(); }
int64_t qwen35_chunk_size(void) { return qwen35::chunk_size(); }
void qwen35_set_chunk_size(int64_t c) { qwen35::set_chunk_size(c); }
int32_t qwen35_abi_version(void) { return 1; }
void qwen35_set_isa(int32_t portable) { qwen35::set_force_portable(portable); }
int64_t qwen35_last_run_slabs(void) { return qwen35::g_last_run_slabs.load(); }
}
