// RMSNorm kernel: one block per row; each thread strides over the row, a block reduction gives the
// mean square (fp32), then every thread scales its elements. Preconditions: D > 0, T >= 0.
#include "common.cuh"
#include "rmsnorm.cuh"

namespace mistral {
namespace cuda {

namespace {

template <typename W>
__global__ void rmsnorm_kernel(const float* __restrict__ x, const W* __restrict__ w, float eps, int D,
                               float* __restrict__ y) {
  const float* xr = x + size_t(blockIdx.x) * D;
  float* yr = y + size_t(blockIdx.x) * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    ss = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) warp_sums[0] = ss;
  }
  __syncthreads();
  const float r = rsqrtf(warp_sums[0] / float(D) + eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = xr[i] * r * to_float(w[i]);
}

}  // namespace

cudaError_t rmsnorm_cuda(const float* x, const void* w, DType wt, float eps, int T, int D, float* y,
                         cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D <= 0 || T < 0) return cudaErrorInvalidValue;
  const int threads = D >= 1024 ? 1024 : ((D + 31) / 32) * 32;
  switch (wt) {
    case DType::F32:
      rmsnorm_kernel<float><<<T, threads, 0, stream>>>(x, static_cast<const float*>(w), eps, D, y);
      break;
    case DType::F16:
      rmsnorm_kernel<__half><<<T, threads, 0, stream>>>(x, static_cast<const __half*>(w), eps, D, y);
      break;
    case DType::BF16:
      rmsnorm_kernel<__nv_bfloat16><<<T, threads, 0, stream>>>(x, static_cast<const __nv_bfloat16*>(w), eps, D, y);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
