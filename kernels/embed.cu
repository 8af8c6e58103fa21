// Embedding gather: one block per token, threads stride over the row.
#include "common.cuh"
#include "embed.cuh"

namespace mistral {
namespace cuda {

namespace {
template <typename W>
__global__ void embed_kernel(const W* __restrict__ E, const int32_t* __restrict__ ids, int D, float* __restrict__ x) {
  const W* row = E + size_t(ids[blockIdx.x]) * D;
  float* out = x + size_t(blockIdx.x) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) out[i] = to_float(row[i]);
}
}  // namespace

cudaError_t embed_cuda(const void* E, DType et, const int32_t* ids, int T, int D, float* x, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  switch (et) {
    case DType::F32: embed_kernel<<<T, 256, 0, stream>>>(static_cast<const float*>(E), ids, D, x); break;
    case DType::F16: embed_kernel<<<T, 256, 0, stream>>>(static_cast<const __half*>(E), ids, D, x); break;
    case DType::BF16: embed_kernel<<<T, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(E), ids, D, x); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
