// Helpers the kernel benchmarks (tools/gemv_bench.cu, tools/attn_bench.cu) share: the device's copy rate
// measured in the same process, and comma-separated option lists.
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace bench {

// A failed CUDA call ends the tool with a one-line message naming it.
inline void check(cudaError_t e, const char* tool, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "%s: %s failed: %s\n", tool, what, cudaGetErrorString(e));
  std::exit(1);
}

// Device-to-device copy rate (bytes read + written per second), GB/s: 10 copies of 1 GiB after 3 warm-ups.
inline double copy_gbs(const char* tool) {
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  check(cudaMalloc(&a, bytes), tool, "cudaMalloc");
  check(cudaMalloc(&b, bytes), tool, "cudaMalloc");
  check(cudaMemset(a, 1, bytes), tool, "cudaMemset");
  for (int i = 0; i < 3; ++i) check(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice), tool, "cudaMemcpy");
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), tool, "cudaEventCreate");
  check(cudaEventCreate(&e1), tool, "cudaEventCreate");
  check(cudaEventRecord(e0, 0), tool, "cudaEventRecord");
  for (int i = 0; i < 10; ++i)
    check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0), tool, "cudaMemcpyAsync");
  check(cudaEventRecord(e1, 0), tool, "cudaEventRecord");
  check(cudaEventSynchronize(e1), tool, "cudaEventSynchronize");
  float ms = 0.f;
  check(cudaEventElapsedTime(&ms, e0, e1), tool, "cudaEventElapsedTime");
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  cudaFree(a), cudaFree(b);
  return 2.0 * 10 * double(bytes) / (1e-3 * ms) / 1e9;
}

// Microseconds per call of launch(i) on the default stream, i = 0 .. reps - 1 timed by events after calls
// 0 .. warmup - 1 untimed.
template <class F>
double time_us(const char* tool, int warmup, int reps, F&& launch) {
  for (int i = 0; i < warmup; ++i) launch(i);
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), tool, "cudaEventCreate");
  check(cudaEventCreate(&b), tool, "cudaEventCreate");
  check(cudaEventRecord(a, 0), tool, "cudaEventRecord");
  for (int i = 0; i < reps; ++i) launch(i);
  check(cudaEventRecord(b, 0), tool, "cudaEventRecord");
  check(cudaEventSynchronize(b), tool, "cudaEventSynchronize");
  float ms = 0.f;
  check(cudaEventElapsedTime(&ms, a, b), tool, "cudaEventElapsedTime");
  cudaEventDestroy(a), cudaEventDestroy(b);
  return 1e3 * double(ms) / reps;
}

inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace bench
