// GEMV: one warp per output row, 8 warps per block. When a row is 16-byte aligned (K a multiple of
// 16 bytes' worth of elements), each lane loads 16 bytes of weights at a time (8 fp16/bf16 or 4
// fp32), several loads in flight, and reuses them for all T tokens; partial sums are reduced across
// the warp. Otherwise a scalar path handles any K.
#include <type_traits>

#include "common.cuh"
#include "gemv.cuh"
#include "pdl.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kWarps = 8;

template <typename W>
struct Vec;  // 16 bytes of W
template <>
struct Vec<float> {
  static constexpr int n = 4;
  __device__ static void unpack(const uint4& raw, float* out) {
    out[0] = __uint_as_float(raw.x), out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z), out[3] = __uint_as_float(raw.w);
  }
};
template <>
struct Vec<__half> {
  static constexpr int n = 8;
  __device__ static void unpack(const uint4& raw, float* out) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(h[i]);
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
};
template <>
struct Vec<__nv_bfloat16> {
  static constexpr int n = 8;
  __device__ static void unpack(const uint4& raw, float* out) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(h[i]);
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
};

// 16-byte weight loads each lane keeps in flight before using them: one load per lane at a time left
// a 7B decode step at ~1.5 TB/s on an H200 (35% of the copy rate); eight cover the memory latency.
constexpr int kUnroll = 8;

// kNorm (GemvFusion::g): x_k g_k instead of x_k in the products, and ss[t] += x_k^2 (the norm's mean square).
template <typename W, int T, bool kNorm>
__device__ __forceinline__ void dot_vec(const float* __restrict__ x, const float* __restrict__ g, int K, int k,
                                        const uint4& raw, float (&acc)[T], float (&ss)[T]) {
  constexpr int V = Vec<W>::n;
  float w[V];
  Vec<W>::unpack(raw, w);
  float4 gv[V / 4];
  if constexpr (kNorm) {
#pragma unroll
    for (int i = 0; i < V / 4; ++i) gv[i] = reinterpret_cast<const float4*>(g + k)[i];
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float4* xr = reinterpret_cast<const float4*>(x + size_t(t) * K + k);
#pragma unroll
    for (int i = 0; i < V / 4; ++i) {
      float4 xv = xr[i];
      if constexpr (kNorm) xv = norm_step4(xv, gv[i], ss[t]);
      acc[t] += w[4 * i] * xv.x;
      acc[t] += w[4 * i + 1] * xv.y;
      acc[t] += w[4 * i + 2] * xv.z;
      acc[t] += w[4 * i + 3] * xv.w;
    }
  }
}

// The kUnroll 16-byte units lane l of a warp loads from a weight row starting at unit `base` (units
// base, base + 32, ..., zero past the row's K / V units), of a row 16-byte aligned with K a multiple of
// 16 bytes of W.
template <typename W>
__device__ __forceinline__ void load_units(const W* __restrict__ row, int K, int base, uint4 (&raw)[kUnroll]) {
  const uint4* rv = reinterpret_cast<const uint4*>(row);
  const int nv = K / Vec<W>::n;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int c = base + 32 * u;
    raw[u] = c < nv ? __ldcs(rv + c) : make_uint4(0u, 0u, 0u, 0u);
  }
}

// One warp's dot products of a weight row with the T rows of x. kVector: the row and x 16-byte aligned (K a
// multiple of 16 bytes of W). Lane l takes the 16-byte units l, l + 32, l + 64, ... of its row in that
// order (the same order for every T, so a token's result does not depend on how many tokens share the
// launch), kUnroll loads issued before any is used. kPre: the first kUnroll are in raw already
// (load_units(row, K, lane, raw), which the kernels issue before pdl_wait: with programmatic dependence
// their DRAM latency overlaps the kernel before, since weights are no earlier kernel's output). Holding
// all kUnroll loads takes 64 registers at T = 1, against 32 for the in-loop loads, whose compiled code
// keeps fewer in flight with twice the warps per SM: preload_for() chooses.
// kNorm: the products take x_k g_k, and the result is scaled by the row's 1 / sqrt(mean x^2 + eps), the sum
// of squares taken over the same elements in the same loop (every element of the row passes through a
// warp's lanes once), so no pass or barrier is added; every warp of the launch gets the same scale. It
// costs registers (ptxas, fp16, T = 1: 61 instead of 32 without kPre, 71 instead of 64 with it; a cap
// at 32 spilled 216 bytes), so fewer warps an SM: what that costs is gpu-check's fused phase to measure.
template <typename W, int T, bool kVector, bool kPre, bool kNorm = false>
__device__ __forceinline__ void gemv_dot(const float* __restrict__ x, const W* __restrict__ row, int K,
                                         uint4 (&raw)[kUnroll], float (&acc)[T], const float* __restrict__ g = nullptr,
                                         float eps = 0.f) {
  const int lane = threadIdx.x & 31;
  float ss[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.f, ss[t] = 0.f;
  if (kVector) {
    constexpr int V = Vec<W>::n;
    const int nv = K / V;  // 16-byte units in the row
    for (int base = lane; base < nv; base += 32 * kUnroll) {
      if (!kPre || base != lane) load_units<W>(row, K, base, raw);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + 32 * u;
        if (c < nv) dot_vec<W, T, kNorm>(x, g, K, c * V, raw[u], acc, ss);
      }
    }
  } else {
    for (int k = lane; k < K; k += 32) {
      const float w = to_float(row[k]);
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float xv = x[size_t(t) * K + k];
        if constexpr (kNorm) {
          ss[t] = fmaf(xv, xv, ss[t]);
          acc[t] += w * __fmul_rn(xv, g[k]);
        } else {
          acc[t] += w * xv;
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    acc[t] = warp_sum(acc[t]);  // every lane holds the sums
    if constexpr (kNorm) acc[t] *= rsqrtf(warp_sum(ss[t]) / float(K) + eps);
  }
}

// out[t, n] = silu(x_t . Wg[n]) * (x_t . Wu[n]): both dot products by one warp, each as gemv_multi_kernel
// computes a row.
template <typename W, int T, bool kVector, bool kPre, bool kNorm>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_swiglu_kernel(const float* __restrict__ x, const W* __restrict__ Wg, const W* __restrict__ Wu, int N, int K,
                       float* __restrict__ out, GemvFusion f) {
  pdl_trigger();  // the kernel after this one may launch once every block has started (pdl.cuh)
  const int n = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (n >= N) return;  // this warp reads and writes nothing
  const int lane = threadIdx.x & 31;
  uint4 raw[kUnroll];
  if (kVector && kPre) load_units<W>(Wg + size_t(n) * K, K, lane, raw);
  pdl_wait();
  float g[T], u[T];
  gemv_dot<W, T, kVector, kPre, kNorm>(x, Wg + size_t(n) * K, K, raw, g, f.g, f.eps);
  if (kVector && kPre) load_units<W>(Wu + size_t(n) * K, K, lane, raw);
  gemv_dot<W, T, kVector, kPre, kNorm>(x, Wu + size_t(n) * K, K, raw, u, f.g, f.eps);
  if (lane == 0)
#pragma unroll
    for (int t = 0; t < T; ++t) out[size_t(t) * N + n] = swiglu_value(g[t], u[t]);
}

struct GemvParts {
  const void* w[kGemvMaxParts];
  float* y[kGemvMaxParts];
  int n[kGemvMaxParts];
  int first_block[kGemvMaxParts + 1];  // part i has blocks first_block[i] .. first_block[i + 1] - 1
  int count;
};

template <typename W, int T, bool kVector, bool kPre, bool kNorm>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_multi_kernel(const float* __restrict__ x, const __grid_constant__ GemvParts p, int K, GemvFusion f) {
  pdl_trigger();  // the kernel after this one may launch once every block has started (pdl.cuh)
  int i = 0;
  while (i + 1 < p.count && int(blockIdx.x) >= p.first_block[i + 1]) ++i;
  const int n = (int(blockIdx.x) - p.first_block[i]) * kWarps + (threadIdx.x >> 5);
  if (n >= p.n[i]) return;  // this warp reads and writes nothing
  const W* row = static_cast<const W*>(p.w[i]) + size_t(n) * K;
  uint4 raw[kUnroll];
  if (kVector && kPre) load_units<W>(row, K, threadIdx.x & 31, raw);
  pdl_wait();
  float acc[T];
  gemv_dot<W, T, kVector, kPre, kNorm>(x, row, K, raw, acc, f.g, f.eps);
  if ((threadIdx.x & 31) == 0)
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float* yp = p.y[i] + size_t(t) * p.n[i] + n;
      *yp = f.accumulate ? *yp + acc[t] : acc[t];
    }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether a launch of `warps` warps (one a row) for T tokens takes the kPre kernels, which hold a lane's first kUnroll
// loads in registers (64 registers at T = 1, 32 warps an SM) instead of the 32-register ones that issue
// fewer loads at a time with up to 64 warps an SM. Always with PDL (the loads go before pdl_wait);
// otherwise when all of the launch's warps fit at 32 an SM: then more warps would not be there to use, and
// each warp's bytes in flight are what is short (the 7B output projection, 4096 rows, ran at 63% of the
// copy rate in gemv_bench, run 6, against 88% for the 14336-row gate/up launch). MISTRAL_CUDA_GEMV_PRELOAD=0
// or 1 forces it off or on, for comparisons, also under PDL; =auto keeps the size rule under PDL (fp16
// decode with PDL and the kPre kernels ran at 0.964x of without PDL in run 8; PDL with the size rule or
// without the kPre kernels has not been measured: gpu-check's pdl phase times both).
bool preload_for(long long warps, int T, int n_sms) {
  static const bool off = env_equals("MISTRAL_CUDA_GEMV_PRELOAD", "0"),
                    on = env_equals("MISTRAL_CUDA_GEMV_PRELOAD", "1"),
                    by_size = env_equals("MISTRAL_CUDA_GEMV_PRELOAD", "auto");
  if (off) return false;
  if (on || (pdl_enabled() && !by_size)) return true;
  return T == 1 && n_sms > 0 && warps <= 32LL * n_sms;  // more tokens take more registers: fewer warps fit
}

// Calls f(W{}, std::integral_constant<int, T>{}) for the weight type of wt and T in 1 .. kGemvMaxT (the
// caller has checked T); returns the launch's error (f returns it).
template <typename F>
cudaError_t dispatch(DType wt, int T, F&& f) {
  cudaError_t err = cudaSuccess;
  auto by_t = [&](auto w) {
    switch (T) {
      case 1: err = f(w, std::integral_constant<int, 1>{}); break;
      case 2: err = f(w, std::integral_constant<int, 2>{}); break;
      case 3: err = f(w, std::integral_constant<int, 3>{}); break;
      default: err = f(w, std::integral_constant<int, 4>{}); break;
    }
  };
  switch (wt) {
    case DType::F32: by_t(float{}); break;
    case DType::F16: by_t(__half{}); break;
    case DType::BF16: by_t(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace

cudaError_t gemv_multi_cuda(const float* x, int T, const void* const* W, const int* N, float* const* y, int parts,
                            DType wt, int K, int n_sms, cudaStream_t stream, const GemvFusion& fuse) {
  if (T <= 0) return cudaSuccess;
  if (T > kGemvMaxT || K <= 0 || parts <= 0 || parts > kGemvMaxParts) return cudaErrorInvalidValue;
  GemvParts p{};
  p.count = parts;
  p.first_block[0] = 0;
  bool aligned = aligned16(x) && (!fuse.g || aligned16(fuse.g));
  for (int i = 0; i < parts; ++i) {
    if (N[i] < 0) return cudaErrorInvalidValue;
    p.w[i] = W[i], p.y[i] = y[i], p.n[i] = N[i];
    p.first_block[i + 1] = p.first_block[i] + (N[i] + kWarps - 1) / kWarps;
    aligned = aligned && aligned16(W[i]);
  }
  const unsigned blocks = unsigned(p.first_block[parts]);
  if (blocks == 0) return cudaSuccess;
  long long rows = 0;
  for (int i = 0; i < parts; ++i) rows += N[i];
  const bool pre = preload_for(rows, T, n_sms);
  return dispatch(wt, T, [&](auto w, auto t) {
    using Wt = decltype(w);
    constexpr int TT = decltype(t)::value;
    auto go = [&](auto norm) {
      constexpr bool kN = decltype(norm)::value;
      if (aligned && (size_t(K) * sizeof(Wt)) % 16 == 0)
        return pre ? launch_maybe_pdl(gemv_multi_kernel<Wt, TT, true, true, kN>, blocks, kWarps * 32, 0, stream, x, p,
                                      K, fuse)
                   : launch_maybe_pdl(gemv_multi_kernel<Wt, TT, true, false, kN>, blocks, kWarps * 32, 0, stream, x, p,
                                      K, fuse);
      return launch_maybe_pdl(gemv_multi_kernel<Wt, TT, false, false, kN>, blocks, kWarps * 32, 0, stream, x, p, K,
                              fuse);
    };
    return fuse.g ? go(std::true_type{}) : go(std::false_type{});
  });
}

cudaError_t gemv_cuda(const float* x, int T, const void* W, DType wt, int N, int K, float* y, int n_sms,
                      cudaStream_t stream, const GemvFusion& fuse) {
  if (T > 0 && N <= 0) return cudaSuccess;
  return gemv_multi_cuda(x, T, &W, &N, &y, 1, wt, K, n_sms, stream, fuse);
}

cudaError_t gemv_swiglu_cuda(const float* x, int T, const void* Wg, const void* Wu, DType wt, int N, int K, float* out,
                             int n_sms, cudaStream_t stream, const GemvFusion& fuse) {
  if (T <= 0 || N <= 0) return cudaSuccess;
  if (T > kGemvMaxT || K <= 0 || fuse.accumulate) return cudaErrorInvalidValue;
  const unsigned blocks = unsigned((N + kWarps - 1) / kWarps);
  const bool aligned = aligned16(x) && aligned16(Wg) && aligned16(Wu) && (!fuse.g || aligned16(fuse.g));
  const bool pre = preload_for(N, T, n_sms);
  return dispatch(wt, T, [&](auto w, auto t) {
    using Wt = decltype(w);
    constexpr int TT = decltype(t)::value;
    const Wt* g = static_cast<const Wt*>(Wg);
    const Wt* u = static_cast<const Wt*>(Wu);
    auto go = [&](auto norm) {
      constexpr bool kN = decltype(norm)::value;
      if (aligned && (size_t(K) * sizeof(Wt)) % 16 == 0)
        return pre ? launch_maybe_pdl(gemv_swiglu_kernel<Wt, TT, true, true, kN>, blocks, kWarps * 32, 0, stream, x, g,
                                      u, N, K, out, fuse)
                   : launch_maybe_pdl(gemv_swiglu_kernel<Wt, TT, true, false, kN>, blocks, kWarps * 32, 0, stream, x, g,
                                      u, N, K, out, fuse);
      return launch_maybe_pdl(gemv_swiglu_kernel<Wt, TT, false, false, kN>, blocks, kWarps * 32, 0, stream, x, g, u, N,
                              K, out, fuse);
    };
    return fuse.g ? go(std::true_type{}) : go(std::false_type{});
  });
}

void set_pdl_default(bool on) { pdl_default().store(on, std::memory_order_relaxed); }

}  // namespace cuda
}  // namespace mistral
