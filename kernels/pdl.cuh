// Programmatic dependent launch (sm_90): on for quantized models, off otherwise (MISTRAL_CUDA_PDL=1 or 0
// forces it; the CUDA backend sets the default by the format of the weights it multiplies). A decode step is ~260 small
// kernels; between two of them the GPU idles while the next one launches and ramps up. Every kernel of a
// single-sequence decode step after the embedding (norms, GEMVs, RoPE + cache write, split-KV attention)
// is launched by launch_maybe_pdl and may start while the kernel before it still runs: it calls
// pdl_trigger() first thing (the kernel after it may launch once all of its blocks have started, so
// waiting blocks never crowd out its own), does what depends on no earlier kernel (GEMVs load their
// first weights, RoPE computes its angles, attention finds its key range from the step's position,
// which is written before the step's first kernel), then pdl_wait()s for the kernel before to finish
// (its writes visible) before it reads any activation or writes anything. Since each kernel finishes
// only after its own wait, every earlier kernel has finished too. Without the attribute (the default)
// both calls do nothing. Measured on an H200 (gpu-check, 7B shape, decode at 128 tokens of context):
// int8 weights 266 -> 297 tok/s, int4 290 -> 322 (run 7 without it, run 8 with it; about 3 of those
// 11% came from run 8's new attention block), fp16 221 -> 213 in the same run (the fp16 GEMVs then
// always take their register-preloading kernels, gemv.cu's preload_for), hence the default by weights.
#pragma once
#include <atomic>
#include <utility>

#include <cuda_runtime.h>

#include "common.cuh"

namespace mistral {
namespace cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The default when MISTRAL_CUDA_PDL is not set: set_pdl_default (gemv.cuh), which the CUDA backend calls
// with each product's weight format (cuda_backend.cpp, launches_for).
inline std::atomic<bool>& pdl_default() {  // atomic: backends on other threads may set it (relaxed: a hint)
  static std::atomic<bool> on{false};
  return on;
}

// MISTRAL_CUDA_PDL=1 or 0 (read once), else pdl_default(); never in a build with an architecture below
// sm_90 (CMakeLists.txt defines MISTRAL_CUDA_PDL_ARCH otherwise), whose kernels would not wait.
inline bool pdl_enabled() {
#ifndef MISTRAL_CUDA_PDL_ARCH
  return false;
#endif
  static const int forced = env_equals("MISTRAL_CUDA_PDL", "1") ? 1 : env_equals("MISTRAL_CUDA_PDL", "0") ? 0 : -1;
  return forced >= 0 ? forced == 1 : pdl_default().load(std::memory_order_relaxed);
}

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-serialization attribute when
// pdl_enabled(): the kernel must pdl_wait() before touching anything an earlier kernel writes or reads.
template <typename... Params, typename... Args>
cudaError_t launch_maybe_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             Args&&... args) {
  if (!pdl_enabled()) {
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  // A failed launch also sets the thread's last error: clear it, as the <<<>>> path's cudaGetLastError
  // does, or the next launch check would report this failure again.
  if (err != cudaSuccess) cudaGetLastError();
  return err;
}

}  // namespace cuda
}  // namespace mistral
