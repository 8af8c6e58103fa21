// Quantized weights (Q8, NF4, Q4; byte layout of include/mistral/quant.h): GEMV with dequantization in
// registers for T <= kGemvMaxT tokens, and dequantization to fp16 for the cuBLAS path.
//
// quant_gemv_kernel, thread layout. Blocks of 8 warps. A warp computes kRows = 2 adjacent output rows
// (n0, n0 + 1) for all T tokens; `split` consecutive warps of a block (1, 2, 4 or 8, chosen by the
// launcher so that the grid holds about 32 warps per SM) work on the same two rows and divide K between
// them, so a block covers 2 * 8 / split rows. A packed row is read in 16-byte chunks (32 elements of a
// 4-bit format, 16 of int8): lane l of the warp with split index s takes chunks s * 32 + l, then every
// (split * 32)-th, so per row a warp loads 512 contiguous bytes per step, one uint4 per lane, 16-byte
// aligned because every row is a multiple of 16 bytes long and `data` is 16-byte aligned (checked).
// Each chunk lies inside one scale group (NF4 / Q4 groups are multiples of 32), so a lane sums
// code * x over the chunk and applies that group's scale once; Q8's per-row scale is applied after the
// reduction. Both rows use each x value the lane loads: float4 loads when K % 4 == 0 and x is 16-byte
// aligned, scalars otherwise. Only the partial last chunk of a row (K not a multiple of 16 / 32) is
// guarded: its weight bytes lie inside the padded row, its x reads stop below K. Rows past N (the
// second row when N is odd) are clamped to N - 1 for loading and never written.
// Reduction: shuffle within the warp, then the `split` partials through shared memory `part` (each
// slot written by one lane 0, read after the one __syncthreads, never reused: no race); threads
// 0 .. rows*T-1 of the block write y. Every thread reaches every __syncthreads (no early return).
// Decoding: Q8 and Q4 assemble the float 2^23 + u from the bits (u = int8 + 128, or the nibble) and
// subtract the offset, exact; NF4 reads its 16 code values from shared memory (16 distinct banks).
//
// dequant_kernel: one thread per 16-byte chunk of the whole matrix (row i / chunks, chunk i % chunks),
// coalesced uint4 loads; it writes the chunk's elements below K (16-byte stores of 8 halves when
// K % 8 == 0 and `out` is 16-byte aligned, single halves otherwise).
#include <cstdint>
#include <cstring>

#include "common.cuh"
#include "gemv.cuh"
#include "mistral/quant.h"
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

MR_QFN uint32_t word_of(const uint4& q, int j) { return j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w; }

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

// Chunk c of rows n[0], n[1] (q: its 16 bytes of each row) times the T token rows of x: acc[r][t] += scale * sum(code * x) (Q8: without
// the scale). kWhole: the chunk lies below K; otherwise x is read only below K (the codes there are 0).
template <DType D, int T, bool kVecX, bool kWhole>
MR_QFN void chunk_dot(const float* __restrict__ x, const uint4 (&q)[kRows], const void* __restrict__ scales,
                      const int (&n)[kRows], int n_groups, int group, int K, int c, const float* lut,
                      float (&acc)[kRows][T]) {
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
      const float* xt = x + size_t(t) * size_t(K);
      float xv[P];
      if constexpr (kWhole && kVecX) {
#pragma unroll
        for (int h = 0; h < P / 4; ++h) {
          const float4 f = *reinterpret_cast<const float4*>(xt + k + 4 * h);
          xv[4 * h] = f.x, xv[4 * h + 1] = f.y, xv[4 * h + 2] = f.z, xv[4 * h + 3] = f.w;
        }
      } else if constexpr (kWhole) {
#pragma unroll
        for (int i = 0; i < P; ++i) xv[i] = xt[k + i];
      } else {
#pragma unroll
        for (int i = 0; i < P; ++i) xv[i] = k + i < K ? xt[k + i] : 0.f;
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
    const int g = k0 / group;  // k0 < K, so g < n_groups
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = scale_at<D>(scales, size_t(n[r]) * size_t(n_groups) + size_t(g));
#pragma unroll
      for (int t = 0; t < T; ++t) acc[r][t] = fmaf(s, b[r][t], acc[r][t]);
    }
  }
}

// One lane's share of rows n0 and n0 + 1 (clamped to N - 1; n0 < N): chunks c_first, c_first + c_stride,
// ... below ceil(K / E). acc is added to.
template <DType D, int T, bool kVecX>
MR_QFN void lane_dot(const float* __restrict__ x, const uint8_t* __restrict__ data, const void* __restrict__ scales,
                     const float* lut, int N, int K, int group, int n0, int c_first, int c_stride,
                     float (&acc)[kRows][T]) {
  constexpr int E = Format<D>::kElems;
  const int chunks = (K + E - 1) / E, full = K / E;  // chunks per row (16-byte units), whole ones
  const int n_groups = (K + group - 1) / group;
  int n[kRows];
  const uint4* row[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    n[r] = n0 + r < N ? n0 + r : N - 1;
    row[r] = reinterpret_cast<const uint4*>(data) + size_t(n[r]) * size_t(chunks);
  }
  // kPrefetch chunks of each row are loaded before any is used (one at a time left decode at ~1.5 TB/s
  // on an H200); the chunks are still summed in the order c_first, c_first + c_stride, ...
  constexpr int kPrefetch = 4;
  int c = c_first;
  for (; c + (kPrefetch - 1) * c_stride < full; c += kPrefetch * c_stride) {
    uint4 q[kPrefetch][kRows];
#pragma unroll
    for (int u = 0; u < kPrefetch; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) q[u][r] = row[r][c + u * c_stride];
#pragma unroll
    for (int u = 0; u < kPrefetch; ++u)
      chunk_dot<D, T, kVecX, true>(x, q[u], scales, n, n_groups, group, K, c + u * c_stride, lut, acc);
  }
  uint4 q[kRows];
  for (; c < full; c += c_stride) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) q[r] = row[r][c];
    chunk_dot<D, T, kVecX, true>(x, q, scales, n, n_groups, group, K, c, lut, acc);
  }
  if (c < chunks) {  // c == full
#pragma unroll
    for (int r = 0; r < kRows; ++r) q[r] = row[r][c];
    chunk_dot<D, T, kVecX, false>(x, q, scales, n, n_groups, group, K, c, lut, acc);
  }
}

// Thread 0 copies the code table to shared memory (constant indices: the parameter stays in the
// parameter space instead of being copied to a local array).
__device__ __forceinline__ void load_lut(const CodeTable& codes, float* lut) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < 16; ++i) lut[i] = codes.v[i];
  }
}

template <DType D, int T, bool kVecX>
__global__ void __launch_bounds__(kThreads)
    quant_gemv_kernel(const float* __restrict__ x, const uint8_t* __restrict__ data, const void* __restrict__ scales,
                      CodeTable codes, int N, int K, int group, int split, float* __restrict__ y) {
  __shared__ float lut[16];
  __shared__ float part[kWarps][kRows][T];
  if constexpr (D == DType::NF4) {
    load_lut(codes, lut);
    __syncthreads();
  }
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  const int pairs_per_block = kWarps / split;
  const int first_pair = int(blockIdx.x) * pairs_per_block;
  const int n0 = (first_pair + warp / split) * kRows;  // uniform across the warp
  float acc[kRows][T];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = 0.f;
  if (n0 < N) lane_dot<D, T, kVecX>(x, data, scales, lut, N, K, group, n0, (warp % split) * 32 + lane, split * 32, acc);
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float s = warp_sum(acc[r][t]);  // the whole warp takes part
      if (lane == 0) part[warp][r][t] = s;
    }
  __syncthreads();
  const int i = int(threadIdx.x);
  if (i < pairs_per_block * kRows * T) {  // at most 8 * 2 * 4 = 64 outputs per block
    const int p = i / (kRows * T), r = (i / T) % kRows, t = i % T;
    const int n = (first_pair + p) * kRows + r;
    if (n < N) {
      float s = 0.f;
      for (int w = 0; w < split; ++w) s += part[p * split + w][r][t];
      if constexpr (D == DType::Q8) s *= scale_at<D>(scales, size_t(n));
      y[size_t(t) * size_t(N) + size_t(n)] = s;
    }
  }
}

MR_QFN uint32_t half2_bits(float a, float b) {
  // Saturate like the activation conversion (never inf); element a at the lower address.
  const __half2 h = __floats2half2_rn(fminf(fmaxf(a, -65504.f), 65504.f), fminf(fmaxf(b, -65504.f), 65504.f));
  uint32_t u;
  std::memcpy(&u, &h, 4);
  return u;
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

// Warps per row pair (1, 2, 4 or 8): K is split over more warps while the grid holds fewer than ~32 warps
// per SM and every lane of the wider split still gets at least one of the row's `chunks` chunks.
int gemv_split(long long pairs, long long chunks, int n_sms) {
  int split = 1;
  while (split < kWarps && pairs * split < 32LL * n_sms && chunks >= 64LL * split) split *= 2;
  return split;
}

template <DType D, int T>
void launch_gemv(const float* x, const void* data, const void* scales, int N, int K, int group, float* y, int n_sms,
                 cudaStream_t stream) {
  constexpr int E = Format<D>::kElems;
  const long long pairs = (N + kRows - 1) / kRows;
  const int split = gemv_split(pairs, (K + E - 1) / E, n_sms);
  const int pairs_per_block = kWarps / split;
  const unsigned blocks = unsigned((pairs + pairs_per_block - 1) / pairs_per_block);
  const uint8_t* d = static_cast<const uint8_t*>(data);
  const bool vec_x = K % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (vec_x)
    quant_gemv_kernel<D, T, true><<<blocks, kThreads, 0, stream>>>(x, d, scales, code_table(D), N, K, group, split, y);
  else
    quant_gemv_kernel<D, T, false><<<blocks, kThreads, 0, stream>>>(x, d, scales, code_table(D), N, K, group, split, y);
}

template <DType D>
void launch_gemv_t(const float* x, int T, const void* data, const void* scales, int N, int K, int group, float* y,
                   int n_sms, cudaStream_t stream) {
  switch (T) {
    case 1:
      launch_gemv<D, 1>(x, data, scales, N, K, group, y, n_sms, stream);
      break;
    case 2:
      launch_gemv<D, 2>(x, data, scales, N, K, group, y, n_sms, stream);
      break;
    case 3:
      launch_gemv<D, 3>(x, data, scales, N, K, group, y, n_sms, stream);
      break;
    default:
      launch_gemv<D, 4>(x, data, scales, N, K, group, y, n_sms, stream);
      break;
  }
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

cudaError_t quant_gemv_cuda(const float* x, int T, const void* data, const void* scales, DType wt, int N, int K,
                            int group, float* y, int n_sms, cudaStream_t stream) {
  if (T <= 0 || N <= 0) return cudaSuccess;
  if (T > kGemvMaxT || !x || !y || n_sms <= 0 || !layout_ok(wt, data, scales, K, group)) return cudaErrorInvalidValue;
  switch (wt) {
    case DType::Q8:
      launch_gemv_t<DType::Q8>(x, T, data, scales, N, K, group, y, n_sms, stream);
      break;
    case DType::NF4:
      launch_gemv_t<DType::NF4>(x, T, data, scales, N, K, group, y, n_sms, stream);
      break;
    case DType::Q4:
      launch_gemv_t<DType::Q4>(x, T, data, scales, N, K, group, y, n_sms, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
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
