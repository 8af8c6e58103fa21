// Quantized weights (Q8, NF4, Q4; byte layout of include/mistral/quant.h): GEMV with dequantization in
// registers for T <= kGemvMaxT tokens, and dequantization to fp16 for the cuBLAS path.
//
// quant_gemv_kernel, thread layout. Blocks of 8 warps. A warp computes kRows = 2 output rows for all T
// tokens: rows 2p and 2p + 1 of one matrix, or (SwiGLU) row p of the gate and row p of the up matrix,
// which it combines. `split` consecutive warps of a block (1, 2, 4 or 8, chosen per matrix so that its
// grid holds about kDefaultWarpsPerSm = 24 warps per SM) work on the same two rows and divide K between
// them, so a block covers 8 / split pairs. One launch may hold several matrices of one format and K
// (q, k, v): each gets its own blocks and its own split. A packed row is read in 16-byte chunks (32 elements of a 4-bit
// format, 16 of int8): lane l of the warp with split index s takes chunks s * 32 + l, then every
// (split * 32)-th, up to kPrefetch of them per row loaded before any is used; per row a warp loads 512
// contiguous bytes per step, one uint4 per lane, 16-byte aligned because every row is a multiple of 16
// bytes long and `data` is 16-byte aligned (checked). Each chunk lies inside one scale group (NF4 / Q4
// groups are multiples of 32), so a lane sums code * x over the chunk and applies that group's scale
// once; Q8's per-row scale is applied after the reduction. Both rows use each x value the lane loads.
// x: when T rows of it fit kMaxStageBytes (every decode step of a 7B shape), the block first copies it
// to shared memory in a padded layout (kXStaged, see below); else float4 loads from global memory when
// K % 4 == 0 and x is 16-byte aligned, scalars otherwise. The three give the same bits. Only the partial
// last chunk of a row (K not a multiple of 16 / 32) is guarded: its weight bytes lie inside the padded row,
// its x reads stop below K. Rows past N (the second row when N is odd) are clamped to N - 1 for loading
// and never written.
// Reduction: shuffle within the warp, then the `split` partials through shared memory `part` (each
// slot written by one lane 0, read after the one __syncthreads, never reused: no race); the block's
// first threads write y. Every thread reaches every __syncthreads (no early return).
// Decoding: Q8 and Q4 assemble the float 2^23 + u from the bits (u = int8 + 128, or the nibble) and
// subtract the offset, exact; NF4 reads its 16 code values from shared memory (16 distinct banks).
//
// QuantXMath::f16 (kXHalf, Q8 and Q4; see the comment above kXHalf): x staged as scaled fp16, each chunk's
// products summed in half2, the chunks in fp32. QuantXMath::i8 (kXInt8, Q8 and Q4; the comment above
// kXInt8): x staged as int8 with a scale a chunk, each chunk's products one exact integer sum (dp4a).
//
// dequant_kernel: one thread per 16-byte chunk of the whole matrix (row i / chunks, chunk i % chunks),
// coalesced uint4 loads; it writes the chunk's elements below K (16-byte stores of 8 halves when
// K % 8 == 0 and `out` is 16-byte aligned, single halves otherwise).
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common.cuh"
#include "gemv.cuh"
#include "mistral/quant.h"
#include "pdl.cuh"
#include "quant_gemv.cuh"

// The per-lane and per-chunk work is device code, and host code too with MISTRAL_QUANT_GEMV_HOST defined:
// tools/quant_gemv_host_check.cu runs it on the CPU (exact-size buffers under AddressSanitizer) against
// dequantize_row, so that its indexing can be checked on a machine without a GPU.
#ifdef MISTRAL_QUANT_GEMV_HOST
#define MR_QFN __host__ __device__ __forceinline__
#else
#define MR_QFN __device__ __forceinline__
#endif

namespace mistral {
namespace cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 2;  // output rows per warp
// gemv_split's target. Measured by tools/gemv_bench on an H200 (run 6, a 7B layer's four decode launches,
// batch 1): 24 (or 16) took 79.2 us for int4, 88.4 for int8, 96.4 for NF4; 32 took 83.7, 90.0, 100.5
// (48 the same as 32). What changes is q, o and down (2048 row pairs each): one warp a pair, not two.
constexpr int kDefaultWarpsPerSm = 24;

struct CodeTable {  // NF4's code values, passed by value to the kernels
  float v[16];
};

template <DType D>
struct Format {
  static constexpr int kElems = 32;  // elements per 16-byte chunk (two per byte)
};
template <>
struct Format<DType::Q8> {
  static constexpr int kElems = 16;
};

MR_QFN uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
  return __byte_perm(x, y, s);
#else  // selector nibbles 0..7 only (no sign replication)
  const uint64_t xy = uint64_t(y) << 32 | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t((xy >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
#endif
}

MR_QFN float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

MR_QFN uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

MR_QFN float fmul_rn(float a, float b) {  // a product the compiler may not contract into an FMA
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// Code values (before scaling) of the elements in 32-bit word w of a chunk, in element order:
// Q8 4 elements (byte i); NF4 / Q4 8 elements (element 2i in the low nibble of byte i, 2i+1 in the high).
template <DType D>
MR_QFN void decode_word(uint32_t w, const float* lut, float* v) {
  if constexpr (D == DType::Q8) {
    const uint32_t u = w ^ 0x80808080u;  // each int8 b becomes the unsigned byte b + 128
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = bits_to_float(byte_perm(u, 0x4B000000u, 0x7440u | unsigned(i))) - 8388736.0f;
  } else {
    const uint32_t lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;  // byte i: element 2i, 2i+1
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (D == DType::Q4) {  // (code - 8): 2^23 + code - (2^23 + 8)
        v[2 * i] = bits_to_float(byte_perm(lo, 0x4B000000u, 0x7440u | unsigned(i))) - 8388616.0f;
        v[2 * i + 1] = bits_to_float(byte_perm(hi, 0x4B000000u, 0x7440u | unsigned(i))) - 8388616.0f;
      } else {
        v[2 * i] = lut[byte_perm(lo, 0u, 0x4440u | unsigned(i))];
        v[2 * i + 1] = lut[byte_perm(hi, 0u, 0x4440u | unsigned(i))];
      }
    }
  }
}

// Scale i of the scales array: fp32 for Q8, fp16 for the 4-bit formats.
template <DType D>
MR_QFN float scale_at(const void* scales, size_t i) {
  if constexpr (D == DType::Q8)
    return static_cast<const float*>(scales)[i];
  else
    return __half2float(static_cast<const __half*>(scales)[i]);
}

// A launch's matrices (parts): products of one x with up to kGemvMaxParts matrices of one format and K
// (q, k, v), or the gate and up matrices of a SwiGLU (kSwiglu). Part i has `split` warps per row pair
// (gemv_split of its own shape, so that its results do not depend on the other parts of the launch) and
// the blocks first_block[i] .. first_block[i + 1] - 1.
struct QuantPart {
  const uint8_t* data;  // [n, chunks] 16-byte chunks
  const void* scales;   // [n, n_groups]
  float* y;             // [T, n]; a SwiGLU launch writes part 0's only
  int n;                // rows
  int split;            // warps per row pair: 1, 2, 4 or 8
};
struct QuantParts {
  QuantPart part[kGemvMaxParts];
  int first_block[kGemvMaxParts + 1];
  int count;
  bool vec_x;     // K % 4 == 0 and x 16-byte aligned: x read (kXVec4) or copied (kXStaged) by float4
  GemvFusion fuse;  // the norm (staged paths only: the copy of x takes x * g) and the residual add
};


// The two rows a warp reads: row r at row[r] (its 16-byte chunks), its scales from scales[r] + sbase[r].
struct RowPair {
  const uint4* row[kRows];
  const void* scales[kRows];
  size_t sbase[kRows];
};

// What warp `warp` of block `block` works on: pair `pair` of part `part`, whose block starts at pair
// first_pair and holds kWarps / split pairs. A plain launch's pair p is rows 2p and 2p + 1 (the second
// clamped to the last row), a SwiGLU launch's pair p is row p of the gate and row p of the up matrix.
struct WarpJob {
  int part, split, first_pair, pair;
};
template <bool kSwiglu>
MR_QFN WarpJob warp_job(const QuantParts& ps, int block, int warp) {
  int i = 0;
  if (!kSwiglu)
    while (i + 1 < ps.count && block >= ps.first_block[i + 1]) ++i;
  WarpJob j;
  j.part = i;
  j.split = ps.part[i].split;
  j.first_pair = (block - ps.first_block[i]) * (kWarps / j.split);
  j.pair = j.first_pair + warp / j.split;
  return j;
}
template <bool kSwiglu>
MR_QFN int pairs_of(int n) {
  return kSwiglu ? n : (n + kRows - 1) / kRows;
}

template <DType D, bool kSwiglu>
MR_QFN RowPair row_pair(const QuantParts& ps, int part, int pair, int K, int group) {
  constexpr int E = Format<D>::kElems;
  const size_t chunks = size_t((K + E - 1) / E), n_groups = size_t((K + group - 1) / group);
  RowPair rp;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const QuantPart& P = ps.part[kSwiglu ? r : part];
    const int n = kSwiglu ? pair : (kRows * pair + r < P.n ? kRows * pair + r : P.n - 1);
    rp.row[r] = reinterpret_cast<const uint4*>(P.data) + size_t(n) * chunks;
    rp.scales[r] = P.scales;
    rp.sbase[r] = D == DType::Q8 ? size_t(n) : size_t(n) * n_groups;
  }
  return rp;
}

// Where x comes from (template parameter kX): kXScalar / kXVec4, global memory [T, K] (float4 loads
// when K % 4 == 0 and x is 16-byte aligned); kXStaged, the block's shared-memory copy [T, xstride] in
// which element e sits at e + 4 * (e / 32) (staged_index): lane l's chunk of 32 elements (16 for Q8)
// then starts 36 l floats (18 l) in, so a warp's float4 reads of 8 lanes at a time hit distinct banks.
// In global memory the same reads are 128 bytes apart from lane to lane: each float4 instruction of a
// warp touched 32 cache lines, and 4-bit decode was bound by L1 wavefronts (4 per element pair) rather
// than by DRAM (~0.8 TB/s of 7B weights on an H200, the same tok/s as on an H100).
constexpr int kXScalar = 0, kXVec4 = 1, kXStaged = 2;
__host__ __device__ __forceinline__ int staged_index(int e) { return e + 4 * (e >> 5); }
__host__ __device__ __forceinline__ int staged_stride(int K) { return 36 * ((K + 31) / 32); }  // floats a token row
constexpr size_t kMaxStageBytes = 72 * 1024;  // three blocks of 8 warps per SM still fit

template <int kX>
MR_QFN int x_index(int e) {
  return kX == kXStaged ? staged_index(e) : e;
}

// The block's shared-memory copy of x [T, K] for kXStaged (row t at xs + t * staged_stride(K), element e
// at staged_index(e)); every thread of the block calls it, and a barrier must follow before any read.
// With g (the fused norm, GemvFusion): the copy holds x_k g_k, and ss[t] gets this thread's share of the
// sum of x^2 of row t (norm_scales finishes it).
template <int T>
__device__ __forceinline__ void stage_x(const float* __restrict__ x, int K, bool vec_x, float* __restrict__ xs,
                                        const float* __restrict__ g = nullptr, float* ss = nullptr) {
  const int stride = staged_stride(K);
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float* xt = x + size_t(t) * size_t(K);
    float* st = xs + size_t(t) * size_t(stride);
    if (g) {
      float s = 0.f;
      if (vec_x) {  // g is 16-byte aligned when x is (checked by the launcher)
        for (int i = threadIdx.x; i < K / 4; i += blockDim.x)
          *reinterpret_cast<float4*>(st + staged_index(4 * i)) =
              norm_step4(reinterpret_cast<const float4*>(xt)[i], reinterpret_cast<const float4*>(g)[i], s);
      } else {
        for (int e = threadIdx.x; e < K; e += blockDim.x) {
          s = fmaf(xt[e], xt[e], s);
          st[staged_index(e)] = __fmul_rn(xt[e], g[e]);
        }
      }
      ss[t] = s;
    } else if (vec_x) {
      for (int i = threadIdx.x; i < K / 4; i += blockDim.x)
        *reinterpret_cast<float4*>(st + staged_index(4 * i)) = reinterpret_cast<const float4*>(xt)[i];
    } else {
      for (int e = threadIdx.x; e < K; e += blockDim.x) st[staged_index(e)] = xt[e];
    }
  }
}

// The fused norm's scales: each thread's ss[t] (from stage_x / stage_x_half) summed over the warp into
// red[warp][t]; after the barrier that follows, norm_scale(red, t, K, eps) is 1 / sqrt(mean x^2 + eps) of
// row t for every thread (the warps' sums added in warp order: the same bits in every block).
template <int T>
__device__ __forceinline__ void norm_partials(const float (&ss)[T], float (*red)[T]) {
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float s = warp_sum(ss[t]);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5][t] = s;
  }
}
template <int T>
__device__ __forceinline__ float norm_scale(const float (*red)[T], int t, int K, float eps) {
  float s = red[0][t];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) s += red[w][t];
  return rsqrtf(s / float(K) + eps);
}

// Chunk c of the row pair (q: its 16 bytes of each row) times the T token rows of x (row t at
// x + t * xstride, laid out as kX says): acc[r][t] += scale * sum(code * x) (Q8: without the scale).
// kWhole: the chunk lies below K; otherwise x is read only below K (the codes there are 0). gshift:
// log2(group) when group is a power of two, else -1.
template <DType D, int T, int kX, bool kWhole>
MR_QFN void chunk_dot(const float* __restrict__ x, int xstride, const uint4 (&q)[kRows], const RowPair& rp, int group,
                      int gshift, int K, int c, const float* lut, float (&acc)[kRows][T]) {
  constexpr int E = Format<D>::kElems, P = E / 4;  // elements per chunk, per 32-bit word
  const int k0 = c * E;
  float b[kRows][T];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) b[r][t] = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float w[kRows][P];
#pragma unroll
    for (int r = 0; r < kRows; ++r) decode_word<D>(word_of(q[r], j), lut, w[r]);
    const int k = k0 + j * P;
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float* xt = x + size_t(t) * size_t(xstride);
      float xv[P];
      if constexpr (kWhole && kX != kXScalar) {  // 4 elements from k + 4h never cross a multiple of 32
#pragma unroll
        for (int h = 0; h < P / 4; ++h) {
          const float4 f = *reinterpret_cast<const float4*>(xt + x_index<kX>(k + 4 * h));
          xv[4 * h] = f.x, xv[4 * h + 1] = f.y, xv[4 * h + 2] = f.z, xv[4 * h + 3] = f.w;
        }
      } else if constexpr (kWhole) {
#pragma unroll
        for (int i = 0; i < P; ++i) xv[i] = xt[k + i];
      } else {
#pragma unroll
        for (int i = 0; i < P; ++i) xv[i] = k + i < K ? xt[x_index<kX>(k + i)] : 0.f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int i = 0; i < P; ++i) b[r][t] = fmaf(w[r][i], xv[i], b[r][t]);
    }
  }
  if constexpr (D == DType::Q8) {
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < T; ++t) acc[r][t] += b[r][t];
  } else {
    // k0 < K, so g < n_groups. Written out here and in the fp16 / int8 chunk functions: a shared helper
    // made nvcc stop versioning the lane loop on gshift (the SASS of a loop iteration grew by ~14%).
    const int g = gshift >= 0 ? k0 >> gshift : k0 / group;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = scale_at<D>(rp.scales[r], rp.sbase[r] + size_t(g));
#pragma unroll
      for (int t = 0; t < T; ++t) acc[r][t] = fmaf(s, b[r][t], acc[r][t]);
    }
  }
}

// 16-byte chunks of each row a lane loads before using any: all of its chunks when it has at most this
// many (a lane of a 4096-wide 4-bit row split over two warps has two), so every load is in flight at
// once (a loop that prefetched only whole groups of four left such lanes one chunk at a time). On an
// H200 this and the fused launches did not move 7B-shape 4-bit decode (169 tok/s, ~0.8 TB/s of
// weights); the shared-memory copy of x did (265 tok/s; ncu: 1.2 TB/s over the GEMVs' time, each block
// waiting first on the copy and then on its weights, hence the first batch issued before the copy).
constexpr int kPrefetch = 4;

// One lane's batch of chunks c, c + c_stride, ..., kPrefetch of them below `full` (the whole chunks of a
// row; the rest are zero and never used), of both rows.
template <DType D>
MR_QFN void load_batch(const RowPair& rp, int c, int c_stride, int full, uint4 (&q)[kPrefetch][kRows]) {
#pragma unroll
  for (int u = 0; u < kPrefetch; ++u)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int cu = c + u * c_stride;
      q[u][r] = cu < full ? rp.row[r][cu] : make_uint4(0u, 0u, 0u, 0u);
    }
}

// One lane's share of the row pair: chunks c_first, c_first + c_stride, ... below ceil(K / E), summed in
// that order. q holds the first batch, loaded by load_batch<D>(rp, c_first, c_stride, K / E, q) before
// the call: the kernel issues it before copying x to shared memory, so that the weights' DRAM latency
// and the copy's overlap. acc is added to.
template <DType D, int T, int kX>
MR_QFN void lane_dot(const float* __restrict__ x, int xstride, const RowPair& rp, uint4 (&q)[kPrefetch][kRows],
                     const float* lut, int K, int group, int gshift, int c_first, int c_stride,
                     float (&acc)[kRows][T]) {
  constexpr int E = Format<D>::kElems;
  const int chunks = (K + E - 1) / E, full = K / E;  // chunks per row (16-byte units), whole ones
  for (int c = c_first; c < full; c += kPrefetch * c_stride) {
    if (c != c_first) load_batch<D>(rp, c, c_stride, full, q);
#pragma unroll
    for (int u = 0; u < kPrefetch; ++u)
      if (c + u * c_stride < full)
        chunk_dot<D, T, kX, true>(x, xstride, q[u], rp, group, gshift, K, c + u * c_stride, lut, acc);
  }
  if (full < chunks && full >= c_first && (full - c_first) % c_stride == 0) {  // the partial last chunk is ours
    uint4 p[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) p[r] = rp.row[r][full];
    chunk_dot<D, T, kX, false>(x, xstride, p, rp, group, gshift, K, full, lut, acc);
  }
}

MR_QFN uint32_t half2_bits(float a, float b) {
  // Saturate like the activation conversion (never inf); element a at the lower address.
  const __half2 h = __floats2half2_rn(fminf(fmaxf(a, -65504.f), 65504.f), fminf(fmaxf(b, -65504.f), 65504.f));
  uint32_t u;
  std::memcpy(&u, &h, 4);
  return u;
}

// The fp16 path (kXHalf; Q8 and Q4, when the launch asks for it: MISTRAL_CUDA_QUANT_HALF=1 in the CUDA
// backend). x is staged in shared memory as fp16, each token row scaled by a power of two 2^sh (exact)
// so that its largest |x| is at most 2^kHalfBound; codes become fp16 with integer operations and one
// exact fp16 subtraction (the 2^10 + u bit pattern again), and a lane sums code * x over its chunk in
// half2 fused multiply-adds: a chunk's sums, then the group scale, the chunk-to-chunk sums and 2^-sh in
// fp32. A half2 lane of a chunk adds 16 products (Q4: |code| <= 8, Q8: 8 products, |code| <= 128), so
// |partial sum| <= 16 * 8 * 2^8 = 2^15 (Q8: 8 * 2^7 * 2^5 = 2^15): no overflow whatever x holds. Each
// product and sum rounds to fp16 (unit roundoff 2^-11): the error of a chunk is below 16 u of
// sum |code x| (the fp32 path's is a few fp32 ulps), except for elements below the fp16 normal range
// after scaling (|x| under 2^-14-kHalfBound of the row's largest, whose own rounding is coarser). Per 8 elements of Q4
// a row takes 1 shift, 4 LOP3, 4 HFMA2 to decode and 4 to multiply, against 8 byte permutes, 8 fp32 subtractions and 8
// FMAs: the SASS of the T = 1 gate/up loop has 1307 instructions against 2193 (Q8: 371 against 569).
//
// Layout of the staged copy: token row t at xh + t * half_stride<D>(K); chunk c (E elements) at c * (E +
// 8) halves, its 8 halves of padding making lane-consecutive chunks' 16-byte reads conflict-free (80 or
// 48 bytes apart); inside each run of 8 elements (Q8: of 4) the order the decoded half2s pair them:
// Q4 (0, 4), (1, 5), (2, 6), (3, 7) of a 32-bit word; Q8 (0, 2), (1, 3). Elements from K up to the
// end of the last chunk are 0 (the partial chunk's codes there may be anything finite).
constexpr int kXHalf = 3;
template <DType D>
constexpr int kHalfBound = D == DType::Q8 ? 5 : 8;  // log2 of the largest staged |x|
template <DType D>
__host__ __device__ __forceinline__ int half_chunk_stride() {
  return Format<D>::kElems + 8;
}
template <DType D>
__host__ __device__ __forceinline__ int half_stride(int K) {  // halves a token row
  return (K + Format<D>::kElems - 1) / Format<D>::kElems * half_chunk_stride<D>();
}
// Where element i (0..7) of a run of 8 goes within the run.
template <DType D>
__host__ __device__ __forceinline__ int half_pos(int i) {
  return D == DType::Q8 ? (i & 4) + 2 * (i & 1) + ((i >> 1) & 1) : 2 * (i & 3) + (i >> 2);
}
// The staged index of element e of a token row.
template <DType D>
__host__ __device__ __forceinline__ int half_index(int e) {
  constexpr int E = Format<D>::kElems;
  return e / E * half_chunk_stride<D>() + (e % E & ~7) + half_pos<D>(e & 7);
}
// sh for a token row whose largest |x| is m: x * 2^sh is at most 2^kHalfBound in magnitude (0 for a row
// of zeros, inf or NaN; at most 120, so 2^sh and 2^-sh stay normal floats).
template <DType D>
MR_QFN int half_shift(float m) {
  if (!(m > 0.f) || !(m <= 3.40282347e38f)) return 0;  // 0, NaN or inf
  int p;
  (void)frexpf(m, &p);  // m < 2^p
  const int sh = kHalfBound<D> - p;
  return sh > 120 ? 120 : sh;
}
MR_QFN float pow2f(int e) { return bits_to_float(uint32_t(127 + e) << 23); }  // -126 <= e <= 127

// The half2 arithmetic on 32-bit patterns (low half = the element at the lower address); on the host
// each result is the exact value rounded once to fp16, as the device instructions round.
MR_QFN uint32_t h2_fma(uint32_t a, uint32_t b, uint32_t c) {
#ifdef __CUDA_ARCH__
  __half2 r = __hfma2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b),
                      *reinterpret_cast<const __half2*>(&c));
  return *reinterpret_cast<uint32_t*>(&r);
#else
  uint32_t r = 0;
  for (int i = 0; i < 2; ++i) {
    auto h = [&](uint32_t v) {
      __half_raw raw;
      raw.x = uint16_t(v >> (16 * i));
      return double(__half2float(__half(raw)));
    };
    const __half_raw o = __half_raw(__double2half(h(a) * h(b) + h(c)));
    r |= uint32_t(o.x) << (16 * i);
  }
  return r;
#endif
}
MR_QFN float h2_sum(uint32_t a) {  // low + high in fp32
#ifdef __CUDA_ARCH__
  const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&a));
  return f.x + f.y;
#else
  __half_raw lo, hi;
  lo.x = uint16_t(a), hi.x = uint16_t(a >> 16);
  return __half2float(__half(lo)) + __half2float(__half(hi));
#endif
}
// (w & mask) | 0x64006400 as one LOP3 (the compiler splits it in two, each with one immediate, otherwise).
template <uint32_t kMask>
MR_QFN uint32_t mask_or_6400(uint32_t w) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(w), "n"(kMask), "n"(0x64006400u));
  return r;
#else
  return (w & kMask) | 0x64006400u;
#endif
}
constexpr uint32_t kH2One = 0x3C003C00u, kH2Sixteenth = 0x2C002C00u;
constexpr uint32_t kH2Minus1032 = 0xE408E408u, kH2Minus72 = 0xD480D480u, kH2Minus1152 = 0xE480E480u;

// The codes of 32-bit word w of a chunk as half2s, code - 8 (Q4) or the int8 value (Q8), exact, in the
// pairing of the staged x: Q4 h[i] = (element i, element i + 4), i < 4; Q8 h[0] = (0, 2), h[1] = (1, 3).
template <DType D>
MR_QFN void decode_word_h2(uint32_t w, uint32_t (&h)[4]) {
  if constexpr (D == DType::Q8) {
    const uint32_t u = w ^ 0x80808080u;  // int8 b -> byte b + 128; 0x64XX is the fp16 1024 + XX
    h[0] = h2_fma(byte_perm(u, 0x64646464u, 0x4240u), kH2One, kH2Minus1152);
    h[1] = h2_fma(byte_perm(u, 0x64646464u, 0x4341u), kH2One, kH2Minus1152);
    h[2] = h[3] = 0u;
  } else {  // 0x6400 | c is 1024 + c; 0x6400 | (c << 4) is 1024 + 16 c
    const uint32_t w8 = w >> 8;
    h[0] = h2_fma(mask_or_6400<0x000F000Fu>(w), kH2One, kH2Minus1032);
    h[1] = h2_fma(mask_or_6400<0x00F000F0u>(w), kH2Sixteenth, kH2Minus72);
    h[2] = h2_fma(mask_or_6400<0x000F000Fu>(w8), kH2One, kH2Minus1032);
    h[3] = h2_fma(mask_or_6400<0x00F000F0u>(w8), kH2Sixteenth, kH2Minus72);
  }
}

// Stages run `run` (elements 8 run .. 8 run + 7) of token row x [K] into xh (a token row of the staged
// copy) as fp16 of x * f, f = 2^sh (x * gn * f with the fused norm's weight gn); elements at or past K
// are 0. vec: x 16-byte aligned and K % 4 == 0.
template <DType D>
MR_QFN void stage_run_half(const float* __restrict__ x, int K, bool vec, float f, int run, __half* __restrict__ xh,
                           const float* __restrict__ gn = nullptr) {
  const int k = 8 * run;
  float v[8];
  if (vec && k + 8 <= K) {
    const float4 a = reinterpret_cast<const float4*>(x + k)[0], b = reinterpret_cast<const float4*>(x + k)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = k + i < K ? x[k + i] : 0.f;
  }
  if (gn) {  // the fused norm's weight (x * g rounded as stage_x_half's maximum took it)
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = k + i < K ? fmul_rn(v[i], gn[k + i]) : 0.f;
  }
  float o[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) o[half_pos<D>(i)] = v[i] * f;
  // |o| <= 2^kHalfBound for finite x: rounded without saturation, so a NaN or inf of x stays one.
  uint32_t h[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2 p = __floats2half2_rn(o[2 * i], o[2 * i + 1]);
    std::memcpy(&h[i], &p, 4);
  }
  *reinterpret_cast<uint4*>(xh + half_index<D>(k)) = make_uint4(h[0], h[1], h[2], h[3]);
}

// Chunk c of the row pair times the T staged token rows: acc[r][t] += scale * sum(code * x) (Q8: without
// the scale), the chunk's sum in half2.
template <DType D, int T>
MR_QFN void chunk_dot_half(const __half* __restrict__ xh, int xstride, const uint4 (&q)[kRows], const RowPair& rp,
                           int group, int gshift, int c, float (&acc)[kRows][T]) {
  constexpr int E = Format<D>::kElems;
  uint32_t b[kRows][T];
  uint4 xa[T];  // Q8: the staged x of words j and j + 1
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) b[r][t] = 0u;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t w[kRows][4];
#pragma unroll
    for (int r = 0; r < kRows; ++r) decode_word_h2<D>(word_of(q[r], j), w[r]);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const __half* xc = xh + size_t(t) * size_t(xstride) + c * half_chunk_stride<D>();
      uint32_t xv[4];
      if constexpr (D == DType::Q8) {  // words 2m and 2m + 1 share one 16-byte load
        if (j % 2 == 0) xa[t] = *reinterpret_cast<const uint4*>(xc + 4 * j);
        xv[0] = j % 2 == 0 ? xa[t].x : xa[t].z, xv[1] = j % 2 == 0 ? xa[t].y : xa[t].w, xv[2] = xv[3] = 0u;
      } else {
        const uint4 a = *reinterpret_cast<const uint4*>(xc + 8 * j);
        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int i = 0; i < (D == DType::Q8 ? 2 : 4); ++i) b[r][t] = h2_fma(w[r][i], xv[i], b[r][t]);
    }
  }
  if constexpr (D == DType::Q8) {
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < T; ++t) acc[r][t] += h2_sum(b[r][t]);
  } else {
    const int k0 = c * E;
    const int g = gshift >= 0 ? k0 >> gshift : k0 / group;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = scale_at<D>(rp.scales[r], rp.sbase[r] + size_t(g));
#pragma unroll
      for (int t = 0; t < T; ++t) acc[r][t] = fmaf(s, h2_sum(b[r][t]), acc[r][t]);
    }
  }
}

// A lane's chunks of the row pair over a staged copy of x whose padding past K is 0 (the fp16 and int8
// paths): every chunk c_first, c_first + c_stride, ... below `chunks`, the partial last one too, dot(q, c)
// for each. q holds the first batch, load_batch<D>(rp, c_first, c_stride, chunks, q).
template <DType D, class Dot>
MR_QFN void staged_chunks(const RowPair& rp, uint4 (&q)[kPrefetch][kRows], int chunks, int c_first, int c_stride,
                          Dot&& dot) {
  for (int c = c_first; c < chunks; c += kPrefetch * c_stride) {
    if (c != c_first) load_batch<D>(rp, c, c_stride, chunks, q);
#pragma unroll
    for (int u = 0; u < kPrefetch; ++u)
      if (c + u * c_stride < chunks) dot(q[u], c + u * c_stride);
  }
}

// lane_dot over the staged fp16 copy (staged_chunks). acc is added to, in units of the staged x (the
// caller multiplies by 2^-sh).
template <DType D, int T>
MR_QFN void lane_dot_half(const __half* __restrict__ xh, int xstride, const RowPair& rp, uint4 (&q)[kPrefetch][kRows],
                          int K, int group, int gshift, int c_first, int c_stride, float (&acc)[kRows][T]) {
  constexpr int E = Format<D>::kElems;
  staged_chunks<D>(rp, q, (K + E - 1) / E, c_first, c_stride, [&](const uint4(&qc)[kRows], int c) {
    chunk_dot_half<D, T>(xh, xstride, qc, rp, group, gshift, c, acc);
  });
}

// The int8 path (kXInt8; Q8 and Q4, when the launch asks for it: QuantXMath::i8, MISTRAL_CUDA_QUANT_I8=1
// in the CUDA backend). Each chunk of E elements of x (the weights' 16-byte chunks: 32 of Q4, 16 of Q8) is
// quantized to int8 when the block stages x (a = max |x|, q = x * 127 / a rounded to nearest even, d =
// a * RN(1 / 127): tests/quant_i8_reference.h is the definition), and a lane's chunk is one exact integer sum,
// four dp4a (Q8) or eight (Q4, after one AND and one shift-and-AND a word to split its nibbles) a row
// against 32-64 instructions of the fp32 path; the chunk's sum becomes an fp32 value d * sum, scaled and
// added in fp32 as in the other paths. The accumulator starts at the bits of 1.5 * 2^23 (minus 8 times
// the chunk's sum of q for Q4, the codes' offset), so the finished integer's bits are the float
// 1.5 * 2^23 + sum exactly (|sum| < 2^22) and one subtraction converts it. Only x is rounded: each q_k is
// within half a step (d / 2) of x_k, the weights are exact. An inf or NaN in a chunk of x makes its d
// NaN, so the output is NaN as in the fp32 path.
//
// Layout of the staged copy: token row t at xb + t * i8_row_bytes<D>(K); chunk c's int8 values at
// c * i8_chunk_bytes<D>() (Q8: 16 bytes, element order; Q4: 32 bytes, word j's even elements 8j, 8j + 2,
// 8j + 4, 8j + 6 at 8j, its odd ones at 8j + 4, the order in which the nibble masks give them, then
// 16 bytes of padding so that lane-consecutive 16-byte reads hit distinct banks); after the chunks, each
// chunk's (d, accumulator start) as two 32-bit words.
constexpr int kXInt8 = 4;
constexpr float kI8Magic = 12582912.0f;  // 1.5 * 2^23: integers n, |n| < 2^22, are its bits plus n
constexpr uint32_t kI8MagicBits = 0x4B400000u;
constexpr float kI8Inv127 = 0x1.020408p-7f;  // 1 / 127 rounded to the nearest float
template <DType D>
__host__ __device__ __forceinline__ int i8_chunk_bytes() {
  return D == DType::Q8 ? 16 : 48;
}
template <DType D>
__host__ __device__ __forceinline__ int i8_row_bytes(int K) {  // bytes a token row, a multiple of 16
  const int chunks = (K + Format<D>::kElems - 1) / Format<D>::kElems;
  return (chunks * (i8_chunk_bytes<D>() + 8) + 15) & ~15;
}
// Where element i of a chunk goes among its bytes.
template <DType D>
__host__ __device__ __forceinline__ int i8_pos(int i) {
  return D == DType::Q8 ? i : 8 * (i >> 3) + 4 * (i & 1) + ((i & 7) >> 1);
}

MR_QFN int dp4a(uint32_t a, uint32_t b, int c) {  // c + the sum of the four signed byte products
#ifdef __CUDA_ARCH__
  return __dp4a(int(a), int(b), c);
#else
  for (int i = 0; i < 4; ++i) c += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
  return c;
#endif
}
MR_QFN float fdiv_rn(float a, float b) {  // an IEEE division whatever the compiler's flags
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Staging x for the int8 path: G consecutive lanes take one chunk (G = 8 for Q4's 32 elements, 4 for
// Q8's 16), each lane 4 consecutive elements (one float4 when the chunk lies below K and x is 16-byte
// aligned), so a warp reads 512 contiguous bytes of x an instruction, in one pass (one thread a chunk read
// 32 cache lines an instruction, twice). The chunk's max |x| is a shuffle reduction over its G lanes, then
// each lane rounds its 4 elements and writes one 32-bit word of the chunk's bytes; the lane helpers below
// are host code too (tools/quant_gemv_host_check.cu runs a chunk's G lanes one after another).
template <DType D>
constexpr int kI8Lanes = Format<D>::kElems / 4;  // lanes a chunk

// Lane `sub` of chunk c: elements k0 + 4 sub .. + 3 of token row xt [K] (k0 = c E), 0 past K; with gn (the
// fused norm) the rounded products x * gn, and ss += x^2 over them in order.
template <DType D>
MR_QFN float4 i8_lane_load(const float* __restrict__ xt, int K, bool vec, int c, int sub, const float* __restrict__ gn,
                           float& ss) {
  const int k = c * Format<D>::kElems + 4 * sub;
  float4 f;
  if (vec && k + 4 <= K) {
    f = *reinterpret_cast<const float4*>(xt + k);
  } else {
    f = make_float4(k < K ? xt[k] : 0.f, k + 1 < K ? xt[k + 1] : 0.f, k + 2 < K ? xt[k + 2] : 0.f,
                    k + 3 < K ? xt[k + 3] : 0.f);
  }
  if (gn) {
    ss = fmaf(f.x, f.x, ss), ss = fmaf(f.y, f.y, ss), ss = fmaf(f.z, f.z, ss), ss = fmaf(f.w, f.w, ss);
    f = make_float4(k < K ? fmul_rn(f.x, gn[k]) : 0.f, k + 1 < K ? fmul_rn(f.y, gn[k + 1]) : 0.f,
                    k + 2 < K ? fmul_rn(f.z, gn[k + 2]) : 0.f, k + 3 < K ? fmul_rn(f.w, gn[k + 3]) : 0.f);
  }
  return f;
}
// The lane's largest |x|, +inf when one of its elements is inf or NaN (so that the chunk's maximum says
// whether the chunk is finite: fmaxf would drop a NaN).
MR_QFN float i8_lane_max(const float4& f) {
  constexpr float kMax = 3.40282347e38f;  // each comparison is false for inf and NaN
  const bool finite = fabsf(f.x) <= kMax && fabsf(f.y) <= kMax && fabsf(f.z) <= kMax && fabsf(f.w) <= kMax;
  return finite ? fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w))) : INFINITY;
}
// A chunk's scales from its largest |x| a (i8_lane_max's, over its lanes): inv = 127 / a, at most FLT_MAX
// (a tiny a gives inf otherwise; |x inv| <= a FLT_MAX < 127 then), d = a * RN(1 / 127) (a product, not a
// second division: every lane of the chunk computes both); both 0 for a chunk of zeros; d NaN and inv 0
// when a is inf (an element inf or NaN).
struct I8Scale {
  float inv, d;
};
MR_QFN I8Scale i8_scale(float a) {
  if (!(a <= 3.40282347e38f)) return {0.f, NAN};
  if (!(a > 0.f)) return {0.f, 0.f};
  return {fminf(fdiv_rn(127.f, a), 3.40282347e38f), fmul_rn(a, kI8Inv127)};
}
// The lane's 4 elements rounded, as one word of their int8 values in element order: each is the low byte
// of the fp32 bits of 1.5 * 2^23 + x * inv (one rounding: to nearest, ties even).
MR_QFN uint32_t i8_lane_word(const float4& f, const I8Scale& sc) {
  const uint32_t a = float_bits(fmaf(f.x, sc.inv, kI8Magic)), b = float_bits(fmaf(f.y, sc.inv, kI8Magic));
  const uint32_t c = float_bits(fmaf(f.z, sc.inv, kI8Magic)), e = float_bits(fmaf(f.w, sc.inv, kI8Magic));
  return byte_perm(byte_perm(a, b, 0x0040u), byte_perm(c, e, 0x0040u), 0x5410u);
}
// Q4's bytes: word j of a chunk (elements 8j .. 8j + 7, lanes 2j and 2j + 1) is written as its even
// elements (by lane 2j) then its odd ones (by lane 2j + 1). A lane sends its partner (lane ^ 1) the two
// bytes the partner needs (i8_send), and puts its own two beside the two it receives (i8_recv_word): the
// word it writes, at 4 sub bytes into the chunk. Q8 writes the lane's word as it is.
MR_QFN uint32_t i8_send(uint32_t w, int sub) {  // odd lane: its elements 0, 2; even lane: 1, 3
  return (sub & 1) ? byte_perm(w, 0u, 0x0020u) : byte_perm(w, 0u, 0x0031u);
}
MR_QFN uint32_t i8_recv_word(uint32_t w, uint32_t recv, int sub) {
  return (sub & 1) ? byte_perm(recv, byte_perm(w, 0u, 0x0031u), 0x5410u)   // partner's odd, then own odd
                   : byte_perm(byte_perm(w, 0u, 0x0020u), recv, 0x5410u);  // own even, then partner's even
}
// Where lane `sub` of chunk c writes its word, and where lane 0 writes the chunk's (d, accumulator start).
template <DType D>
MR_QFN uint32_t* i8_word_at(uint8_t* row, int c, int sub) {
  return reinterpret_cast<uint32_t*>(row + size_t(c) * size_t(i8_chunk_bytes<D>()) + 4 * size_t(sub));
}
template <DType D>
MR_QFN void i8_write_meta(uint8_t* row, int chunks, int c, float d, int qsum) {
  const uint32_t start = D == DType::Q8 ? kI8MagicBits : kI8MagicBits - 8u * uint32_t(qsum);
  *reinterpret_cast<uint2*>(row + size_t(chunks) * size_t(i8_chunk_bytes<D>()) + 8 * size_t(c)) =
      make_uint2(float_bits(d), start);
}

// Chunk c of the row pair times the T staged token rows (row t at xb + t * row_bytes, `chunks` chunks a
// row): acc[r][t] += scale * (d * isum) (Q8: without the scale).
template <DType D, int T>
MR_QFN void chunk_dot_i8(const uint8_t* __restrict__ xb, int row_bytes, int chunks, const uint4 (&q)[kRows],
                         const RowPair& rp, int group, int gshift, int c, float (&acc)[kRows][T]) {
  constexpr int E = Format<D>::kElems;
  float s[kRows] = {};
  if constexpr (D != DType::Q8) {
    const int k0 = c * E;
    const int g = gshift >= 0 ? k0 >> gshift : k0 / group;
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r] = scale_at<D>(rp.scales[r], rp.sbase[r] + size_t(g));
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const uint8_t* xr = xb + size_t(t) * size_t(row_bytes);
    const uint2 meta =
        *reinterpret_cast<const uint2*>(xr + size_t(chunks) * size_t(i8_chunk_bytes<D>()) + 8 * size_t(c));
    const float d = bits_to_float(meta.x);
    const uint4* xc = reinterpret_cast<const uint4*>(xr + size_t(c) * size_t(i8_chunk_bytes<D>()));
    uint32_t xw[E / 4];
#pragma unroll
    for (int h = 0; h < E / 16; ++h) {
      const uint4 a = xc[h];
      xw[4 * h] = a.x, xw[4 * h + 1] = a.y, xw[4 * h + 2] = a.z, xw[4 * h + 3] = a.w;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      int a = int(meta.y);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t wj = word_of(q[r], j);
        if constexpr (D == DType::Q8) {
          a = dp4a(wj, xw[j], a);
        } else {  // byte i of the masks: element 2i (low nibble), 2i + 1 (high), codes 0..15
          a = dp4a(wj & 0x0F0F0F0Fu, xw[2 * j], a);
          a = dp4a((wj >> 4) & 0x0F0F0F0Fu, xw[2 * j + 1], a);
        }
      }
      const float cd = fmul_rn(bits_to_float(uint32_t(a)) - kI8Magic, d);
      if constexpr (D == DType::Q8)
        acc[r][t] += cd;
      else
        acc[r][t] = fmaf(s[r], cd, acc[r][t]);
    }
  }
}

// lane_dot over the staged int8 copy (staged_chunks). acc is added to.
template <DType D, int T>
MR_QFN void lane_dot_i8(const uint8_t* __restrict__ xb, int K, const RowPair& rp, uint4 (&q)[kPrefetch][kRows],
                        int group, int gshift, int c_first, int c_stride, float (&acc)[kRows][T]) {
  constexpr int E = Format<D>::kElems;
  const int chunks = (K + E - 1) / E, row_bytes = i8_row_bytes<D>(K);
  staged_chunks<D>(rp, q, chunks, c_first, c_stride, [&](const uint4(&qc)[kRows], int c) {
    chunk_dot_i8<D, T>(xb, row_bytes, chunks, qc, rp, group, gshift, c, acc);
  });
}

// Thread 0 copies the code table to shared memory (constant indices: the parameter stays in the
// parameter space instead of being copied to a local array).
__device__ __forceinline__ void load_lut(const CodeTable& codes, float* lut) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < 16; ++i) lut[i] = codes.v[i];
  }
}

// Output i of a block (threads 0 .. outputs_per_block - 1): the split partials of its pair summed in warp
// order, Q8's row scale applied; a SwiGLU launch combines its pair's gate and up sums.
template <DType D, int T, bool kSwiglu>
MR_QFN void write_output(const QuantParts& ps, const WarpJob& j, const float (*part)[kRows][T], int i) {
  const QuantPart& P = ps.part[j.part];
  const int ppb = kWarps / j.split;
  if (kSwiglu) {
    if (i >= ppb * T) return;
    const int p = i / T, t = i % T, n = j.first_pair + p;
    if (n >= P.n) return;
    float s[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      s[r] = 0.f;
      for (int w = 0; w < j.split; ++w) s[r] += part[p * j.split + w][r][t];
      if constexpr (D == DType::Q8) s[r] *= scale_at<D>(ps.part[r].scales, size_t(n));
    }
    P.y[size_t(t) * size_t(P.n) + size_t(n)] = swiglu_value(s[0], s[1]);
  } else {
    if (i >= ppb * kRows * T) return;  // at most 8 * 2 * 4 = 64 outputs per block
    const int p = i / (kRows * T), r = (i / T) % kRows, t = i % T;
    const int n = (j.first_pair + p) * kRows + r;
    if (n >= P.n) return;
    float s = 0.f;
    for (int w = 0; w < j.split; ++w) s += part[p * j.split + w][r][t];
    if constexpr (D == DType::Q8) s *= scale_at<D>(P.scales, size_t(n));
    float* yp = P.y + size_t(t) * size_t(P.n) + size_t(n);
    *yp = ps.fuse.accumulate ? *yp + s : s;  // the fused residual add
  }
}

// The fp16 path's copy of x (kXHalf), by every thread of the block: each token row's largest |x| (a
// block reduction), then its runs of 8 scaled and rounded to fp16; fac[t] = 2^-sh of row t. A barrier
// must follow before any read of xh or fac.
// With g (the fused norm): the copy holds fp16 of x_k g_k 2^sh (sh from the largest |x_k g_k|), and the
// thread's shares of the rows' sums of x^2 go to nred (norm_partials) before the barrier.
template <DType D, int T>
__device__ __forceinline__ void stage_x_half(const float* __restrict__ x, int K, bool vec_x, __half* __restrict__ xh,
                                             float* fac, const float* __restrict__ g = nullptr,
                                             float (*nred)[T] = nullptr) {
  __shared__ float red[kWarps][T];
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  float ss[T];
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float* xt = x + size_t(t) * size_t(K);
    float m = 0.f, s = 0.f;
    if (vec_x) {
      for (int i = threadIdx.x; i < K / 4; i += blockDim.x) {
        float4 f = reinterpret_cast<const float4*>(xt)[i];
        if (g) f = norm_step4(f, reinterpret_cast<const float4*>(g)[i], s);
        m = fmaxf(m, fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w))));
      }
    } else {
      for (int e = threadIdx.x; e < K; e += blockDim.x) {
        if (g) s = fmaf(xt[e], xt[e], s);
        m = fmaxf(m, fabsf(g ? __fmul_rn(xt[e], g[e]) : xt[e]));
      }
    }
    ss[t] = s;
    m = warp_max(m);
    if (lane == 0) red[warp][t] = m;
  }
  if (g) norm_partials<T>(ss, nred);
  __syncthreads();
  const int runs = half_stride<D>(K) / half_chunk_stride<D>() * (Format<D>::kElems / 8);
#pragma unroll
  for (int t = 0; t < T; ++t) {
    float m = red[0][t];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) m = fmaxf(m, red[w][t]);
    const int sh = half_shift<D>(m);
    if (threadIdx.x == 0) fac[t] = pow2f(-sh);
    const float f = pow2f(sh);
    for (int r = threadIdx.x; r < runs; r += blockDim.x)
      stage_run_half<D>(x + size_t(t) * size_t(K), K, vec_x, f, r, xh + size_t(t) * size_t(half_stride<D>(K)), g);
  }
}

// The int8 path's copy of x (kXInt8), by every thread of the block: kI8Lanes<D> lanes a chunk (the lane
// helpers above), blockDim.x / kI8Lanes chunks at a time (the same trip count for every thread, so every
// lane of a warp reaches the shuffles). With g (the fused norm): the chunks of x_k g_k, and the thread's
// shares of the rows' sums of x^2 go to nred (norm_partials). A barrier must follow before any read of xb
// or nred.
template <DType D, int T>
__device__ __forceinline__ void stage_x_i8(const float* __restrict__ x, int K, bool vec_x, uint8_t* __restrict__ xb,
                                           const float* __restrict__ g = nullptr, float (*nred)[T] = nullptr) {
  constexpr int G = kI8Lanes<D>;
  constexpr unsigned kAll = 0xffffffffu;
  const int chunks = (K + Format<D>::kElems - 1) / Format<D>::kElems, row_bytes = i8_row_bytes<D>(K);
  const int sub = int(threadIdx.x) % G, per = int(blockDim.x) / G;
  float ss[T];
#pragma unroll
  for (int t = 0; t < T; ++t) {
    ss[t] = 0.f;
    const float* xt = x + size_t(t) * size_t(K);
    uint8_t* row = xb + size_t(t) * size_t(row_bytes);
    for (int c0 = 0; c0 < chunks; c0 += per) {
      const int c = c0 + int(threadIdx.x) / G;
      const bool in = c < chunks;
      const float4 f = in ? i8_lane_load<D>(xt, K, vec_x, c, sub, g, ss[t]) : make_float4(0.f, 0.f, 0.f, 0.f);
      float a = i8_lane_max(f);
#pragma unroll
      for (int o = 1; o < G; o <<= 1) a = fmaxf(a, __shfl_xor_sync(kAll, a, o));
      const I8Scale sc = i8_scale(a);
      uint32_t w = i8_lane_word(f, sc);
      int qsum = 0;
      if constexpr (D != DType::Q8) {
        w = i8_recv_word(w, __shfl_xor_sync(kAll, i8_send(w, sub), 1), sub);
        qsum = dp4a(w, 0x01010101u, 0);
#pragma unroll
        for (int o = 1; o < G; o <<= 1) qsum += __shfl_xor_sync(kAll, qsum, o);
      }
      if (in) {
        *i8_word_at<D>(row, c, sub) = w;
        if (sub == 0) i8_write_meta<D>(row, chunks, c, sc.d, qsum);
      }
    }
  }
  if (g) norm_partials<T>(ss, nred);
}

// A decode step's launches (T = 1, x staged) are held to 64 registers, four blocks an SM (three at the
// 75-80 registers ptxas chose, 24 warps to keep the weights' loads in flight), at the cost of 4-20 bytes
// of spills in the 4-bit ones (ptxas -v; none in int8's).
template <DType D, int T, int kX, bool kSwiglu>
__global__ void __launch_bounds__(kThreads, T == 1 && (kX == kXStaged || kX == kXHalf || kX == kXInt8) ? 4 : 1)
    quant_gemv_kernel(const float* __restrict__ x, const __grid_constant__ QuantParts ps, CodeTable codes, int K,
                      int group, int gshift) {
  extern __shared__ float4 staged[];  // kXStaged: T * staged_stride(K) floats; kXHalf: T * half_stride<D>(K)
  // halves; kXInt8: T * i8_row_bytes<D>(K) bytes
  __shared__ float lut[16];
  __shared__ float part[kWarps][kRows][T];
  pdl_trigger();  // the kernel after this one may launch once every block has started (pdl.cuh)
  if constexpr (D == DType::NF4) {
    load_lut(codes, lut);
    __syncthreads();
  }
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  const WarpJob j = warp_job<kSwiglu>(ps, int(blockIdx.x), warp);  // uniform across the warp
  float acc[kRows][T];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = 0.f;
  const bool busy = j.pair < pairs_of<kSwiglu>(ps.part[j.part].n);
  const int c_first = (warp % j.split) * 32 + lane, c_stride = j.split * 32;
  RowPair rp{};
  uint4 q[kPrefetch][kRows];
  if (busy) {
    rp = row_pair<D, kSwiglu>(ps, j.part, j.pair, K, group);
    // The lane's first batch of weights, before pdl_wait (pdl.cuh; the weights are no earlier kernel's
    // output) and before x is copied: both latencies at once.
    // The fp16 and int8 paths take the partial last chunk in the same loop (their x past K is 0).
    constexpr int E = Format<D>::kElems;
    load_batch<D>(rp, c_first, c_stride, kX == kXHalf || kX == kXInt8 ? (K + E - 1) / E : K / E, q);
  }
  pdl_wait();  // every thread: x is read and the block's outputs are written after it
  __shared__ float nred[kWarps][T];  // the fused norm's sums of squares, by warp (staged paths)
  __shared__ float fac[T];           // kXHalf: 2^-sh of each token row
  const float* gn = ps.fuse.g;
  if constexpr (kX == kXHalf) {
    __half* xh = reinterpret_cast<__half*>(staged);
    stage_x_half<D, T>(x, K, ps.vec_x, xh, fac, gn, nred);
    __syncthreads();
    if (busy) lane_dot_half<D, T>(xh, half_stride<D>(K), rp, q, K, group, gshift, c_first, c_stride, acc);
  } else if constexpr (kX == kXInt8) {
    uint8_t* xb = reinterpret_cast<uint8_t*>(staged);
    stage_x_i8<D, T>(x, K, ps.vec_x, xb, gn, nred);
    __syncthreads();
    if (busy) lane_dot_i8<D, T>(xb, K, rp, q, group, gshift, c_first, c_stride, acc);
  } else {
    const float* xr = x;
    int xstride = K;
    if constexpr (kX == kXStaged) {
      float* xs = reinterpret_cast<float*>(staged);
      float ss[T];
      stage_x<T>(x, K, ps.vec_x, xs, gn, ss);
      if (gn) norm_partials<T>(ss, nred);
      __syncthreads();
      xr = xs, xstride = staged_stride(K);
    }
    if (busy) lane_dot<D, T, kX>(xr, xstride, rp, q, lut, K, group, gshift, c_first, c_stride, acc);
  }
  // Each token row's factor: the fp16 path's 2^-sh (exact, a power of two) times the fused norm's scale.
  if ((kX == kXHalf || ((kX == kXStaged || kX == kXInt8) && gn)) && busy) {
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float sc = kX == kXHalf ? fac[t] : 1.f;
      if (gn) sc *= norm_scale<T>(nred, t, K, ps.fuse.eps);
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r][t] *= sc;
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float s = warp_sum(acc[r][t]);  // the whole warp takes part
      if (lane == 0) part[warp][r][t] = s;
    }
  __syncthreads();
  write_output<D, T, kSwiglu>(ps, j, part, int(threadIdx.x));
}

// Chunk i of the packed matrix (row i / chunks) to fp16 in out [N, K]: code * scale, elements below K.
template <DType D, bool kVecOut>
MR_QFN void dequant_chunk(const uint8_t* __restrict__ data, const void* __restrict__ scales, const float* lut, int K,
                          int group, size_t i, __half* __restrict__ out) {
  constexpr int E = Format<D>::kElems, P = E / 4;
  const int chunks = (K + E - 1) / E, n_groups = (K + group - 1) / group;
  const size_t n = i / size_t(chunks);
  const int k0 = int(i % size_t(chunks)) * E;
  const uint4 q = reinterpret_cast<const uint4*>(data)[i];  // row n starts at chunk n * chunks
  const float s = scale_at<D>(scales, D == DType::Q8 ? n : n * size_t(n_groups) + size_t(k0 / group));
  float v[E];
#pragma unroll
  for (int j = 0; j < 4; ++j) decode_word<D>(word_of(q, j), lut, v + j * P);
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] *= s;
  __half* o = out + n * size_t(K);
  if constexpr (kVecOut) {  // K % 8 == 0: each run of 8 elements is wholly below K or wholly past it
#pragma unroll
    for (int m = 0; m < E / 8; ++m) {
      const int k = k0 + 8 * m;
      if (k < K) {
        const float* a = v + 8 * m;
        *reinterpret_cast<uint4*>(o + k) =
            make_uint4(half2_bits(a[0], a[1]), half2_bits(a[2], a[3]), half2_bits(a[4], a[5]), half2_bits(a[6], a[7]));
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (k0 + e < K) o[k0 + e] = __float2half_rn(fminf(fmaxf(v[e], -65504.f), 65504.f));
  }
}

template <DType D, bool kVecOut>
__global__ void __launch_bounds__(kThreads)
    dequant_kernel(const uint8_t* __restrict__ data, const void* __restrict__ scales, CodeTable codes, int K, int group,
                   size_t total, __half* __restrict__ out) {
  __shared__ float lut[16];
  if constexpr (D == DType::NF4) {
    load_lut(codes, lut);
    __syncthreads();
  }
  const size_t i = size_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < total) dequant_chunk<D, kVecOut>(data, scales, lut, K, group, i, out);
}

CodeTable code_table(DType t) {
  CodeTable c{};
  if (t == DType::NF4)
    for (int i = 0; i < 16; ++i) c.v[i] = kNF4Codes[i];
  return c;
}

// Layout preconditions shared by both launchers.
bool layout_ok(DType t, const void* data, const void* scales, int K, int group) {
  if (!is_quantized(t) || !data || !scales || K <= 0) return false;
  if (reinterpret_cast<uintptr_t>(data) % 16 != 0) return false;
  if (reinterpret_cast<uintptr_t>(scales) % (t == DType::Q8 ? 4 : 2) != 0) return false;
  return t == DType::Q8 ? group == K : group > 0 && group % 32 == 0;
}

// Warps per row pair (1, 2, 4 or 8) of an N x K matrix: K is split over more warps while the matrix's
// pairs fill fewer than warps_per_sm() warps per SM and every lane of the wider split still gets at
// least one of the row's `chunks` chunks. A function of the matrix's shape alone, so that a product's
// bits do not depend on what shares its launch.
int g_warps_per_sm = 0;  // set_quant_gemv_warps_per_sm; 0: MISTRAL_CUDA_QUANT_WARPS or the default
int warps_per_sm() {
  static const int from_env = [] {
    const char* e = std::getenv("MISTRAL_CUDA_QUANT_WARPS");
    const int v = e ? std::atoi(e) : 0;
    return v > 0 ? v : kDefaultWarpsPerSm;
  }();
  return g_warps_per_sm > 0 ? g_warps_per_sm : from_env;
}
int gemv_split(long long pairs, long long chunks, int n_sms) {
  int split = 1;
  while (split < kWarps && pairs * split < (long long)warps_per_sm() * n_sms && chunks >= 64LL * split) split *= 2;
  return split;
}

// Bytes of the shared-memory copy of x for T tokens of K elements, or 0 when it would not fit
// kMaxStageBytes (then x is read from global memory). MISTRAL_CUDA_QUANT_STAGE=0 turns the copy off
// (to measure it against global reads; the results are the same bits).
size_t stage_bytes(int T, int K) {
  static const bool off = env_equals("MISTRAL_CUDA_QUANT_STAGE", "0");
  const size_t b = size_t(T) * size_t(staged_stride(K)) * sizeof(float);
  return !off && b <= kMaxStageBytes ? b : 0;
}

int group_shift(int group) {
  for (int s = 0; s < 31; ++s)
    if (group == (1 << s)) return s;
  return -1;
}

// Fills part i of ps (rows n, output y) and its blocks; a SwiGLU launch calls it for part 0 only (its
// pairs are the n rows, its split that of the gate matrix alone).
template <DType D>
void plan_part(QuantParts& ps, int i, const void* data, const void* scales, int n, float* y, int K, int n_sms,
               bool swiglu) {
  constexpr int E = Format<D>::kElems;
  QuantPart& P = ps.part[i];
  P.data = static_cast<const uint8_t*>(data), P.scales = scales, P.y = y, P.n = n;
  P.split = gemv_split((n + kRows - 1) / kRows, (K + E - 1) / E, n_sms);
  const long long pairs = swiglu ? n : (n + kRows - 1) / kRows, ppb = kWarps / P.split;
  ps.first_block[i + 1] = ps.first_block[i] + int((pairs + ppb - 1) / ppb);
}

// Bytes of the fp16 path's copy of x, or 0 when it does not fit kMaxStageBytes or D has no fp16 path (NF4).
template <DType D>
size_t half_stage_bytes(int T, int K) {
  const size_t b = size_t(T) * size_t(half_stride<D>(K)) * sizeof(__half);
  return D != DType::NF4 && b <= kMaxStageBytes ? b : 0;
}

// Bytes of the int8 path's copy of x, or 0 when it does not fit kMaxStageBytes or D has no int8 path (NF4).
template <DType D>
size_t i8_stage_bytes(int T, int K) {
  const size_t b = size_t(T) * size_t(i8_row_bytes<D>(K));
  return D != DType::NF4 && b <= kMaxStageBytes ? b : 0;
}

// The x path a launch of T tokens with K columns takes: the one xmath asks for when its copy of x fits
// (NF4 has only the fp32 ones), else the fp32 copy when it fits, else global memory.
template <DType D>
int x_path(int T, int K, QuantXMath xmath, bool vec_x) {
  if (xmath == QuantXMath::f16 && half_stage_bytes<D>(T, K) > 0) return kXHalf;
  if (xmath == QuantXMath::i8 && i8_stage_bytes<D>(T, K) > 0) return kXInt8;
  if (stage_bytes(T, K) > 0) return kXStaged;
  return vec_x ? kXVec4 : kXScalar;
}

// Whether a launch of T tokens with K columns takes one of the staged paths (which the fused norm needs).
template <DType D>
bool staged_path(int T, int K, QuantXMath xmath) {
  return x_path<D>(T, K, xmath, true) >= kXStaged;
}

template <DType D, int T, int kX, bool kSwiglu>
cudaError_t launch_path(const float* x, const QuantParts& ps, unsigned blocks, size_t smem, int K, int group,
                        cudaStream_t stream) {
  if (smem > 0) {
    static const cudaError_t attr = cudaFuncSetAttribute(
        quant_gemv_kernel<D, T, kX, kSwiglu>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kMaxStageBytes));
    if (attr != cudaSuccess) return attr;
  }
  return launch_maybe_pdl(quant_gemv_kernel<D, T, kX, kSwiglu>, blocks, kThreads, smem, stream, x, ps, code_table(D), K,
                          group, group_shift(group));
}

template <DType D, int T, bool kSwiglu>
cudaError_t launch_gemv(const float* x, const QuantParts& ps, int K, int group, QuantXMath xmath, cudaStream_t stream) {
  const unsigned blocks = unsigned(ps.first_block[kSwiglu ? 1 : ps.count]);
  if (blocks == 0) return cudaSuccess;
  if (ps.fuse.g && !staged_path<D>(T, K, xmath)) return cudaErrorNotSupported;  // the norm needs a copy of x
  switch (x_path<D>(T, K, xmath, ps.vec_x)) {
    case kXHalf:
      if constexpr (D != DType::NF4)
        return launch_path<D, T, kXHalf, kSwiglu>(x, ps, blocks, half_stage_bytes<D>(T, K), K, group, stream);
      break;
    case kXInt8:
      if constexpr (D != DType::NF4)
        return launch_path<D, T, kXInt8, kSwiglu>(x, ps, blocks, i8_stage_bytes<D>(T, K), K, group, stream);
      break;
    case kXStaged:
      return launch_path<D, T, kXStaged, kSwiglu>(x, ps, blocks, stage_bytes(T, K), K, group, stream);
    case kXVec4:
      return launch_path<D, T, kXVec4, kSwiglu>(x, ps, blocks, 0, K, group, stream);
    default:
      break;
  }
  return launch_path<D, T, kXScalar, kSwiglu>(x, ps, blocks, 0, K, group, stream);
}

template <DType D, bool kSwiglu>
cudaError_t launch_gemv_t(const float* x, int T, const QuantParts& ps, int K, int group, QuantXMath xmath,
                          cudaStream_t stream) {
  switch (T) {
    case 1:
      return launch_gemv<D, 1, kSwiglu>(x, ps, K, group, xmath, stream);
    case 2:
      return launch_gemv<D, 2, kSwiglu>(x, ps, K, group, xmath, stream);
    case 3:
      return launch_gemv<D, 3, kSwiglu>(x, ps, K, group, xmath, stream);
    default:
      return launch_gemv<D, 4, kSwiglu>(x, ps, K, group, xmath, stream);
  }
}

// Plans one launch of x over `parts` matrices (a SwiGLU's two: gate, up): false when an argument is
// invalid.
template <bool kSwiglu>
bool plan_launch(const float* x, const void* const* data, const void* const* scales, const int* N, float* const* y,
                 int parts, DType wt, int K, int group, int n_sms, QuantParts* ps, const GemvFusion& fuse = {}) {
  if (!x || n_sms <= 0 || parts <= 0 || parts > kGemvMaxParts || (kSwiglu && parts != 2)) return false;
  *ps = QuantParts{};
  ps->count = parts;
  ps->fuse = fuse;
  if (fuse.g && reinterpret_cast<uintptr_t>(fuse.g) % 16 != 0) return false;  // read by float4 beside x
  if (kSwiglu && fuse.accumulate) return false;
  ps->vec_x = K % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  for (int i = 0; i < parts; ++i) {
    if (N[i] < 0 || (N[i] > 0 && !y[i]) || !layout_ok(wt, data[i], scales[i], K, group)) return false;
    if (kSwiglu && i > 0) {  // the up matrix: part 0's rows, split and blocks
      if (N[i] != N[0]) return false;
      ps->part[i] = ps->part[0];
      ps->part[i].data = static_cast<const uint8_t*>(data[i]), ps->part[i].scales = scales[i];
      ps->first_block[i + 1] = ps->first_block[i];
      continue;
    }
    switch (wt) {
      case DType::Q8:
        plan_part<DType::Q8>(*ps, i, data[i], scales[i], N[i], y[i], K, n_sms, kSwiglu);
        break;
      case DType::NF4:
        plan_part<DType::NF4>(*ps, i, data[i], scales[i], N[i], y[i], K, n_sms, kSwiglu);
        break;
      default:
        plan_part<DType::Q4>(*ps, i, data[i], scales[i], N[i], y[i], K, n_sms, kSwiglu);
        break;
    }
  }
  return true;
}

template <bool kSwiglu>
cudaError_t quant_launch(const float* x, int T, const void* const* data, const void* const* scales, const int* N,
                         float* const* y, int parts, DType wt, int K, int group, int n_sms, QuantXMath xmath,
                         const GemvFusion& fuse, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  QuantParts ps;
  if (T > kGemvMaxT || !plan_launch<kSwiglu>(x, data, scales, N, y, parts, wt, K, group, n_sms, &ps, fuse))
    return cudaErrorInvalidValue;
  cudaError_t err;
  switch (wt) {
    case DType::Q8:
      err = launch_gemv_t<DType::Q8, kSwiglu>(x, T, ps, K, group, xmath, stream);
      break;
    case DType::NF4:
      err = launch_gemv_t<DType::NF4, kSwiglu>(x, T, ps, K, group, xmath, stream);
      break;
    default:
      err = launch_gemv_t<DType::Q4, kSwiglu>(x, T, ps, K, group, xmath, stream);
      break;
  }
  return err != cudaSuccess ? err : cudaGetLastError();
}

template <DType D>
void launch_dequant(const void* data, const void* scales, int N, int K, int group, void* out, unsigned blocks,
                    size_t total, cudaStream_t stream) {
  const uint8_t* d = static_cast<const uint8_t*>(data);
  __half* o = static_cast<__half*>(out);
  if (K % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0)
    dequant_kernel<D, true><<<blocks, kThreads, 0, stream>>>(d, scales, code_table(D), K, group, total, o);
  else
    dequant_kernel<D, false><<<blocks, kThreads, 0, stream>>>(d, scales, code_table(D), K, group, total, o);
}

}  // namespace

void set_quant_gemv_warps_per_sm(int warps) { g_warps_per_sm = warps > 0 ? warps : 0; }

bool quant_gemv_fusion_ok(DType wt, int T, int K, QuantXMath xmath) {
  if (T <= 0 || T > kGemvMaxT || K <= 0) return false;
  switch (wt) {
    case DType::Q8:
      return staged_path<DType::Q8>(T, K, xmath);
    case DType::NF4:
      return staged_path<DType::NF4>(T, K, xmath);
    case DType::Q4:
      return staged_path<DType::Q4>(T, K, xmath);
    default:
      return false;
  }
}

cudaError_t quant_gemv_cuda(const float* x, int T, const void* data, const void* scales, DType wt, int N, int K,
                            int group, float* y, int n_sms, cudaStream_t stream, QuantXMath xmath,
                            const GemvFusion& fuse) {
  if (T <= 0 || N <= 0) return cudaSuccess;
  return quant_launch<false>(x, T, &data, &scales, &N, &y, 1, wt, K, group, n_sms, xmath, fuse, stream);
}

cudaError_t quant_gemv_multi_cuda(const float* x, int T, const void* const* data, const void* const* scales,
                                  const int* N, float* const* y, int parts, DType wt, int K, int group, int n_sms,
                                  cudaStream_t stream, QuantXMath xmath, const GemvFusion& fuse) {
  return quant_launch<false>(x, T, data, scales, N, y, parts, wt, K, group, n_sms, xmath, fuse, stream);
}

cudaError_t quant_gemv_swiglu_cuda(const float* x, int T, const void* gate_data, const void* gate_scales,
                                   const void* up_data, const void* up_scales, DType wt, int N, int K, int group,
                                   float* out, int n_sms, cudaStream_t stream, QuantXMath xmath,
                                   const GemvFusion& fuse) {
  if (T <= 0 || N <= 0) return cudaSuccess;
  const void* data[2] = {gate_data, up_data};
  const void* scales[2] = {gate_scales, up_scales};
  const int n[2] = {N, N};
  float* y[2] = {out, out};
  return quant_launch<true>(x, T, data, scales, n, y, 2, wt, K, group, n_sms, xmath, fuse, stream);
}

cudaError_t dequantize_f16_cuda(const void* data, const void* scales, DType wt, int N, int K, int group, void* out,
                                cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (!out || !layout_ok(wt, data, scales, K, group)) return cudaErrorInvalidValue;
  const size_t per_row = wt == DType::Q8 ? size_t(K + 15) / 16 : size_t(K + 31) / 32;
  const size_t total = size_t(N) * per_row, blocks = (total + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffu) return cudaErrorInvalidValue;
  switch (wt) {
    case DType::Q8:
      launch_dequant<DType::Q8>(data, scales, N, K, group, out, unsigned(blocks), total, stream);
      break;
    case DType::NF4:
      launch_dequant<DType::NF4>(data, scales, N, K, group, out, unsigned(blocks), total, stream);
      break;
    case DType::Q4:
      launch_dequant<DType::Q4>(data, scales, N, K, group, out, unsigned(blocks), total, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
