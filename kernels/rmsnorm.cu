// RMSNorm kernels: one block per row; each thread strides over the row, a block reduction gives the
// mean square (fp32), then every thread scales its elements. The fused variant first adds the residual
// (x += delta) in the same pass. Both share the element loop order, the reduction and the scaling, so the
// fused kernel gives bit for bit what add_kernel followed by rmsnorm_kernel gives.
// Preconditions: D > 0, T >= 0; blockDim.x a multiple of 32, at most 1024.
#include "common.cuh"
#include "pdl.cuh"
#include "rmsnorm.cuh"

namespace mistral {
namespace cuda {

namespace {

// 1 / sqrt(mean square + eps) of a row from each thread's partial sum of squares (every thread of the
// block must call it; every thread gets the result). Uses the block barrier twice.
__device__ __forceinline__ float row_scale(float ss, int D, float eps) {
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
  return rsqrtf(warp_sums[0] / float(D) + eps);
}

// Explicitly rounded operations, so that no contraction choice of the compiler can make the two kernels
// (or two builds) differ: ss + v*v as one fma, y = (x * r) * w as two rounded products.
__device__ __forceinline__ float add_square(float ss, float v) { return __fmaf_rn(v, v, ss); }
__device__ __forceinline__ float scaled(float v, float r, float w) { return __fmul_rn(__fmul_rn(v, r), w); }

template <typename W>
__global__ void rmsnorm_kernel(const float* __restrict__ x, const W* __restrict__ w, float eps, int D,
                               float* __restrict__ y) {
  pdl_trigger();  // a GEMV launched after this kernel may start (pdl.cuh)
  const float* xr = x + size_t(blockIdx.x) * D;
  float* yr = y + size_t(blockIdx.x) * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) ss = add_square(ss, xr[i]);
  const float r = row_scale(ss, D, eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = scaled(xr[i], r, to_float(w[i]));
}

// x[row] += delta[row]; y[row] = rmsnorm(x[row]) * w. y may alias delta: thread i reads delta[i] (and
// writes x[i]) before the barriers in row_scale and writes y[i] only after them, for the same indices i;
// rows belong to one block each. So neither delta nor y is __restrict__.
template <typename W>
__global__ void add_rmsnorm_kernel(float* __restrict__ x, const float* delta, const W* __restrict__ w, float eps, int D,
                                   float* y) {
  pdl_trigger();  // a GEMV launched after this kernel may start (pdl.cuh)
  float* xr = x + size_t(blockIdx.x) * D;
  const float* dr = delta + size_t(blockIdx.x) * D;
  float* yr = y + size_t(blockIdx.x) * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = __fadd_rn(xr[i], dr[i]);
    xr[i] = v;
    ss = add_square(ss, v);
  }
  const float r = row_scale(ss, D, eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = scaled(xr[i], r, to_float(w[i]));
}

int threads_for(int D) { return D >= 1024 ? 1024 : ((D + 31) / 32) * 32; }

}  // namespace

cudaError_t rmsnorm_cuda(const float* x, const void* w, DType wt, float eps, int T, int D, float* y,
                         cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D <= 0 || T < 0) return cudaErrorInvalidValue;
  const int threads = threads_for(D);
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

cudaError_t add_rmsnorm_cuda(float* x, const float* delta, const void* w, DType wt, float eps, int T, int D, float* y,
                             cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D <= 0 || T < 0 || x == y || x == delta) return cudaErrorInvalidValue;
  const int threads = threads_for(D);
  switch (wt) {
    case DType::F32:
      add_rmsnorm_kernel<float><<<T, threads, 0, stream>>>(x, delta, static_cast<const float*>(w), eps, D, y);
      break;
    case DType::F16:
      add_rmsnorm_kernel<__half><<<T, threads, 0, stream>>>(x, delta, static_cast<const __half*>(w), eps, D, y);
      break;
    case DType::BF16:
      add_rmsnorm_kernel<__nv_bfloat16>
          <<<T, threads, 0, stream>>>(x, delta, static_cast<const __nv_bfloat16*>(w), eps, D, y);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
