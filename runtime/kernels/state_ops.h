// The state ops, the framework-free C++ core: qwen35::kv_cache_update writes T new rows into a static KV cache in
// place; qwen35::reset_state zeroes a state buffer in place when a sequence starts.
//
// Contract (the same text lives in runtime/state_ops.py and runtime/README.md, "State ops"):
//   kv_cache_update(Tensor(a!) cache, Tensor values, Tensor input_pos) -> Tensor
//     cache      [B, H, S, D]   float32 / float16 / bfloat16, contiguous; updated in place
//     values     [B, H, T, D]   cache's dtype, contiguous; must not overlap cache
//     input_pos  [T]            int64, each in [0, S)
//     cache[b, h, input_pos[t], :] = values[b, h, t, :]   (a later t wins when two positions repeat, as in
//                                                          index_copy_ on the CPU)
//     returns a [1] tensor of cache's dtype holding 0: ExecuTorch's out-variant pass needs a returned tensor, and a
//     mutating op returning its mutated argument cannot be functionalized.
//
//   reset_state(Tensor(a!) state, Tensor input_pos) -> Tensor
//     state      any shape, float32 / float16 / bfloat16, contiguous
//     input_pos  [T] int64, T >= 1
//     if input_pos[0] == 0: every element of state becomes +0.0 (NaN and inf included); otherwise state is untouched.
//     returns a [1] tensor of state's dtype holding 0, for the same reason.
//
// Why kv_cache_update exists: written as `cache.index_copy_(2, pos, v)`, export produces a functional index_put whose result is a
// fresh [B, H, S, D] tensor, and ExecuTorch then copies it back into the buffer: two whole-cache copies per attention
// layer per token (0.8B, 2048 positions: 6 layers x 2 caches x 2 x 4 MB = 96 MB per decoded token), growing with the
// context. Through a mutating custom op the buffer is written in place (auto_functionalized, which ExecuTorch turns
// back into the in-place call) and a step writes only its T rows.
// Why reset_state exists: `forward` starts a sequence at position 0 by zeroing every state buffer. Written as
// buf.copy_(torch.where(input_pos[:1] == 0, 0, buf)) that is, on every `forward` call (every prefill chunk), a
// broadcasting portable `where` over each buffer into a new tensor plus a copy back: 49 buffers, 42 MB at 0.8B, in
// every chunk. The op writes only when the chunk starts a sequence, and in place.
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

// "qwen35::reset_state: argument '<name>' ..." on failure.
bool validate_reset_state(const ArgDesc& state, const ArgDesc& input_pos, char* err, size_t err_len);
// Zeroes nbytes at state when input_pos[0] == 0; returns whether it did. Validated already.
bool run_reset_state(void* state, int64_t nbytes, const int64_t* input_pos);

}  // namespace qwen35

extern "C" {
// Return 0 on success; otherwise write a message naming the argument into err. dims: B, H, S, T, D.
// dtype: DType of cache and values (both must have it); input_pos is int64.
QWEN35_API int qwen35_kv_cache_update(void* cache, const void* values, const int64_t* input_pos, const int64_t* dims,
                                      int32_t dtype, char* err, size_t err_len);
// dims: the element count of state and T; dtype: state's DType. *reset (may be null) tells whether it zeroed.
QWEN35_API int qwen35_reset_state(void* state, const int64_t* input_pos, const int64_t* dims, int32_t dtype,
                                  int32_t* reset, char* err, size_t err_len);
QWEN35_API int32_t qwen35_state_et_kernels_registered(void);
}
