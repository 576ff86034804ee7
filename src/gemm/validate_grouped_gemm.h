// src/gemm/validate_grouped_gemm.h — host-only argument checks shared by the grouped GEMM
// launchers. No CUDA call happens here, so the checks run (and are tested) on machines without
// a GPU.
#pragma once

#include <cstdint>
#include <string>

#include "sonicmoe/status.h"

namespace sonicmoe::gemm::detail {

inline Status require_pointer(const void* p, const char* name, uintptr_t alignment) {
  if (p == nullptr) return Status::invalid_argument(name, "must not be null");
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0)
    return Status::invalid_argument(name, "must be " + std::to_string(alignment) + "-byte aligned (got address " +
                                              std::to_string(reinterpret_cast<uintptr_t>(p)) + ")");
  return Status();
}

inline Status require_optional_pointer(const void* p, const char* name, uintptr_t alignment) {
  return p == nullptr ? Status() : require_pointer(p, name, alignment);
}

// Feature sizes: TMA and the 16-byte cp.async need rows of whole 16-byte chunks; the kernel
// indexes columns with 32-bit ints.
inline Status require_feature_size(int64_t v, const char* name) {
  if (v <= 0 || v % 8 != 0 || v > (int64_t(1) << 28))
    return Status::invalid_argument(name, "must be a positive multiple of 8 and <= 2^28 (got " + std::to_string(v) +
                                              ")");
  return Status();
}

inline Status require_count(int64_t v, const char* name, int64_t lo) {
  if (v < lo || v > int64_t(INT32_MAX) - 1)
    return Status::invalid_argument(name, "must be in [" + std::to_string(lo) + ", 2^31 - 2] (got " +
                                              std::to_string(v) + ")");
  return Status();
}

}  // namespace sonicmoe::gemm::detail
