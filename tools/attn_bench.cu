// Times the split-KV decode attention of one Mistral-7B layer (32 query heads, 8 KV heads of 128; one query
// token) launch by launch, at several context lengths, over fp32 and fp16 caches, for each variant of the
// kernel (tiled or untiled partial block; merge inside the partial kernel or a separate combine kernel; the
// tiled block's one-address tiles, MISTRAL_CUDA_DECODE_FAST_TILES=1),
// against the GPU's copy bandwidth measured in the same process. The bytes counted are the K and V rows the
// query reads. Each launch reads a different copy of the cache out of enough copies to exceed L2, as a real
// step does (one layer's cache each). The variants' outputs are compared on the same inputs (largest
// difference relative to the largest output), as a check that they compute the same thing.
//   attn_bench [--reps N] [--ctx 128,1024,4096,16384,32768] [--kv f32,f16] [--only VARIANT]
// --only times one variant (untiled+merge, untiled+combine, tiled+merge, tiled+combine, fasttiles+combine):
// for a profiler.
// Built with the CUDA backend (target attn_bench); tools/gpu-check.sh runs it in its `kernels` phase.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "attention_decode.cuh"
#include "bench_common.cuh"

using namespace mistral;

namespace {

#define CK(x) bench::check((x), "attn_bench", #x)

constexpr size_t kMinBytes = size_t(512) << 20;  // cache copies: at least this much in all

// Values in [-1, 1) from a hash of the index: fp32, or fp16 when half.
__global__ void fill_kernel(void* p, size_t n, uint32_t seed, bool half) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed * 0x85EBCA77u;
    h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12, h *= 0x297A2D39u, h ^= h >> 15;
    const float x = float(h >> 8) * (2.0f / 16777216.0f) - 1.0f;
    if (half)
      static_cast<__half*>(p)[i] = __float2half_rn(x);
    else
      static_cast<float*>(p)[i] = x;
  }
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 100;
  std::string ctxs = "128,1024,4096,16384,32768", kvs = "f32,f16", only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--ctx" && i + 1 < argc) {
      ctxs = argv[++i];
    } else if (a == "--kv" && i + 1 < argc) {
      kvs = argv[++i];
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: attn_bench [--reps N] [--ctx 128,1024,4096,16384,32768] [--kv f32,f16] [--only VARIANT]\n");
      return 2;
    }
  }
  int dev = 0, n_sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    std::fprintf(stderr, "attn_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));
  const double bw = bench::copy_gbs("attn_bench");
  const int Hq = 32, Hkv = 8, hd = 128, qd = Hq * hd, kvd = Hkv * hd;
  std::printf("attn_bench on %s (%d SMs): copy %.0f GB/s; Mistral-7B layer's decode attention, %d launches each\n",
              prop.name, n_sms, bw, reps);
  std::printf("%-4s %7s %-18s %6s %9s %9s %8s %10s\n", "kv", "ctx", "variant", "splits", "us", "GB/s", "of copy",
              "max diff");
  float *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
  CK(cudaMalloc(&q, qd * sizeof(float)));
  CK(cudaMalloc(&k, kvd * sizeof(float)));
  CK(cudaMalloc(&v, kvd * sizeof(float)));
  CK(cudaMalloc(&out, qd * sizeof(float)));
  fill_kernel<<<64, 256>>>(q, qd, 1, false);
  fill_kernel<<<64, 256>>>(k, kvd, 2, false);
  fill_kernel<<<64, 256>>>(v, kvd, 3, false);
  CK(cudaGetLastError());
  struct Variant {
    const char* name;
    int tiled, separate, fast;
  };
  const Variant variants[] = {{"untiled+merge", 0, 0, 0},
                              {"untiled+combine", 0, 1, 0},
                              {"tiled+merge", 1, 0, 0},
                              {"tiled+combine", 1, 1, 0},
                              {"fasttiles+combine", 1, 1, 1}};
  for (const std::string& kv : bench::split_list(kvs)) {
    const bool half = kv == "f16";
    if (!half && kv != "f32") {
      std::fprintf(stderr, "attn_bench: --kv takes f32 and f16\n");
      return 2;
    }
    const size_t elem = half ? 2 : 4;
    for (const std::string& cs : bench::split_list(ctxs)) {
      const int64_t ctx = std::atoll(cs.c_str());
      if (ctx < 1) continue;
      cuda::AttnParams p;
      p.n_heads = Hq, p.n_kv_heads = Hkv, p.head_dim = hd, p.window = 0, p.slots = ctx, p.kv_half = half;
      const size_t cache_bytes = size_t(ctx) * kvd * elem;  // one of K or V
      const int copies = int(std::max<size_t>(2, (kMinBytes + 2 * cache_bytes - 1) / (2 * cache_bytes)));
      std::vector<void*> ck(static_cast<size_t>(copies)), cv(static_cast<size_t>(copies));
      for (int c = 0; c < copies; ++c) {
        CK(cudaMalloc(&ck[size_t(c)], cache_bytes));
        CK(cudaMalloc(&cv[size_t(c)], cache_bytes));
        fill_kernel<<<1024, 256>>>(ck[size_t(c)], cache_bytes / elem, 10 + c, half);
        fill_kernel<<<1024, 256>>>(cv[size_t(c)], cache_bytes / elem, 20 + c, half);
      }
      CK(cudaGetLastError());
      const int splits = cuda::decode_attention_splits(p, n_sms);
      float* scratch = nullptr;
      const size_t sf = cuda::decode_attention_scratch_floats(p, splits);
      CK(cudaMalloc(&scratch, sf * sizeof(float)));
      CK(cudaMemset(scratch, 0, sf * sizeof(float)));
      const int64_t pos = ctx - 1;  // the query's own row is its last key
      std::vector<float> first, got(static_cast<size_t>(qd));
      for (const Variant& va : variants) {
        if (!only.empty() && only != va.name) continue;
        cuda::set_decode_attention_variant(va.tiled, va.separate, va.fast);
        CK(cuda::decode_attention_cuda(q, k, v, ck[0], cv[0], pos, p, splits, scratch, out, 0));
        CK(cudaMemcpy(got.data(), out, qd * sizeof(float), cudaMemcpyDeviceToHost));
        double diff = 0, top = 0;
        if (first.empty()) first = got;
        for (int i = 0; i < qd; ++i)
          diff = std::max(diff, double(std::fabs(got[size_t(i)] - first[size_t(i)]))),
          top = std::max(top, double(std::fabs(first[size_t(i)])));
        const double us = bench::time_us("attn_bench", 5, reps, [&](int i) {
          CK(cuda::decode_attention_cuda(q, k, v, ck[size_t(i % copies)], cv[size_t(i % copies)], pos, p, splits,
                                         scratch, out, 0));
        });
        const double gbs = 2.0 * double(cache_bytes) / (us * 1e3);
        std::printf("%-4s %7lld %-18s %6d %9.2f %9.0f %7.0f%% %10.2e\n", kv.c_str(), (long long)ctx, va.name, splits,
                    us, gbs, 100.0 * gbs / bw, top > 0 ? diff / top : diff);
        std::fflush(stdout);
      }
      cuda::set_decode_attention_variant(-1, -1, -1);
      for (int c = 0; c < copies; ++c) cudaFree(ck[size_t(c)]), cudaFree(cv[size_t(c)]);
      cudaFree(scratch);
    }
  }
  return 0;
}
