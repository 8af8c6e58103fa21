// Split-KV decode attention (one query token): grid (kv head, split). A block of 4 warps takes the
// keys of its split for one KV head and ALL its query heads (the GQA group), so each K/V row is
// loaded once per group, not once per query head. Two versions of the block: for head_dim <= 128 the
// tiled one (decode_partial_block_tiled: each warp scores 8 (or 4) keys at once, the dot products
// reduced together, one softmax update a tile); for wider heads, and with MISTRAL_CUDA_DECODE_TILED=0,
// the untiled one (decode_partial_block: each warp scores its keys one by one, two in flight). The lanes
// read a key row coalesced (4 consecutive dims a lane per 128, lane_dim) and keep an online softmax (max,
// sum, weighted V) per query head. The cache holds float or __half (kv.cuh). The 4 warps are merged in
// shared memory, and each block writes its partial (max, sum, acc[hd]) per query head; a second kernel
// merges the splits. The number of splits is fixed by the caller (so a recorded graph can be replayed at
// any position); the key range of each split is computed on the device from the position. The merge: by
// default the separate combine kernel, one block per query head; with MISTRAL_CUDA_DECODE_COMBINE=0 the
// last block of each KV head to finish (a per-head counter in the scratch, atomicAdd after a
// __threadfence; that block resets it to zero) merges its group's splits itself, one launch a layer
// instead of two, but that block's merge runs alone at the end (attn_bench on an H200, 7B layer at 4096
// keys: 37.3 us against 24.2 with the combine kernel). A batched decode step (many sequences, one token
// each) runs the same block code over a flat list of (row, split) work items, each row with its own cache,
// position and number of splits (planned on the host from the rows' key counts), then one combine block
// per (row, query head). With inv_freq (MISTRAL_CUDA_DECODE_ROPE=1, the tiled block only) the partial
// kernel also does the step's RoPE and cache write (RopeFold). Preconditions: head_dim <= 256, group =
// Hq / Hkv <= 8.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "attention.cuh"
#include "attention_decode.cuh"
#include "common.cuh"
#include "kv.cuh"
#include "pdl.cuh"
#include "rope_math.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxG = 8;
constexpr int kMaxDPerLane = 8;           // head_dim <= 256
constexpr int64_t kMinKeysPerSplit = 64;  // batched steps: shorter splits cost more in partials than they save
constexpr int kMaxRowSplits = 4096;       // batched steps: splits of one row at most

// Keys [kb, ke) of split `split` of `splits` for the query at position pos: its keys j0 .. pos (j0 the
// window's first) in pieces of max(ceil(n_keys / splits), min_per); the last pieces may be short or
// empty. Returns the number of non-empty pieces (they come first).
__host__ __device__ __forceinline__ int64_t split_keys(int64_t pos, int window, int splits, int split, int64_t* kb,
                                                       int64_t* ke, int64_t min_per = 1) {
  const int64_t j0 = window > 0 ? (pos - window + 1 > 0 ? pos - window + 1 : 0) : 0;
  const int64_t n_keys = pos - j0 + 1;
  int64_t per = (n_keys + splits - 1) / splits;
  if (per < min_per) per = min_per;
  *kb = j0 + int64_t(split) * per;
  *ke = *kb + per < pos + 1 ? *kb + per : pos + 1;
  return (n_keys + per - 1) / per;
}

// One query token's splits take at least this many keys each: at short contexts most of the fixed number
// of splits (sized for the longest context, so that a recorded graph replays at any position) are then
// empty; their blocks return at once and the combine reads only the non-empty ones (at 128 tokens of
// context, 49 splits of 3 keys each cost a 7B decode step more in partials and merging than they saved).
constexpr int64_t kMinKeysPerDecodeSplit = 32;

// Partials of one query token: [Hq, splits, hd + 2], (max, sum, acc[hd]) per (query head, split).
__host__ __device__ __forceinline__ size_t partial_offset(int h, int splits, int split, int hd) {
  return (size_t(h) * size_t(splits) + size_t(split)) * (size_t(hd) + 2);
}
// A batched step's partials: row after row, row i's [Hq, splits_i, hd + 2] from its first split split0_i.
__host__ __device__ __forceinline__ size_t row_partials(int split0, int n_heads, int hd) {
  return size_t(split0) * size_t(n_heads) * (size_t(hd) + 2);
}

// The RoPE fold (decode_attention_cuda with inv_freq set; MISTRAL_CUDA_DECODE_ROPE=1): the partial kernel
// rotates the query heads and the token's own K row itself, and the block whose split holds the token's
// position stores the rotated K row and the V row in the cache, instead of rope_cache_write_kernel
// running first (one launch a layer fewer). cs, sn: the position's angles (rope_angle, rope_math.cuh)
// in shared memory of the block; ck, cv: the caches, written.
template <class C>
struct RopeFold {
  const float* cs;
  const float* sn;
  C* ck;
  C* cv;
};

// Element d of head row x rotated by the angles cs/sn (rotate-half pairs (i, i + hd/2)): the value the
// RoPE kernels give it (rope_math.cuh).
__device__ __forceinline__ float rope_pair_at(const float* __restrict__ x, int d, int hd, const float* cs,
                                              const float* sn) {
  const int half = hd / 2;
  if (d < half) return rope_rotate(x[d], x[d + half], cs[d], sn[d]).x;
  const int i = d - half;
  return rope_rotate(x[i], x[d], cs[i], sn[i]).y;
}

// Lane `lane`'s element r (r < 4 * NC) of a head row: dim 128 * (r / 4) + 4 * lane + r % 4, so that a
// lane reads 4 consecutive dims (one 16-byte load of fp32, 8 bytes of fp16) per 128 dims of the row.
__host__ __device__ __forceinline__ int lane_dim(int lane, int r) { return 128 * (r >> 2) + 4 * lane + (r & 3); }

// Every thread of the block finishes some (g, d) outputs of its partial from the warps' (m, l, acc) in
// shared memory (sm_m, sm_l [kWarps][kMaxG]; sm_acc [kWarps][kMaxG][DM]).
template <int DM>
__device__ __forceinline__ void write_block_partial(const float (&sm_m)[kWarps][kMaxG],
                                                    const float (&sm_l)[kWarps][kMaxG],
                                                    const float (&sm_acc)[kWarps][kMaxG][DM], int G, int hd, int kvh,
                                                    int split, int splits, float* __restrict__ part) {
  for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
    const int g = i / hd, d = i % hd;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float L = 0.f, A = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float c = sm_m[w][g] == -INFINITY ? 0.f : expf(sm_m[w][g] - M);
      L += sm_l[w][g] * c;
      A += sm_acc[w][g][d] * c;
    }
    float* out = part + partial_offset(kvh * G + g, splits, split, hd);
    if (d == 0) out[0] = M, out[1] = L;
    out[2 + d] = A;
  }
}

// The 4 elements d0 .. d0 + 3 of a K and a V row at element offset `off` (the row's start plus d0): of the
// cache ck, cv when `cached`, else of the chunk's own rows k, v rounded as the cache holds them (kv.cuh);
// zeros past hd. vec: one 16-byte load each (hd % 4 == 0 and the buffers 16-byte aligned).
template <class C>
__device__ __forceinline__ void load_kv4(const C* __restrict__ ck, const C* __restrict__ cv,
                                         const float* __restrict__ k, const float* __restrict__ v, bool cached,
                                         size_t off, int d0, int hd, bool vec, float4& kx, float4& vx) {
  if (vec) {
    kx = cached ? kv_load4(ck + off) : kv_round4<C>(*reinterpret_cast<const float4*>(k + off));
    vx = cached ? kv_load4(cv + off) : kv_round4<C>(*reinterpret_cast<const float4*>(v + off));
    return;
  }
  float ka[4], va[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const bool ok = d0 + e < hd;
    ka[e] = !ok ? 0.f : cached ? kv_load(ck + off + e) : kv_round<C>(k[off + e]);
    va[e] = !ok ? 0.f : cached ? kv_load(cv + off + e) : kv_round<C>(v[off + e]);
  }
  kx = make_float4(ka[0], ka[1], ka[2], ka[3]), vx = make_float4(va[0], va[1], va[2], va[3]);
}

// One block's share of the partials: keys [kb, ke) of KV head kvh for all query heads of its GQA group, of
// the query token at position pos whose q row is q [Hq*hd] and whose own K/V rows are k, v [Hkv*hd]
// (keys before pos come from the cache ck, cv [slots, Hkv*hd] of C, kv.cuh; its own rows are read rounded
// as the cache holds them). NC: 128-dim pieces of a head row (hd <= 128 * NC). Writes (max, sum, acc[hd])
// of each of the group's query heads h to part + partial_offset(h, splits, split, hd). Every thread of the
// block calls it.
template <class C, int NC>
__device__ __forceinline__ void decode_partial_block(const float* __restrict__ q, const float* __restrict__ k,
                                                     const float* __restrict__ v, const C* __restrict__ ck,
                                                     const C* __restrict__ cv, int64_t pos, int64_t slots, int n_heads,
                                                     int n_kv_heads, int hd, int kvh, int64_t kb, int64_t ke, int split,
                                                     int splits, float* __restrict__ part) {
  constexpr int R = 4 * NC;  // elements of a row per lane
  const int G = n_heads / n_kv_heads, kvd = n_kv_heads * hd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float scale = rsqrtf(float(hd));
  // 4-element loads: every row starts at a multiple of 4 elements, and the buffers are aligned.
  const bool vec = (hd & 3) == 0 && ((reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v) |
                                      reinterpret_cast<uintptr_t>(ck) | reinterpret_cast<uintptr_t>(cv)) &
                                     15u) == 0;

  __shared__ __align__(16) float qs[kMaxG][kMaxDPerLane * 32];  // zero past hd
  for (int i = threadIdx.x; i < G * 128 * NC; i += blockDim.x) {
    const int g = i / (128 * NC), d = i % (128 * NC);
    qs[g][d] = d < hd ? q[size_t(kvh * G + g) * hd + d] * scale : 0.f;
  }
  __syncthreads();

  float m[kMaxG], l[kMaxG], acc[kMaxG][R];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = -INFINITY, l[g] = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) acc[g][r] = 0.f;
  }
  // The lane's elements of key j's K and V rows (zeros past ke and past hd).
  auto load_row = [&](int64_t j, float(&kx)[R], float(&vx)[R]) {
    const bool in = j < ke, cached = j < pos;
    const size_t row = cached ? size_t(j % slots) * size_t(kvd) + size_t(kvh) * hd : size_t(kvh) * hd;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d0 = 128 * c + 4 * lane;
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
      if (in && d0 < hd) load_kv4(ck, cv, k, v, cached, row + d0, d0, hd, vec, a, b);
      kx[4 * c] = a.x, kx[4 * c + 1] = a.y, kx[4 * c + 2] = a.z, kx[4 * c + 3] = a.w;
      vx[4 * c] = b.x, vx[4 * c + 1] = b.y, vx[4 * c + 2] = b.z, vx[4 * c + 3] = b.w;
    }
  };
  // Key j scored into every query head's online softmax.
  auto score = [&](const float(&kx)[R], const float(&vx)[R]) {
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      if (g >= G) break;
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const float4 qv = *reinterpret_cast<const float4*>(&qs[g][128 * c + 4 * lane]);
        s = fmaf(qv.x, kx[4 * c], s);
        s = fmaf(qv.y, kx[4 * c + 1], s);
        s = fmaf(qv.z, kx[4 * c + 2], s);
        s = fmaf(qv.w, kx[4 * c + 3], s);
      }
      s = warp_sum(s);
      const float nm = fmaxf(m[g], s);
      const float corr = expf(m[g] - nm), pj = expf(s - nm);
      l[g] = l[g] * corr + pj;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[g][r] = acc[g][r] * corr + pj * vx[r];
      m[g] = nm;
    }
  };
  // Warp w takes keys kb + w, kb + w + kWarps, ... two at a time, and loads the next two while it scores
  // these (one row pair in flight per warp left decode at 4096 tokens of context latency-bound on an
  // H200). Keys past ke load as zeros and are not scored.
  float k0[R], v0[R], k1[R], v1[R];
  load_row(kb + warp, k0, v0);
  load_row(kb + warp + kWarps, k1, v1);
  for (int64_t j = kb + warp; j < ke; j += 2 * kWarps) {
    float k2[R], v2[R], k3[R], v3[R];
    load_row(j + 2 * kWarps, k2, v2);
    load_row(j + 3 * kWarps, k3, v3);
    score(k0, v0);
    if (j + kWarps < ke) score(k1, v1);
#pragma unroll
    for (int r = 0; r < R; ++r) k0[r] = k2[r], v0[r] = v2[r], k1[r] = k3[r], v1[r] = v3[r];
  }
  // Merge the warps: warp 0 gathers the others' (m, l, acc) through shared memory.
  __shared__ float sm_m[kWarps][kMaxG], sm_l[kWarps][kMaxG];
  __shared__ float sm_acc[kWarps][kMaxG][kMaxDPerLane * 32];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {  // compile-time indices keep acc[][] in registers
    if (g < G) {
      if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int d = lane_dim(lane, r);
        if (d < hd) sm_acc[warp][g][d] = acc[g][r];
      }
    }
  }
  __syncthreads();
  write_block_partial(sm_m, sm_l, sm_acc, G, hd, kvh, split, splits, part);
}

// The transpose reduction of the tiled block: the lane holds N values s[0 .. N) of NV (N a power of two);
// with xor offset O it keeps the half its lane bit O selects, sends the other half to lane ^ O and adds
// what it receives, then goes on with O / 2. Once a lane holds one value, the steps left are plain sums.
// Templates, so that every index is a constant and s stays in registers.
template <int NV, int N, int O>
__device__ __forceinline__ void transpose_reduce(float (&s)[NV], int lane) {
  if constexpr (O > 0) {
    if constexpr (N > 1) {
      const bool up = (lane & O) != 0;  // keeps the upper half
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        const float send = up ? s[i] : s[i + N / 2], keep = up ? s[i + N / 2] : s[i];
        s[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
      }
      transpose_reduce<NV, N / 2, O / 2>(s, lane);
    } else {
      s[0] += __shfl_xor_sync(0xffffffffu, s[0], O);
      transpose_reduce<NV, 1, O / 2>(s, lane);
    }
  }
}

// The tiled block (head_dim <= 128; MISTRAL_CUDA_DECODE_TILED=0 selects decode_partial_block instead): the
// same partials from fewer instructions a key. GP: the GQA group rounded up to a power of two (the extra
// heads have q = 0 and are not written). Warp w takes tiles of T consecutive keys, kb + T * (w + kWarps * i),
// and loads all of a tile's K and V rows at once (each lane 4 consecutive dims of each row). The T * GP dot
// products of a tile are reduced across the warp together by a transpose reduction: at each step a lane
// keeps half of its values, sends the other half to its partner (lane ^ o) and adds what it receives, so 32
// sums take 31 shuffles instead of 160, and afterwards lane l holds score (l >> SH) = t * GP + g. The online
// softmax then runs once a tile: the tile's max and sum over the T lanes of a head, one exp a lane, one
// rescale of the accumulators per head, and each probability taken from its lane for the V accumulation.
// A tile's cache rows follow one another (one 64-bit modulo a tile, not a key).
template <class C, int GP>
__device__ __forceinline__ void decode_partial_block_tiled(const float* __restrict__ q, const float* __restrict__ k,
                                                           const float* __restrict__ v, const C* __restrict__ ck,
                                                           const C* __restrict__ cv, int64_t pos, int64_t slots,
                                                           int n_heads, int n_kv_heads, int hd, int kvh, int64_t kb,
                                                           int64_t ke, int split, int splits, float* __restrict__ part,
                                                           bool fast_tiles, const RopeFold<C>* rf = nullptr) {
  static_assert(GP == 1 || GP == 2 || GP == 4 || GP == 8, "GP: a power of two up to kMaxG");
  constexpr int T = GP >= 4 ? 32 / GP : 8;  // keys a tile
  constexpr int NV = T * GP;                // scores a tile: 8, 16 or 32
  constexpr int SH = NV == 32 ? 0 : NV == 16 ? 1 : 2;
  constexpr int LG = GP == 8 ? 3 : GP == 4 ? 2 : GP == 2 ? 1 : 0;
  constexpr unsigned kAll = 0xffffffffu;
  const int G = n_heads / n_kv_heads, kvd = n_kv_heads * hd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, d0 = 4 * lane;
  const float scale = rsqrtf(float(hd));
  const bool vec = (hd & 3) == 0 && ((reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v) |
                                      reinterpret_cast<uintptr_t>(ck) | reinterpret_cast<uintptr_t>(cv)) &
                                     15u) == 0;
  const bool fast = fast_tiles && vec;  // MISTRAL_CUDA_DECODE_FAST_TILES=1 (an experiment, not yet run on a GPU)

  __shared__ __align__(16) float qs[GP][128];  // zero past hd and for heads past G
  __shared__ __align__(16) float kr[128];      // rf: the own K row, rotated
  const float* kown = k + size_t(kvh) * hd;    // the token's own K row of this head
  if (rf) {  // RoPE here (rope_pair_at: the bits rope_cache_write_kernel gives), then the cache row
    for (int i = threadIdx.x; i < GP * 128; i += blockDim.x) {
      const int g = i / 128, d = i % 128;
      qs[g][d] = g < G && d < hd ? rope_pair_at(q + size_t(kvh * G + g) * hd, d, hd, rf->cs, rf->sn) * scale : 0.f;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) kr[d] = rope_pair_at(kown, d, hd, rf->cs, rf->sn);
    __syncthreads();
    kown = kr;
    if (kb <= pos && pos < ke) {  // this block's keys end with the token's own: it stores its K/V rows
      const size_t row = size_t(pos % slots) * size_t(kvd) + size_t(kvh) * hd;
      for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        kv_store(rf->ck + row + d, kr[d]);
        kv_store(rf->cv + row + d, v[size_t(kvh) * hd + d]);
      }
    }
  } else {
    for (int i = threadIdx.x; i < GP * 128; i += blockDim.x) {
      const int g = i / 128, d = i % 128;
      qs[g][d] = g < G && d < hd ? q[size_t(kvh * G + g) * hd + d] * scale : 0.f;
    }
    __syncthreads();
  }
  const float* vown = v + size_t(kvh) * hd;
  float4 qv[GP];
#pragma unroll
  for (int g = 0; g < GP; ++g) qv[g] = *reinterpret_cast<const float4*>(&qs[g][d0]);

  // The lane's 4 elements of key j's K and V rows, cache row `slot` when j < pos (zeros past ke and hd).
  auto load_row = [&](int64_t j, int64_t slot, float4& kx, float4& vx) {
    kx = vx = make_float4(0.f, 0.f, 0.f, 0.f);
    if (j >= ke || d0 >= hd) return;
    if (j < pos)
      load_kv4(ck, cv, k, v, true, size_t(slot) * size_t(kvd) + size_t(kvh) * hd + d0, d0, hd, vec, kx, vx);
    else  // the token's own row (kown: in shared memory when rf rotated it)
      load_kv4(ck, cv, kown, vown, false, size_t(d0), d0, hd, vec, kx, vx);
  };

  const int idx = lane >> SH, my_t = idx >> LG, my_g = idx & (GP - 1);  // the score this lane ends with
  float m = -INFINITY, l = 0.f;  // head my_g's running max and sum (the same in each of its lanes)
  float acc[GP][4];
#pragma unroll
  for (int g = 0; g < GP; ++g) acc[g][0] = acc[g][1] = acc[g][2] = acc[g][3] = 0.f;
  const size_t lane_off = size_t(kvh) * hd + d0;
  for (int64_t base = kb + int64_t(T) * warp; base < ke; base += int64_t(T) * kWarps) {
    float4 kx[T], vx[T];
    int64_t slot = base % slots;
    if (fast && base + T <= ke && base + T <= pos && slot + T <= slots) {
      // All T keys are cached, in consecutive rows: one address computation a tile (warp-uniform branch).
      const C* kp = ck + size_t(slot) * size_t(kvd) + lane_off;
      const C* vp = cv + size_t(slot) * size_t(kvd) + lane_off;
      const bool in = d0 < hd;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        kx[t] = in ? kv_load4(kp + size_t(t) * size_t(kvd)) : make_float4(0.f, 0.f, 0.f, 0.f);
        vx[t] = in ? kv_load4(vp + size_t(t) * size_t(kvd)) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    } else {
#pragma unroll
      for (int t = 0; t < T; ++t) {
        load_row(base + t, slot, kx[t], vx[t]);
        if (++slot == slots) slot = 0;
      }
    }
    float s[NV];
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
      for (int g = 0; g < GP; ++g) {
        float a = qv[g].x * kx[t].x;
        a = fmaf(qv[g].y, kx[t].y, a);
        a = fmaf(qv[g].z, kx[t].z, a);
        s[t * GP + g] = fmaf(qv[g].w, kx[t].w, a);
      }
    transpose_reduce<NV, NV, 16>(s, lane);
    const float sc = base + my_t < ke ? s[0] : -INFINITY;
    float mt = sc;
#pragma unroll
    for (int o = 1 << (SH + LG); o < 32; o <<= 1) mt = fmaxf(mt, __shfl_xor_sync(kAll, mt, o));
    const float nm = fmaxf(m, mt);  // finite: key `base` is below ke
    const float p = expf(sc - nm), corr = expf(m - nm);
    float ps = p;
#pragma unroll
    for (int o = 1 << (SH + LG); o < 32; o <<= 1) ps += __shfl_xor_sync(kAll, ps, o);
    l = l * corr + ps;
    m = nm;
#pragma unroll
    for (int g = 0; g < GP; ++g) {
      const float cg = __shfl_sync(kAll, corr, g << SH);
      acc[g][0] *= cg, acc[g][1] *= cg, acc[g][2] *= cg, acc[g][3] *= cg;
    }
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
      for (int g = 0; g < GP; ++g) {
        const float pt = __shfl_sync(kAll, p, (t * GP + g) << SH);
        acc[g][0] = fmaf(pt, vx[t].x, acc[g][0]);
        acc[g][1] = fmaf(pt, vx[t].y, acc[g][1]);
        acc[g][2] = fmaf(pt, vx[t].z, acc[g][2]);
        acc[g][3] = fmaf(pt, vx[t].w, acc[g][3]);
      }
  }
  __shared__ float sm_m[kWarps][kMaxG], sm_l[kWarps][kMaxG];
  __shared__ float sm_acc[kWarps][kMaxG][128];
  if ((lane & ((1 << SH) - 1)) == 0 && my_t == 0 && my_g < G) sm_m[warp][my_g] = m, sm_l[warp][my_g] = l;
#pragma unroll
  for (int g = 0; g < GP; ++g)
    if (g < G)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        if (d0 + r < hd) sm_acc[warp][g][d0 + r] = acc[g][r];
  __syncthreads();
  write_block_partial(sm_m, sm_l, sm_acc, G, hd, kvh, split, splits, part);
}

// Merges the first `used` partials of one query head (ph: [splits, hd + 2]) into its output row o[hd]; the
// block's threads share the dims. kL2: read the partials from L2 (__ldcg), for the merge inside the
// partial kernel, whose partials other SMs wrote during the same launch.
template <bool kL2 = false>
__device__ __forceinline__ void combine_head(const float* __restrict__ ph, int used, int hd, float* __restrict__ o) {
  auto ld = [](const float* a) { return kL2 ? __ldcg(a) : *a; };
  const size_t stride = size_t(hd) + 2;
  float M = -INFINITY;
  for (int s = 0; s < used; ++s) M = fmaxf(M, ld(ph + s * stride));
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float L = 0.f, A = 0.f;
    for (int s = 0; s < used; ++s) {
      const float ms = ld(ph + s * stride);
      const float c = ms == -INFINITY ? 0.f : expf(ms - M);
      L += ld(ph + s * stride + 1) * c;
      A += ld(ph + s * stride + 2 + d) * c;
    }
    o[d] = A / L;
  }
}

// One sequence's query token (grid: KV head, split); the position from `start` or *p.d_start. With
// `counters` set (one zero word per KV head), the last of a KV head's non-empty splits to finish merges
// the group's partials into out (as decode_combine_kernel does, the same bits) and sets its counter back
// to zero; without, decode_combine_kernel follows.
template <class C, int NC, int GP>
__global__ void __launch_bounds__(kWarps * 32)
    decode_partial_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                          const C* __restrict__ ck, const C* __restrict__ cv, int64_t start, AttnParams p, int splits,
                          float* __restrict__ part, unsigned* __restrict__ counters, float* __restrict__ out,
                          bool fast_tiles, const float* __restrict__ inv_freq) {
  pdl_trigger();  // the kernel after this one may launch once every block has started (pdl.cuh)
  if (p.d_start) start = *p.d_start;  // written before the step's first kernel: readable before pdl_wait
  const int kvh = blockIdx.x, split = blockIdx.y;
  int64_t kb, ke;
  const int used = int(split_keys(start, p.window, splits, split, &kb, &ke, kMinKeysPerDecodeSplit));
  if (split >= used) return;  // empty
  // The RoPE fold (inv_freq set; tiled block only): the position's angles before pdl_wait (they depend on
  // the position alone), as the RoPE kernels compute them (rope_math.cuh).
  __shared__ float cs[64], sn[64];
  if constexpr (GP > 0) {
    if (inv_freq) {
      for (int i = threadIdx.x; i < p.head_dim / 2; i += blockDim.x)
        rope_angle(float(start), inv_freq[i], cs + i, sn + i);
    }
  }
  pdl_wait();  // q, k, v and the cache row of this step are the kernel before's output
  if constexpr (GP > 0) {
    RopeFold<C> rf{cs, sn, const_cast<C*>(ck), const_cast<C*>(cv)};  // the caches: device memory, written
    decode_partial_block_tiled<C, GP>(q, k, v, ck, cv, start, p.slots, p.n_heads, p.n_kv_heads, p.head_dim, kvh, kb, ke,
                                      split, splits, part, fast_tiles, inv_freq ? &rf : nullptr);
  } else
    decode_partial_block<C, NC>(q, k, v, ck, cv, start, p.slots, p.n_heads, p.n_kv_heads, p.head_dim, kvh, kb, ke,
                                split, splits, part);
  if (!counters) return;
  // Release this block's partials, then count it; the block that completes the count merges.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counters + kvh, 1u) == unsigned(used - 1);
    if (last) counters[kvh] = 0u;  // every other block of this head has counted: ready for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int G = p.n_heads / p.n_kv_heads;
  for (int g = 0; g < G; ++g) {
    const int h = kvh * G + g;
    combine_head<true>(part + partial_offset(h, splits, 0, p.head_dim), used, p.head_dim,
                       out + size_t(h) * size_t(p.head_dim));
  }
}

// A batched decode step (grid: work item, KV head): work item blockIdx.x is split w.split of row w.row,
// whose q/k/v rows are row w.row of q[n, Hq*hd], k, v[n, Hkv*hd] and whose partials start at
// row_partials(split0); position, cache and slot count from the row's table entry.
template <class C, int NC, int GP>
__global__ void __launch_bounds__(kWarps * 32)
    decode_rows_partial_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                               const DecodeRowArgs* __restrict__ rows, const DecodeWork* __restrict__ work,
                               AttnParams p, float* __restrict__ part, bool fast_tiles) {
  const DecodeWork w = work[blockIdx.x];
  const DecodeRowArgs r = rows[w.row];
  const size_t qd = size_t(p.n_heads) * size_t(p.head_dim), kvd = size_t(p.n_kv_heads) * size_t(p.head_dim);
  int64_t kb, ke;
  split_keys(r.pos, p.window, r.splits, w.split, &kb, &ke);
  const C* ck = static_cast<const C*>(r.cache_k);
  const C* cv = static_cast<const C*>(r.cache_v);
  float* pr = part + row_partials(r.split0, p.n_heads, p.head_dim);
  if constexpr (GP > 0)
    decode_partial_block_tiled<C, GP>(q + size_t(w.row) * qd, k + size_t(w.row) * kvd, v + size_t(w.row) * kvd, ck, cv,
                                      r.pos, r.slots, p.n_heads, p.n_kv_heads, p.head_dim, int(blockIdx.y), kb, ke,
                                      w.split, r.splits, pr, fast_tiles);
  else
    decode_partial_block<C, NC>(q + size_t(w.row) * qd, k + size_t(w.row) * kvd, v + size_t(w.row) * kvd, ck, cv, r.pos,
                                r.slots, p.n_heads, p.n_kv_heads, p.head_dim, int(blockIdx.y), kb, ke, w.split,
                                r.splits, pr);
}

// One block per query head: merges the non-empty splits' partials into the output row.
__global__ void decode_combine_kernel(const float* __restrict__ part, int64_t start, const int64_t* d_start, int window,
                                      int splits, int hd, float* __restrict__ out) {
  pdl_trigger();  // the output projection launched after this kernel may start (pdl.cuh)
  pdl_wait();     // the partials are the kernel before's output
  if (d_start) start = *d_start;
  const int h = blockIdx.x;
  int64_t kb, ke;
  const int used = int(split_keys(start, window, splits, 0, &kb, &ke, kMinKeysPerDecodeSplit));
  combine_head<false>(part + partial_offset(h, splits, 0, hd), used, hd, out + size_t(h) * hd);
}

// Grid (row, query head) of a batched decode step: out row `row` [Hq*hd].
__global__ void decode_rows_combine_kernel(const float* __restrict__ part, const DecodeRowArgs* __restrict__ rows,
                                           int n_heads, int hd, float* __restrict__ out) {
  pdl_trigger();  // the output projection launched after this kernel may start (pdl.cuh)
  const int row = blockIdx.x, h = blockIdx.y;
  const DecodeRowArgs r = rows[row];
  combine_head<false>(part + row_partials(r.split0, n_heads, hd) + partial_offset(h, r.splits, 0, hd), r.splits, hd,
               out + (size_t(row) * size_t(n_heads) + size_t(h)) * size_t(hd));
}

// The scratch: kCounterWords counter words (zero between launches), then the partials.
constexpr size_t kCounterWords = 256;

// The variants, from the environment unless set_decode_attention_variant chose: MISTRAL_CUDA_DECODE_COMBINE=0
// the merge inside the partial kernel, MISTRAL_CUDA_DECODE_TILED=0 the untiled block for every head size.
int g_separate_combine = -1, g_tiled = -1;
bool separate_combine() {
  if (g_separate_combine < 0) g_separate_combine = env_equals("MISTRAL_CUDA_DECODE_COMBINE", "0") ? 0 : 1;
  return g_separate_combine == 1;
}
bool tiled_block() {
  if (g_tiled < 0) g_tiled = env_equals("MISTRAL_CUDA_DECODE_TILED", "0") ? 0 : 1;
  return g_tiled == 1;
}
// MISTRAL_CUDA_DECODE_FAST_TILES=1: the tiled block loads a tile of cached keys in consecutive rows from one
// address computation (SASS: about 40 instructions a row for the general per-key address and the select
// between cache and own row; an experiment, written without a GPU and not yet measured or tested there).
int g_fast_tiles = -1;
bool fast_tiles() {
  if (g_fast_tiles < 0) g_fast_tiles = env_equals("MISTRAL_CUDA_DECODE_FAST_TILES", "1") ? 1 : 0;
  return g_fast_tiles == 1;
}

// The tiled block's padded group for p (0: the untiled block: head_dim > 128, or tiling switched off).
int tiled_group(const AttnParams& p) {
  if (!tiled_block() || p.head_dim > 128) return 0;
  const int G = p.n_heads / p.n_kv_heads;
  return G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
}

// Calls f(C{}, NC, GP) with the partial kernels' template arguments for p (NC, GP as integral_constant):
// the cache's element type, the 128-dim pieces of a head row and the tiled block's group (0: untiled).
template <int N>
using Int = std::integral_constant<int, N>;
template <class F>
cudaError_t with_partial_kernel(const AttnParams& p, F&& f) {
  auto by_group = [&](auto c) {
    switch (tiled_group(p)) {
      case 1:
        return f(c, Int<1>{}, Int<1>{});
      case 2:
        return f(c, Int<1>{}, Int<2>{});
      case 4:
        return f(c, Int<1>{}, Int<4>{});
      case 8:
        return f(c, Int<1>{}, Int<8>{});
      default:
        return p.head_dim > 128 ? f(c, Int<2>{}, Int<0>{}) : f(c, Int<1>{}, Int<0>{});
    }
  };
  return p.kv_half ? by_group(__half{}) : by_group(float{});
}

}  // namespace

void set_decode_attention_variant(int tiled, int separate_combine, int fast_tiles) {
  g_tiled = tiled < 0 ? -1 : tiled ? 1 : 0;
  g_fast_tiles = fast_tiles < 0 ? -1 : fast_tiles ? 1 : 0;
  g_separate_combine = separate_combine < 0 ? -1 : separate_combine ? 1 : 0;
}

size_t decode_attention_scratch_floats(const AttnParams& p, int splits) {
  return kCounterWords + size_t(p.n_heads) * size_t(splits) * size_t(p.head_dim + 2);
}

int decode_attention_splits(const AttnParams& p, int n_sms) {
  // Three blocks per SM at the longest context this cache can hold, all resident at once (the partial
  // kernel's registers allow three blocks of 4 warps per SM on sm_90; two blocks left too few loads in
  // flight at long contexts: to be confirmed by gpu-check's profile), and never more splits than 64 keys
  // each at that length.
  const int64_t max_keys = p.window > 0 ? p.window : p.slots;
  int splits = 3 * n_sms / p.n_kv_heads;
  const int64_t cap = (max_keys + 63) / 64;
  if (splits > cap) splits = int(cap);
  return splits < 1 ? 1 : splits;
}

bool decode_rope_fold_supported(const AttnParams& p) {
  return decode_attention_supported(p) && tiled_group(p) > 0 && p.head_dim % 2 == 0;
}

cudaError_t decode_attention_cuda(const float* q, const float* k, const float* v, const void* cache_k,
                                  const void* cache_v, int64_t start, const AttnParams& p, int splits, float* scratch,
                                  float* out, cudaStream_t stream, const float* inv_freq) {
  if (p.head_dim > kMaxDPerLane * 32 || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads ||
      p.n_heads / p.n_kv_heads > kMaxG || splits < 1 || (inv_freq && !decode_rope_fold_supported(p)))
    return cudaErrorInvalidValue;
  unsigned* counters = reinterpret_cast<unsigned*>(scratch);
  float* part = scratch + kCounterWords;
  const bool fused = !separate_combine() && size_t(p.n_kv_heads) <= kCounterWords;
  // Both launched with programmatic dependence when pdl_enabled() (pdl.cuh).
  unsigned* cnt = fused ? counters : nullptr;
  cudaError_t err = with_partial_kernel(p, [&](auto c, auto nc, auto gp) {
    using C = decltype(c);
    return launch_maybe_pdl(decode_partial_kernel<C, decltype(nc)::value, decltype(gp)::value>,
                            dim3(unsigned(p.n_kv_heads), unsigned(splits)), dim3(kWarps * 32), 0, stream, q, k, v,
                            static_cast<const C*>(cache_k), static_cast<const C*>(cache_v), start, p, splits, part, cnt,
                            out, fast_tiles(), inv_freq);
  });
  if (err == cudaSuccess && !fused)
    err = launch_maybe_pdl(decode_combine_kernel, dim3(unsigned(p.n_heads)), dim3(128), 0, stream,
                           static_cast<const float*>(part), start, p.d_start, p.window, splits, p.head_dim, out);
  return err;
}

size_t decode_attention_rows_scratch_floats(const AttnParams& p, int64_t total_splits) {
  return row_partials(int(total_splits), p.n_heads, p.head_dim);  // total_splits <= INT_MAX (the plan's)
}

int64_t decode_attention_rows_plan(DecodeRowArgs* rows, int n, int window, int n_kv_heads, int n_sms) {
  // Keys per split: the step's keys (times the KV heads, one block each) over about 4 blocks per SM,
  // so long rows get several splits and short ones one, and every block has about the same work.
  auto keys = [&](int64_t pos) {
    int64_t kb = 0, ke = 0;
    split_keys(pos, window, 1, 0, &kb, &ke);
    return ke - kb;
  };
  int64_t total = 0;
  for (int i = 0; i < n; ++i) total += keys(rows[i].pos);
  const int64_t target = 4 * int64_t(std::max(1, n_sms));
  const int64_t per = std::max(kMinKeysPerSplit, (total * int64_t(std::max(1, n_kv_heads)) + target - 1) / target);
  int64_t split0 = 0;
  for (int i = 0; i < n; ++i) {
    const int64_t s = std::min<int64_t>(kMaxRowSplits, std::max<int64_t>(1, (keys(rows[i].pos) + per - 1) / per));
    if (split0 > INT_MAX - s) return -1;
    rows[i].split0 = int(split0);
    rows[i].splits = int(s);
    split0 += s;
  }
  return split0;
}

void decode_attention_rows_work(const DecodeRowArgs* rows, int n, DecodeWork* work) {
  for (int i = 0; i < n; ++i)
    for (int sp = 0; sp < rows[i].splits; ++sp, ++work) work->row = i, work->split = sp;
}

cudaError_t decode_attention_rows_cuda(const float* q, const float* k, const float* v, const DecodeRowArgs* rows, int n,
                                       const DecodeWork* work, int n_work, const AttnParams& p, float* scratch,
                                       float* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!decode_attention_supported(p) || p.head_dim <= 0 || n_work < n || !rows || !work || !scratch || p.d_start)
    return cudaErrorInvalidValue;
  const dim3 grid(unsigned(n_work), unsigned(p.n_kv_heads));
  with_partial_kernel(p, [&](auto c, auto nc, auto gp) {
    decode_rows_partial_kernel<decltype(c), decltype(nc)::value, decltype(gp)::value>
        <<<grid, kWarps * 32, 0, stream>>>(q, k, v, rows, work, p, scratch, fast_tiles());
    return cudaSuccess;  // the launch's error: cudaGetLastError below
  });
  decode_rows_combine_kernel<<<dim3(unsigned(n), unsigned(p.n_heads)), 128, 0, stream>>>(scratch, rows, p.n_heads,
                                                                                         p.head_dim, out);
  return cudaGetLastError();
}

bool decode_attention_supported(const AttnParams& p) {
  return p.head_dim <= kMaxDPerLane * 32 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 &&
         p.n_heads / p.n_kv_heads <= kMaxG;
}

}  // namespace cuda
}  // namespace mistral
