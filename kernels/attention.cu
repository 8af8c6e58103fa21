// Attention for a chunk of queries. head_dim <= 128 (every Mistral model) takes the tiled kernel
// below; larger head dims take the reference-grade one: one block of 128 threads per
// (query token, query head). Keys are processed in tiles of 128: thread j scores key j of the tile
// (a full dot product over head_dim), the block finds the tile maximum, rescales its running
// sum, then thread i accumulates output dims i, i+128, ... over the tile. Any head_dim <= 512.
// This kernel reads each KV head once per query head; the split-KV decode kernel that shares
// loads across a GQA group is future work.
#include <mma.h>

#include "attention.cuh"
#include "common.cuh"
#include "kv.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxDimsPerThread = 4;  // head_dim <= 512

template <class C>
__global__ void attention_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                 const C* __restrict__ ck, const C* __restrict__ cv, int64_t start, AttnParams p,
                                 float* __restrict__ out) {
  if (p.d_start) start = *p.d_start;
  const int t = blockIdx.x / p.n_heads, h = blockIdx.x % p.n_heads;
  const int hd = p.head_dim, kvd = p.n_kv_heads * hd, qd = p.n_heads * hd;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int64_t pos = start + t;
  const int64_t j0 = p.window > 0 ? (pos - p.window + 1 > 0 ? pos - p.window + 1 : 0) : 0;
  const float scale = rsqrtf(float(hd));
  extern __shared__ float smem[];
  float* qs = smem;                // [hd]
  float* ps = smem + hd;           // [kThreads] probabilities of the tile
  __shared__ float red[kThreads / 32];
  __shared__ float tile_max_s;
  const float* qv = q + size_t(t) * qd + size_t(h) * hd;
  for (int i = threadIdx.x; i < hd; i += kThreads) qs[i] = qv[i];
  __syncthreads();

  float acc[kMaxDimsPerThread] = {0.f, 0.f, 0.f, 0.f};
  float run_max = -INFINITY, run_sum = 0.f;  // identical in every thread
  for (int64_t base = j0; base <= pos; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    float s = -INFINITY;
    if (j <= pos) {
      float d = 0.f;
      if (j < start) {
        const C* kr = ck + size_t(j % p.slots) * kvd + size_t(kvh) * hd;
        for (int i = 0; i < hd; ++i) d += qs[i] * kv_load(kr + i);
      } else {
        const float* kr = k + size_t(j - start) * kvd + size_t(kvh) * hd;
        for (int i = 0; i < hd; ++i) d += qs[i] * kv_round<C>(kr[i]);
      }
      s = d * scale;
    }
    // Tile maximum.
    float m = warp_max(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      float mm = red[0];
      for (int w = 1; w < kThreads / 32; ++w) mm = fmaxf(mm, red[w]);
      tile_max_s = mm;
    }
    __syncthreads();
    const float new_max = fmaxf(run_max, tile_max_s);
    const float pj = j <= pos ? expf(s - new_max) : 0.f;
    ps[threadIdx.x] = pj;
    float sum = warp_sum(pj);
    __syncthreads();  // red[] reuse and ps[] visibility
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    float tile_sum = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) tile_sum += red[w];
    const float corr = expf(run_max - new_max);  // 0 on the first tile (run_max = -inf)
    run_sum = run_sum * corr + tile_sum;
    run_max = new_max;
    const int n = int(pos - base + 1 < kThreads ? pos - base + 1 : kThreads);
#pragma unroll
    for (int r = 0; r < kMaxDimsPerThread; ++r) {
      const int i = threadIdx.x + r * kThreads;
      if (i < hd) {
        float a = acc[r] * corr;
        for (int jj = 0; jj < n; ++jj) {
          const int64_t jg = base + jj;
          const size_t off = size_t(kvh) * hd + i;
          a += ps[jj] * (jg < start ? kv_load(cv + size_t(jg % p.slots) * kvd + off)
                                    : kv_round<C>(v[size_t(jg - start) * kvd + off]));
        }
        acc[r] = a;
      }
    }
    __syncthreads();  // before ps[] and red[] are overwritten by the next tile
  }
  float* o = out + size_t(t) * qd + size_t(h) * hd;
#pragma unroll
  for (int r = 0; r < kMaxDimsPerThread; ++r) {
    const int i = threadIdx.x + r * kThreads;
    if (i < hd) o[i] = acc[r] / run_sum;
  }
}

// Tiled prefill attention (flash-style, fp32): one block of 256 threads per (tile of 64 queries, query
// head). The tile's queries sit in shared memory; each 64-key tile of K and V is loaded once for all
// of them, scores S = Q K^T are held in registers (thread (ty, tx) owns rows ty + 16a and key columns
// tx + 16b, a, b < 4), the online softmax runs per row across the 16 threads of a half-warp, P goes
// through shared memory (over the K tile, no longer needed by then), and O += P V accumulates rows
// ty + 16a, dims tx + 16c in registers. D is head_dim rounded up to 32, 64 or 128 (zero-padded).
constexpr int kTileQ = 64, kTileK = 64, kTileThreads = 256;

// K tile [kTileK][D + 1] and P [kTileQ][kTileK + 1] share one region.
template <int D>
__host__ __device__ constexpr int tiled_kp_floats() {
  return kTileK * (D + 1) > kTileQ * (kTileK + 1) ? kTileK * (D + 1) : kTileQ * (kTileK + 1);
}
template <int D>
constexpr size_t tiled_smem_floats() {
  return size_t(kTileQ) * (D + 1) + size_t(tiled_kp_floats<D>()) + size_t(kTileK) * D;
}

template <int D, class KC>  // KC: the cache's element type
__global__ void __launch_bounds__(kTileThreads)
    attention_tiled_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                           const KC* __restrict__ ck, const KC* __restrict__ cv, int64_t start, AttnParams p, int T,
                           float* __restrict__ out) {
  static_assert(D % 16 == 0, "head dims are padded to a multiple of 16");
  constexpr int QP = D + 1, PP = kTileK + 1, C = D / 16;
  if (p.d_start) start = *p.d_start;
  extern __shared__ float smem[];
  float* Qs = smem;               // [kTileQ][QP]
  float* Ks = Qs + kTileQ * QP;   // [kTileK][QP], then P [kTileQ][PP]
  float* Vs = Ks + tiled_kp_floats<D>();  // [kTileK][D]
  float* Ps = Ks;
  const int h = blockIdx.y, q0 = blockIdx.x * kTileQ;
  const int hd = p.head_dim, kvd = p.n_kv_heads * hd, qd = p.n_heads * hd;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int nq = T - q0 < kTileQ ? T - q0 : kTileQ;
  const float scale = rsqrtf(float(hd));
  for (int i = tid; i < kTileQ * D; i += kTileThreads) {
    const int r = i / D, d = i % D;
    Qs[r * QP + d] = r < nq && d < hd ? q[size_t(q0 + r) * qd + size_t(h) * hd + d] : 0.f;
  }
  const int64_t pos0 = start + q0, pos_hi = pos0 + nq - 1;
  const int64_t j_lo = p.window > 0 && pos0 - p.window + 1 > 0 ? pos0 - p.window + 1 : 0;
  float o[4][C], m[4], l[4];
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    m[a] = -INFINITY, l[a] = 0.f;
#pragma unroll
    for (int c = 0; c < C; ++c) o[a][c] = 0.f;
  }
  for (int64_t kb = j_lo; kb <= pos_hi; kb += kTileK) {
    __syncthreads();  // the last tile's P and V reads are done (and Q is visible on the first)
    for (int i = tid; i < kTileK * D; i += kTileThreads) {
      const int r = i / D, d = i % D;
      const int64_t j = kb + r;
      float kx = 0.f, vx = 0.f;
      if (j <= pos_hi && d < hd) {
        const size_t off = (j < start ? size_t(j % p.slots) : size_t(j - start)) * kvd + size_t(kvh) * hd + d;
        kx = j < start ? kv_load(ck + off) : kv_round<KC>(k[off]);
        vx = j < start ? kv_load(cv + off) : kv_round<KC>(v[off]);
      }
      Ks[r * QP + d] = kx;
      Vs[r * D + d] = vx;
    }
    __syncthreads();
    float s[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) s[a][b] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) {
      float qa[4], kb4[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) qa[a] = Qs[(ty + 16 * a) * QP + d];
#pragma unroll
      for (int b = 0; b < 4; ++b) kb4[b] = Ks[(tx + 16 * b) * QP + d];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) s[a][b] += qa[a] * kb4[b];
    }
    __syncthreads();  // every thread is done with K before P overwrites it
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int r = ty + 16 * a;
      const int64_t pos = pos0 + r;
      float mt = -INFINITY;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int64_t j = kb + tx + 16 * b;
        const bool ok = j <= pos && (p.window <= 0 || j > pos - p.window);
        s[a][b] = ok ? s[a][b] * scale : -INFINITY;
        mt = fmaxf(mt, s[a][b]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
      const float mn = fmaxf(m[a], mt);
      const float ms = mn == -INFINITY ? 0.f : mn;  // a row with no key yet keeps zeros
      const float corr = expf(m[a] - ms);
      float sum = 0.f;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const float pj = expf(s[a][b] - ms);
        Ps[r * PP + tx + 16 * b] = pj;
        sum += pj;
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      l[a] = l[a] * corr + sum;
      m[a] = mn;
#pragma unroll
      for (int c = 0; c < C; ++c) o[a][c] *= corr;
    }
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kTileK; ++j) {
      float pa[4], vb[C];
#pragma unroll
      for (int a = 0; a < 4; ++a) pa[a] = Ps[(ty + 16 * a) * PP + j];
#pragma unroll
      for (int c = 0; c < C; ++c) vb[c] = Vs[j * D + tx + 16 * c];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int c = 0; c < C; ++c) o[a][c] += pa[a] * vb[c];
    }
  }
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int r = ty + 16 * a;
    if (r >= nq) continue;
    const float inv = 1.f / l[a];
    float* orow = out + size_t(q0 + r) * qd + size_t(h) * hd;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int d = tx + 16 * c;
      if (d < hd) orow[d] = o[a][c] * inv;
    }
  }
}

// Tensor-core prefill attention (AttnParams::half): the same tiling as above with fp16 operands and
// fp32 accumulation through WMMA 16x16x16 products. One block of 4 warps per (64 queries, query head);
// warp w owns query rows 16w .. 16w + 15. Per 64-key tile: S = Q K^T into shared memory (fp32), the
// online softmax on the warp's rows (lane: row lane / 2, half lane % 2 of the keys), P rounded to fp16,
// the O rows rescaled in shared memory, then O += P V. q, k and v are rounded to fp16 (saturated) as
// they are loaded; scores, the softmax and O stay fp32.
constexpr int kTcQ = 64, kTcK = 64, kTcThreads = 128;

__host__ __device__ constexpr size_t align128(size_t b) { return (b + 127) / 128 * 128; }

template <int D>
struct TcLayout {
  static constexpr int HP = D + 8;     // pitch (halves) of the Q, K and V tiles
  static constexpr int SP = kTcK + 4;  // pitch (floats) of S
  static constexpr int PP = kTcK + 8;  // pitch (halves) of P
  static constexpr int OP = D + 4;     // pitch (floats) of O
  static constexpr size_t q_off = 0;
  static constexpr size_t k_off = q_off + align128(size_t(kTcQ) * HP * 2);
  static constexpr size_t v_off = k_off + align128(size_t(kTcK) * HP * 2);
  static constexpr size_t s_off = v_off + align128(size_t(kTcK) * HP * 2);
  static constexpr size_t p_off = s_off + align128(size_t(kTcQ) * SP * 4);
  static constexpr size_t o_off = p_off + align128(size_t(kTcQ) * PP * 2);
  static constexpr size_t bytes = o_off + align128(size_t(kTcQ) * OP * 4);
};

// K and V are rounded to fp16 here whatever the cache holds, so the chunk's own rows need no kv_round.
template <int D, class C>
__global__ void __launch_bounds__(kTcThreads)
    attention_tc_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                        const C* __restrict__ ck, const C* __restrict__ cv, int64_t start, AttnParams p, int T,
                        float* __restrict__ out) {
  using namespace nvcuda;
  using L = TcLayout<D>;
  constexpr int HP = L::HP, SP = L::SP, PP = L::PP, OP = L::OP;
  if (p.d_start) start = *p.d_start;
  extern __shared__ __align__(128) unsigned char tc_smem[];
  __half* Qs = reinterpret_cast<__half*>(tc_smem + L::q_off);
  __half* Ks = reinterpret_cast<__half*>(tc_smem + L::k_off);
  __half* Vs = reinterpret_cast<__half*>(tc_smem + L::v_off);
  float* Ss = reinterpret_cast<float*>(tc_smem + L::s_off);
  __half* Ps = reinterpret_cast<__half*>(tc_smem + L::p_off);
  float* Os = reinterpret_cast<float*>(tc_smem + L::o_off);
  const int h = blockIdx.y, q0 = blockIdx.x * kTcQ;
  const int hd = p.head_dim, kvd = p.n_kv_heads * hd, qd = p.n_heads * hd;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int nq = T - q0 < kTcQ ? T - q0 : kTcQ;
  const float scale = rsqrtf(float(hd));
  // K and V rows start 16-byte aligned when head_dim is a multiple of 4 and the buffers are (cudaMalloc's).
  const bool vec4 = hd % 4 == 0 && ((reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v) |
                                     reinterpret_cast<uintptr_t>(ck) | reinterpret_cast<uintptr_t>(cv)) & 15u) == 0;
  if (vec4 && (reinterpret_cast<uintptr_t>(q) & 15u) == 0) {  // the Q tile by 16-byte loads, 8 in flight
    constexpr int D4 = D / 4, kPer = kTcQ * D4 / kTcThreads, kBatch = kPer < 8 ? kPer : 8;
#pragma unroll
    for (int b0 = 0; b0 < kPer; b0 += kBatch) {
      float4 x[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = tid + (b0 + u) * kTcThreads, r = i / D4, d = 4 * (i % D4);
        x[u] = r < nq && d < hd ? *reinterpret_cast<const float4*>(q + size_t(q0 + r) * qd + size_t(h) * hd + d)
                                : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = tid + (b0 + u) * kTcThreads, r = i / D4, d = 4 * (i % D4);
        __half2* qd2 = reinterpret_cast<__half2*>(Qs + r * HP + d);
        qd2[0] = __halves2half2(to_half_sat(x[u].x), to_half_sat(x[u].y));
        qd2[1] = __halves2half2(to_half_sat(x[u].z), to_half_sat(x[u].w));
      }
    }
  } else {
    for (int i = tid; i < kTcQ * D / 2; i += kTcThreads) {
      const int r = i / (D / 2), d = 2 * (i % (D / 2));
      const float* src = q + size_t(q0 + r) * qd + size_t(h) * hd;
      const float x0 = r < nq && d < hd ? src[d] : 0.f, x1 = r < nq && d + 1 < hd ? src[d + 1] : 0.f;
      *reinterpret_cast<__half2*>(Qs + r * HP + d) = __halves2half2(to_half_sat(x0), to_half_sat(x1));
    }
  }
  for (int i = tid; i < kTcQ * OP; i += kTcThreads) Os[i] = 0.f;
  const int64_t pos0 = start + q0, pos_hi = pos0 + nq - 1;
  const int64_t j_lo = p.window > 0 && pos0 - p.window + 1 > 0 ? pos0 - p.window + 1 : 0;
  const int row = warp * 16 + (lane >> 1), side = lane & 1;  // this lane's softmax row and half
  const int64_t pos = pos0 + row;
  float m = -INFINITY, l = 0.f;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fk;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fv;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fp[kTcK / 16];
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kTcK / 16];
  for (int64_t kb = j_lo; kb <= pos_hi; kb += kTcK) {
    __syncthreads();  // every warp is done with the last K and V tiles (and Q, O are written, first time)
    if (vec4) {
      // 16-byte loads, kBatch float4 of K and of V per thread issued before any is converted (one scalar
      // load at a time kept this loop, not the tensor cores, the kernel's limit).
      constexpr int D4 = D / 4, kPer = kTcK * D4 / kTcThreads, kBatch = kPer < 8 ? kPer : 8;
#pragma unroll
      for (int b0 = 0; b0 < kPer; b0 += kBatch) {
        float4 kx[kBatch], vx[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int i = tid + (b0 + u) * kTcThreads, r = i / D4, d = 4 * (i % D4);
          const int64_t j = kb + r;
          kx[u] = vx[u] = make_float4(0.f, 0.f, 0.f, 0.f);
          if (j <= pos_hi && d < hd) {  // hd % 4 == 0: the whole float4 lies below hd
            const size_t off = (j < start ? size_t(j % p.slots) : size_t(j - start)) * kvd + size_t(kvh) * hd + d;
            kx[u] = j < start ? kv_load4(ck + off) : *reinterpret_cast<const float4*>(k + off);
            vx[u] = j < start ? kv_load4(cv + off) : *reinterpret_cast<const float4*>(v + off);
          }
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int i = tid + (b0 + u) * kTcThreads, r = i / D4, d = 4 * (i % D4);
          __half2* kd = reinterpret_cast<__half2*>(Ks + r * HP + d);
          __half2* vd = reinterpret_cast<__half2*>(Vs + r * HP + d);
          kd[0] = __halves2half2(to_half_sat(kx[u].x), to_half_sat(kx[u].y));
          kd[1] = __halves2half2(to_half_sat(kx[u].z), to_half_sat(kx[u].w));
          vd[0] = __halves2half2(to_half_sat(vx[u].x), to_half_sat(vx[u].y));
          vd[1] = __halves2half2(to_half_sat(vx[u].z), to_half_sat(vx[u].w));
        }
      }
    } else {
      for (int i = tid; i < kTcK * D / 2; i += kTcThreads) {
        const int r = i / (D / 2), d = 2 * (i % (D / 2));
        const int64_t j = kb + r;
        float k0 = 0.f, k1 = 0.f, v0 = 0.f, v1 = 0.f;
        if (j <= pos_hi && d < hd) {
          const size_t off = (j < start ? size_t(j % p.slots) : size_t(j - start)) * kvd + size_t(kvh) * hd + d;
          if (j < start) {
            k0 = kv_load(ck + off), v0 = kv_load(cv + off);
            if (d + 1 < hd) k1 = kv_load(ck + off + 1), v1 = kv_load(cv + off + 1);
          } else {
            k0 = k[off], v0 = v[off];
            if (d + 1 < hd) k1 = k[off + 1], v1 = v[off + 1];
          }
        }
        *reinterpret_cast<__half2*>(Ks + r * HP + d) = __halves2half2(to_half_sat(k0), to_half_sat(k1));
        *reinterpret_cast<__half2*>(Vs + r * HP + d) = __halves2half2(to_half_sat(v0), to_half_sat(v1));
      }
    }
    __syncthreads();
#pragma unroll
    for (int n = 0; n < kTcK / 16; ++n) wmma::fill_fragment(acc[n], 0.f);
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
      wmma::load_matrix_sync(fa, Qs + warp * 16 * HP + kk, HP);
#pragma unroll
      for (int n = 0; n < kTcK / 16; ++n) {
        wmma::load_matrix_sync(fk, Ks + n * 16 * HP + kk, HP);
        wmma::mma_sync(acc[n], fa, fk, acc[n]);
      }
    }
#pragma unroll
    for (int n = 0; n < kTcK / 16; ++n)
      wmma::store_matrix_sync(Ss + warp * 16 * SP + n * 16, acc[n], SP, wmma::mem_row_major);
    __syncwarp();
    const float* srow = Ss + row * SP + side * 32;
    float mt = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      const int64_t j = kb + side * 32 + c;
      const bool ok = j <= pos && (p.window <= 0 || j > pos - p.window);
      if (ok) mt = fmaxf(mt, srow[c] * scale);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    const float mn = fmaxf(m, mt);
    const float ms = mn == -INFINITY ? 0.f : mn;  // a row with no key yet keeps zeros
    const float corr = expf(m - ms);
    float sum = 0.f;
    __half* prow = Ps + row * PP + side * 32;
    for (int c = 0; c < 32; ++c) {
      const int64_t j = kb + side * 32 + c;
      const bool ok = j <= pos && (p.window <= 0 || j > pos - p.window);
      const float pj = ok ? expf(srow[c] * scale - ms) : 0.f;
      prow[c] = __float2half_rn(pj);
      sum += pj;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * corr + sum;
    m = mn;
    float* orow = Os + row * OP + side * (D / 2);
    for (int d = 0; d < D / 2; ++d) orow[d] *= corr;
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < kTcK / 16; ++kk) wmma::load_matrix_sync(fp[kk], Ps + warp * 16 * PP + kk * 16, PP);
#pragma unroll
    for (int dn = 0; dn < D; dn += 16) {
      wmma::load_matrix_sync(acc[0], Os + warp * 16 * OP + dn, OP, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTcK / 16; ++kk) {
        wmma::load_matrix_sync(fv, Vs + kk * 16 * HP + dn, HP);
        wmma::mma_sync(acc[0], fp[kk], fv, acc[0]);
      }
      wmma::store_matrix_sync(Os + warp * 16 * OP + dn, acc[0], OP, wmma::mem_row_major);
    }
    __syncwarp();  // the O rows are stored before the next tile's rescaling (and the final read)
  }
  if (row < nq) {
    const float inv = 1.f / l;
    const float* orow = Os + row * OP;
    float* dst = out + size_t(q0 + row) * qd + size_t(h) * hd;
    for (int d = side * (D / 2); d < (side + 1) * (D / 2); ++d)
      if (d < hd) dst[d] = orow[d] * inv;
  }
}

// Flash-style prefill attention for head_dim == 128 on the tensor cores (AttnParams::half; the fp16
// rounding of the kernel above), with the scores, probabilities and output accumulators in registers:
// mma.sync m16n8k16 (fp16 operands, fp32 accumulation), fragment layouts as the PTX ISA documents them
// (lane = 4 * g + t: A rows g and g + 8, columns 2t, 2t + 1 and 2t + 8, 2t + 9; B column g, rows 2t, 2t + 1
// and 2t + 8, 2t + 9; C rows g and g + 8, columns 2t, 2t + 1). One block of 4 warps per (64 queries, query
// head); warp w owns query rows 16w .. 16w + 15. Per 64-key tile the block stores K row-major and V
// transposed (Vt[dim][key]) in shared memory as fp16, so that every B fragment is one 32-bit load per
// register; each warp computes S = Q K^T (16 x 64) in registers, masks it, runs the online softmax on its
// two rows per lane (quad shuffles for the row max and sum), turns S into the A fragments of P (the C
// layout of two 8-key tiles is the A layout of one 16-key step) and accumulates O += P V (16 x 128, in
// registers). The kernel above keeps S, P and O in shared memory and ran prefill attention of a 7B
// shape at ~38 TFLOP/s on an H200 (a third of a 2048-token prefill). Tiles that need no mask skip it;
// the query tiles run from the last (the most keys) to the first.
constexpr int kFaQ = 64, kFaK = 64, kFaD = 128, kFaThreads = 128;
constexpr int kFaHP = kFaD + 8;  // pitch (halves) of Q and K rows: 68 words, lanes hit distinct banks
constexpr int kFaVP = kFaK + 8;  // pitch (halves) of Vt rows: 36 words
constexpr size_t kFaQBytes = size_t(kFaQ) * kFaHP * 2, kFaKBytes = size_t(kFaK) * kFaHP * 2;
constexpr size_t kFaBytes = kFaQBytes + kFaKBytes + size_t(kFaD) * kFaVP * 2;

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);  // lo at the lower address (the lower 16 bits)
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The same, saturated at +-65504 first (as to_half_sat: q, k and v never become inf).
__device__ __forceinline__ uint32_t pack_half2_sat(float lo, float hi) {
  return pack_half2(fminf(fmaxf(lo, -65504.f), 65504.f), fminf(fmaxf(hi, -65504.f), 65504.f));
}

__device__ __forceinline__ uint32_t lds32(const __half* p) { return *reinterpret_cast<const uint32_t*>(p); }

// The block's loads of a 64 x 128 tile (16 float4 per thread): load u of thread tid takes row
// rb + 32 * (u & 1), dims db + 16 * (u >> 1) .. + 3, with rb = (tid / 4) % 8 + 8 * (tid / 32) and
// db = 4 * (tid % 4). Each 4 consecutive lanes read 64 contiguous bytes of one row, and the 8 lane quads
// of a warp take 8 consecutive rows, so that a warp's transposed V stores fall in 8 banks, two lanes per
// word. Offsets from (rb, db) are compile-time constants.
__device__ __forceinline__ int fa_row(int u) { return 32 * (u & 1); }
__device__ __forceinline__ int fa_dim(int u) { return 16 * (u >> 1); }

template <class C>
__global__ void __launch_bounds__(kFaThreads, 3)
    attention_fa_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                        const C* __restrict__ ck, const C* __restrict__ cv, int64_t start, AttnParams p, int T,
                        float* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800  // mma.sync m16n8k16 (fa_supported checks the device)
  if (p.d_start) start = *p.d_start;
  extern __shared__ __align__(128) unsigned char fa_smem[];
  __half* Qs = reinterpret_cast<__half*>(fa_smem);
  __half* Ks = reinterpret_cast<__half*>(fa_smem + kFaQBytes);
  __half* Vt = reinterpret_cast<__half*>(fa_smem + kFaQBytes + kFaKBytes);
  const int h = blockIdx.y, q0 = int(gridDim.x - 1 - blockIdx.x) * kFaQ;
  const int kvd = p.n_kv_heads * kFaD, qd = p.n_heads * kFaD;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int nq = T - q0 < kFaQ ? T - q0 : kFaQ;
  constexpr int kPer = kFaQ * kFaD / 4 / kFaThreads;  // float4 loads per thread per tile: 16
  const int rb = ((tid >> 2) & 7) + 8 * warp, db = 4 * (tid & 3);
  {
    float4 x[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int r = rb + fa_row(u), d = db + fa_dim(u);
      x[u] = r < nq ? *reinterpret_cast<const float4*>(q + size_t(q0 + r) * qd + size_t(h) * kFaD + d)
                    : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int r = rb + fa_row(u), d = db + fa_dim(u);
      uint32_t* dst = reinterpret_cast<uint32_t*>(Qs + r * kFaHP + d);
      dst[0] = pack_half2_sat(x[u].x, x[u].y);
      dst[1] = pack_half2_sat(x[u].z, x[u].w);
    }
  }
  const int64_t pos0 = start + q0, pos_hi = pos0 + nq - 1;
  const int64_t j_lo = p.window > 0 && pos0 - p.window + 1 > 0 ? pos0 - p.window + 1 : 0;
  const int r0 = warp * 16 + g;  // this lane's rows r0 and r0 + 8 of the tile
  const float sl2 = rsqrtf(float(kFaD)) * 1.4426950408889634f;  // scale * log2(e): softmax in base 2
  float o[kFaD / 8][4];
#pragma unroll
  for (int n = 0; n < kFaD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  for (int64_t kb = j_lo; kb <= pos_hi; kb += kFaK) {
    __syncthreads();  // every warp is done with the last K and V tiles (and Q is stored, first time)
    {
      // Cache row of key j < start: (kb % slots + r) wrapped, one 64-bit modulo per tile (only when the
      // tile reaches into the cache: slots may be 0 without one).
      const int64_t kb_mod = kb < start ? kb % p.slots : 0;
      constexpr int kB = kPer / 4;  // batches of 4 K and 4 V loads in flight (registers: 3 blocks per SM)
      float4 kx[kB], vx[kB];
#pragma unroll
      for (int half = 0; half < kPer / kB; ++half) {
#pragma unroll
        for (int u = 0; u < kB; ++u) {
          const int r = rb + fa_row(half * kB + u), d = db + fa_dim(half * kB + u);
          const int64_t j = kb + r;
          kx[u] = vx[u] = make_float4(0.f, 0.f, 0.f, 0.f);
          if (j <= pos_hi) {
            int64_t row = j - start;
            if (j < start) {
              row = kb_mod + r;
              while (row >= p.slots) row -= p.slots;
            }
            const size_t off = size_t(row) * kvd + size_t(kvh) * kFaD + d;
            kx[u] = j < start ? kv_load4(ck + off) : *reinterpret_cast<const float4*>(k + off);
            vx[u] = j < start ? kv_load4(cv + off) : *reinterpret_cast<const float4*>(v + off);
          }
        }
#pragma unroll
        for (int u = 0; u < kB; ++u) {
          const int r = rb + fa_row(half * kB + u), d = db + fa_dim(half * kB + u);
          uint32_t* kd = reinterpret_cast<uint32_t*>(Ks + r * kFaHP + d);
          kd[0] = pack_half2_sat(kx[u].x, kx[u].y);
          kd[1] = pack_half2_sat(kx[u].z, kx[u].w);
          Vt[(d + 0) * kFaVP + r] = to_half_sat(vx[u].x);
          Vt[(d + 1) * kFaVP + r] = to_half_sat(vx[u].y);
          Vt[(d + 2) * kFaVP + r] = to_half_sat(vx[u].z);
          Vt[(d + 3) * kFaVP + r] = to_half_sat(vx[u].w);
        }
      }
    }
    __syncthreads();
    // S = Q K^T for the warp's 16 rows and the tile's 64 keys: 8 key blocks of 8 (n), 8 dim steps of 16.
    float s[kFaK / 8][4];
#pragma unroll
    for (int n = 0; n < kFaK / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kFaD / 16; ++kk) {
      const __half* qa = Qs + r0 * kFaHP + kk * 16 + 2 * t;
      const uint32_t a[4] = {lds32(qa), lds32(qa + 8 * kFaHP), lds32(qa + 8), lds32(qa + 8 * kFaHP + 8)};
#pragma unroll
      for (int n = 0; n < kFaK / 8; ++n) {
        const __half* kbp = Ks + (n * 8 + g) * kFaHP + kk * 16 + 2 * t;
        mma_16816(s[n], a, lds32(kbp), lds32(kbp + 8));
      }
    }
    // Scale to base 2 and mask: key kb + 8n + 2t + e of row r (position pos0 + r) counts when it is at
    // most the row's position and, with a window, inside it. A tile wholly below the block's first
    // query and inside every row's window needs no mask.
    const bool whole = kb + kFaK - 1 <= pos0 && (p.window <= 0 || kb > pos_hi - p.window);
    // Key offset from the block's first position: |.| < window + 64 with a window; without one, every
    // key more than a tile below pos0 is valid for every row, so the offset is clamped there (an int
    // even past 2^31 positions).
    const int64_t jd = kb - pos0;
    const int jr0 = int(p.window > 0 || jd > -(kFaK + 1) ? jd : -(kFaK + 1));
#pragma unroll
    for (int n = 0; n < kFaK / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int rr = r0 + (e >> 1) * 8, jr = jr0 + n * 8 + 2 * t + (e & 1);
        const bool ok = whole || (jr <= rr && (p.window <= 0 || jr > rr - p.window));
        s[n][e] = ok ? s[n][e] * sl2 : -INFINITY;
      }
    // Online softmax on rows r0 (elements 0, 1) and r0 + 8 (elements 2, 3): the quad of lanes sharing g
    // holds a row's 64 keys.
    float corr[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mt = -INFINITY;
#pragma unroll
      for (int n = 0; n < kFaK / 8; ++n) mt = fmaxf(mt, fmaxf(s[n][2 * hr], s[n][2 * hr + 1]));
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
      const float mn = fmaxf(m[hr], mt);
      const float ms = mn == -INFINITY ? 0.f : mn;  // a row with no key yet keeps zeros
      corr[hr] = exp2f(m[hr] - ms);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kFaK / 8; ++n) {
        s[n][2 * hr] = exp2f(s[n][2 * hr] - ms);
        s[n][2 * hr + 1] = exp2f(s[n][2 * hr + 1] - ms);
        sum += s[n][2 * hr] + s[n][2 * hr + 1];
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[hr] = l[hr] * corr[hr] + sum;
      m[hr] = mn;
    }
#pragma unroll
    for (int n = 0; n < kFaD / 8; ++n) {
      o[n][0] *= corr[0], o[n][1] *= corr[0];
      o[n][2] *= corr[1], o[n][3] *= corr[1];
    }
    // O += P V: key step kk (16 keys) takes the C fragments of key blocks 2kk and 2kk + 1 as its A.
#pragma unroll
    for (int kk = 0; kk < kFaK / 16; ++kk) {
      const uint32_t a[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                             pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < kFaD / 8; ++n) {
        const __half* vb = Vt + (n * 8 + g) * kFaVP + kk * 16 + 2 * t;
        mma_16816(o[n], a, lds32(vb), lds32(vb + 8));
      }
    }
  }
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = r0 + 8 * hr;
    if (r >= nq) continue;
    const float inv = 1.f / l[hr];
    float* orow = out + size_t(q0 + r) * qd + size_t(h) * kFaD + 2 * t;
#pragma unroll
    for (int n = 0; n < kFaD / 8; ++n)
      *reinterpret_cast<float2*>(orow + n * 8) = make_float2(o[n][2 * hr] * inv, o[n][2 * hr + 1] * inv);
  }
#endif
}

// Compute capability major of the current device (read once per process).
int device_major() {
  static const int major = [] {
    int dev = 0, m = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, dev) !=
                                                 cudaSuccess)
      return 0;
    return m;
  }();
  return major;
}

// Preconditions of attention_fa_kernel: sm_80 or newer, head_dim 128, every q/k/v/cache/out row 16-byte
// aligned.
bool fa_supported(const float* q, const float* k, const float* v, const void* ck, const void* cv, const float* out,
                  const AttnParams& p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(k) |
                      reinterpret_cast<uintptr_t>(v) | reinterpret_cast<uintptr_t>(ck) |
                      reinterpret_cast<uintptr_t>(cv) | reinterpret_cast<uintptr_t>(out);
  return p.head_dim == kFaD && (a & 15u) == 0 && device_major() >= 8;
}

// One launch of a tiled attention kernel: grid (query tiles, query heads), `bytes` of dynamic shared
// memory (allowed past 48 KB once per kernel).
template <auto Kernel, class C>
cudaError_t launch_tiles(size_t bytes, int tile_q, int threads, const float* q, const float* k, const float* v,
                         const C* ck, const C* cv, int T, int64_t start, const AttnParams& p, float* out,
                         cudaStream_t stream) {
  static const cudaError_t attr = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (attr != cudaSuccess) return attr;
  const dim3 grid(unsigned((T + tile_q - 1) / tile_q), unsigned(p.n_heads));
  Kernel<<<grid, threads, bytes, stream>>>(q, k, v, ck, cv, start, p, T, out);
  return cudaGetLastError();
}

template <int D, class C>
cudaError_t launch_tiled(const float* q, const float* k, const float* v, const C* ck, const C* cv, int T, int64_t start,
                         const AttnParams& p, float* out, cudaStream_t stream) {
  return launch_tiles<attention_tiled_kernel<D, C>>(tiled_smem_floats<D>() * sizeof(float), kTileQ, kTileThreads, q, k,
                                                    v, ck, cv, T, start, p, out, stream);
}

template <int D, class C>
cudaError_t launch_tc(const float* q, const float* k, const float* v, const C* ck, const C* cv, int T, int64_t start,
                      const AttnParams& p, float* out, cudaStream_t stream) {
  return launch_tiles<attention_tc_kernel<D, C>>(TcLayout<D>::bytes, kTcQ, kTcThreads, q, k, v, ck, cv, T, start, p,
                                                 out, stream);
}

template <class C>
cudaError_t launch_attention(const float* q, const float* k, const float* v, const C* ck, const C* cv, int T,
                             int64_t start, const AttnParams& p, float* out, cudaStream_t stream) {
  if (p.half) {
    if (p.head_dim <= 32) return launch_tc<32>(q, k, v, ck, cv, T, start, p, out, stream);
    if (p.head_dim <= 64) return launch_tc<64>(q, k, v, ck, cv, T, start, p, out, stream);
    if (fa_supported(q, k, v, ck, cv, out, p))
      return launch_tiles<attention_fa_kernel<C>>(kFaBytes, kFaQ, kFaThreads, q, k, v, ck, cv, T, start, p, out,
                                                  stream);
    if (p.head_dim <= 128) return launch_tc<128>(q, k, v, ck, cv, T, start, p, out, stream);
  }
  if (p.head_dim <= 32) return launch_tiled<32>(q, k, v, ck, cv, T, start, p, out, stream);
  if (p.head_dim <= 64) return launch_tiled<64>(q, k, v, ck, cv, T, start, p, out, stream);
  if (p.head_dim <= 128) return launch_tiled<128>(q, k, v, ck, cv, T, start, p, out, stream);
  const size_t shmem = size_t(p.head_dim + kThreads) * sizeof(float);
  attention_kernel<C><<<unsigned(T) * unsigned(p.n_heads), kThreads, shmem, stream>>>(q, k, v, ck, cv, start, p, out);
  return cudaGetLastError();
}

template <class C>
__global__ void cache_write_kernel(const float* __restrict__ k, const float* __restrict__ v, C* ck, C* cv, int first,
                                   int64_t start, const int64_t* d_start, int kvd, int64_t slots) {
  const int t = first + blockIdx.x;
  if (d_start) start = *d_start;
  const size_t slot = size_t((start + t) % slots);
  for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
    kv_store(ck + slot * kvd + i, k[size_t(t) * kvd + i]);
    kv_store(cv + slot * kvd + i, v[size_t(t) * kvd + i]);
  }
}

}  // namespace

cudaError_t attention_cuda(const float* q, const float* k, const float* v, const void* cache_k, const void* cache_v,
                           int T, int64_t start, const AttnParams& p, float* out, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (p.head_dim > kThreads * kMaxDimsPerThread || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads) return cudaErrorInvalidValue;
  if (p.kv_half)
    return launch_attention(q, k, v, static_cast<const __half*>(cache_k), static_cast<const __half*>(cache_v), T, start,
                            p, out, stream);
  return launch_attention(q, k, v, static_cast<const float*>(cache_k), static_cast<const float*>(cache_v), T, start, p,
                          out, stream);
}

cudaError_t cache_write_cuda(const float* k, const float* v, void* cache_k, void* cache_v, int T, int64_t start,
                             const AttnParams& p, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  const int first = T > p.slots ? int(T - p.slots) : 0;
  const unsigned blocks = unsigned(T - first);
  const int kvd = p.n_kv_heads * p.head_dim;
  if (p.kv_half)
    cache_write_kernel<<<blocks, 128, 0, stream>>>(k, v, static_cast<__half*>(cache_k), static_cast<__half*>(cache_v),
                                                   first, start, p.d_start, kvd, p.slots);
  else
    cache_write_kernel<<<blocks, 128, 0, stream>>>(k, v, static_cast<float*>(cache_k), static_cast<float*>(cache_v),
                                                   first, start, p.d_start, kvd, p.slots);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
