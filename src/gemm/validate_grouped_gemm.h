// src/gemm/validate_grouped_gemm.h — host-only argument checks shared by the grouped GEMM
// launchers. No CUDA call happens here, so the checks run (and are tested) on machines without
// a GPU.
#pragma once

#include <cstdint>
#include <string>

#include "core/device_checks.h"
#include "sonicmoe/status.h"

namespace sonicmoe::gemm::detail {

using sonicmoe::detail::require_feature_size;
using sonicmoe::detail::require_optional_pointer;
using sonicmoe::detail::require_pointer;

inline Status require_count(int64_t v, const char* name, int64_t lo) {
  if (v < lo || v > int64_t(INT32_MAX) - 1)
    return Status::invalid_argument(name, "must be in [" + std::to_string(lo) + ", 2^31 - 2] (got " +
                                              std::to_string(v) + ")");
  return Status();
}

// The weight-gradient TMA stores see every expert's gradient as the rows of one 2-D tensor
// ([E * rows, cols], EpilogueWeightGradTma) whose row count and row indices are 32-bit.
inline Status require_gradient_rows(int64_t experts, int64_t rows_per_expert, const char* name) {
  if (experts * rows_per_expert > int64_t(INT32_MAX))
    return Status::invalid_argument(name, "num_experts x " + std::string(name) + " must be < 2^31 (got " +
                                              std::to_string(experts) + " x " + std::to_string(rows_per_expert) + ")");
  return Status();
}

}  // namespace sonicmoe::gemm::detail
