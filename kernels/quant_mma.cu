// Q4 decode GEMV on the tensor cores (quant_mma.cuh). One block of 8 warps a row tile (16 rows); warp w
// takes the groups w, w + 8, ... of the row tile, its 16-byte tile loads kBatch at a time (the first
// batch issued before x is copied to shared memory as fp16), a k16 step a 32-bit word: four registers
// dequantized to fp16, the B fragment from x (column 0 only: lanes of groupID 0; the other columns are
// zero) and one mma into fp32 accumulators, scaled by the rows' group scales when a group ends. The
// block sums its warps' partials in warp order (deterministic).
#include <cuda_fp16.h>

#include "quant_mma.cuh"
#include "quant_mma_layout.h"

namespace mistral {
namespace cuda {

namespace {

constexpr int kWarps = q4mma::kWarps, kThreads = 32 * kWarps;
constexpr int kBatch = 8;  // 16-byte tile loads a lane holds in flight
constexpr size_t kMaxSmem = 48 * 1024;

__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment register r of a tile word: two fp16 values code - 8 (exact).
__device__ __forceinline__ uint32_t dequant_reg(uint32_t w, int r) {
  uint32_t v = ((w >> (4 * r)) & 0x000F000Fu) | 0x64006400u;  // 1024 + code, twice
  __half2 h;
  memcpy(&h, &v, 4);
  h = __hsub2(h, __half2half2(__ushort_as_half(0x6408)));  // - 1032
  memcpy(&v, &h, 4);
  return v;
}

__device__ __forceinline__ uint32_t word_of(const uint4& q, int j) {
  return j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w;
}

__global__ void __launch_bounds__(kThreads)
    q4_mma_kernel(const float* __restrict__ x, const uint4* __restrict__ tiles, const __half* __restrict__ scales, int N,
                  int K, int group, float* __restrict__ y) {
  extern __shared__ __half xs[];  // x as fp16, col_tiles * 64 (zero past K)
  __shared__ float part[kWarps][q4mma::kTileRows];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int rt = blockIdx.x;
  const int CT = (K + 63) / 64, gt = group / 64, n_groups = (K + group - 1) / group;
  const uint4* row_tiles = tiles + size_t(rt) * size_t(CT) * 32;  // 32 uint4 a tile
  const int m_end = q4mma::warp_steps(warp, n_groups, gt);
  auto tile_of = [&](int m) { return q4mma::warp_tile(warp, m, gt); };
  uint4 q[kBatch];
  auto load = [&](int m0) {
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int kt = tile_of(m0 + b);
      q[b] = m0 + b < m_end && kt < CT ? row_tiles[size_t(kt) * 32 + lane] : make_uint4(0u, 0u, 0u, 0u);
    }
  };
  load(0);  // before the copy of x: both latencies at once
  for (int i = threadIdx.x; i < CT * 64; i += kThreads)
    xs[i] = __float2half_rn(i < K ? fminf(fmaxf(x[i], -65504.f), 65504.f) : 0.f);
  __syncthreads();
  const int row0 = rt * q4mma::kTileRows + g, row1 = row0 + 8;
  float acc[4] = {0.f, 0.f, 0.f, 0.f}, total0 = 0.f, total1 = 0.f;
  for (int m0 = 0; m0 < m_end; m0 += kBatch) {
    if (m0 != 0) load(m0);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int m = m0 + b;
      if (m >= m_end) break;
      const int kt = tile_of(m);
      if (kt < CT) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t w = word_of(q[b], j);
          const uint32_t a[4] = {dequant_reg(w, 0), dequant_reg(w, 1), dequant_reg(w, 2), dequant_reg(w, 3)};
          uint32_t b0 = 0, b1 = 0;
          if (g == 0) {  // column 0 of B is x; the others are zero
            const __half* xk = xs + kt * 64 + 16 * j + 2 * t;
            memcpy(&b0, xk, 4);
            memcpy(&b1, xk + 8, 4);
          }
          mma16816(acc, a, b0, b1);
        }
      }
      if (m % gt == gt - 1) {  // the group ends: scale its sums (column 0: c0 row g, c2 row g + 8)
        const int gi = q4mma::warp_group(warp, m, gt);
        const float s0 = row0 < N ? __half2float(scales[size_t(row0) * n_groups + gi]) : 0.f;
        const float s1 = row1 < N ? __half2float(scales[size_t(row1) * n_groups + gi]) : 0.f;
        total0 = fmaf(s0, acc[0], total0);
        total1 = fmaf(s1, acc[2], total1);
        acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      }
    }
  }
  if (t == 0) part[warp][g] = total0, part[warp][g + 8] = total1;
  __syncthreads();
  if (threadIdx.x < q4mma::kTileRows) {
    float s = 0.f;
    for (int w = 0; w < kWarps; ++w) s += part[w][threadIdx.x];
    const int n = rt * q4mma::kTileRows + int(threadIdx.x);
    if (n < N) y[n] = s;
  }
}

}  // namespace

bool quant_mma_supported(int64_t N, int64_t K, int64_t group) {
  return N > 0 && K > 0 && group > 0 && group % 64 == 0 && size_t(q4mma::col_tiles(K)) * 64 * 2 <= kMaxSmem &&
         N <= int64_t(1) << 30;
}

cudaError_t quant_mma_gemv_cuda(const float* x, const void* tiles, const void* scales, int N, int K, int group, float* y,
                                cudaStream_t stream) {
  if (!quant_mma_supported(N, K, group) || !x || !tiles || !scales || !y) return cudaErrorInvalidValue;
  const size_t smem = size_t(q4mma::col_tiles(K)) * 64 * sizeof(__half);
  q4_mma_kernel<<<unsigned(q4mma::row_tiles(N)), kThreads, smem, stream>>>(
      x, static_cast<const uint4*>(tiles), static_cast<const __half*>(scales), N, K, group, y);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
