// RoPE kernels: grid (token, slice). Each block first computes its token's hd/2 angles (cos and sin in
// shared memory: every head rotates by the same angles, so the fp64 sincos runs hd/2 times per block
// instead of once per rotated pair; one block of 128 threads doing it per pair took 18 us per 7B decode
// step and layer on an H200), then thread i of slice s rotates pair s * 256 + i of (heads x hd/2), the
// pair (i, i + hd/2) of one head. A decode step has one token: with one block for all its 2,560 pairs
// (7B) each thread rotated 10 pairs one after the other (~9 us a layer on an H200, ncu); the slices
// give every pair its own thread.
// Angles as the CPU reference computes them: the host's fp32 inverse frequencies, fp32 product with the
// position, cos/sin in fp64 rounded to fp32; the rotation in explicitly rounded fp32 operations (no
// contraction), as the CPU does (rope_math.cuh). The fused variant also stores the rotated K row and the V row of the
// token in its cache slot; its rows variant does that for a batched decode step, one sequence per token.
#include "common.cuh"
#include "kv.cuh"
#include "pdl.cuh"
#include "rope.cuh"
#include "rope_math.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// The token's angle table: cs[i], sn[i] = cos, sin of pos * inv_freq[i] for i < half, by the block's
// threads; ends with a barrier (every thread of the block calls it).
__device__ __forceinline__ void angle_table(float pos, int half, const float* __restrict__ inv_freq, float* cs,
                                            float* sn) {
  for (int i = threadIdx.x; i < half; i += blockDim.x) rope_angle(pos, inv_freq[i], cs + i, sn + i);
  __syncthreads();
}

// Rotates pair (i, i + half) of the head row v by the angle whose cos, sin are cs, sn; returns the pair.
__device__ __forceinline__ float2 rotate_pair(const float* v, int i, int half, float cs, float sn) {
  return rope_rotate(v[i], v[i + half], cs, sn);
}

// Shared memory of a launch: the angle table, 2 * hd/2 floats.
size_t table_bytes(int hd) { return size_t(hd) * sizeof(float); }

// The launch grid for T tokens: slices of 256 pairs, enough for one pair a thread (and the v row's
// elements, which are fewer) while the grid is small; a long chunk (T >= 256) keeps one block a token,
// which already fills the GPU, rather than recompute the angle table in every slice.
dim3 grid_for(int T, int n_heads, int n_kv_heads, int hd) {
  const int pairs = (n_heads + n_kv_heads) * (hd / 2);
  int slices = (pairs + kThreads - 1) / kThreads;
  const int most = T >= 256 ? 1 : 256 / T;
  if (slices > most) slices = most;
  return dim3(unsigned(T), unsigned(slices < 1 ? 1 : slices));
}

__global__ void __launch_bounds__(kThreads)
    rope_kernel(float* q, float* k, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads, int hd,
                const float* __restrict__ inv_freq) {
  extern __shared__ float table[];
  const int half = hd / 2;
  const int t = blockIdx.x;
  if (d_start) start = *d_start;
  float* cs = table;
  float* sn = table + half;
  angle_table(float(start + t), half, inv_freq, cs, sn);
  const int pairs_q = n_heads * half, pairs = (n_heads + n_kv_heads) * half;
  for (int p = blockIdx.y * blockDim.x + threadIdx.x; p < pairs; p += gridDim.y * blockDim.x) {
    const bool is_q = p < pairs_q;
    const int pp = is_q ? p : p - pairs_q;
    const int h = pp / half, i = pp % half;
    float* v = is_q ? q + (size_t(t) * n_heads + h) * hd : k + (size_t(t) * n_kv_heads + h) * hd;
    const float2 r = rotate_pair(v, i, half, cs[i], sn[i]);
    v[i] = r.x;
    v[i + half] = r.y;
  }
}

// One token's RoPE, by the block's threads: rotates its q row [Hq*hd] and k row [Hkv*hd] in place at
// position pos (as rope_kernel, so the same bits) and, with ck_row set, stores the rotated k row in
// ck_row and the v row in cv_row (cache rows [Hkv*hd]). The block's slice blockIdx.y of gridDim.y: pairs
// and v elements s * 256 + i, every (gridDim.y * 256)-th. Each element of q, k, v and the cache rows is
// touched by one thread only; the one barrier is the angle table's (every thread of the block calls this).
// C: the cache's element type (kv.cuh).
template <class C>
__device__ __forceinline__ void rope_store_token(float* qt, float* kt, const float* __restrict__ vt,
                                                 C* __restrict__ ck_row, C* __restrict__ cv_row, float pos, int n_heads,
                                                 int n_kv_heads, int hd, const float* __restrict__ inv_freq) {
  extern __shared__ float table[];
  const int half = hd / 2;
  float* cs = table;
  float* sn = table + half;
  angle_table(pos, half, inv_freq, cs, sn);
  pdl_wait();  // q, k, v are the kernel before's output (launched with programmatic dependence, pdl.cuh)
  const int kvd = n_kv_heads * hd;
  const int pairs_q = n_heads * half, pairs = (n_heads + n_kv_heads) * half;
  for (int p = blockIdx.y * blockDim.x + threadIdx.x; p < pairs; p += gridDim.y * blockDim.x) {
    const bool is_q = p < pairs_q;
    const int pp = is_q ? p : p - pairs_q;
    const int h = pp / half, i = pp % half;
    float* x = (is_q ? qt : kt) + size_t(h) * hd;
    const float2 r = rotate_pair(x, i, half, cs[i], sn[i]);
    x[i] = r.x;
    x[i + half] = r.y;
    if (!is_q && ck_row) {
      C* c = ck_row + size_t(h) * hd;
      kv_store(c + i, r.x);
      kv_store(c + i + half, r.y);
    }
  }
  if (ck_row)
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < kvd; i += gridDim.y * blockDim.x)
      kv_store(cv_row + i, vt[i]);
}

// Token t = blockIdx.x of the chunk: rotates its q and k rows in place, and when t >= first (the chunk's
// last `slots` positions) writes the rotated k row and its v row to cache row (start + t) % slots. The rows
// of different tokens are distinct (at most `slots` consecutive positions are stored), so there is no race.
// q, k: [T, H*hd]; v: [T, Hkv*hd]; ck, cv: [slots, Hkv*hd].
template <class C>
__global__ void __launch_bounds__(kThreads)
    rope_cache_write_kernel(float* q, float* k, const float* __restrict__ v, C* __restrict__ ck, C* __restrict__ cv,
                            int first, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads, int hd,
                            int64_t slots, const float* __restrict__ inv_freq) {
  pdl_trigger();  // the attention launched after this kernel may start (pdl.cuh)
  const int t = blockIdx.x;
  if (d_start) start = *d_start;  // written before the step's first kernel: readable before pdl_wait
  const bool store = t >= first;
  const int kvd = n_kv_heads * hd;
  const size_t row = size_t((start + t) % slots) * size_t(kvd);  // start >= 0, slots > 0
  rope_store_token(q + size_t(t) * n_heads * hd, k + size_t(t) * kvd, v + size_t(t) * kvd, store ? ck + row : nullptr,
                   store ? cv + row : nullptr, float(start + t), n_heads, n_kv_heads, hd, inv_freq);
}

// Row t = blockIdx.x of a batched decode step: its own position, cache and slot count from the table.
// Distinct rows have distinct caches (Backend::decode_rows), so no two blocks write the same cache row.
template <class C>
__global__ void __launch_bounds__(kThreads)
    rope_cache_write_rows_kernel(float* q, float* k, const float* __restrict__ v,
                                 const DecodeRowArgs* __restrict__ rows, int n_heads, int n_kv_heads, int hd,
                                 const float* __restrict__ inv_freq) {
  const int t = blockIdx.x;
  const DecodeRowArgs r = rows[t];
  const int kvd = n_kv_heads * hd;
  const size_t row = size_t(r.pos % r.slots) * size_t(kvd);  // pos >= 0, slots > 0 (checked by the host)
  rope_store_token(q + size_t(t) * n_heads * hd, k + size_t(t) * kvd, v + size_t(t) * kvd,
                   static_cast<C*>(r.cache_k) + row, static_cast<C*>(r.cache_v) + row, float(r.pos), n_heads,
                   n_kv_heads, hd, inv_freq);
}

}  // namespace

cudaError_t rope_cuda(float* q, float* k, int T, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads,
                      int head_dim, const float* inv_freq, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (head_dim <= 0 || head_dim % 2) return cudaErrorInvalidValue;
  rope_kernel<<<grid_for(T, n_heads, n_kv_heads, head_dim), kThreads, table_bytes(head_dim), stream>>>(q, k, start, d_start, n_heads, n_kv_heads, head_dim,
                                                              inv_freq);
  return cudaGetLastError();
}

cudaError_t rope_cache_write_cuda(float* q, float* k, const float* v, void* cache_k, void* cache_v, bool kv_half, int T,
                                  int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads, int head_dim,
                                  int64_t slots, const float* inv_freq, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (head_dim <= 0 || head_dim % 2 || n_heads <= 0 || n_kv_heads <= 0 || slots <= 0 || (!d_start && start < 0))
    return cudaErrorInvalidValue;
  const int first = int64_t(T) > slots ? int(int64_t(T) - slots) : 0;
  const dim3 grid = grid_for(T, n_heads, n_kv_heads, head_dim);
  if (kv_half)
    return launch_maybe_pdl(rope_cache_write_kernel<__half>, grid, dim3(kThreads), table_bytes(head_dim), stream, q, k,
                            v, static_cast<__half*>(cache_k), static_cast<__half*>(cache_v), first, start, d_start,
                            n_heads, n_kv_heads, head_dim, slots, inv_freq);
  return launch_maybe_pdl(rope_cache_write_kernel<float>, grid, dim3(kThreads), table_bytes(head_dim), stream, q, k, v,
                          static_cast<float*>(cache_k), static_cast<float*>(cache_v), first, start, d_start, n_heads,
                          n_kv_heads, head_dim, slots, inv_freq);
}

cudaError_t rope_cache_write_rows_cuda(float* q, float* k, const float* v, const DecodeRowArgs* rows, int n,
                                       bool kv_half, int n_heads, int n_kv_heads, int head_dim, const float* inv_freq,
                                       cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (head_dim <= 0 || head_dim % 2 || n_heads <= 0 || n_kv_heads <= 0 || !rows) return cudaErrorInvalidValue;
  const dim3 grid = grid_for(n, n_heads, n_kv_heads, head_dim);
  if (kv_half)
    rope_cache_write_rows_kernel<__half>
        <<<grid, kThreads, table_bytes(head_dim), stream>>>(q, k, v, rows, n_heads, n_kv_heads, head_dim, inv_freq);
  else
    rope_cache_write_rows_kernel<float>
        <<<grid, kThreads, table_bytes(head_dim), stream>>>(q, k, v, rows, n_heads, n_kv_heads, head_dim, inv_freq);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
