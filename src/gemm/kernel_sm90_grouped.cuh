// src/gemm/kernel_sm90_grouped.cuh — the persistent warp-specialized grouped GEMM kernel for
// sm_90a, shared by every role: Mainloop (how A and B reach shared memory, and over which tiles:
// its Scheduler walks ragged rows per expert for varlen M, or a fixed tile grid per expert whose
// k-loop runs over the expert's rows for varlen K) x Epilogue (what happens to the fp32
// accumulators).
//
// CTA = 1 producer warpgroup + Cfg::kConsumerWarpgroups consumer warpgroups: cooperative (the
// consumers split one tile along M) or ping-pong (Cfg::kPingPong: each consumer warpgroup owns
// whole tiles and the two take alternate tiles of the CTA's sequence, so one's epilogue overlaps
// the other's mainloop; the producer fills the stages in tile order either way, and each
// warpgroup steps its pipeline position over the stages of the tiles it skips). setmaxnreg
// moves registers from the producer, which only computes addresses, to the consumers, which hold
// the accumulators. The grid is at most one
// CTA per SM; each CTA walks tiles blockIdx.x, blockIdx.x + gridDim.x, ... The producer runs
// ahead across tile boundaries (it only waits for free stages), so the next tile's loads overlap
// the current tile's epilogue. A TMA-store epilogue (borrows_stage) stages its tile in the
// shared memory of the tile's last stage, which the mainloop lends it until the next tile's
// second k-tile (consume_k_tiles<kLend>, consumer_k_loop_sm90.cuh).
//
// The Epilogue policy (EpilogueStoreTma, EpilogueSwiGLU[Tma], ...) provides
//   Params, SharedStorage (may be empty), prefetch(params), finish(consumer_thread),
//   apply<kTileM, kTileN>(params, accum, coords, work, n_total, shared_storage, consumer_thread)
//   (with kBorrowsStage, shared_storage is a Store::Staging: its own buffer and the lent stage's)
//   and optionally init_accumulators<kTileN>(params, accum, coords, work, n_total), which writes
//   the tile's starting accumulator values (its bias, or zero) before the k-loop; without it the
//   accumulators start at zero. `coords` gives each accumulator's (row, col) inside the tile.
#pragma once

#include <cute/tensor.hpp>
#include <type_traits>
#include <cutlass/arch/reg_reconfig.h>

#include "gemm/mainloop_sm90_tma_gather.cuh"
#include "gemm/scheduler_grouped.cuh"

namespace sonicmoe::gemm {

template <class Mainloop, class Epilogue>
struct GroupedKernelParams {
  typename Mainloop::Args mainloop;
  typename Epilogue::Params epilogue;
  const int32_t* expert_offsets;  // [E+1] device
  int num_experts;
  int num_rows;
};

template <class Mainloop, class Epilogue>
struct alignas(1024) GroupedKernelStorage {
  typename Mainloop::SharedStorage mainloop;
  typename Epilogue::SharedStorage epilogue;
};

// An epilogue that stages its output tile in the tile's last mainloop stage (TmaTileStore).
template <class Epilogue>
constexpr bool borrows_stage() {
  if constexpr (requires { Epilogue::kBorrowsStage; }) return Epilogue::kBorrowsStage;
  return false;
}

template <class Cfg, class Mainloop, class Epilogue>
constexpr bool epilogue_fits_schedule() {
  // Ping-pong warpgroups run their epilogues at the same time: they cannot share one staging tile.
  return !Cfg::kPingPong || std::is_empty_v<typename Epilogue::SharedStorage>;
}

template <class Cfg, class Mainloop, class Epilogue>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    grouped_gemm_sm90_kernel(const __grid_constant__ GroupedKernelParams<Mainloop, Epilogue> params) {
  static_assert(epilogue_fits_schedule<Cfg, Mainloop, Epilogue>(), "ping-pong needs a register-store epilogue");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace cute;
  extern __shared__ uint8_t smem_raw[];
  // Swizzle-128 layouts need 1024-byte alignment; the launcher adds 1024 bytes of slack.
  const uintptr_t base = (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023);
  auto& storage = *reinterpret_cast<GroupedKernelStorage<Mainloop, Epilogue>*>(base);
  auto& ss = storage.mainloop;

  const int warpgroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    Mainloop::init_barriers(ss);
    Mainloop::prefetch(params.mainloop);
    Epilogue::prefetch(params.epilogue);
  }
  __syncthreads();

  const auto& ml = params.mainloop;
  auto sched = Mainloop::make_scheduler(ml, params.expert_offsets, params.num_experts, params.num_rows);
  // Varlen M: every tile runs the same k-loop, computed once here, before the register split
  // (computed after it, it cost the 56-register producer a spill).
  const int uniform_k_tiles = Mainloop::kVarlenK ? 0 : Mainloop::k_tiles(ml, typename Mainloop::Work{});

  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegisters>();
    Mainloop::produce(ml, ss, sched, uniform_k_tiles);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kConsumerRegisters>();
    typename Mainloop::TiledMma tiled_mma;
    // The thread's index among the warpgroups sharing its tiles, and (ping-pong) which of the
    // CTA's tiles are its own: the even ones for warpgroup 1, the odd ones for warpgroup 2.
    const int consumer_thread = (threadIdx.x - 128) % (128 * Cfg::kMmaWarpgroups);
    const int own_parity = Cfg::kPingPong ? (threadIdx.x - 128) / 128 : 0;
    auto thr_mma = tiled_mma.get_thread_slice(consumer_thread);
    Tensor accum = partition_fragment_C(tiled_mma, Shape<Int<Cfg::kTileM>, Int<Cfg::kTileN>>{});
    Tensor coords = thr_mma.partition_C(make_identity_tensor(Shape<Int<Cfg::kTileM>, Int<Cfg::kTileN>>{}));
    int stage = 0;
    uint32_t phase = 0;
    int lent_stage = -1;  // borrows_stage: the stage the last epilogue staged its tile in
    constexpr bool kLend = borrows_stage<Epilogue>();
    // What the epilogue writes through: its own shared memory, or (kLend) a Store::Staging over
    // its own memory and the lent stage's buffers. No stage is lent after a tile without k-tiles
    // (varlen K, an expert without rows); its epilogue does not stage (EpilogueWeightGradTma), so
    // any stage's buffers may stand in.
    auto epilogue_storage = [&]() -> decltype(auto) {
      if constexpr (kLend) {
        const auto lent = Mainloop::stage_buffers(ss, lent_stage < 0 ? 0 : lent_stage);
        return Epilogue::Store::staging(storage.epilogue, lent.a, lent.b);
      } else {
        return (storage.epilogue);
      }
    };
    // Where the next tile is looked up (the offsets' loads and a warp-wide scan). With a short
    // epilogue (a TMA store) the lookup after it stood between two tiles' tensor-core work: there
    // it runs while the tile's last wgmma batch executes (mma's hook). Same call, H200, with the
    // borrowed stage: up-proj 0.99-1.05x, down-proj 1.03-1.06x, dX̃ 1.02-1.05x (the weight
    // gradients, TMA-store too, measured the same early or late: 0.98-1.02x). Ping-pong needs it
    // before the epilogue anyway (the hand-over below). After the long register-store epilogue of
    // the cooperative dH it stays: early, that measured 0.94-1.01x.
    constexpr bool kEarlyLookAhead = Cfg::kPingPong || kLend;
    int tile = blockIdx.x;
    typename Mainloop::Work work;
    bool have = sched.find(tile, work);
    for (int seq = 0; have; ++seq, tile += gridDim.x) {
      typename Mainloop::Work next;
      bool have_next = false;
      auto look_ahead = [&] { have_next = sched.find(tile + int(gridDim.x), next); };
      const int k_tiles = Mainloop::kVarlenK ? Mainloop::k_tiles(ml, work) : uniform_k_tiles;
      if (Cfg::kPingPong && (seq & 1) != own_parity) {
        // The other warpgroup's tile: step over its stages (mma() advances one per k-tile and
        // flips the phase at every wrap).
        const int next_stage = stage + k_tiles;
        phase ^= uint32_t(next_stage / Cfg::kStages) & 1u;
        stage = next_stage % Cfg::kStages;
        look_ahead();
      } else {
        // Ping-pong: the mainloops of the two warpgroups run in tile order, one after the other.
        // Barrier waits match phases by parity only, so a warpgroup that started on its tile's
        // stages while the other was still consuming the previous tile's could see a stage one
        // full phase early and read it before the producer refilled it (the dH tests with more
        // k-tiles than stages failed that way). Named barrier 1 + w: "warpgroup w may start".
        if constexpr (Cfg::kPingPong) {
          if (seq > 0) cutlass::arch::NamedBarrier::arrive_and_wait(256, 1 + own_parity);
        }
        // The accumulators start from the bias (or zero); the k-loop accumulates onto them. An
        // epilogue without init_accumulators (no bias) gets zeros.
        if constexpr (requires {
                        Epilogue::template init_accumulators<Cfg::kTileN>(params.epilogue, accum, coords, work, ml.n);
                      }) {
          Epilogue::template init_accumulators<Cfg::kTileN>(params.epilogue, accum, coords, work, ml.n);
        } else {
#pragma unroll
          for (int i = 0; i < size(accum); ++i) accum(i) = 0.f;
        }
        auto early_look_ahead = [&] {
          if constexpr (kEarlyLookAhead) look_ahead();
        };
        Mainloop::template mma<kLend>(tiled_mma, thr_mma, accum, ss, k_tiles, stage, phase, early_look_ahead,
                                      kLend ? &lent_stage : nullptr);
        // Ping-pong: hand the tensor cores to the other warpgroup, if it has a next tile to wait with.
        if (Cfg::kPingPong && have_next) cutlass::arch::NamedBarrier::arrive(256, 2 - own_parity);
        Epilogue::template apply<Cfg::kTileM, Cfg::kTileN>(params.epilogue, accum, coords, work, ml.n,
                                                            epilogue_storage(), consumer_thread);
        if constexpr (!kEarlyLookAhead) look_ahead();
      }
      work = next;
      have = have_next;
    }
    Epilogue::finish(consumer_thread);
  }
#endif
}

}  // namespace sonicmoe::gemm
