// src/core/device_checks.h — the host-side argument checks shared by every GPU entry point
// (routing, gemm, combine, moe) and the conversion of CUDA errors into a Status. Host code only:
// nothing here touches the GPU, so the checks run (and are tested) on machines without one.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/validate.h"
#include "sonicmoe/status.h"

namespace sonicmoe::detail {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status();
  return Status::error(StatusCode::cuda_error, concat(what, ": ", cudaGetErrorString(err)));
}

// Null passes; otherwise the address must be a multiple of `alignment`.
inline Status require_aligned(const void* p, const char* name, uintptr_t alignment) {
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0)
    return Status::invalid_argument(name, concat("must be ", alignment, "-byte aligned (got address ",
                                                 reinterpret_cast<uintptr_t>(p), ")"));
  return Status();
}

inline Status require_pointer(const void* p, const char* name, uintptr_t alignment) {
  if (p == nullptr) return Status::invalid_argument(name, "must not be null");
  return require_aligned(p, name, alignment);
}

inline Status require_optional_pointer(const void* p, const char* name, uintptr_t alignment) {
  return p == nullptr ? Status() : require_pointer(p, name, alignment);
}

inline Status require_range(int64_t value, const char* name, int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    return Status::invalid_argument(name, concat("must be in [", lo, ", ", hi, "] (got ", value, ")"));
  return Status();
}

// Feature sizes (d, n, columns): TMA, the 16-byte cp.async and the 16-byte vector loads need rows
// of whole 16-byte chunks of bf16; kernels index columns with 32-bit ints.
inline Status require_feature_size(int64_t v, const char* name) {
  if (v <= 0 || v % 8 != 0 || v > (int64_t(1) << 28))
    return Status::invalid_argument(name, concat("must be a positive multiple of 8 and <= 2^28 (got ", v, ")"));
  return Status();
}

}  // namespace sonicmoe::detail
