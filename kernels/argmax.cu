// Row argmax: one block of 1024 threads a row. Thread i scans elements i, i + 1024, ... in order and
// keeps the first largest it sees; the block then merges the threads' candidates (larger value first,
// the lower index on equal values) through warp shuffles and one shared-memory round, so the result is
// the row's first largest value whatever the thread count. NaNs as mistral::argmax treats them: one at
// index 0 wins (the host scan never leaves it), any other is passed over.
#include <cmath>

#include "argmax.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kThreads = 1024;

// The better of two candidates (value, index); index -1 is no candidate.
__device__ __forceinline__ void take_better(float& v, int& i, float ov, int oi) {
  if (oi < 0) return;
  if (i < 0 || ov > v || (!(v > ov) && oi < i)) v = ov, i = oi;
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* __restrict__ x, int n, int32_t* __restrict__ out) {
  const float* r = x + size_t(blockIdx.x) * size_t(n);
  float v = 0.f;
  int i = -1;
  for (int k = threadIdx.x; k < n; k += kThreads) {
    float e = r[k];
    if (e != e) {  // NaN: as the host scan, which never moves to one and never leaves one at index 0
      if (k != 0) continue;
      e = INFINITY;
    }
    if (i < 0 || e > v) v = e, i = k;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    take_better(v, i, ov, oi);
  }
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = v, si[warp] = i;
  __syncthreads();
  if (warp == 0) {
    v = sv[lane], i = si[lane];  // kThreads / 32 == 32 candidates, one a lane
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, i, o);
      take_better(v, i, ov, oi);
    }
    if (lane == 0) out[blockIdx.x] = i;
  }
}

}  // namespace

cudaError_t argmax_rows_cuda(const float* x, int rows, int n, int32_t* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (n <= 0 || !x || !out) return cudaErrorInvalidValue;
  argmax_kernel<<<unsigned(rows), kThreads, 0, stream>>>(x, n, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
