// Status formatting and enum names.
#include "sonicmoe/status.h"

#include "sonicmoe/types.h"

namespace sonicmoe {

const char* to_string(StatusCode code) {
  switch (code) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_argument: return "invalid argument";
    case StatusCode::unsupported: return "unsupported";
    case StatusCode::cuda_error: return "CUDA error";
    case StatusCode::internal: return "internal error";
  }
  return "unknown status";
}

std::string Status::message() const {
  if (ok()) return "ok";
  std::string text = to_string(code_);
  if (!argument_.empty()) text += " '" + argument_ + "'";
  text += ": " + rule_;
  return text;
}

const char* to_string(DType t) {
  switch (t) {
    case DType::bfloat16: return "bfloat16";
    case DType::float32: return "float32";
    case DType::float64: return "float64";
  }
  return "unknown dtype";
}

const char* to_string(Activation a) {
  switch (a) {
    case Activation::swiglu: return "swiglu";
    case Activation::relu_squared: return "relu_squared";
    case Activation::gelu_tanh: return "gelu_tanh";
  }
  return "unknown activation";
}

const char* to_string(RoutingKind k) {
  switch (k) {
    case RoutingKind::top_k: return "top_k";
    case RoutingKind::token_rounding: return "token_rounding";
    case RoutingKind::general: return "general";
  }
  return "unknown routing kind";
}

const char* to_string(RoundingMode m) {
  switch (m) {
    case RoundingMode::nearest: return "nearest";
    case RoundingMode::up: return "up";
    case RoundingMode::down: return "down";
  }
  return "unknown rounding mode";
}

}  // namespace sonicmoe
