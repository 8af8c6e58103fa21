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

// A thread's elements i = threadIdx.x + j * blockDim.x, j < kMaxPer, are all loaded (x, delta, w) before
// any is used: a loop that loaded, summed and stored one element at a time waited on memory once per
// element and again in the scaling pass (~6 us a launch on a 7B decode step, ncu). Rows longer than
// kMaxPer * blockDim.x take the loop (same order of operations, same bits).
constexpr int kMaxPer = 16;
// Blocks of up to 1024 threads (threads_for): the kernels are compiled for that many (at most 64
// registers a thread), or a launch with a row of 1024 or more elements fails for want of registers.
constexpr int kMaxThreads = 1024;

template <typename W, bool kAdd>
__device__ __forceinline__ void norm_row(float* xr, const float* dr, const W* __restrict__ w, float eps, int D,
                                         float* yr) {
  const int per = (D + int(blockDim.x) - 1) / int(blockDim.x);
  float ss = 0.f;
  if (per <= kMaxPer) {
    float v[kMaxPer], wv[kMaxPer];
#pragma unroll
    for (int j = 0; j < kMaxPer; ++j) {
      const int i = int(threadIdx.x) + j * int(blockDim.x);
      v[j] = 0.f, wv[j] = 0.f;
      if (j < per && i < D) {
        v[j] = kAdd ? __fadd_rn(xr[i], dr[i]) : xr[i];
        wv[j] = to_float(w[i]);
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxPer; ++j) {
      const int i = int(threadIdx.x) + j * int(blockDim.x);
      if (j < per && i < D) {
        if (kAdd) xr[i] = v[j];
        ss = add_square(ss, v[j]);
      }
    }
    const float r = row_scale(ss, D, eps);
#pragma unroll
    for (int j = 0; j < kMaxPer; ++j) {
      const int i = int(threadIdx.x) + j * int(blockDim.x);
      if (j < per && i < D) yr[i] = scaled(v[j], r, wv[j]);
    }
    return;
  }
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = kAdd ? __fadd_rn(xr[i], dr[i]) : xr[i];
    if (kAdd) xr[i] = v;
    ss = add_square(ss, v);
  }
  const float r = row_scale(ss, D, eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = scaled(xr[i], r, to_float(w[i]));
}

template <typename W>
__global__ void __launch_bounds__(kMaxThreads) rmsnorm_kernel(const float* __restrict__ x, const W* __restrict__ w, float eps, int D,
                               float* __restrict__ y) {
  pdl_trigger();  // a GEMV launched after this kernel may start (pdl.cuh)
  pdl_wait();     // x is the kernel before's output
  norm_row<W, false>(const_cast<float*>(x) + size_t(blockIdx.x) * D, nullptr, w, eps, D, y + size_t(blockIdx.x) * D);
}

// x[row] += delta[row]; y[row] = rmsnorm(x[row]) * w. y may alias delta: thread i reads delta[i] (and
// writes x[i]) before the barriers in row_scale and writes y[i] only after them, for the same indices i;
// rows belong to one block each. So neither delta nor y is __restrict__.
template <typename W>
__global__ void __launch_bounds__(kMaxThreads) add_rmsnorm_kernel(float* __restrict__ x, const float* delta, const W* __restrict__ w, float eps, int D,
                                   float* y) {
  pdl_trigger();  // a GEMV launched after this kernel may start (pdl.cuh)
  pdl_wait();     // delta is the kernel before's output
  norm_row<W, true>(x + size_t(blockIdx.x) * D, delta + size_t(blockIdx.x) * D, w, eps, D, y + size_t(blockIdx.x) * D);
}

int threads_for(int D) { return D >= kMaxThreads ? kMaxThreads : ((D + 31) / 32) * 32; }

// Launched with programmatic dependence when pdl_enabled() (the kernels pdl_wait before reading).
template <typename W>
cudaError_t launch_rmsnorm(const float* x, const void* w, float eps, int T, int D, float* y, cudaStream_t stream) {
  return launch_maybe_pdl(rmsnorm_kernel<W>, dim3(unsigned(T)), dim3(unsigned(threads_for(D))), 0, stream, x,
                          static_cast<const W*>(w), eps, D, y);
}
template <typename W>
cudaError_t launch_add_rmsnorm(float* x, const float* delta, const void* w, float eps, int T, int D, float* y,
                               cudaStream_t stream) {
  return launch_maybe_pdl(add_rmsnorm_kernel<W>, dim3(unsigned(T)), dim3(unsigned(threads_for(D))), 0, stream, x,
                          delta, static_cast<const W*>(w), eps, D, y);
}

}  // namespace

cudaError_t rmsnorm_cuda(const float* x, const void* w, DType wt, float eps, int T, int D, float* y,
                         cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D <= 0 || T < 0) return cudaErrorInvalidValue;
  switch (wt) {
    case DType::F32:
      return launch_rmsnorm<float>(x, w, eps, T, D, y, stream);
    case DType::F16:
      return launch_rmsnorm<__half>(x, w, eps, T, D, y, stream);
    case DType::BF16:
      return launch_rmsnorm<__nv_bfloat16>(x, w, eps, T, D, y, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t add_rmsnorm_cuda(float* x, const float* delta, const void* w, DType wt, float eps, int T, int D, float* y,
                             cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D <= 0 || T < 0 || x == y || x == delta) return cudaErrorInvalidValue;
  switch (wt) {
    case DType::F32:
      return launch_add_rmsnorm<float>(x, delta, w, eps, T, D, y, stream);
    case DType::F16:
      return launch_add_rmsnorm<__half>(x, delta, w, eps, T, D, y, stream);
    case DType::BF16:
      return launch_add_rmsnorm<__nv_bfloat16>(x, delta, w, eps, T, D, y, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace mistral
