// Times the decode-step GEMV launches of one Mistral-7B layer (batch 1) kernel by kernel, fp16 and
// quantized, against the GPU's copy bandwidth measured in the same process: q/k/v in one launch, the
// output projection, gate/up with SwiGLU, the down projection. For the quantized formats it also tries
// several values of the K-split target (set_quant_gemv_warps_per_sm), to choose the default from
// measurements. Random weight bytes (timing only); each launch reads a different copy of its weights out
// of enough copies to exceed L2, as a real step does.
//   gemv_bench [--reps N] [--formats f16,int8,nf4,int4,int8h,int4h,int8i,int4i,int4mma,int8mma]
//              [--warps 16,24,32,48]
//              [--only LAUNCH]
// int8h / int4h: the register GEMVs' fp16 path (quant_gemv.cuh QuantXMath::f16, MISTRAL_CUDA_QUANT_HALF=1);
// int8i / int4i: their int8 path (QuantXMath::i8, MISTRAL_CUDA_QUANT_I8=1).
// A trailing 'n' (f16n, int4hn, ...): the decode step's folds as well (MISTRAL_CUDA_FUSED_NORM=1).
// int4mma / int8mma: the tensor-core GEMV (kernels/quant_mma.cu, MISTRAL_CUDA_QUANT_MMA=1) on
// tile-layout weights, one launch a matrix (q, k and v three launches; gate and up two, then SwiGLU).
// --only times one launch (q/k/v, o, gate/up+swiglu or down): for a profiler pointed at its kernels.
// Built with the CUDA backend (target gemv_bench); tools/gpu-check.sh runs it in its `kernels` phase.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "elementwise.cuh"
#include "gemv.cuh"
#include "mistral/quant.h"
#include "quant_gemv.cuh"
#include "quant_mma.cuh"
#include "quant_mma_layout.h"

using namespace mistral;

namespace {

#define CK(x) bench::check((x), "gemv_bench", #x)

constexpr size_t kMinBytes = size_t(512) << 20;  // weight copies per matrix: at least this much in all

struct Matrix {  // `copies` copies of an N x K matrix (data, scales) in one format
  int N = 0, K = 0, group = 0, copies = 0;
  DType t = DType::F16;
  bool mma = false;  // Q4 in the tensor-core GEMV's tile layout
  size_t data_bytes = 0, scale_bytes = 0;
  std::vector<void*> data, scales;
};

// Pseudo-random 32-bit words, ANDed with `mask` (to keep fp16 / fp32 values finite and small).
__global__ void fill_kernel(uint32_t* p, size_t words, uint32_t seed, uint32_t mask) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < words; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed * 0x85EBCA77u;
    h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12, h *= 0x297A2D39u, h ^= h >> 15;
    p[i] = h & mask;
  }
}
void fill(void* p, size_t bytes, uint32_t seed, uint32_t mask) {
  fill_kernel<<<1024, 256>>>(static_cast<uint32_t*>(p), bytes / 4, seed, mask);
  CK(cudaGetLastError());
}
constexpr uint32_t kAnyBits = 0xFFFFFFFFu;
constexpr uint32_t kSmallHalves = 0xB3FFB3FFu;  // |v| < 2^-2 per fp16, either sign
constexpr uint32_t kSmallFloat = 0x3A7FFFFFu;   // positive, < 2^-10

Matrix make_matrix(DType t, int N, int K, uint32_t seed, bool mma) {
  Matrix m;
  m.t = t, m.N = N, m.K = K, m.mma = mma;
  if (t == DType::F16) {
    m.data_bytes = size_t(N) * K * 2;
  } else {
    m.group = int(quant_group(t, K));
    m.data_bytes = mma ? cuda::quant_mma_bytes(t, N, K) : size_t(N) * quant_row_bytes(t, K);
    m.scale_bytes = size_t(N) * size_t(quant_groups(t, K)) * (t == DType::Q8 ? 4 : 2);
  }
  m.copies = int((kMinBytes + m.data_bytes - 1) / m.data_bytes);
  for (int c = 0; c < m.copies; ++c) {
    void *d = nullptr, *s = nullptr;
    CK(cudaMalloc(&d, m.data_bytes));
    fill(d, m.data_bytes, seed + c, t == DType::F16 ? kSmallHalves : kAnyBits);
    if (t != DType::F16) {
      CK(cudaMalloc(&s, m.scale_bytes));
      fill(s, m.scale_bytes, seed + 7 * c, t == DType::Q8 ? kSmallFloat : kSmallHalves);
    }
    m.data.push_back(d), m.scales.push_back(s);
  }
  return m;
}

void free_matrix(Matrix& m) {
  for (void* p : m.data) cudaFree(p);
  for (void* p : m.scales) cudaFree(p);
  m.data.clear(), m.scales.clear();
}

struct Layer {  // one 7B layer's matrices in one format
  Matrix q, k, v, o, gate, up, down;
  cuda::QuantXMath xmath = cuda::QuantXMath::f32;  // the quantized GEMVs' arithmetic
  // Format names ending in 'n': the decode step's folds (GemvFusion, MISTRAL_CUDA_FUSED_NORM=1), the norm
  // in q/k/v and gate/up (x * g, the sum of squares), the residual add in o and down; otherwise none.
  cuda::GemvFusion norm, add;
};

enum Launch { kQKV, kO, kGateUp, kDown, kLaunches };
const char* kLaunchName[kLaunches] = {"q/k/v", "o", "gate/up+swiglu", "down"};

// Launch `which` of the layer, copy c of its weights.
void launch(const Layer& L, Launch which, int c, const float* x, const float* xi, float* y, float* y2, float* y3,
            int n_sms) {
  const DType t = L.q.t;
  const int D = L.q.K, I = L.gate.N;
  if (L.q.mma) {
    auto mma = [&](const Matrix& m, const float* in, float* out) {
      CK(cuda::quant_mma_gemv_cuda(in, m.data[c % m.copies], m.scales[c % m.copies], m.t, m.N, m.K, m.group, out, 0));
    };
    switch (which) {
      case kQKV:
        mma(L.q, x, y), mma(L.k, x, y2), mma(L.v, x, y3);
        break;
      case kO:
        mma(L.o, x, y);
        break;
      case kGateUp:
        mma(L.gate, x, y), mma(L.up, x, y2);
        CK(cuda::swiglu_cuda(y, y2, size_t(I), y3, 0));
        break;
      default:
        mma(L.down, xi, y);
        break;
    }
    return;
  }
  if (t == DType::F16) {
    switch (which) {
      case kQKV: {
        const void* W[3] = {L.q.data[c % L.q.copies], L.k.data[c % L.k.copies], L.v.data[c % L.v.copies]};
        const int N[3] = {L.q.N, L.k.N, L.v.N};
        float* Y[3] = {y, y2, y3};
        CK(cuda::gemv_multi_cuda(x, 1, W, N, Y, 3, t, D, n_sms, 0, L.norm));
        break;
      }
      case kO:
        CK(cuda::gemv_cuda(x, 1, L.o.data[c % L.o.copies], t, L.o.N, D, y, n_sms, 0, L.add));
        break;
      case kGateUp:
        CK(cuda::gemv_swiglu_cuda(x, 1, L.gate.data[c % L.gate.copies], L.up.data[c % L.up.copies], t, I, D, y, n_sms,
                                  0, L.norm));
        break;
      default:
        CK(cuda::gemv_cuda(xi, 1, L.down.data[c % L.down.copies], t, L.down.N, I, y, n_sms, 0, L.add));
        break;
    }
    return;
  }
  switch (which) {
    case kQKV: {
      const void* W[3] = {L.q.data[c % L.q.copies], L.k.data[c % L.k.copies], L.v.data[c % L.v.copies]};
      const void* S[3] = {L.q.scales[c % L.q.copies], L.k.scales[c % L.k.copies], L.v.scales[c % L.v.copies]};
      const int N[3] = {L.q.N, L.k.N, L.v.N};
      float* Y[3] = {y, y2, y3};
      CK(cuda::quant_gemv_multi_cuda(x, 1, W, S, N, Y, 3, t, D, L.q.group, n_sms, 0, L.xmath, L.norm));
      break;
    }
    case kO:
      CK(cuda::quant_gemv_cuda(x, 1, L.o.data[c % L.o.copies], L.o.scales[c % L.o.copies], t, L.o.N, D, L.o.group, y,
                               n_sms, 0, L.xmath, L.add));
      break;
    case kGateUp:
      CK(cuda::quant_gemv_swiglu_cuda(x, 1, L.gate.data[c % L.gate.copies], L.gate.scales[c % L.gate.copies],
                                      L.up.data[c % L.up.copies], L.up.scales[c % L.up.copies], t, I, D, L.gate.group,
                                      y, n_sms, 0, L.xmath, L.norm));
      break;
    default:
      CK(cuda::quant_gemv_cuda(xi, 1, L.down.data[c % L.down.copies], L.down.scales[c % L.down.copies], t, L.down.N, I,
                               L.down.group, y, n_sms, 0, L.xmath, L.add));
      break;
  }
}

size_t launch_bytes(const Layer& L, Launch which) {
  auto b = [](const Matrix& m) { return m.data_bytes + m.scale_bytes; };
  switch (which) {
    case kQKV:
      return b(L.q) + b(L.k) + b(L.v);
    case kO:
      return b(L.o);
    case kGateUp:
      return b(L.gate) + b(L.up);
    default:
      return b(L.down);
  }
}

// Microseconds per launch over `reps` back-to-back launches (after a warm-up), each on the next copy.
double time_launch(const Layer& L, Launch which, int reps, const float* x, const float* xi, float* y, float* y2,
                   float* y3, int n_sms) {
  return bench::time_us("gemv_bench", 10, reps, [&](int i) { launch(L, which, i, x, xi, y, y2, y3, n_sms); });
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 200;
  std::string formats = "f16,int8,nf4,int4", warps = "16,24,32,48", only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (a == "--formats" && i + 1 < argc) {
      formats = argv[++i];
    } else if (a == "--warps" && i + 1 < argc) {
      warps = argv[++i];
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: gemv_bench [--reps N] [--formats f16,int8,nf4,int4,int8h,int4h,int4mma,int8mma] [--warps "
                   "16,24,32,48] "
                   "[--only LAUNCH]\n");
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  if (!only.empty() && std::find(std::begin(kLaunchName), std::end(kLaunchName), only) == std::end(kLaunchName)) {
    std::fprintf(stderr, "gemv_bench: --only takes q/k/v, o, gate/up+swiglu or down\n");
    return 2;
  }
  int dev = 0, n_sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    std::fprintf(stderr, "gemv_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));
  const double bw = bench::copy_gbs("gemv_bench");
  std::printf("gemv_bench on %s (%d SMs): copy %.0f GB/s; Mistral-7B layer, batch 1, %d launches each\n", prop.name,
              n_sms, bw, reps);
  const int D = 4096, KV = 1024, I = 14336;
  float *x = nullptr, *xi = nullptr, *y = nullptr, *y2 = nullptr, *y3 = nullptr;
  CK(cudaMalloc(&x, D * sizeof(float)));
  CK(cudaMalloc(&xi, I * sizeof(float)));
  CK(cudaMalloc(&y, I * sizeof(float)));
  CK(cudaMalloc(&y2, I * sizeof(float)));
  CK(cudaMalloc(&y3, I * sizeof(float)));
  {
    std::vector<float> h(I);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& v : h) v = nd(rng);
    CK(cudaMemcpy(x, h.data(), D * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(xi, h.data(), I * sizeof(float), cudaMemcpyHostToDevice));
  }
  std::printf("%-6s %-6s %-16s %9s %9s %9s\n", "format", "warps", "launch", "us", "GB/s", "of copy");
  float* g = nullptr;  // a norm weight for the folded formats
  CK(cudaMalloc(&g, D * sizeof(float)));
  {
    std::vector<float> h(D, 1.0f);
    CK(cudaMemcpy(g, h.data(), D * sizeof(float), cudaMemcpyHostToDevice));
  }
  for (const std::string& fname : bench::split_list(formats)) {
    const bool folded = fname.size() > 1 && fname.back() == 'n';
    const std::string f = folded ? fname.substr(0, fname.size() - 1) : fname;
    DType t;
    const bool mma = f == "int4mma" || f == "int8mma", half = f == "int4h" || f == "int8h",
               i8 = f == "int4i" || f == "int8i";
    if (f == "f16") t = DType::F16;
    else if (f == "int8" || f == "int8mma" || f == "int8h" || f == "int8i")
      t = DType::Q8;
    else if (f == "nf4") t = DType::NF4;
    else if (f == "int4" || mma || half || i8)
      t = DType::Q4;
    else {
      std::fprintf(stderr, "gemv_bench: unknown format %s\n", fname.c_str());
      return 2;
    }
    if (folded && mma) {
      std::fprintf(stderr, "gemv_bench: the tensor-core GEMVs have no folds (%s)\n", fname.c_str());
      return 2;
    }
    Layer L;
    L.q = make_matrix(t, D, D, 10, mma), L.k = make_matrix(t, KV, D, 20, mma), L.v = make_matrix(t, KV, D, 30, mma);
    L.o = make_matrix(t, D, D, 40, mma), L.gate = make_matrix(t, I, D, 50, mma), L.up = make_matrix(t, I, D, 60, mma);
    L.down = make_matrix(t, D, I, 70, mma);
    L.xmath = half ? cuda::QuantXMath::f16 : i8 ? cuda::QuantXMath::i8 : cuda::QuantXMath::f32;
    if (folded) L.norm = cuda::GemvFusion{g, 1e-5f, false}, L.add = cuda::GemvFusion{nullptr, 0.f, true};
    const std::vector<std::string> ws =
        t == DType::F16 || mma ? std::vector<std::string>{"-"} : bench::split_list(warps);
    for (const std::string& w : ws) {
      if (t != DType::F16) cuda::set_quant_gemv_warps_per_sm(std::atoi(w.c_str()));
      double total_us = 0, total_bytes = 0;
      for (int l = 0; l < kLaunches; ++l) {
        if (!only.empty() && only != kLaunchName[l]) continue;
        const double us = time_launch(L, Launch(l), reps, x, xi, y, y2, y3, n_sms);
        const double bytes = double(launch_bytes(L, Launch(l)));
        total_us += us, total_bytes += bytes;
        std::printf("%-6s %-6s %-16s %9.2f %9.0f %8.0f%%\n", fname.c_str(), w.c_str(), kLaunchName[l], us,
                    bytes / us / 1e3, 100.0 * bytes / us / 1e3 / bw);
      }
      std::printf("%-6s %-6s %-16s %9.2f %9.0f %8.0f%%   (32 layers: %.2f ms of GEMVs a token)\n", fname.c_str(),
                  w.c_str(), "layer", total_us, total_bytes / total_us / 1e3, 100.0 * total_bytes / total_us / 1e3 / bw,
                  32 * total_us / 1e3);
    }
    cuda::set_quant_gemv_warps_per_sm(0);
    for (Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) free_matrix(*m);
  }
  cudaFree(x), cudaFree(xi), cudaFree(y), cudaFree(y2), cudaFree(y3), cudaFree(g);
  return 0;
}
