// Q4 / Q8 decode GEMV on the tensor cores (quant_mma.cuh). One block of 8 warps a row tile (16 rows);
// warp w takes the groups w, w + 8, ... of the row tile (Q8: its tiles w, w + 8, ...), its 16-byte tile
// loads kBatch at a time (the first batch issued before x is copied to shared memory as fp16), a k16
// step from four registers dequantized to fp16 (Q4: a word; Q8: two), the B fragment from x (column 0
// only: lanes of groupID 0; the other columns are zero) and one mma into fp32 accumulators, scaled by
// the rows' scales as each Q4 group ends (Q8: once at the end). The block sums its warps' partials in
// warp order (deterministic).
#include <cuda_fp16.h>

#include "common.cuh"
#include "mistral/dtype.h"
#include "mistral/quant.h"
#include "quant_mma.cuh"
#include "quant_mma_layout.h"

namespace mistral {
namespace cuda {

namespace {

constexpr int kWarps = q4mma::kWarps, kThreads = 32 * kWarps;
constexpr int kBatch = 8;  // 16-byte tile loads a lane holds in flight
// Shared memory a block may use without opting in, less the kernel's static part[kWarps][16].
constexpr size_t kMaxSmem = 48 * 1024 - sizeof(float) * q4mma::kWarps * q4mma::kTileRows;

// A fragment register r of a tile word: two fp16 values code - 8 (exact).
__device__ __forceinline__ uint32_t dequant_reg(uint32_t w, int r) {
  uint32_t v = ((w >> (4 * r)) & 0x000F000Fu) | 0x64006400u;  // 1024 + code, twice
  __half2 h;
  memcpy(&h, &v, 4);
  h = __hsub2(h, __half2half2(__ushort_as_half(0x6408)));  // - 1032
  memcpy(&v, &h, 4);
  return v;
}

// A fragment register from two bytes of a Q8 tile word already XORed with 0x80808080 (sel 0x4140: bytes
// 0 and 1, 0x4342: bytes 2 and 3): fp16 1024 + 128 + q, less 1152.
__device__ __forceinline__ uint32_t dequant_q8_reg(uint32_t w, uint32_t sel) {
  uint32_t v = __byte_perm(w, 0x64646464u, sel);
  __half2 h;
  memcpy(&h, &v, 4);
  h = __hsub2(h, __half2half2(__ushort_as_half(0x6480)));  // - 1152
  memcpy(&v, &h, 4);
  return v;
}

// kQ8: Q8 tiles (16 x 32, one fp32 scale a row, applied at the end), else Q4 tiles (16 x 64, an fp16
// scale a row and group, applied as each group ends).
template <bool kQ8>
__global__ void __launch_bounds__(kThreads)
    mma_gemv_kernel(const float* __restrict__ x, const uint4* __restrict__ tiles, const void* __restrict__ scales,
                    int N, int K, int group, float* __restrict__ y) {
  constexpr int TC = kQ8 ? q4mma::kQ8TileCols : q4mma::kTileCols;
  extern __shared__ __half xs[];  // x as fp16, col_tiles * TC (zero past K)
  __shared__ float part[kWarps][q4mma::kTileRows];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int rt = blockIdx.x;
  const int CT = (K + TC - 1) / TC;
  const int gt = kQ8 ? 1 : group / 64, n_groups = kQ8 ? CT : (K + group - 1) / group;  // Q8: a tile a "group"
  const uint4* row_tiles = tiles + size_t(rt) * size_t(CT) * 32;                       // 32 uint4 a tile
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
  for (int i = threadIdx.x; i < CT * TC; i += kThreads)
    xs[i] = __float2half_rn(i < K ? fminf(fmaxf(x[i], -65504.f), 65504.f) : 0.f);
  __syncthreads();
  const int row0 = rt * q4mma::kTileRows + g, row1 = row0 + 8;
  float acc[4] = {0.f, 0.f, 0.f, 0.f}, total0 = 0.f, total1 = 0.f;
  // One k16 step: A from four registers, B's column 0 from x at columns k0 + 2t (+8) (lanes of groupID 0).
  auto step = [&](const uint32_t(&a)[4], int k0) {
    uint32_t b0, b1;  // every lane loads (no branch before the mma), groupID 0's are kept
    memcpy(&b0, xs + k0 + 2 * t, 4);
    memcpy(&b1, xs + k0 + 2 * t + 8, 4);
    if (g != 0) b0 = 0, b1 = 0;
    mma_16816(acc, a, b0, b1);
  };
  for (int m0 = 0; m0 < m_end; m0 += kBatch) {
    if (m0 != 0) load(m0);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int m = m0 + b;
      if (m >= m_end) break;
      const int kt = tile_of(m);
      if (kt < CT) {
        if constexpr (kQ8) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const uint32_t w0 = word_of(q[b], 2 * j) ^ 0x80808080u, w1 = word_of(q[b], 2 * j + 1) ^ 0x80808080u;
            const uint32_t a[4] = {dequant_q8_reg(w0, 0x4140u), dequant_q8_reg(w0, 0x4342u),
                                   dequant_q8_reg(w1, 0x4140u), dequant_q8_reg(w1, 0x4342u)};
            step(a, kt * TC + 16 * j);
          }
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const uint32_t w = word_of(q[b], j);
            const uint32_t a[4] = {dequant_reg(w, 0), dequant_reg(w, 1), dequant_reg(w, 2), dequant_reg(w, 3)};
            step(a, kt * TC + 16 * j);
          }
        }
      }
      if (!kQ8 && m % gt == gt - 1) {  // a Q4 group ends: scale its sums (column 0: c0 row g, c2 row g + 8)
        const __half* s = static_cast<const __half*>(scales);
        const int gi = q4mma::warp_group(warp, m, gt);
        const float s0 = row0 < N ? __half2float(s[size_t(row0) * n_groups + gi]) : 0.f;
        const float s1 = row1 < N ? __half2float(s[size_t(row1) * n_groups + gi]) : 0.f;
        total0 = fmaf(s0, acc[0], total0);
        total1 = fmaf(s1, acc[2], total1);
        acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      }
    }
  }
  if (kQ8) {  // the rows' scales, once
    const float* s = static_cast<const float*>(scales);
    total0 = row0 < N ? acc[0] * s[row0] : 0.f;
    total1 = row1 < N ? acc[2] * s[row1] : 0.f;
  }
  if (t == 0) part[warp][g] = total0, part[warp][g + 8] = total1;
  __syncthreads();
  if (threadIdx.x < q4mma::kTileRows) {
    float sum = 0.f;
    for (int w = 0; w < kWarps; ++w) sum += part[w][threadIdx.x];
    const int n = rt * q4mma::kTileRows + int(threadIdx.x);
    if (n < N) y[n] = sum;
  }
}

}  // namespace

bool quant_mma_supported(DType t, int64_t N, int64_t K, int64_t group) {
  static const bool tensor_cores = [] {  // mma.m16n8k16 with fp16: sm_80 and later
    int dev = 0, major = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 8;
  }();
  if (!tensor_cores || N <= 0 || K <= 0 || N > int64_t(1) << 30) return false;
  if (t == DType::Q8) return size_t(q4mma::q8_col_tiles(K)) * q4mma::kQ8TileCols * 2 <= kMaxSmem;
  return t == DType::Q4 && group > 0 && group % 64 == 0 && size_t(q4mma::col_tiles(K)) * 64 * 2 <= kMaxSmem;
}

size_t quant_mma_bytes(DType t, int64_t N, int64_t K) {
  return t == DType::Q8 ? q4mma::q8_bytes(N, K) : q4mma::bytes(N, K);
}

void quant_mma_repack(DType t, const void* data, int64_t N, int64_t K, void* out) {
  const auto* src = static_cast<const uint8_t*>(data);
  auto* dst = static_cast<uint8_t*>(out);
  if (t == DType::Q8)
    q4mma::repack_q8(src, N, K, quant_row_bytes(t, K), dst);
  else
    q4mma::repack(src, N, K, quant_row_bytes(t, K), dst);
}

cudaError_t quant_mma_gemv_cuda(const float* x, const void* tiles, const void* scales, DType t, int N, int K, int group,
                                float* y, cudaStream_t stream) {
  if (!quant_mma_supported(t, N, K, group) || !x || !tiles || !scales || !y) return cudaErrorInvalidValue;
  const unsigned grid = unsigned(q4mma::row_tiles(N));
  const auto* tl = static_cast<const uint4*>(tiles);
  if (t == DType::Q8) {
    const size_t smem = size_t(q4mma::q8_col_tiles(K)) * q4mma::kQ8TileCols * sizeof(__half);
    mma_gemv_kernel<true><<<grid, kThreads, smem, stream>>>(x, tl, scales, N, K, group, y);
  } else {
    const size_t smem = size_t(q4mma::col_tiles(K)) * 64 * sizeof(__half);
    mma_gemv_kernel<false><<<grid, kThreads, smem, stream>>>(x, tl, scales, N, K, group, y);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
