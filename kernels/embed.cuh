// Embedding gather: x[T, D] = fp32(E[ids[t], :]).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "mistral/dtype.h"

namespace mistral {
namespace cuda {

// E: device [V, D] of dtype et; ids: device [T] (every id already checked < V); x: device [T, D].
cudaError_t embed_cuda(const void* E, DType et, const int32_t* ids, int T, int D, float* x, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
