// src/moe/workspace.h — carving the caller's workspace into typed arrays.
//
// The same sequence of take() calls runs twice: once with no memory to measure the size
// (forward_workspace_bytes / backward_workspace_bytes), once on the caller's buffer. So the
// layout is written once and the two can never disagree.
#pragma once

#include <cstdint>

namespace sonicmoe::moe {

class WorkspaceCarver {
 public:
  static constexpr int64_t kAlignment = 256;  // TMA wants 16 B, cuBLAS 256 B

  // base == nullptr: measuring only.
  explicit WorkspaceCarver(void* base = nullptr) : base_(static_cast<char*>(base)) {}

  template <class T>
  T* take(int64_t count) {
    offset_ = (offset_ + kAlignment - 1) / kAlignment * kAlignment;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;  // empty arrays get a valid address too
    offset_ += count * int64_t(sizeof(T));
    return p;
  }
  int64_t bytes() const { return (offset_ + kAlignment - 1) / kAlignment * kAlignment; }

 private:
  char* base_;
  int64_t offset_ = 0;
};

}  // namespace sonicmoe::moe
