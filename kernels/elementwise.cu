// Element-wise kernels: a grid-stride loop, one element per thread per step.
#include "common.cuh"
#include "elementwise.cuh"

namespace mistral {
namespace cuda {

namespace {
// out may alias gate (the forward pass writes in place): no __restrict__ on either.
__global__ void swiglu_kernel(const float* gate, const float* __restrict__ up, size_t n, float* out) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    out[i] = swiglu_value(gate[i], up[i]);
  }
}
__global__ void add_kernel(float* x, const float* __restrict__ y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    x[i] += y[i];
}
template <typename W>
__global__ void convert_kernel(const float* __restrict__ src, W* __restrict__ dst, size_t n);
template <>
__global__ void convert_kernel<__half>(const float* __restrict__ src, __half* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __float2half_rn(fminf(fmaxf(src[i], -65504.f), 65504.f));  // saturate, never inf
}
template <>
__global__ void convert_kernel<__nv_bfloat16>(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}
unsigned blocks_for(size_t n) { return unsigned(n / 256 + 1 < 65535 ? n / 256 + 1 : 65535); }
}  // namespace

cudaError_t swiglu_cuda(const float* gate, const float* up, size_t n, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  swiglu_kernel<<<blocks_for(n), 256, 0, stream>>>(gate, up, n, out);
  return cudaGetLastError();
}

cudaError_t add_cuda(float* x, const float* y, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  add_kernel<<<blocks_for(n), 256, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t convert_cuda(const float* src, void* dst, DType t, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (t == DType::F16) convert_kernel<__half><<<blocks_for(n), 256, 0, stream>>>(src, static_cast<__half*>(dst), n);
  else if (t == DType::BF16)
    convert_kernel<__nv_bfloat16><<<blocks_for(n), 256, 0, stream>>>(src, static_cast<__nv_bfloat16*>(dst), n);
  else return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
