// qwen35::kv_cache_update -- write T new rows into a static KV cache in place, the framework-free C++ core.
//
// Contract (the same text lives in runtime/kv_cache.py and runtime/README.md, "KV cache update"):
//   kv_cache_update(Tensor(a!) cache, Tensor values, Tensor input_pos) -> Tensor
//     cache      [B, H, S, D]   float32 / float16 / bfloat16, contiguous; updated in place
//     values     [B, H, T, D]   cache's dtype, contiguous; must not overlap cache
//     input_pos  [T]            int64, each in [0, S)
//     cache[b, h, input_pos[t], :] = values[b, h, t, :]   (a later t wins when two positions repeat, as in
//                                                          index_copy_ on the CPU)
//     returns a [1] tensor of cache's dtype holding 0: ExecuTorch's out-variant pass needs a returned tensor, and a
//     mutating op returning its mutated argument cannot be functionalized.
//
// Why it exists: written as `cache.index_copy_(2, pos, v)`, export produces a functional index_put whose result is a
// fresh [B, H, S, D] tensor, and ExecuTorch then copies it back into the buffer: two whole-cache copies per attention
// layer per token (0.8B, 2048 positions: 6 layers x 2 caches x 2 x 4 MB = 96 MB per decoded token), growing with the
// context. Through a mutating custom op the buffer is written in place (auto_functionalized, which ExecuTorch turns
// back into the in-place call) and a step writes only its T rows.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gated_delta_rule.h"  // ArgDesc, DType, QWEN35_API

namespace qwen35 {

// Element type codes for ArgDesc::dtype beyond DType's floats: input_pos must be int64.
constexpr int32_t kKvInt64 = 5;

struct KvCacheUpdate {
  void* cache;
  const void* values;
  const int64_t* input_pos;
  int64_t B, H, S, T, D, element_bytes;
};

// Validate every argument (input_pos's values included) before anything is written. On failure write a message that
// starts with "qwen35::kv_cache_update: argument '<name>'" into err and return false.
bool validate_kv_cache_update(const ArgDesc& cache, const ArgDesc& values, const ArgDesc& input_pos, char* err,
                              size_t err_len);
// Copies B * H * T rows of D elements. The problem must already be validated.
void run_kv_cache_update(const KvCacheUpdate& p);

}  // namespace qwen35

extern "C" {
// Return 0 on success; otherwise write a message naming the argument into err. dims: B, H, S, T, D.
// dtype: DType of cache and values (both must have it); input_pos is int64.
QWEN35_API int qwen35_kv_cache_update(void* cache, const void* values, const int64_t* input_pos, const int64_t* dims,
                                      int32_t dtype, char* err, size_t err_len);
QWEN35_API int32_t qwen35_kv_et_kernel_registered(void);
}
