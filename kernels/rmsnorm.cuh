// RMSNorm on the GPU: y[T, D] = x / sqrt(mean(x^2) + eps) * w, fp32 activations, weight in its dtype.
#pragma once
#include <cuda_runtime.h>

#include "mistral/dtype.h"

namespace mistral {
namespace cuda {

// x, y: device [T, D] fp32; w: device [D] of dtype wt. Returns the launch error (cudaSuccess on success).
cudaError_t rmsnorm_cuda(const float* x, const void* w, DType wt, float eps, int T, int D, float* y,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
