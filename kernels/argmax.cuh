// Greedy decoding on the device: the index of each logits row's largest value, so that only the chosen
// token ids (4 bytes a row) go to the host.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

// out[r] = the first index of the largest value of row r of x[rows, n] (device, n >= 1), as a scan from
// index 0 that keeps the best so far on a strict > (mistral::argmax) gives it, NaNs included.
// out: device [rows].
cudaError_t argmax_rows_cuda(const float* x, int rows, int n, int32_t* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
