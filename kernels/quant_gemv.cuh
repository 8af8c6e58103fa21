// Quantized weights (Q8, NF4, Q4; byte layout of include/mistral/quant.h) on the GPU: a small-batch
// GEMV that dequantizes in registers (decode), and a dequantizer to fp16 for the cuBLAS path (prefill).
#pragma once
#include <cuda_runtime.h>

#include "gemv.cuh"
#include "mistral/dtype.h"

namespace mistral {
namespace cuda {

// How the GEMV multiplies (Q8 and Q4; NF4, and launches whose copy of x would not fit the staging limit,
// take f32):
//   f32: fp32 products and sums (the reference path);
//   f16: x staged as fp16 scaled by a power of two, each 16-byte chunk's products summed in half2 (relative
//        error of a chunk below 16 * 2^-11 of its sum |code x|), the rest in fp32: about half the
//        instructions a weight (quant_gemv.cu, kXHalf). MISTRAL_CUDA_QUANT_HALF=1 in the CUDA backend;
//   i8:  x quantized to int8 per 16-byte chunk of the weights (absmax / 127 a chunk), each chunk's
//        products one exact integer sum (dp4a), the rest in fp32: a few instructions per 8 weights
//        (kXInt8; tests/quant_i8_reference.h is its definition). MISTRAL_CUDA_QUANT_I8=1.
// f16 and i8 are experiments, off by default.
enum class QuantXMath { f32, f16, i8 };

// y[T, N] = x[T, K] * dequant(W)[N, K]^T for 1 <= T <= kGemvMaxT (gemv.cuh); fp32 activations and
// accumulation. W: `data` [N, quant_row_bytes(wt, K)] (16-byte aligned), `scales` [N, ceil(K / group)]
// (fp32 for Q8, fp16 otherwise); group is K for Q8 and a multiple of 32 for NF4 / Q4. n_sms sizes the
// grid (K is split over more warps when there are too few rows to fill the SMs). x is read only below K.
// xmath: as above.
cudaError_t quant_gemv_cuda(const float* x, int T, const void* data, const void* scales, DType wt, int N, int K,
                            int group, float* y, int n_sms, cudaStream_t stream, QuantXMath xmath = QuantXMath::f32,
                            const GemvFusion& fuse = {});

// Several products of one x (q, k, v of a decode step) in one launch: y[i] = x * dequant(W_i)^T, every
// W_i of format wt with K columns (group as above), N[i] rows; parts <= kGemvMaxParts. Each result equals
// quant_gemv_cuda's bit for bit (a matrix's K split depends on its own shape only).
cudaError_t quant_gemv_multi_cuda(const float* x, int T, const void* const* data, const void* const* scales,
                                  const int* N, float* const* y, int parts, DType wt, int K, int group, int n_sms,
                                  cudaStream_t stream, QuantXMath xmath = QuantXMath::f32, const GemvFusion& fuse = {});

// out[T, N] = silu(x W_gate^T) * (x W_up^T) in one launch, both [N, K] of format wt: bit for bit the two
// quant_gemv_cuda products followed by swiglu_cuda.
cudaError_t quant_gemv_swiglu_cuda(const float* x, int T, const void* gate_data, const void* gate_scales,
                                   const void* up_data, const void* up_scales, DType wt, int N, int K, int group,
                                   float* out, int n_sms, cudaStream_t stream, QuantXMath xmath = QuantXMath::f32,
                                   const GemvFusion& fuse = {});

// fuse (gemv.cuh): the norm and the residual add folded into the launch (the SwiGLU launch: the norm only).
// The norm needs the block's copy of x in shared memory: quant_gemv_fusion_ok says whether a launch of T
// tokens of K columns has one (the launchers return cudaErrorNotSupported otherwise); the norm's weight
// must be 16-byte aligned.
bool quant_gemv_fusion_ok(DType wt, int T, int K, QuantXMath xmath);

// The K split's target (gemv_split in quant_gemv.cu): rows are split over more warps while a launch
// has fewer than this many warps per SM. 0 restores the default (24, or MISTRAL_CUDA_QUANT_WARPS);
// for tools/gemv_bench.cu, which times the choices. Changes the products' summation order (not their
// accuracy); not thread-safe.
void set_quant_gemv_warps_per_sm(int warps);

// out[N, K] (fp16, row-major, dense) = dequant(W): code value times its scale in fp32, rounded to
// nearest fp16 (saturating at +-65504, like the activation conversion of the cuBLAS path).
cudaError_t dequantize_f16_cuda(const void* data, const void* scales, DType wt, int N, int K, int group, void* out,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
