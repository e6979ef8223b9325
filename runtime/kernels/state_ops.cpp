// Validation, the work and the C ABI of qwen35::kv_cache_update and qwen35::reset_state (contract: state_ops.h).
#include "state_ops.h"

#include <cstring>
#include <initializer_list>

#include "arg_check.h"

namespace qwen35 {
namespace {

constexpr const char* kOp = "kv_cache_update";
constexpr const char* kResetOp = "reset_state";
using check::fail;
using check::overlaps;
using check::shape_str;

int64_t element_bytes(int32_t dtype) {
  switch (dtype) {
    case kFloat32: return 4;
    case kFloat16:
    case kBFloat16: return 2;
    default: return 0;
  }
}

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    case kKvInt64: return "int64";
    default: return "an unsupported dtype";
  }
}

}  // namespace

bool validate_kv_cache_update(const ArgDesc& cache, const ArgDesc& values, const ArgDesc& input_pos, char* err,
                              size_t len) {
  char sb[128], sv[128];
  if (element_bytes(cache.dtype) == 0)
    return fail(kOp, err, len, "argument 'cache' must be float32, float16 or bfloat16, got %s",
                dtype_name(cache.dtype));
  if (cache.ndim != 4) return fail(kOp, err, len, "argument 'cache' must be 4D [B, H, S, D], got %lldD",
                                   static_cast<long long>(cache.ndim));
  if (values.dtype != cache.dtype)
    return fail(kOp, err, len, "argument 'values' must have cache's dtype %s, got %s", dtype_name(cache.dtype),
                dtype_name(values.dtype));
  if (values.ndim != 4 || values.sizes[0] != cache.sizes[0] || values.sizes[1] != cache.sizes[1] ||
      values.sizes[3] != cache.sizes[3]) {
    shape_str(values, sv, sizeof sv);
    shape_str(cache, sb, sizeof sb);
    return fail(kOp, err, len, "argument 'values' has shape %s, must be [B, H, T, D] with cache's B, H, D (cache %s)",
                sv, sb);
  }
  const int64_t T = values.sizes[2], S = cache.sizes[2];
  if (input_pos.dtype != kKvInt64)
    return fail(kOp, err, len, "argument 'input_pos' must be int64, got %s", dtype_name(input_pos.dtype));
  if (input_pos.ndim != 1 || input_pos.sizes[0] != T) {
    shape_str(input_pos, sb, sizeof sb);
    return fail(kOp, err, len, "argument 'input_pos' has shape %s, must be [T] = [%lld] (values' T)", sb,
                static_cast<long long>(T));
  }
  for (const ArgDesc* a : {&cache, &values, &input_pos})
    if (!a->contiguous) return fail(kOp, err, len, "argument '%s' must be contiguous", a->name);
  if (overlaps(cache, values)) return fail(kOp, err, len, "argument 'values' must not alias 'cache'");
  if (T > 0 && input_pos.data) {
    const int64_t* pos = static_cast<const int64_t*>(input_pos.data);
    for (int64_t t = 0; t < T; ++t)
      if (pos[t] < 0 || pos[t] >= S)
        return fail(kOp, err, len, "argument 'input_pos' holds %lld at index %lld, outside the cache's [0, %lld)",
                    static_cast<long long>(pos[t]), static_cast<long long>(t), static_cast<long long>(S));
  }
  return true;
}

bool validate_reset_state(const ArgDesc& state, const ArgDesc& input_pos, char* err, size_t len) {
  char sb[128];
  if (element_bytes(state.dtype) == 0)
    return fail(kResetOp, err, len, "argument 'state' must be float32, float16 or bfloat16, got %s",
                dtype_name(state.dtype));
  if (!state.contiguous) return fail(kResetOp, err, len, "argument 'state' must be contiguous");
  if (input_pos.dtype != kKvInt64)
    return fail(kResetOp, err, len, "argument 'input_pos' must be int64, got %s", dtype_name(input_pos.dtype));
  if (input_pos.ndim != 1 || input_pos.sizes[0] < 1) {
    shape_str(input_pos, sb, sizeof sb);
    return fail(kResetOp, err, len, "argument 'input_pos' has shape %s, must be [T] with T >= 1", sb);
  }
  return true;
}

bool run_reset_state(void* state, int64_t nbytes, const int64_t* input_pos) {
  if (input_pos[0] != 0) return false;
  std::memset(state, 0, static_cast<size_t>(nbytes));  // all-zero bytes are +0.0 in every float format here
  return true;
}

void run_kv_cache_update(const KvCacheUpdate& p) {
  const int64_t row = p.D * p.element_bytes;
  char* cache = static_cast<char*>(p.cache);
  const char* values = static_cast<const char*>(p.values);
  for (int64_t bh = 0; bh < p.B * p.H; ++bh)
    for (int64_t t = 0; t < p.T; ++t)
      std::memcpy(cache + (bh * p.S + p.input_pos[t]) * row, values + (bh * p.T + t) * row, row);
}

}  // namespace qwen35

extern "C" int qwen35_reset_state(void* state, const int64_t* input_pos, const int64_t* dims, int32_t dtype,
                                  int32_t* reset, char* err, size_t err_len) {
  using namespace qwen35;
  const int64_t n = dims[0], T = dims[1];
  const int64_t ss[1] = {n}, ps[1] = {T};
  const int64_t eb = element_bytes(dtype);  // 0 for a bad dtype, which the validator rejects
  const ArgDesc as{"state", dtype, 1, ss, true, state, n * eb};
  const ArgDesc ap{"input_pos", kKvInt64, 1, ps, true, input_pos, T * 8};
  if (!validate_reset_state(as, ap, err, err_len)) return 1;
  const bool did = run_reset_state(state, n * eb, input_pos);
  if (reset) *reset = did ? 1 : 0;
  return 0;
}

extern "C" int qwen35_kv_cache_update(void* cache, const void* values, const int64_t* input_pos, const int64_t* dims,
                                      int32_t dtype, char* err, size_t err_len) {
  using namespace qwen35;
  const int64_t B = dims[0], H = dims[1], S = dims[2], T = dims[3], D = dims[4];
  const int64_t cs[4] = {B, H, S, D}, vs[4] = {B, H, T, D}, ps[1] = {T};
  const int64_t eb = element_bytes(dtype);  // 0 for a bad dtype, which the validator rejects
  const ArgDesc ac{"cache", dtype, 4, cs, true, cache, B * H * S * D * eb};
  const ArgDesc av{"values", dtype, 4, vs, true, values, B * H * T * D * eb};
  const ArgDesc ap{"input_pos", kKvInt64, 1, ps, true, input_pos, T * 8};
  if (!validate_kv_cache_update(ac, av, ap, err, err_len)) return 1;
  run_kv_cache_update(KvCacheUpdate{cache, values, input_pos, B, H, S, T, D, eb});
  return 0;
}
