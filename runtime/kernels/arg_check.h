// Argument-error helpers shared by the validators of every qwen35 op (gated_delta_rule.cpp, wq.cpp).
#pragma once

#include <cstdarg>
#include <cstddef>
#include <cstdio>

#include "gated_delta_rule.h"  // ArgDesc

namespace qwen35 {
namespace check {

// Write "qwen35::<op>: <message>" into err (when given) and return false, so a validator can `return fail(...)`.
inline bool fail(const char* op, char* err, size_t len, const char* fmt, ...) {
  if (err && len) {
    int n = std::snprintf(err, len, "qwen35::%s: ", op);
    if (n < 0) n = 0;
    va_list ap;
    va_start(ap, fmt);
    if (static_cast<size_t>(n) < len) std::vsnprintf(err + n, len - n, fmt, ap);
    va_end(ap);
  }
  return false;
}

// "[d0, d1, ...]" of a's sizes, truncated to len.
inline void shape_str(const ArgDesc& a, char* buf, size_t len) {
  size_t pos = std::snprintf(buf, len, "[");
  for (int64_t i = 0; i < a.ndim && pos < len; ++i)
    pos += std::snprintf(buf + pos, len - pos, i ? ", %lld" : "%lld", static_cast<long long>(a.sizes[i]));
  if (pos < len) std::snprintf(buf + pos, len - pos, "]");
}

// Whether the byte ranges of two non-empty arguments intersect.
inline bool overlaps(const ArgDesc& a, const ArgDesc& b) {
  const char* a0 = static_cast<const char*>(a.data);
  const char* b0 = static_cast<const char*>(b.data);
  return a0 && b0 && a.nbytes > 0 && b.nbytes > 0 && a0 < b0 + b.nbytes && b0 < a0 + a.nbytes;
}

}  // namespace check
}  // namespace qwen35
