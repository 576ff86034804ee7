// The GPU routing metadata (build_routing_metadata) bitwise against the CPU reference, and the
// device routing-list check (check_routing_list) against a host mirror of validate_routing_list.
// Lists: top-K, general with 0..E experts per token, all entries on one expert, empty lists and
// single entries, E in {1, 8, 256, 1024}, a list long enough to grow the chunk size, a device
// length below the capacity (entries past it must stay poisoned), and corrupt expert/token ids
// (clamped, never out of bounds). Argument checks run on every machine; GPU cases skip visibly
// without a Hopper GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "gpu/ragged_routing.h"
#include "sonicmoe/gpu_routing.h"
#include "sonicmoe/reference.h"

namespace sonicmoe::gpu_testing {
namespace {

constexpr int32_t kPoison = -1;  // 0xFFFFFFFF, what DeviceBuffer::poison() leaves in an int32

struct HostList {
  std::vector<int32_t> token, expert;
  std::vector<float> score;
  int64_t size() const { return int64_t(token.size()); }
  void push(int32_t t, int32_t e, float s) {
    token.push_back(t);
    expert.push_back(e);
    score.push_back(s);
  }
};

// Top-K: K distinct experts per token in random slot order.
HostList top_k_list(int64_t T, int64_t E, int64_t K, std::mt19937_64& rng) {
  HostList list;
  std::vector<int32_t> experts(static_cast<size_t>(E));
  std::iota(experts.begin(), experts.end(), 0);
  std::uniform_real_distribution<float> uniform(0.01f, 1.0f);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int64_t k = 0; k < K; ++k) list.push(int32_t(t), experts[size_t(k)], uniform(rng));
  }
  return list;
}

// General: each token 0..max_per_token distinct experts, ascending (token rounding's order) or
// shuffled.
HostList general_list(int64_t T, int64_t E, int64_t max_per_token, bool ascending, std::mt19937_64& rng) {
  HostList list;
  std::vector<int32_t> experts(static_cast<size_t>(E));
  std::iota(experts.begin(), experts.end(), 0);
  std::uniform_int_distribution<int64_t> how_many(0, max_per_token);
  std::uniform_real_distribution<float> uniform(0.01f, 1.0f);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(experts.begin(), experts.end(), rng);
    const int64_t c = how_many(rng);
    std::vector<int32_t> pick(experts.begin(), experts.begin() + c);
    if (ascending) std::sort(pick.begin(), pick.end());
    for (int32_t e : pick) list.push(int32_t(t), e, uniform(rng));
  }
  return list;
}

struct Metadata {
  std::vector<int32_t> offsets, gather, scatter, reverse;
};

Metadata reference_metadata(const HostList& list, int64_t T, int64_t E) {
  Metadata m;
  m.offsets.assign(size_t(E + 1), kPoison);
  m.gather.assign(size_t(list.size()), kPoison);
  m.scatter.assign(size_t(list.size()), kPoison);
  m.reverse.assign(size_t(list.size()), kPoison);
  const RoutingMetadataParams p{
      .num_tokens = T, .num_experts = E,
      .routing = {.num_routed = list.size(), .token_idx = list.token.data(), .expert_idx = list.expert.data(),
                  .scores = list.score.data()},
      .metadata = {.expert_offsets = m.offsets.data(), .gather_idx = m.gather.data(), .scatter_idx = m.scatter.data(),
                   .reverse_idx = m.reverse.data()}};
  const Status s = reference::build_routing_metadata(p);
  EXPECT_TRUE(s.ok()) << s.message();
  return m;
}

// Runs the GPU build on `list` padded to `capacity` with `tail` entries (garbage the kernels must
// not read), with the device length `device_length` (< 0: no device scalar). Outputs and the
// workspace are poisoned first. Returns the downloaded metadata.
Metadata gpu_metadata(const HostList& list, int64_t T, int64_t E, int64_t capacity, int64_t device_length,
                      std::mt19937_64& rng) {
  std::vector<int32_t> token = list.token, expert = list.expert;
  std::uniform_int_distribution<int32_t> garbage(-7, int32_t(E + 7));
  while (int64_t(token.size()) < capacity) {
    token.push_back(garbage(rng));
    expert.push_back(garbage(rng));
  }
  DeviceBuffer<int32_t> d_token(token), d_expert(expert), d_offsets(static_cast<size_t>(E + 1)), d_gather(static_cast<size_t>(capacity)),
      d_scatter(static_cast<size_t>(capacity)), d_reverse(static_cast<size_t>(capacity));
  DeviceBuffer<int64_t> d_length(std::vector<int64_t>{device_length});
  const int64_t ws_bytes = routing_metadata_workspace_bytes(capacity, E);
  DeviceBuffer<uint8_t> d_ws(static_cast<size_t>(ws_bytes));
  for (auto* b : {&d_offsets, &d_gather, &d_scatter, &d_reverse}) b->poison();
  d_ws.poison();
  const RoutingMetadataParams p{
      .num_tokens = T, .num_experts = E,
      .routing = {.num_routed = capacity, .token_idx = d_token.get(), .expert_idx = d_expert.get()},
      .metadata = {.expert_offsets = d_offsets.get(), .gather_idx = d_gather.get(), .scatter_idx = d_scatter.get(),
                   .reverse_idx = d_reverse.get()}};
  const Status s = build_routing_metadata(p, device_length >= 0 ? d_length.get() : nullptr, d_ws.get(), ws_bytes,
                                          nullptr);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {d_offsets.download(), d_gather.download(), d_scatter.download(), d_reverse.download()};
}

// GPU metadata equal to the reference on the first `length` entries, poison past them, and the
// same bits on a second run.
void expect_matches_reference(const HostList& list, int64_t T, int64_t E, int64_t capacity, int64_t device_length,
                              std::mt19937_64& rng) {
  const int64_t length = list.size();
  const Metadata want = reference_metadata(list, T, E);
  const Metadata got = gpu_metadata(list, T, E, capacity, device_length, rng);
  ASSERT_EQ(got.offsets, want.offsets) << "expert_offsets";
  ASSERT_EQ(got.gather.size(), size_t(capacity));
  for (const auto& [name, g, w] : {std::tuple{"gather_idx", &got.gather, &want.gather},
                                   std::tuple{"scatter_idx", &got.scatter, &want.scatter},
                                   std::tuple{"reverse_idx", &got.reverse, &want.reverse}}) {
    EXPECT_TRUE(std::equal(w->begin(), w->end(), g->begin())) << name << " differs from the reference";
    EXPECT_TRUE(std::all_of(g->begin() + length, g->end(), [](int32_t v) { return v == kPoison; }))
        << name << " written past the device length";
  }
  const Metadata again = gpu_metadata(list, T, E, capacity, device_length, rng);
  EXPECT_EQ(again.offsets, got.offsets);
  EXPECT_EQ(again.gather, got.gather);
  EXPECT_EQ(again.scatter, got.scatter);
  EXPECT_EQ(again.reverse, got.reverse);
}

TEST(RoutingMetadataGpu, TopKListsMatchReference) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t E : {1, 8, 256, 1024})
    for (int64_t K : {int64_t(1), std::min<int64_t>(E, 8)})
      for (int64_t T : {1, 300, 5000}) {
        SCOPED_TRACE(::testing::Message() << "T=" << T << " E=" << E << " K=" << K);
        const HostList list = top_k_list(T, E, K, rng);
        expect_matches_reference(list, T, E, list.size(), -1, rng);
      }
}

TEST(RoutingMetadataGpu, GeneralListsVaryingExpertsPerToken) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t E : {1, 8, 256})
    for (bool ascending : {true, false}) {
      const int64_t T = E == 256 ? 200 : 3000;
      SCOPED_TRACE(::testing::Message() << "T=" << T << " E=" << E << " ascending=" << ascending);
      const HostList list = general_list(T, E, E, ascending, rng);  // 0 to E experts per token
      expect_matches_reference(list, T, E, list.size(), -1, rng);
    }
}

TEST(RoutingMetadataGpu, AllEntriesOnOneExpertAndEmptyExperts) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  std::mt19937_64 rng(fresh_seed());
  for (int64_t E : {8, 1024}) {
    HostList list;
    for (int32_t t = 0; t < 10000; ++t) list.push(t, int32_t(E / 2 + 1), 0.5f);  // 5 chunks, one expert
    SCOPED_TRACE(::testing::Message() << "E=" << E);
    expect_matches_reference(list, 10000, E, list.size(), -1, rng);
  }
  // Only experts 0 and E-1 used: everything in between is empty.
  HostList list;
  for (int32_t t = 0; t < 4097; ++t) {
    list.push(t, 0, 0.5f);
    if (t % 3 == 0) list.push(t, 255, 0.5f);
  }
  expect_matches_reference(list, 4097, 256, list.size(), -1, rng);
}

TEST(RoutingMetadataGpu, EmptyAndSingleEntryLists) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  std::mt19937_64 rng(fresh_seed());
  for (int64_t E : {1, 8, 256, 1024}) {
    SCOPED_TRACE(::testing::Message() << "E=" << E);
    const HostList empty;
    const Metadata got = gpu_metadata(empty, 4, E, 0, -1, rng);
    EXPECT_TRUE(std::all_of(got.offsets.begin(), got.offsets.end(), [](int32_t v) { return v == 0; }));
    HostList one;
    one.push(2, int32_t(E - 1), 1.0f);
    expect_matches_reference(one, 4, E, 1, -1, rng);
    expect_matches_reference(one, 4, E, 1, 1, rng);
  }
}

TEST(RoutingMetadataGpu, DeviceLengthBelowCapacity) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t T = 1500, E = 64, capacity = 9000;
  const HostList full = top_k_list(T, E, 6, rng);  // 9000 entries
  for (int64_t length : {0, 1, 2047, 2048, 3333, 4096, 8999}) {
    SCOPED_TRACE(::testing::Message() << "device length " << length);
    HostList prefix;
    for (int64_t i = 0; i < length; ++i) prefix.push(full.token[size_t(i)], full.expert[size_t(i)], 1.0f);
    expect_matches_reference(prefix, T, E, capacity, length, rng);
  }
  // A device length past the capacity is read as the capacity.
  expect_matches_reference(full, T, E, capacity, capacity + 100, rng);
}

TEST(RoutingMetadataGpu, LongListGrowsTheChunkSize) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t T = 270000, E = 256, K = 8;  // 2.16M entries: more than 1024 chunks of 2048
  const HostList list = top_k_list(T, E, K, rng);
  expect_matches_reference(list, T, E, list.size(), -1, rng);
}

TEST(RoutingMetadataGpu, CorruptIdsStayInBounds) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  std::mt19937_64 rng(fresh_seed());
  const int64_t T = 500, E = 16, TK = 5000;
  HostList list;
  std::uniform_int_distribution<int32_t> tok(-20, int32_t(T + 20)), exp(-5, int32_t(E + 5));
  for (int64_t i = 0; i < TK; ++i) list.push(tok(rng), exp(rng), 1.0f);
  const Metadata got = gpu_metadata(list, T, E, TK, -1, rng);
  // Ids are clamped: every entry lands in a row, rows form a permutation, tokens are in range.
  EXPECT_EQ(got.offsets[0], 0);
  EXPECT_EQ(got.offsets[size_t(E)], TK);
  std::vector<int32_t> seen(size_t(TK), 0);
  for (int64_t r = 0; r < TK; ++r) {
    const int32_t i = got.scatter[size_t(r)];
    ASSERT_TRUE(i >= 0 && i < TK) << "row " << r;
    ++seen[size_t(i)];
    EXPECT_EQ(got.reverse[size_t(i)], r);
    EXPECT_TRUE(got.gather[size_t(r)] >= 0 && got.gather[size_t(r)] < T);
  }
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int32_t c) { return c == 1; }));
}

TEST(RoutingMetadataValidation, RejectsBadArguments) {
  alignas(16) static int32_t idx[64];
  alignas(16) static int64_t len[2];
  alignas(16) static uint8_t ws[1 << 16];
  const RoutingMetadataParams good{
      .num_tokens = 4, .num_experts = 8,
      .routing = {.num_routed = 8, .token_idx = idx, .expert_idx = idx},
      .metadata = {.expert_offsets = idx, .gather_idx = idx, .scatter_idx = idx, .reverse_idx = idx}};
  const int64_t need = routing_metadata_workspace_bytes(8, 8);
  ASSERT_GT(need, 0);
  ASSERT_LE(need, int64_t(sizeof(ws)));
  EXPECT_EQ(routing_metadata_workspace_bytes(0, 8), 0);
  auto argument = [&](const RoutingMetadataParams& p, const int64_t* device_len, void* w, int64_t bytes) {
    return build_routing_metadata(p, device_len, w, bytes, nullptr).argument();
  };
  auto p = good;
  p.num_tokens = 0;
  EXPECT_EQ(argument(p, nullptr, ws, need), "num_tokens");
  p = good;
  p.num_experts = 0;
  EXPECT_EQ(argument(p, nullptr, ws, need), "num_experts");
  p = good;
  p.num_experts = 100000;
  EXPECT_EQ(argument(p, nullptr, ws, need), "num_experts");
  p = good;
  p.routing.num_routed = -1;
  EXPECT_EQ(argument(p, nullptr, ws, need), "routing.num_routed");
  p = good;
  p.routing.token_idx = nullptr;
  EXPECT_EQ(argument(p, nullptr, ws, need), "routing.token_idx");
  p = good;
  p.routing.expert_idx = reinterpret_cast<const int32_t*>(reinterpret_cast<const char*>(idx) + 2);
  EXPECT_EQ(argument(p, nullptr, ws, need), "routing.expert_idx");
  p = good;
  p.metadata.expert_offsets = nullptr;
  EXPECT_EQ(argument(p, nullptr, ws, need), "metadata.expert_offsets");
  p = good;
  p.metadata.reverse_idx = nullptr;
  EXPECT_EQ(argument(p, nullptr, ws, need), "metadata.reverse_idx");
  EXPECT_EQ(argument(good, reinterpret_cast<const int64_t*>(reinterpret_cast<const char*>(len) + 4), ws, need),
            "device_num_routed");
  EXPECT_EQ(argument(good, nullptr, ws, need - 1), "workspace_bytes");
  EXPECT_EQ(argument(good, nullptr, nullptr, need), "workspace");
  const Status s = build_routing_metadata(good, nullptr, ws, 0, nullptr);
  EXPECT_NE(s.rule().find("routing_metadata_workspace_bytes"), std::string::npos) << s.message();
}

// ---- check_routing_list ---------------------------------------------------------------------------

// validate_routing_list's rules as (code, lowest entry), the expected result of the GPU check.
RoutingListCheck host_check(const HostList& l, int64_t T, int64_t E) {
  std::vector<int64_t> stamp(size_t(E), -1);
  for (int64_t i = 0; i < l.size(); ++i) {
    const int64_t t = l.token[size_t(i)], e = l.expert[size_t(i)];
    auto fail = [&](RoutingListError c) { return RoutingListCheck{int32_t(c), int32_t(i)}; };
    if (t < 0 || t >= T) return fail(RoutingListError::token_out_of_range);
    if (i > 0 && t < l.token[size_t(i - 1)]) return fail(RoutingListError::tokens_not_sorted);
    if (e < 0 || e >= E) return fail(RoutingListError::expert_out_of_range);
    if (stamp[size_t(e)] == t) return fail(RoutingListError::duplicate_expert);
    stamp[size_t(e)] = t;
    if (!std::isfinite(l.score[size_t(i)])) return fail(RoutingListError::score_not_finite);
  }
  return {};
}

RoutingListCheck gpu_check(const HostList& l, int64_t T, int64_t E) {
  DeviceBuffer<int32_t> d_token(l.token), d_expert(l.expert);
  DeviceBuffer<float> d_score(l.score);
  DeviceBuffer<RoutingListCheck> d_result(1);
  d_result.poison();
  const RoutingList list{.num_routed = l.size(), .token_idx = d_token.get(), .expert_idx = d_expert.get(),
                         .scores = d_score.get()};
  const Status s = check_routing_list(list, T, E, d_result.get(), nullptr);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return d_result.download()[0];
}

void expect_check(const HostList& l, int64_t T, int64_t E, RoutingListError code, int64_t entry) {
  const RoutingListCheck want = host_check(l, T, E);
  ASSERT_EQ(want.code, int32_t(code)) << "test setup: the host mirror disagrees with the intended error";
  ASSERT_EQ(want.entry, entry) << "test setup";
  // The host mirror and validate_routing_list agree on validity.
  const Status host = validate_routing_list({.num_routed = l.size(), .token_idx = l.token.data(),
                                             .expert_idx = l.expert.data(), .scores = l.score.data()},
                                            T, E);
  EXPECT_EQ(host.ok(), code == RoutingListError::ok) << host.message();
  const RoutingListCheck got = gpu_check(l, T, E);
  EXPECT_EQ(got.code, want.code) << to_string(RoutingListError(want.code));
  EXPECT_EQ(got.entry, want.entry);
  EXPECT_EQ(routing_list_status(got, "routing").ok(), code == RoutingListError::ok);
}

TEST(RoutingListCheckGpu, ValidListsPass) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  std::mt19937_64 rng(fresh_seed());
  expect_check(top_k_list(3000, 16, 4, rng), 3000, 16, RoutingListError::ok, -1);
  expect_check(top_k_list(100, 8, 8, rng), 100, 8, RoutingListError::ok, -1);
  expect_check(general_list(500, 64, 64, false, rng), 500, 64, RoutingListError::ok, -1);
  expect_check(HostList{}, 4, 4, RoutingListError::ok, -1);
  // The same expert for consecutive tokens is not a duplicate.
  HostList l;
  for (int32_t t = 0; t < 70; ++t) l.push(t, 3, 1.0f);
  expect_check(l, 70, 4, RoutingListError::ok, -1);
}

TEST(RoutingListCheckGpu, EachErrorAtTheLowestEntry) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t T = 3000, E = 16, K = 4;
  const HostList base = top_k_list(T, E, K, rng);
  // Corruptions at entry p (p = t*K + slot), each also with a second, later error of another kind.
  using Corrupt = void (*)(HostList&, int64_t p, int64_t T, int64_t E);
  const std::vector<std::pair<RoutingListError, Corrupt>> cases = {
      {RoutingListError::token_out_of_range, [](HostList& l, int64_t p, int64_t T, int64_t) { l.token[size_t(p)] = int32_t(T); }},
      {RoutingListError::token_out_of_range, [](HostList& l, int64_t p, int64_t, int64_t) { l.token[size_t(p)] = -1; }},
      {RoutingListError::tokens_not_sorted,
       [](HostList& l, int64_t p, int64_t, int64_t) { l.token[size_t(p)] = l.token[size_t(p - 1)] - 1; }},
      {RoutingListError::expert_out_of_range, [](HostList& l, int64_t p, int64_t, int64_t E) { l.expert[size_t(p)] = int32_t(E); }},
      {RoutingListError::expert_out_of_range, [](HostList& l, int64_t p, int64_t, int64_t) { l.expert[size_t(p)] = -3; }},
      {RoutingListError::duplicate_expert,
       [](HostList& l, int64_t p, int64_t, int64_t) { l.expert[size_t(p)] = l.expert[size_t(p - 2)]; }},
      {RoutingListError::score_not_finite, [](HostList& l, int64_t p, int64_t, int64_t) { l.score[size_t(p)] = NAN; }},
      {RoutingListError::score_not_finite, [](HostList& l, int64_t p, int64_t, int64_t) { l.score[size_t(p)] = -INFINITY; }},
  };
  std::uniform_int_distribution<int64_t> token_pick(1, T - 2);
  for (size_t c = 0; c < cases.size(); ++c) {
    const int64_t p = token_pick(rng) * K + 3;  // slot 3: p-1 and p-2 belong to the same token
    SCOPED_TRACE(::testing::Message() << "case " << c << " at entry " << p);
    HostList l = base;
    cases[c].second(l, p, T, E);
    // A later error of another kind must not win.
    const int64_t q = std::min<int64_t>(p + 1 + int64_t(rng() % 2000), l.size() - 1);
    if (q > p + 1) cases[(c + 3) % cases.size()].second(l, q, T, E);
    expect_check(l, T, E, cases[c].first, p);
  }
  // Errors at the first and last entries.
  HostList l = base;
  l.score[0] = NAN;
  expect_check(l, T, E, RoutingListError::score_not_finite, 0);
  l = base;
  l.expert[size_t(l.size() - 1)] = int32_t(E + 9);
  expect_check(l, T, E, RoutingListError::expert_out_of_range, l.size() - 1);
}

TEST(RoutingListCheckGpu, RandomCorruptionsMatchTheHostRules) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t T = 400, E = 8;
  for (int trial = 0; trial < 40; ++trial) {
    HostList l = general_list(T, E, E, trial % 2 == 0, rng);
    if (l.size() == 0) continue;
    const int corruptions = int(rng() % 4);
    for (int c = 0; c < corruptions; ++c) {
      const size_t i = size_t(rng() % uint64_t(l.size()));
      switch (rng() % 5) {
        case 0: l.token[i] = int32_t(rng() % uint64_t(T + 3)) - 1; break;
        case 1: l.expert[i] = int32_t(rng() % uint64_t(E + 3)) - 1; break;
        case 2: if (i > 0) l.expert[i] = l.expert[i - 1]; break;
        case 3: l.score[i] = (rng() % 2) ? NAN : INFINITY; break;
        default: if (i > 0) std::swap(l.token[i], l.token[i - 1]); break;
      }
    }
    const RoutingListCheck want = host_check(l, T, E), got = gpu_check(l, T, E);
    EXPECT_EQ(got.code, want.code) << "trial " << trial;
    EXPECT_EQ(got.entry, want.entry) << "trial " << trial;
  }
}

TEST(RoutingListCheckValidation, RejectsBadArgumentsAndFormatsResults) {
  alignas(16) static int32_t idx[8];
  alignas(16) static float scores[8];
  alignas(16) static RoutingListCheck result[2];
  const RoutingList list{.num_routed = 8, .token_idx = idx, .expert_idx = idx, .scores = scores};
  EXPECT_EQ(check_routing_list(list, 0, 4, result, nullptr).argument(), "num_tokens");
  EXPECT_EQ(check_routing_list(list, 4, 0, result, nullptr).argument(), "num_experts");
  auto l = list;
  l.scores = nullptr;
  EXPECT_EQ(check_routing_list(l, 4, 4, result, nullptr).argument(), "routing.scores");
  l = list;
  l.num_routed = -2;
  EXPECT_EQ(check_routing_list(l, 4, 4, result, nullptr).argument(), "routing.num_routed");
  EXPECT_EQ(check_routing_list(list, 4, 4, nullptr, nullptr).argument(), "result");
  EXPECT_EQ(check_routing_list(list, 4, 4, reinterpret_cast<RoutingListCheck*>(reinterpret_cast<char*>(result) + 4),
                               nullptr)
                .argument(),
            "result");

  EXPECT_TRUE(routing_list_status(RoutingListCheck{}, "routing").ok());
  const Status s = routing_list_status({int32_t(RoutingListError::duplicate_expert), 17}, "routing_input");
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_EQ(s.argument(), "routing_input");
  EXPECT_NE(s.rule().find("at entry 17"), std::string::npos) << s.message();
  EXPECT_NE(s.rule().find(to_string(RoutingListError::duplicate_expert)), std::string::npos) << s.message();
  for (int c = 1; c <= 5; ++c) EXPECT_FALSE(routing_list_status({c, 0}, "r").ok());
  EXPECT_FALSE(routing_list_status({42, 3}, "r").ok());
  EXPECT_STRNE(to_string(RoutingListError::token_out_of_range), to_string(RoutingListError::tokens_not_sorted));
}

}  // namespace
}  // namespace sonicmoe::gpu_testing
