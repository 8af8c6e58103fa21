// RMSNorm on the GPU: y[T, D] = x / sqrt(mean(x^2) + eps) * w, fp32 activations, weight in its dtype;
// and the same fused with the residual add before it.
#pragma once
#include <cuda_runtime.h>

#include "mistral/dtype.h"

namespace mistral {
namespace cuda {

// x, y: device [T, D] fp32; w: device [D] of dtype wt. Returns the launch error (cudaSuccess on success).
cudaError_t rmsnorm_cuda(const float* x, const void* w, DType wt, float eps, int T, int D, float* y,
                         cudaStream_t stream);
// The residual add fused with the norm: x[T, D] += delta[T, D], then y = rmsnorm(x) * w, bit for bit what
// add_cuda then rmsnorm_cuda give. y may alias delta (the forward pass normalises into the buffer it
// adds); x must alias neither (cudaErrorInvalidValue).
cudaError_t add_rmsnorm_cuda(float* x, const float* delta, const void* w, DType wt, float eps, int T, int D, float* y,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
