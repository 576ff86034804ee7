// Device discovery for the programs and the GPU tests: finds out whether an sm_90 GPU is
// present without touching device memory. Also the first CUDA translation unit of the build,
// so it includes CuTe to prove the dependency is wired for every later kernel.
#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>  // keeps the CUTLASS/CuTe include path honest in every build

#include "sonicmoe/device.h"

namespace sonicmoe {

DeviceInfo query_device() {
  DeviceInfo info;
  cudaError_t err = cudaGetDeviceCount(&info.device_count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.reason = std::string("no CUDA device (") + cudaGetErrorString(err) + ")";
    cudaGetLastError();  // clear the sticky error for later callers
    return info;
  }
  if (info.device_count == 0) {
    info.reason = "no CUDA device";
    return info;
  }
  cudaGetDevice(&info.device);
  cudaDeviceProp prop{};
  err = cudaGetDeviceProperties(&prop, info.device);
  if (err != cudaSuccess) {
    info.reason = std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorString(err);
    return info;
  }
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.is_hopper = prop.major == 9 && prop.minor == 0;
  if (!info.is_hopper)
    info.reason = info.name + " is sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
                  "; sonicmoe's kernels are built for sm_90a (H100/H200) only";
  return info;
}

}  // namespace sonicmoe
