// Test helpers: typed host buffers, a whole layer's host data with its forward/backward
// parameters, random inputs at realistic magnitudes, and relative errors.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "reference/host_layer.h"
#include "reference/reference_internal.h"
#include "sonicmoe/sonicmoe.h"

namespace sonicmoe::testing {

// Fresh inputs every run (DESIGN.md §6); SONICMOE_TEST_SEED=<n> replays a failing run.
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    if (const char* env = std::getenv("SONICMOE_TEST_SEED")) return uint64_t(std::strtoull(env, nullptr, 10));
    return uint64_t(std::random_device{}()) << 32 | std::random_device{}();
  }();
  return seed;
}

using reference::Buffer;
using reference::LayerData;
using reference::relative_error;
using reference::to_double;

inline LayerConfig make_config(int64_t T, int64_t d, int64_t n, int64_t E, int64_t K, DType dtype = DType::float64,
                               Activation act = Activation::swiglu, bool bias = false,
                               RoutingKind routing = RoutingKind::top_k, TokenRoundingOptions rounding = {}) {
  return LayerConfig{.shape = {T, d, n, E, K},
                     .activation = act,
                     .has_bias = bias,
                     .routing = routing,
                     .rounding = rounding,
                     .dtype = dtype};
}

}  // namespace sonicmoe::testing

namespace sonicmoe {
// Readable test names and failure messages for the option enums.
inline void PrintTo(RoundingMode m, std::ostream* os) { *os << to_string(m); }
inline void PrintTo(Activation a, std::ostream* os) { *os << to_string(a); }
inline void PrintTo(RoutingKind k, std::ostream* os) { *os << to_string(k); }
inline void PrintTo(DType t, std::ostream* os) { *os << to_string(t); }
}  // namespace sonicmoe

#define SONICMOE_ASSERT_OK(expr)                                  \
  do {                                                            \
    const ::sonicmoe::Status status_ = (expr);                    \
    ASSERT_TRUE(status_.ok()) << status_.message();               \
  } while (0)
