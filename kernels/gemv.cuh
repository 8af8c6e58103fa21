// Small-batch matrix-vector products y[T, N] = x[T, K] * W[N, K]^T for T <= kGemvMaxT, weights in
// their stored dtype (fp32, fp16, bf16), fp32 activations and accumulation.
#pragma once
#include <cuda_runtime.h>

#include "mistral/dtype.h"

namespace mistral {
namespace cuda {

constexpr int kGemvMaxT = 4;

// What a decode-step GEMV launch may fold in (MISTRAL_CUDA_FUSED_NORM=1 in the CUDA backend):
//   g set: y = (rmsnorm(x) * g) W^T, the RMSNorm of each token row of x computed by the launch itself, as
//          sum_k W[n,k] (x_k g_k) times 1 / sqrt(mean x^2 + eps) (a mean square of fp32 sums);
//   accumulate: y += result (the residual add), instead of y = result.
struct GemvFusion {
  const float* g = nullptr;  // the norm's weight [K], fp32 on the device
  float eps = 0.f;
  bool accumulate = false;
};

// n_sms: the device's multiprocessors, which choose between two kernels of the same results (gemv.cu).
cudaError_t gemv_cuda(const float* x, int T, const void* W, DType wt, int N, int K, float* y, int n_sms,
                      cudaStream_t stream, const GemvFusion& fuse = {});

// out[T, N] = silu(x W_gate^T) * (x W_up^T), both [N, K] of dtype wt, in one launch (T <= kGemvMaxT): each
// element bit for bit the GEMVs followed by swiglu_cuda when the weights are 16-byte aligned.
// fuse: the norm only (accumulate is not supported here).
cudaError_t gemv_swiglu_cuda(const float* x, int T, const void* Wg, const void* Wu, DType wt, int N, int K, float* out,
                             int n_sms, cudaStream_t stream, const GemvFusion& fuse = {});

// Several products of the same x in one launch: y[i][T, N[i]] = x[T, K] * W[i][N[i], K]^T for i < parts
// (parts <= kGemvMaxParts, every W[i] of dtype wt). Each result equals gemv_cuda's bit for bit when every
// W[i] is 16-byte aligned (cudaMalloc's are); with any unaligned, all parts take the scalar path.
constexpr int kGemvMaxParts = 4;
cudaError_t gemv_multi_cuda(const float* x, int T, const void* const* W, const int* N, float* const* y, int parts,
                            DType wt, int K, int n_sms, cudaStream_t stream, const GemvFusion& fuse = {});

// Programmatic dependent launch when MISTRAL_CUDA_PDL is not set (pdl.cuh): the CUDA backend turns it on
// for quantized models.
void set_pdl_default(bool on);

}  // namespace cuda
}  // namespace mistral
