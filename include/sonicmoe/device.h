// sonicmoe/device.h — which GPU (if any) this process can use. Host-only CUDA runtime calls;
// never throws, never allocates device memory, safe on machines without a driver.
#pragma once

#include <string>

namespace sonicmoe {

struct DeviceInfo {
  int device_count = 0;  // CUDA devices visible
  int device = -1;       // the current device, when any
  std::string name;      // e.g. "NVIDIA H100 80GB HBM3"
  int major = 0, minor = 0;
  int multiprocessors = 0;
  bool is_hopper = false;  // compute capability 9.0: the only target our kernels are built for
  std::string reason;      // why there is no usable GPU, when is_hopper is false
};

DeviceInfo query_device();

}  // namespace sonicmoe
