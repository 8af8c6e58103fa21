// The head of each logits row, one block of 1024 threads a row, in passes over the row (which sits in
// L2): the penalty applied into a scratch copy (rows without one read the logits directly); a radix
// select, 8 bits a pass from the top, finds the k-th largest value's order-preserving key; the values
// above it are gathered in any order and its ties in index order (a block-wide scan), so the set is
// the host's; a bitonic sort in shared memory orders the set by (value descending, index ascending);
// then the normaliser is summed against the largest value.
#include <cmath>

#include "top_candidates.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

// A logit as the candidates see it: NaN as -inf (mistral::top_candidates does the same).
__device__ __forceinline__ float clean(float f) { return f != f ? -INFINITY : f; }

// A float's order-preserving unsigned key (-0 and +0 equal, NaN as -inf): a > b as floats iff
// key(a) > key(b).
__device__ __forceinline__ unsigned order_key(float f) {
  unsigned u = __float_as_uint(clean(f));
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Sort entry: ascending order is value descending, then index ascending.
__device__ __forceinline__ unsigned long long entry(unsigned key, int i) {
  return (static_cast<unsigned long long>(~key) << 32) | static_cast<unsigned>(i);
}

__global__ void __launch_bounds__(kThreads)
    top_candidates_kernel(const float* x, int n, const TopRequest* __restrict__ reqs, const int32_t* __restrict__ pen,
                          float* work, int kmax, int32_t* __restrict__ ids, float* __restrict__ vals,
                          double* __restrict__ zs) {
  // x and work without __restrict__: the passes read the row through `row`, which is the penalised copy
  // this block has just written when there is a penalty, so its loads must not take the read-only path.
  __shared__ unsigned long long cand[kMaxTopCandidates];
  __shared__ unsigned hist[256];
  __shared__ unsigned s_prefix, s_kk;
  __shared__ int s_count;
  __shared__ int warp_counts[kWarps];
  __shared__ double warp_sums[kWarps];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const TopRequest rq = reqs[blockIdx.x];
  const float* row = x + size_t(blockIdx.x) * size_t(n);
  if (rq.n_pen > 0) {
    float* w = work + size_t(blockIdx.x) * size_t(n);
    for (int i = tid; i < n; i += kThreads) w[i] = row[i];
    __syncthreads();
    for (int j = tid; j < rq.n_pen; j += kThreads) {
      const int id = pen[rq.pen_offset + j];
      const float l = row[id];
      w[id] = l > 0 ? l / rq.penalty : l * rq.penalty;
    }
    __syncthreads();  // the block's global writes are visible to the block after the barrier
    row = w;
  }
  const int k = min(max(rq.k, 1), min(n, kmax));

  // Radix select: the key of the k-th largest value, and how many of its ties belong in the set (kk).
  unsigned prefix = 0, mask = 0, kk = unsigned(k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int i = tid; i < n; i += kThreads) {
      const unsigned key = order_key(row[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l holds bins 255 - 8l down to 248 - 8l; the lane whose bins reach the kk-th largest scans them.
      unsigned c[8], s = 0;
      for (int j = 0; j < 8; ++j) s += c[j] = hist[255 - 8 * lane - j];
      unsigned before = s;  // inclusive scan over lanes, then made exclusive
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned t = __shfl_up_sync(0xffffffffu, before, o);
        if (lane >= o) before += t;
      }
      before -= s;
      if (before < kk && kk <= before + s) {
        unsigned cum = before;
        int j = 0;
        while (cum + c[j] < kk) cum += c[j++];
        s_prefix = prefix | (unsigned(255 - 8 * lane - j) << shift);
        s_kk = kk - cum;
      }
    }
    __syncthreads();
    prefix = s_prefix, kk = s_kk, mask |= 255u << shift;
  }
  const unsigned kth = prefix;
  const int greater = k - int(kk);

  // The values above the k-th, in any order; then the first kk of its ties by index.
  if (tid == 0) s_count = 0;
  __syncthreads();
  for (int i = tid; i < n; i += kThreads) {
    const unsigned key = order_key(row[i]);
    if (key > kth) {
      const int slot = atomicAdd(&s_count, 1);
      if (slot < greater) cand[slot] = entry(key, i);  // always, when the passes agree
    }
  }
  unsigned base = 0;
  for (int start = 0; start < n && base < kk; start += kThreads) {
    const int i = start + tid;
    const bool tie = i < n && order_key(row[i]) == kth;
    const unsigned ballot = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kWarps; ++w) {
      before += w < warp ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    const unsigned pos = base + unsigned(before) + unsigned(__popc(ballot & ((1u << lane) - 1u)));
    if (tie && pos < kk) cand[greater + int(pos)] = entry(kth, i);
    base += unsigned(total);
    __syncthreads();  // warp_counts is rewritten by the next tile
  }

  // Bitonic sort of the set, padded to a power of two.
  int P = 1;
  while (P < k) P <<= 1;
  for (int i = k + tid; i < P; i += kThreads) cand[i] = ~0ull;
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < P; i += kThreads) {
        const int j = i ^ stride;
        if (j > i) {
          const unsigned long long a = cand[i], b = cand[j];
          if ((a > b) == ((i & size) == 0)) cand[i] = b, cand[j] = a;
        }
      }
      __syncthreads();
    }
  int32_t* out_ids = ids + size_t(blockIdx.x) * size_t(kmax);
  float* out_vals = vals + size_t(blockIdx.x) * size_t(kmax);
  for (int i = tid; i < k; i += kThreads) {
    const int id = int(unsigned(cand[i] & 0xffffffffu));
    out_ids[i] = id;
    out_vals[i] = clean(row[id]);
  }

  // The normaliser against the largest value.
  double s = 0;
  if (rq.temperature > 0) {
    const float mx = clean(row[int(unsigned(cand[0] & 0xffffffffu))]);
    for (int i = tid; i < n; i += kThreads) s += double(expf((clean(row[i]) - mx) / rq.temperature));
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) warp_sums[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = warp_sums[lane];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) zs[blockIdx.x] = s;
  }
}

}  // namespace

cudaError_t top_candidates_cuda(const float* x, int rows, int n, const TopRequest* req, const int32_t* pen, float* work,
                                int kmax, int32_t* ids, float* vals, double* z, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (n <= 0 || n > (1 << 30) || kmax <= 0 || kmax > kMaxTopCandidates || !x || !req || !ids || !vals || !z)
    return cudaErrorInvalidValue;
  top_candidates_kernel<<<unsigned(rows), kThreads, 0, stream>>>(x, n, req, pen, work, kmax, ids, vals, z);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
