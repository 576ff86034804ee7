// The GPU routing kernels against the CPU reference run on the same fp32 logits:
//   top-K softmax (route_top_k)      indices exactly equal, scores within 1e-6 relative;
//   token rounding                   the list and its length exactly equal, scores within 1 ulp
//                                    of the reference's float(double), all three modes, tile_m
//                                    128 / 16 / 4, padding impossible, skewed and tied logits;
//   router backward                  dlogits against reference router_scores_backward (double),
//                                    relative Frobenius < 1e-2, exact zeros outside the top-K.
// Ties: logits quantized to a few values (top-K, and rounding in `down` mode, which compares
// only top-K scores) and tokens sharing identical rows (every mode: identical rows give
// identical full-softmax probabilities on both sides; permuted rows could differ in the last bit
// of a sum of exps between libm and libdevice, so they are not used where padding is compared).
// Outputs (and the rounding workspace) are poisoned before every launch, every case runs twice
// and must be bitwise identical. Argument checks run on every machine; GPU cases skip visibly
// without a Hopper GPU. SONICMOE_TEST_SEED=<n> replays a seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "reference/reference_internal.h"
#include "routing/router_backward.h"
#include "sonicmoe/gpu_routing.h"
#include "sonicmoe/reference.h"

namespace sonicmoe::gpu_testing {
namespace {

uint64_t fresh_seed() {
  if (const char* env = std::getenv("SONICMOE_TEST_SEED")) return uint64_t(std::strtoull(env, nullptr, 10));
  return uint64_t(std::random_device{}()) << 32 | std::random_device{}();
}

// ---- logits -------------------------------------------------------------------------------------
enum class Logits { normal, quantized, skewed, shared_rows };

const char* name_of(Logits kind) {
  switch (kind) {
    case Logits::normal: return "normal";
    case Logits::quantized: return "quantized";
    case Logits::skewed: return "skewed";
    case Logits::shared_rows: return "shared_rows";
  }
  return "?";
}

std::vector<float> make_logits(Logits kind, int64_t T, int64_t E, std::mt19937_64& rng) {
  std::vector<float> logits(static_cast<size_t>(T * E));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  switch (kind) {
    case Logits::normal:
      for (float& v : logits) v = normal(rng);
      break;
    case Logits::quantized: {  // 5 values: many ties inside a row and across rows
      std::uniform_int_distribution<int> level(-2, 2);
      for (float& v : logits) v = 0.5f * float(level(rng));
      break;
    }
    case Logits::skewed: {  // a few hot experts take most tokens, some experts get almost none
      std::vector<float> bias(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) bias[size_t(e)] = e % 7 == 0 ? 2.5f : e % 5 == 0 ? -3.0f : 0.0f;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; ++e) logits[size_t(t * E + e)] = normal(rng) + bias[size_t(e)];
      break;
    }
    case Logits::shared_rows: {  // every token copies one of 6 random rows: exact ties across tokens
      const int64_t P = 6;
      std::vector<float> rows(static_cast<size_t>(P * E));
      for (float& v : rows) v = normal(rng);
      std::uniform_int_distribution<int64_t> pick(0, P - 1);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = pick(rng);
        std::copy(rows.begin() + r * E, rows.begin() + (r + 1) * E, logits.begin() + t * E);
      }
      break;
    }
  }
  return logits;
}

std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if ((ia < 0) != (ib < 0)) return a == b ? 0 : INT64_MAX;  // only ±0 compare equal across signs
  return std::llabs(int64_t(ia) - int64_t(ib));
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// ---- top-K --------------------------------------------------------------------------------------
struct HostList {
  std::vector<int32_t> token, expert;
  std::vector<float> score;
};

HostList reference_top_k(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K) {
  HostList r;
  r.token.resize(size_t(T * K));
  r.expert.resize(size_t(T * K));
  r.score.resize(size_t(T * K));
  const Status s = reference::route_top_k({.num_tokens = T, .num_experts = E, .top_k = K, .logits = logits.data(),
                                           .token_idx = r.token.data(), .expert_idx = r.expert.data(),
                                           .scores = r.score.data()});
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

// K in {1, 8, 16} where K <= E, and K == E where E <= 32.
std::vector<int64_t> top_k_values(int64_t E) {
  std::vector<int64_t> ks;
  for (int64_t K : {1, 8, 16})
    if (K <= E) ks.push_back(K);
  if (E <= 32 && std::find(ks.begin(), ks.end(), E) == ks.end()) ks.push_back(E);
  return ks;
}

void check_top_k(Logits kind, int64_t T, int64_t E, int64_t K) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " logits=" << name_of(kind) << " T=" << T << " E=" << E
                                    << " K=" << K);
  std::mt19937_64 rng(seed);
  const std::vector<float> logits = make_logits(kind, T, E, rng);
  const HostList ref = reference_top_k(logits, T, E, K);

  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_token(size_t(T * K)), d_expert(size_t(T * K));
  DeviceBuffer<float> d_score(size_t(T * K));
  ASSERT_TRUE(d_logits.ok() && d_token.ok() && d_expert.ok() && d_score.ok());
  HostList runs[2];
  for (HostList& run : runs) {
    d_token.poison();
    d_expert.poison();
    d_score.poison();
    SONICMOE_ASSERT_OK_GPU(route_top_k({.num_tokens = T, .num_experts = E, .top_k = K, .logits = d_logits.get(),
                                        .token_idx = d_token.get(), .expert_idx = d_expert.get(),
                                        .scores = d_score.get()},
                                       nullptr));
    SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
    run = {d_token.download(), d_expert.download(), d_score.download()};
  }
  const HostList& got = runs[0];
  EXPECT_TRUE(got.token == ref.token) << "token_idx differs";
  int64_t bad = 0;
  for (int64_t i = 0; i < T * K && bad < 5; ++i) {
    const size_t u = size_t(i);
    const bool ok = got.expert[u] == ref.expert[u] &&
                    std::fabs(double(got.score[u]) - double(ref.score[u])) <= 1e-6 * std::fabs(double(ref.score[u]));
    if (!ok) {
      ++bad;
      ADD_FAILURE() << "entry " << i << " (token " << i / K << ", slot " << i % K << "): got expert " << got.expert[u]
                    << " score " << got.score[u] << ", reference expert " << ref.expert[u] << " score "
                    << ref.score[u];
    }
  }
  EXPECT_TRUE(same_bits(runs[0].token, runs[1].token) && same_bits(runs[0].expert, runs[1].expert) &&
              same_bits(runs[0].score, runs[1].score))
      << "two runs differ";
}

TEST(RoutingTopKGPU, MatchesReference) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  for (int64_t E : {8, 128, 256, 1000})
    for (int64_t K : top_k_values(E))
      for (int64_t T : {1, 4096})
        for (Logits kind : {Logits::normal, Logits::quantized}) check_top_k(kind, T, E, K);
}

TEST(RoutingTopKGPU, EveryExpertAndSmallShapes) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  check_top_k(Logits::quantized, 7, 32, 32);  // K == E == 32: every lane a slot
  check_top_k(Logits::normal, 33, 33, 32);    // one expert past a full warp
  check_top_k(Logits::quantized, 5, 1, 1);
  check_top_k(Logits::normal, 3, 1024, 32);   // the largest supported row
  check_top_k(Logits::skewed, 4096, 64, 4);
}

// ---- token rounding -----------------------------------------------------------------------------
struct RoundedList {
  HostList list;
  int64_t num_routed = -1;
};

RoundedList reference_token_rounding(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K,
                                     RoundingMode mode, int32_t M) {
  const int64_t capacity = token_rounding_capacity(T, E, K, M);
  RoundedList r;
  r.list.token.resize(size_t(capacity));
  r.list.expert.resize(size_t(capacity));
  r.list.score.resize(size_t(capacity));
  const Status s = reference::route_token_rounding({.num_tokens = T, .num_experts = E, .top_k = K,
                                                    .options = {mode, M}, .logits = logits.data(),
                                                    .capacity = capacity, .token_idx = r.list.token.data(),
                                                    .expert_idx = r.list.expert.data(),
                                                    .scores = r.list.score.data(), .num_routed = &r.num_routed});
  EXPECT_TRUE(s.ok()) << s.message();
  r.list.token.resize(size_t(r.num_routed));
  r.list.expert.resize(size_t(r.num_routed));
  r.list.score.resize(size_t(r.num_routed));
  return r;
}

void check_token_rounding(Logits kind, int64_t T, int64_t E, int64_t K, RoundingMode mode, int32_t M) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " logits=" << name_of(kind) << " T=" << T << " E=" << E
                                    << " K=" << K << " mode=" << to_string(mode) << " tile_m=" << M);
  std::mt19937_64 rng(seed);
  const std::vector<float> logits = make_logits(kind, T, E, rng);
  const RoundedList ref = reference_token_rounding(logits, T, E, K, mode, M);

  const int64_t capacity = token_rounding_capacity(T, E, K, M);
  const int64_t workspace_bytes = token_rounding_workspace_bytes(T, E, K);
  ASSERT_GT(workspace_bytes, 0);
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_token(static_cast<size_t>(capacity)), d_expert(static_cast<size_t>(capacity));
  DeviceBuffer<float> d_score(static_cast<size_t>(capacity));
  DeviceBuffer<int64_t> d_num_routed(1);
  DeviceBuffer<char> d_workspace(static_cast<size_t>(workspace_bytes));
  ASSERT_TRUE(d_logits.ok() && d_token.ok() && d_expert.ok() && d_score.ok() && d_num_routed.ok() &&
              d_workspace.ok());
  RoundedList runs[2];
  for (RoundedList& run : runs) {
    d_token.poison();
    d_expert.poison();
    d_score.poison();
    d_num_routed.poison();
    d_workspace.poison();  // every workspace byte the kernels read must be written first
    SONICMOE_ASSERT_OK_GPU(route_token_rounding(
        {.num_tokens = T, .num_experts = E, .top_k = K, .options = {mode, M}, .logits = d_logits.get(),
         .capacity = capacity, .token_idx = d_token.get(), .expert_idx = d_expert.get(), .scores = d_score.get(),
         .num_routed = d_num_routed.get()},
        d_workspace.get(), workspace_bytes, nullptr));
    SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
    run.num_routed = d_num_routed.download()[0];
    ASSERT_GE(run.num_routed, 0);
    ASSERT_LE(run.num_routed, capacity);
    run.list = {d_token.download(), d_expert.download(), d_score.download()};
    for (auto* v : {&run.list.token, &run.list.expert}) v->resize(size_t(run.num_routed));
    run.list.score.resize(size_t(run.num_routed));
  }
  const RoundedList& got = runs[0];
  ASSERT_EQ(got.num_routed, ref.num_routed) << "list length differs";
  int64_t bad = 0;
  for (int64_t i = 0; i < ref.num_routed && bad < 5; ++i) {
    const size_t u = size_t(i);
    if (got.list.token[u] != ref.list.token[u] || got.list.expert[u] != ref.list.expert[u] ||
        ulp_distance(got.list.score[u], ref.list.score[u]) > 1) {
      ++bad;
      ADD_FAILURE() << "entry " << i << ": got (token " << got.list.token[u] << ", expert " << got.list.expert[u]
                    << ", score " << got.list.score[u] << "), reference (token " << ref.list.token[u] << ", expert "
                    << ref.list.expert[u] << ", score " << ref.list.score[u] << ")";
    }
  }
  EXPECT_EQ(runs[0].num_routed, runs[1].num_routed) << "two runs differ";
  EXPECT_TRUE(same_bits(runs[0].list.token, runs[1].list.token) &&
              same_bits(runs[0].list.expert, runs[1].list.expert) &&
              same_bits(runs[0].list.score, runs[1].list.score))
      << "two runs differ";
}

constexpr RoundingMode kModes[] = {RoundingMode::nearest, RoundingMode::up, RoundingMode::down};

TEST(RoutingTokenRoundingGPU, MatchesReferenceAllModesAndTiles) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  for (RoundingMode mode : kModes)
    for (int32_t M : {128, 16, 4}) check_token_rounding(Logits::normal, 4096, 128, 8, mode, M);
}

TEST(RoutingTokenRoundingGPU, SkewedLogits) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  for (RoundingMode mode : kModes)
    for (int32_t M : {128, 16}) check_token_rounding(Logits::skewed, 4096, 128, 8, mode, M);
}

TEST(RoutingTokenRoundingGPU, TiesResolveLikeTheReference) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  // Identical rows: whole groups of equal keys in both the drop and the pad selections.
  for (RoundingMode mode : kModes)
    for (int32_t M : {128, 16}) check_token_rounding(Logits::shared_rows, 4096, 64, 4, mode, M);
  // Quantized logits: drops compare top-K scores only, which tie exactly on both sides.
  for (int32_t M : {128, 16, 4}) check_token_rounding(Logits::quantized, 4096, 32, 4, RoundingMode::down, M);
}

TEST(RoutingTokenRoundingGPU, PaddingImpossibleDrops) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  // T = 40 < tile_m: `up` cannot pad any expert (fewer than `missing` tokens outside it): drops.
  for (RoundingMode mode : kModes) check_token_rounding(Logits::normal, 40, 4, 3, mode, 64);
  // K == E: no token is outside any expert.
  for (RoundingMode mode : kModes) check_token_rounding(Logits::normal, 40, 4, 4, mode, 16);
  // One token.
  for (RoundingMode mode : kModes) check_token_rounding(Logits::normal, 1, 8, 2, mode, 4);
}

TEST(RoutingTokenRoundingGPU, WideRowsAndLargeK) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  check_token_rounding(Logits::normal, 2048, 1000, 8, RoundingMode::nearest, 16);
  check_token_rounding(Logits::normal, 4096, 256, 16, RoundingMode::up, 128);
  check_token_rounding(Logits::normal, 3000, 32, 32, RoundingMode::nearest, 128);  // K == E == 32
  check_token_rounding(Logits::normal, 5000, 16, 2, RoundingMode::up, 1000);       // tile_m > tokens per expert
}

// ---- router backward ----------------------------------------------------------------------------
struct BackwardCase {
  RoutingKind kind;
  HostList list;
  std::vector<float> grad_scores;
};

void check_router_backward(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K, const BackwardCase& c,
                           int64_t capacity, const char* label) {
  SCOPED_TRACE(::testing::Message() << label << " T=" << T << " E=" << E << " K=" << K
                                    << " entries=" << c.list.token.size());
  const int64_t n = int64_t(c.list.token.size());
  const std::vector<double> logits_d = widen(logits), grad_d = widen(c.grad_scores);
  const std::vector<double> ref = reference::detail::router_scores_backward(
      logits_d.data(), T, E, K, c.list.token.data(), c.list.expert.data(), grad_d.data(), n);

  // Device arrays hold `capacity` entries; those past the list's length must not be read.
  auto padded = [&](auto v, auto fill) {
    v.resize(size_t(capacity), fill);
    return v;
  };
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_token(padded(c.list.token, int32_t(T))), d_expert(padded(c.list.expert, int32_t(0)));
  DeviceBuffer<float> d_score(padded(c.list.score, 0.0f)), d_grad(padded(c.grad_scores, 0.0f));
  DeviceBuffer<int32_t> d_num_routed(std::vector<int32_t>{int32_t(n)});
  DeviceBuffer<bfloat16> d_grad_logits(size_t(T * E));
  ASSERT_TRUE(d_logits.ok() && d_token.ok() && d_expert.ok() && d_score.ok() && d_grad.ok() && d_num_routed.ok() &&
              d_grad_logits.ok());
  std::vector<bfloat16> runs[2];
  for (auto& run : runs) {
    d_grad_logits.poison();
    SONICMOE_ASSERT_OK_GPU(routing::router_backward({.num_tokens = T,
                                                     .num_experts = E,
                                                     .top_k = K,
                                                     .kind = c.kind,
                                                     .capacity = capacity,
                                                     .num_routed = d_num_routed.get(),
                                                     .token_idx = d_token.get(),
                                                     .expert_idx = d_expert.get(),
                                                     .scores = d_score.get(),
                                                     .grad_scores = d_grad.get(),
                                                     .logits = d_logits.get(),
                                                     .grad_logits = d_grad_logits.get()},
                                                    nullptr));
    SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
    run = d_grad_logits.download();
  }
  const std::vector<double> got = to_double(runs[0]);
  EXPECT_LT(relative_frobenius(got, ref), 1e-2);
  EXPECT_TRUE(bitwise_equal(runs[0], runs[1])) << "two runs differ";
  if (c.kind == RoutingKind::top_k) {
    // Outside each token's K experts the gradient is exactly zero (+0, all bits clear).
    std::vector<char> routed(size_t(T * E), 0);
    for (int64_t i = 0; i < n; ++i) routed[size_t(int64_t(c.list.token[size_t(i)]) * E + c.list.expert[size_t(i)])] = 1;
    int64_t nonzero = 0;
    for (int64_t i = 0; i < T * E; ++i)
      if (!routed[size_t(i)] && runs[0][size_t(i)].bits != 0) ++nonzero;
    EXPECT_EQ(nonzero, 0) << "elements outside the top-K are not exactly zero";
  }
}

std::vector<float> random_grad(size_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> g(count);
  for (float& v : g) v = normal(rng);
  return g;
}

TEST(RouterBackwardGPU, TopKMatchesReference) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t E : {8, 128, 256, 1000})
    for (int64_t K : top_k_values(E))
      for (int64_t T : {1, 4096}) {
        const std::vector<float> logits = make_logits(Logits::normal, T, E, rng);
        BackwardCase c{RoutingKind::top_k, reference_top_k(logits, T, E, K), random_grad(size_t(T * K), rng)};
        check_router_backward(logits, T, E, K, c, T * K, "top_k");
      }
}

TEST(RouterBackwardGPU, TokenRoundingMatchesReference) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  struct Shape {
    int64_t T, E, K;
    RoundingMode mode;
    int32_t M;
  };
  for (const Shape& s : {Shape{4096, 128, 8, RoundingMode::up, 16}, Shape{4096, 128, 8, RoundingMode::nearest, 128},
                         Shape{4096, 128, 8, RoundingMode::down, 128}, Shape{2048, 1000, 8, RoundingMode::up, 4},
                         Shape{1000, 32, 32, RoundingMode::nearest, 16}, Shape{40, 4, 3, RoundingMode::up, 64},
                         Shape{1, 8, 2, RoundingMode::up, 4}}) {
    const std::vector<float> logits = make_logits(Logits::skewed, s.T, s.E, rng);
    const RoundedList rounded = reference_token_rounding(logits, s.T, s.E, s.K, s.mode, s.M);
    BackwardCase c{RoutingKind::token_rounding, rounded.list, random_grad(rounded.list.token.size(), rng)};
    check_router_backward(logits, s.T, s.E, s.K, c, token_rounding_capacity(s.T, s.E, s.K, s.M),
                          to_string(s.mode));
  }
}

// ---- host argument checks (no CUDA call is reached) --------------------------------------------
void expect_invalid(const Status& s, const char* argument) {
  EXPECT_EQ(s.code(), StatusCode::invalid_argument) << s.message();
  EXPECT_EQ(s.argument(), argument) << s.message();
  EXPECT_FALSE(s.rule().empty());
}

TEST(RoutingGPUArguments, TopKRejectsBadArguments) {
  // Host arrays stand in for device pointers: validation fails before anything is read.
  alignas(16) static float logits[8];
  alignas(16) static int32_t idx[8];
  alignas(16) static float scores[8];
  const TopKParams ok{.num_tokens = 2, .num_experts = 64, .top_k = 4, .logits = logits, .token_idx = idx,
                      .expert_idx = idx, .scores = scores};
  TopKParams p = ok;
  p.top_k = 33;
  expect_invalid(route_top_k(p, nullptr), "top_k");
  p = ok;
  p.num_experts = 1025;
  expect_invalid(route_top_k(p, nullptr), "num_experts");
  p = ok;
  p.top_k = 65;
  expect_invalid(route_top_k(p, nullptr), "top_k");
  p = ok;
  p.num_tokens = 0;
  expect_invalid(route_top_k(p, nullptr), "num_tokens");
  p = ok;
  p.logits = nullptr;
  expect_invalid(route_top_k(p, nullptr), "logits");
  p = ok;
  p.scores = reinterpret_cast<float*>(reinterpret_cast<char*>(scores) + 2);
  expect_invalid(route_top_k(p, nullptr), "scores");
}

TEST(RoutingGPUArguments, TokenRoundingRejectsBadArguments) {
  alignas(16) static float logits[8];
  alignas(16) static int32_t idx[8];
  alignas(16) static float scores[8];
  alignas(16) static int64_t num_routed[1];
  alignas(16) static char workspace[16];
  const int64_t T = 64, E = 16, K = 2;
  const int32_t M = 8;
  const int64_t bytes = token_rounding_workspace_bytes(T, E, K);
  EXPECT_GE(bytes, T * E);  // at least the state bytes
  EXPECT_EQ(token_rounding_workspace_bytes(0, E, K), 0);
  const TokenRoundingParams ok{.num_tokens = T, .num_experts = E, .top_k = K,
                               .options = {RoundingMode::nearest, M}, .logits = logits,
                               .capacity = token_rounding_capacity(T, E, K, M), .token_idx = idx,
                               .expert_idx = idx, .scores = scores, .num_routed = num_routed};
  TokenRoundingParams p = ok;
  p.capacity -= 1;
  expect_invalid(route_token_rounding(p, workspace, bytes, nullptr), "capacity");
  p = ok;
  p.options.tile_m = 0;
  expect_invalid(route_token_rounding(p, workspace, bytes, nullptr), "options.tile_m");
  p = ok;
  p.num_routed = nullptr;
  expect_invalid(route_token_rounding(p, workspace, bytes, nullptr), "num_routed");
  p = ok;
  p.top_k = 33;
  p.num_experts = 64;
  p.capacity = token_rounding_capacity(T, 64, 33, M);
  expect_invalid(route_token_rounding(p, workspace, token_rounding_workspace_bytes(T, 64, 33), nullptr), "top_k");
  expect_invalid(route_token_rounding(ok, workspace, bytes - 1, nullptr), "workspace_bytes");
  expect_invalid(route_token_rounding(ok, nullptr, bytes, nullptr), "workspace");
  expect_invalid(route_token_rounding(ok, workspace + 4, bytes, nullptr), "workspace");
}

TEST(RoutingGPUArguments, RouterBackwardRejectsBadArguments) {
  alignas(16) static float values[8];
  alignas(16) static int32_t idx[8];
  alignas(16) static bfloat16 grad_logits[8];
  const routing::RouterBackwardParams ok{.num_tokens = 4,
                                         .num_experts = 8,
                                         .top_k = 2,
                                         .kind = RoutingKind::top_k,
                                         .capacity = 8,
                                         .num_routed = idx,
                                         .token_idx = idx,
                                         .expert_idx = idx,
                                         .scores = values,
                                         .grad_scores = values,
                                         .logits = values,
                                         .grad_logits = grad_logits};
  routing::RouterBackwardParams p = ok;
  p.kind = RoutingKind::general;
  expect_invalid(routing::router_backward(p, nullptr), "kind");
  p = ok;
  p.capacity = 7;
  expect_invalid(routing::router_backward(p, nullptr), "capacity");
  p = ok;
  p.grad_logits = nullptr;
  expect_invalid(routing::router_backward(p, nullptr), "grad_logits");
  p = ok;
  p.top_k = 9;
  expect_invalid(routing::router_backward(p, nullptr), "top_k");
  p = ok;
  p.kind = RoutingKind::token_rounding;
  p.logits = nullptr;
  expect_invalid(routing::router_backward(p, nullptr), "logits");
  p = ok;
  p.kind = RoutingKind::token_rounding;
  p.num_experts = 2000;
  expect_invalid(routing::router_backward(p, nullptr), "num_experts");
}

}  // namespace
}  // namespace sonicmoe::gpu_testing
