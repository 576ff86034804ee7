// src/moe/router_gemm.cu — cuBLAS calls of the router (see router_gemm.h).
//
// All tensors are row-major; cuBLAS is column-major, so each product is issued as its
// transpose: a row-major [R, C] matrix is a column-major [C, R] one with leading dimension C.
#include "moe/router_gemm.h"

#include <cublas_v2.h>

#include <string>

#include "core/validate.h"
#include "sonicmoe/gpu_routing.h"

namespace sonicmoe {
namespace moe {
namespace {

// cuBLAS wants at least 4 MiB of workspace on Hopper for its default kernels; 32 MiB is what
// it allocates itself. The router GEMMs are small, so 8 MiB is plenty.
constexpr int64_t kCublasWorkspaceBytes = int64_t(8) << 20;

Status cublas_status(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status();
  return Status::error(StatusCode::cuda_error, std::string(what) + ": " + cublasGetStatusString(s));
}

// The calling thread's handle for the current device (created once, never destroyed: handles
// die with the process, like PyTorch's).
Status handle_for(cudaStream_t stream, CublasWorkspace ws, cublasHandle_t& handle) {
  constexpr int kMaxDevices = 64;
  thread_local cublasHandle_t handles[kMaxDevices] = {};
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess)
    return Status::error(StatusCode::cuda_error, std::string("cudaGetDevice: ") + cudaGetErrorString(err));
  if (device < 0 || device >= kMaxDevices)
    return Status::error(StatusCode::unsupported, "router GEMMs support device ordinals < 64");
  if (!handles[device]) SONICMOE_RETURN_IF_ERROR(cublas_status(cublasCreate(&handles[device]), "cublasCreate"));
  handle = handles[device];
  SONICMOE_RETURN_IF_ERROR(cublas_status(cublasSetStream(handle, stream), "cublasSetStream"));
  SONICMOE_RETURN_IF_ERROR(
      cublas_status(cublasSetWorkspace(handle, ws.ptr, size_t(ws.bytes)), "cublasSetWorkspace"));
  return Status();
}

Status check_workspace(CublasWorkspace ws) {
  if (!ws.ptr || ws.bytes < kCublasWorkspaceBytes)
    return Status::invalid_argument("cublas_workspace", "must hold cublas_workspace_bytes() = " +
                                                            std::to_string(kCublasWorkspaceBytes) + " bytes");
  if (reinterpret_cast<uintptr_t>(ws.ptr) % 256 != 0)
    return Status::invalid_argument("cublas_workspace", "must be 256-byte aligned");
  return Status();
}

}  // namespace

Status router_weight_grad(const bfloat16* grad_logits, const bfloat16* x, bfloat16* grad_router_weight,
                          int64_t num_tokens, int64_t hidden, int64_t num_experts, CublasWorkspace ws,
                          cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(check_workspace(ws));
  cublasHandle_t handle;
  SONICMOE_RETURN_IF_ERROR(handle_for(stream, ws, handle));
  const float one = 1.0f, zero = 0.0f;
  // column-major: dWrᵀ [d, E] = xᵀ [d, T] · (dlogitsᵀ [E, T])ᵀ
  return cublas_status(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, int(hidden), int(num_experts), int(num_tokens),
                                    &one, x, CUDA_R_16BF, int(hidden), grad_logits, CUDA_R_16BF, int(num_experts),
                                    &zero, grad_router_weight, CUDA_R_16BF, int(hidden), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT),
                       "cublasGemmEx(router weight grad)");
}

Status router_input_grad_accumulate(const bfloat16* grad_logits, const bfloat16* router_weight, bfloat16* grad_x,
                                    int64_t num_tokens, int64_t hidden, int64_t num_experts, CublasWorkspace ws,
                                    cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(check_workspace(ws));
  cublasHandle_t handle;
  SONICMOE_RETURN_IF_ERROR(handle_for(stream, ws, handle));
  const float one = 1.0f;
  // column-major: dxᵀ [d, T] += Wrᵀ [d, E] · dlogitsᵀ [E, T]
  return cublas_status(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(hidden), int(num_tokens), int(num_experts),
                                    &one, router_weight, CUDA_R_16BF, int(hidden), grad_logits, CUDA_R_16BF,
                                    int(num_experts), &one, grad_x, CUDA_R_16BF, int(hidden), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT),
                       "cublasGemmEx(router input grad)");
}

}  // namespace moe

int64_t cublas_workspace_bytes() { return moe::kCublasWorkspaceBytes; }

Status router_logits(const RouterLogitsParams& p, void* cublas_workspace, int64_t workspace_bytes,
                     cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(detail::validate_router_logits_params(p));
  if (p.dtype != DType::bfloat16)
    return Status::unsupported("dtype", std::string("the GPU router takes bfloat16 (got ") + to_string(p.dtype) + ")");
  if (p.num_tokens > INT32_MAX || p.hidden > INT32_MAX || p.num_experts > INT32_MAX)
    return Status::invalid_argument("num_tokens", "sizes must fit int32 for cuBLAS");
  const moe::CublasWorkspace ws{cublas_workspace, workspace_bytes};
  SONICMOE_RETURN_IF_ERROR(moe::check_workspace(ws));
  cublasHandle_t handle;
  SONICMOE_RETURN_IF_ERROR(moe::handle_for(stream, ws, handle));
  const float one = 1.0f, zero = 0.0f;
  // column-major: logitsᵀ [E, T] = (Wrᵀ [d, E])ᵀ · xᵀ [d, T]
  return moe::cublas_status(
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(p.num_experts), int(p.num_tokens), int(p.hidden), &one,
                   p.router_weight, CUDA_R_16BF, int(p.hidden), p.x, CUDA_R_16BF, int(p.hidden), &zero, p.logits,
                   CUDA_R_32F, int(p.num_experts), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx(router logits)");
}

}  // namespace sonicmoe
