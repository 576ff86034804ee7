// src/gemm/launch_sm90_grouped.cuh — host side of the grouped GEMM skeleton: builds the TMA
// descriptor of the weight operand, sizes the persistent grid from the SM count and an upper
// bound on the tile count (the exact count is only known on the device), and launches.
// No synchronisation, no allocation: safe inside CUDA-graph capture.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "core/device_checks.h"
#include "gemm/kernel_sm90_grouped.cuh"
#include "sonicmoe/status.h"

namespace sonicmoe::gemm {

using sonicmoe::detail::cuda_status;

// The most dynamic shared memory one block may opt into on sm_90 (H100/H200): 227 KiB.
inline constexpr size_t kSm90MaxSharedBytesPerBlock = 227 * 1024;

template <class Cfg, class Mainloop, class Epilogue>
Status launch_grouped_gemm(const GroupedKernelParams<Mainloop, Epilogue>& params, cudaStream_t stream) {
  if (params.num_rows == 0) return Status();  // nothing routed: nothing to write
  auto kernel = grouped_gemm_sm90_kernel<Cfg, Mainloop, Epilogue>;
  const size_t smem_bytes = sizeof(GroupedKernelStorage<Mainloop, Epilogue>) + 1024;
  static_assert(sizeof(GroupedKernelStorage<Mainloop, Epilogue>) + 1024 <= kSm90MaxSharedBytesPerBlock,
                "stages + epilogue staging exceed sm_90's shared memory (tile_config.h)");
  int device = 0, sms = 0;
  SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  // The shared-memory opt-in is set once per device and kernel (it is a host-side attribute, so
  // later launches, including ones under stream capture, skip the call).
  static std::atomic<uint64_t> configured_devices{0};
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit == 0 || !(configured_devices.load(std::memory_order_acquire) & bit)) {
    SONICMOE_RETURN_IF_ERROR(cuda_status(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)),
        "cudaFuncSetAttribute(grouped_gemm_sm90_kernel)"));
    configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  }
  SONICMOE_RETURN_IF_ERROR(
      cuda_status(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute"));
  const int64_t max_tiles = Mainloop::max_tiles(params.mainloop, params.num_rows, params.num_experts);
  const int grid = int(std::max<int64_t>(1, std::min<int64_t>(sms, max_tiles)));
  kernel<<<grid, Cfg::kThreads, smem_bytes, stream>>>(params);
  return cuda_status(cudaGetLastError(), "grouped_gemm_sm90_kernel launch");
}

}  // namespace sonicmoe::gemm
