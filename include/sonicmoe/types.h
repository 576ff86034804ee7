// sonicmoe/types.h — element types, layer shape and options shared by every entry point.
//
// Glossary (docs/glossary.md has the long form):
//   T  num_tokens    tokens in the microbatch
//   d  hidden        model size
//   n  intermediate  expert intermediate size
//   E  num_experts
//   K  top_k         experts per token for top-K routing
//   TK num_routed    routed (token, expert) pairs: T*K for top-K, any count for general routing
#pragma once

#include <cstdint>
#include <cstring>

namespace sonicmoe {

// bfloat16 storage type, bit-compatible with CUDA's __nv_bfloat16 (the upper 16 bits of an
// IEEE float). Host code converts with round-to-nearest-even, the rounding the GPU uses.
struct bfloat16 {
  uint16_t bits = 0;

  bfloat16() = default;
  explicit bfloat16(float value) : bits(round_from_float(value)) {}
  explicit operator float() const {
    uint32_t word = uint32_t(bits) << 16;
    float value;
    std::memcpy(&value, &word, sizeof(value));
    return value;
  }
  static bfloat16 from_bits(uint16_t raw) {
    bfloat16 b;
    b.bits = raw;
    return b;
  }
  static uint16_t round_from_float(float value) {
    uint32_t word;
    std::memcpy(&word, &value, sizeof(word));
    if ((word & 0x7fffffffu) > 0x7f800000u) return uint16_t((word >> 16) | 0x0040u);  // quiet NaN
    word += 0x7fffu + ((word >> 16) & 1u);  // round to nearest, ties to even
    return uint16_t(word >> 16);
  }
};
static_assert(sizeof(bfloat16) == 2, "bfloat16 must be 2 bytes");

// Element type of x, the weights, H, the output and the gradients. The GPU layer takes bfloat16;
// the CPU reference also takes float32 and float64 (float64 for finite-difference checks).
// Router logits and scores are always float32; indices are always int32.
enum class DType : uint8_t { bfloat16, float32, float64 };

inline int64_t dtype_size(DType t) { return t == DType::bfloat16 ? 2 : t == DType::float32 ? 4 : 8; }
const char* to_string(DType t);

// Expert activation. Gated activations read H with 2n columns, gate and up interleaved
// (column 2j is gate j, column 2j+1 is up j, the layout of W1's rows); non-gated ones read H with
// n columns.
enum class Activation : uint8_t {
  swiglu,        // A_j = silu(H_2j) * H_2j+1
  relu_squared,  // A_j = max(H_j, 0)^2
  gelu_tanh,     // A_j = 0.5 H_j (1 + tanh(sqrt(2/pi) (H_j + 0.044715 H_j^3)))
};
const char* to_string(Activation a);
inline bool is_gated(Activation a) { return a == Activation::swiglu; }

enum class RoutingKind : uint8_t {
  top_k,           // token choice: K largest logits, softmax over those K (training and inference)
  token_rounding,  // top-K, then every expert's count rounded to a multiple of tile_m (training)
  general,         // caller-supplied (token, expert, score) lists, any number of experts per token
};
const char* to_string(RoutingKind k);

// Token rounding (DESIGN.md §3): how an expert's count f is moved to a multiple of tile_m.
enum class RoundingMode : uint8_t {
  nearest,  // pad when ceil(f) - f < f - floor(f), otherwise drop (a tie drops)
  up,       // always pad up to the next multiple
  down,     // always drop down to the previous multiple
};
const char* to_string(RoundingMode m);

struct TokenRoundingOptions {
  RoundingMode mode = RoundingMode::nearest;
  int32_t tile_m = 128;  // the grouped GEMM's M tile
};

struct LayerShape {
  int64_t num_tokens = 0;    // T
  int64_t hidden = 0;        // d, a multiple of 8 (16-byte bf16 rows for TMA)
  int64_t intermediate = 0;  // n, a multiple of 8
  int64_t num_experts = 0;   // E
  int64_t top_k = 0;         // K, 1 <= K <= E (for general routing: the K that the router used,
                             //   only checked against E)
};

struct LayerConfig {
  LayerShape shape;
  Activation activation = Activation::swiglu;
  bool has_bias = false;  // b1 [E, h_cols] and b2 [E, d]
  RoutingKind routing = RoutingKind::top_k;
  TokenRoundingOptions rounding;  // used when routing == token_rounding
  DType dtype = DType::bfloat16;
};

// Columns of H (and rows of W1 per expert): 2n for gated activations, n otherwise.
inline int64_t h_cols(const LayerConfig& c) {
  return is_gated(c.activation) ? 2 * c.shape.intermediate : c.shape.intermediate;
}

}  // namespace sonicmoe
