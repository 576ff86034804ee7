// tests/cpp/gpu/ragged_routing.h — grouped routing with chosen rows per expert for the GPU role
// tests: offsets, a gather_idx whose rows inside an expert are distinct ascending tokens (as the
// router makes them), and a scatter_idx that is a random permutation of the flat slots.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <numeric>
#include <random>
#include <vector>

namespace sonicmoe::gpu_testing {

// `pattern` of expert sizes repeated `times` times: many small experts, so that a role has more
// tiles than the GPU has CTAs at a cheap host reference.
inline std::vector<int> repeated_counts(std::initializer_list<int> pattern, int times) {
  std::vector<int> counts;
  for (int i = 0; i < times; ++i) counts.insert(counts.end(), pattern);
  return counts;
}

// Every tail length of the 128-row tile once: experts of 1 .. 127 rows, and of 0, 128 and 128 + 65
// rows, in a shuffled order. The expert's last tile then goes out by every combination of row
// boxes (TmaTileStore::commit_rows), and a weight gradient's last k-tile holds every count of
// rows (varlen K).
inline std::vector<int> every_tail_counts(uint64_t seed) {
  std::vector<int> counts = {0, 128, 193};
  for (int rows = 1; rows < 128; ++rows) counts.push_back(rows);
  std::mt19937_64 rng(seed);
  std::shuffle(counts.begin(), counts.end(), rng);
  return counts;
}

inline uint64_t fresh_seed() { return uint64_t(std::random_device{}()) * 0x9E3779B97F4A7C15ull + std::random_device{}(); }

struct Ragged {
  std::vector<int32_t> offsets, gather, scatter;
  int64_t num_tokens;
  Ragged(const std::vector<int>& counts, int64_t tokens, std::mt19937_64& rng) : num_tokens(tokens) {
    offsets.push_back(0);
    std::vector<int32_t> all(static_cast<size_t>(tokens));
    std::iota(all.begin(), all.end(), 0);
    for (int c : counts) {
      std::shuffle(all.begin(), all.end(), rng);
      std::vector<int32_t> pick(all.begin(), all.begin() + c);
      std::sort(pick.begin(), pick.end());
      gather.insert(gather.end(), pick.begin(), pick.end());
      offsets.push_back(offsets.back() + c);
    }
    scatter.resize(gather.size());
    std::iota(scatter.begin(), scatter.end(), 0);
    std::shuffle(scatter.begin(), scatter.end(), rng);
  }
  int64_t rows() const { return offsets.back(); }
  int64_t experts() const { return int64_t(offsets.size()) - 1; }
};

}  // namespace sonicmoe::gpu_testing
