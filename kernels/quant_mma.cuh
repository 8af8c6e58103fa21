// Tensor-core decode GEMV for Q4 (int4) weights, an experiment behind MISTRAL_CUDA_QUANT_MMA=1 (the
// CUDA backend then keeps a second copy of each Q4 matrix in the tile layout of quant_mma_layout.h and
// uses this kernel for single-token products of one matrix; fused q/k/v and gate/up launches keep the
// register kernels unless MISTRAL_UNFUSED=1). Each warp dequantizes 16 rows x 16 columns a step with
// two instructions a register (mask-or to fp16 1024 + code, subtract 1032) and one mma.m16n8k16; x goes
// to the tensor cores as fp16 (saturating), products and sums are fp32, each group's sum is scaled in fp32.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

// Whether quant_mma_gemv_cuda takes an [N, K] Q4 matrix with this group (a multiple of 64; x as fp16
// fits 48 KB of shared memory).
bool quant_mma_supported(int64_t N, int64_t K, int64_t group);

// y[N] = x[K] . dequant(W)^T for one token: W's tiles (quant_mma_layout.h, device) and its scales as
// quant.h lays them out ([N, ceil(K / group)] fp16, device).
cudaError_t quant_mma_gemv_cuda(const float* x, const void* tiles, const void* scales, int N, int K, int group, float* y,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
