// Tensor-core decode GEMV for Q4 (int4) and Q8 (int8) weights, an experiment behind
// MISTRAL_CUDA_QUANT_MMA=1 (the CUDA backend then keeps a second copy of each such matrix in the tile
// layout of quant_mma_layout.h and uses this kernel for single-token products of one matrix; fused q/k/v
// and gate/up launches keep the register kernels unless MISTRAL_UNFUSED=1). A warp dequantizes 16 rows x
// 16 columns a step, two or three instructions a register (Q4: shift, mask-or to fp16 1024 + code, less
// 1032; Q8: byte permute under 0x64, less 1152), and runs one mma.m16n8k16; x goes to the tensor cores
// as fp16 (saturating), products and sums are fp32, scaled in fp32 (Q4 a group at a time, Q8 at the end).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "mistral/dtype.h"

namespace mistral {
namespace cuda {

// Whether quant_mma_gemv_cuda takes an [N, K] matrix of format t (Q4 with a group that is a multiple of
// 64, or Q8) when x as fp16 fits 48 KB of shared memory.
bool quant_mma_supported(DType t, int64_t N, int64_t K, int64_t group);
// Bytes of its tiles (quant_mma_layout.h), and the tiles of its host data (quant.h's layout) into out.
size_t quant_mma_bytes(DType t, int64_t N, int64_t K);
void quant_mma_repack(DType t, const void* data, int64_t N, int64_t K, void* out);

// y[N] = x[K] . dequant(W)^T for one token: W's tiles (quant_mma_layout.h, device) and its scales as
// quant.h lays them out (Q4: [N, ceil(K / group)] fp16; Q8: [N] fp32; device).
cudaError_t quant_mma_gemv_cuda(const float* x, const void* tiles, const void* scales, DType t, int N, int K, int group,
                                float* y, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
