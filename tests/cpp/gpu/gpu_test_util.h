// tests/cpp/gpu/gpu_test_util.h — helpers for the GPU tests: skip visibly without a Hopper GPU,
// RAII device buffers, bf16 host data at realistic magnitudes, relative Frobenius errors.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "sonicmoe/device.h"
#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe::gpu_testing {

// Empty when an sm_90 GPU is usable; otherwise the reason to skip.
inline std::string hopper_skip_reason() {
  const DeviceInfo info = query_device();
  return info.is_hopper ? std::string() : info.reason;
}

inline std::string device_name() { return query_device().name; }

#define SONICMOE_SKIP_WITHOUT_HOPPER()                                                  \
  do {                                                                                \
    const std::string reason_ = ::sonicmoe::gpu_testing::hopper_skip_reason();        \
    if (!reason_.empty()) GTEST_SKIP() << "no Hopper (sm_90) GPU: " << reason_;       \
  } while (0)

#define SONICMOE_CUDA_CHECK(expr)                                                      \
  do {                                                                               \
    cudaError_t err_ = (expr);                                                       \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_);        \
  } while (0)

#define SONICMOE_ASSERT_OK_GPU(expr)                                                   \
  do {                                                                               \
    const ::sonicmoe::Status status_ = (expr);                                       \
    ASSERT_TRUE(status_.ok()) << status_.message();                                  \
  } while (0)

// A device allocation that frees itself; copies to and from host vectors.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count_ > 0 && cudaMalloc(reinterpret_cast<void**>(&ptr_), count_ * sizeof(T)) != cudaSuccess) {
      ptr_ = nullptr;
      count_ = 0;
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  bool ok() const { return count_ == 0 || ptr_ != nullptr; }
  void upload(const std::vector<T>& host) {
    if (count_) cudaMemcpy(ptr_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    if (count_) cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
  // Every byte 0xFF: a bf16 NaN, so any element the kernel does not write fails the comparison.
  void poison() {
    if (count_) cudaMemset(ptr_, 0xFF, count_ * sizeof(T));
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

inline std::vector<bfloat16> random_bf16(size_t count, double stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, float(stddev));
  std::vector<bfloat16> v(count);
  for (auto& e : v) e = bfloat16(dist(rng));
  return v;
}

inline std::vector<double> to_double(const std::vector<bfloat16>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = double(float(v[i]));
  return out;
}

// ||got - ref||_F / ||ref||_F; NaN (and so a failed comparison) when any element is NaN.
inline double relative_frobenius(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double diff = got[i] - ref[i];
    num += diff * diff;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num) / std::sqrt(den > 0 ? den : 1.0);
}

inline bool bitwise_equal(const std::vector<bfloat16>& a, const std::vector<bfloat16>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(bfloat16)) == 0);
}

}  // namespace sonicmoe::gpu_testing
