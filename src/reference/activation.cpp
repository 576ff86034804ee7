// Expert activations of the CPU reference, in double: SwiGLU on interleaved (gate, up) columns,
// and the non-gated ReLU² and tanh-GELU.
#include <cmath>

#include "reference/reference_internal.h"

namespace sonicmoe::reference::detail {
namespace {

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluA = 0.044715;

}  // namespace

void activation_forward(Activation act, const double* h, double* a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    switch (act) {
      case Activation::swiglu: {
        const double gate = h[2 * j], up = h[2 * j + 1];
        a[j] = gate * sigmoid(gate) * up;
        break;
      }
      case Activation::relu_squared: {
        const double r = h[j] > 0 ? h[j] : 0.0;
        a[j] = r * r;
        break;
      }
      case Activation::gelu_tanh: {
        const double v = h[j];
        a[j] = 0.5 * v * (1.0 + std::tanh(kGeluC * (v + kGeluA * v * v * v)));
        break;
      }
    }
  }
}

void activation_backward(Activation act, const double* h, const double* da, double* dh, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    switch (act) {
      case Activation::swiglu: {
        const double gate = h[2 * j], up = h[2 * j + 1];
        const double sg = sigmoid(gate);
        const double silu = gate * sg;
        dh[2 * j] = da[j] * up * (sg + gate * sg * (1.0 - sg));
        dh[2 * j + 1] = da[j] * silu;
        break;
      }
      case Activation::relu_squared: dh[j] = da[j] * (h[j] > 0 ? 2.0 * h[j] : 0.0); break;
      case Activation::gelu_tanh: {
        const double v = h[j];
        const double th = std::tanh(kGeluC * (v + kGeluA * v * v * v));
        const double dinner = kGeluC * (1.0 + 3.0 * kGeluA * v * v);
        dh[j] = da[j] * (0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * dinner);
        break;
      }
    }
  }
}

}  // namespace sonicmoe::reference::detail
