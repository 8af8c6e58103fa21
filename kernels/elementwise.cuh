// Element-wise ops: SwiGLU (silu(gate) * up), residual add, fp32 -> fp16/bf16 conversion.
#pragma once
#include <cstddef>
#include <cuda_runtime.h>

#include "mistral/dtype.h"

namespace mistral {
namespace cuda {

cudaError_t swiglu_cuda(const float* gate, const float* up, size_t n, float* out, cudaStream_t stream);
cudaError_t add_cuda(float* x, const float* y, size_t n, cudaStream_t stream);
// dst[i] = convert(src[i]) to dtype t (F16 or BF16), round to nearest even.
cudaError_t convert_cuda(const float* src, void* dst, DType t, size_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
