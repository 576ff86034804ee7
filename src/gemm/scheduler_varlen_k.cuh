// src/gemm/scheduler_varlen_k.cuh — persistent tile scheduler for the weight-gradient GEMMs
// (varlen K): every expert owns the same grid of output tiles (its M x N weight gradient), and
// the reduction runs over that expert's rows, expert_offsets[e] .. expert_offsets[e+1]. Experts
// with no rows still own their tiles: their gradient is written as zeros.
#pragma once

#include <cstdint>

namespace sonicmoe::gemm {

struct VarlenKWorkTile {
  int expert;
  int m_block;
  int n_block;
  int row_start;  // first grouped row of the expert: the start of the reduction
  int rows;       // rows of the expert: the reduction length
};

struct VarlenKTileScheduler {
  const int32_t* expert_offsets;
  int num_experts;
  int num_rows;
  int m_blocks;
  int n_blocks;

  __device__ static int clamp_row(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

  // Tiles are numbered expert-major, then m-block, then n-block. Offsets are clamped to
  // [0, num_rows] so that a malformed offsets array cannot send a load out of bounds.
  __device__ bool find(int tile, VarlenKWorkTile& work) const {
    const int per_expert = m_blocks * n_blocks;
    if (tile >= per_expert * num_experts) return false;
    work.expert = tile / per_expert;
    const int local = tile - work.expert * per_expert;
    work.m_block = local / n_blocks;
    work.n_block = local - work.m_block * n_blocks;
    const int start = clamp_row(__ldg(expert_offsets + work.expert), num_rows);
    const int end = clamp_row(__ldg(expert_offsets + work.expert + 1), num_rows);
    work.row_start = start;
    work.rows = end > start ? end - start : 0;
    return true;
  }
};

}  // namespace sonicmoe::gemm
