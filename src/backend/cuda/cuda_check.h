// One error path for CUDA and cuBLAS calls: the failing statement, file:line, device and error name
// become a mistral::Error. MISTRAL_CUDA_SYNC=1 in the environment synchronises after every launch.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "mistral/error.h"

namespace mistral {
namespace cuda {

[[noreturn]] void throw_cuda(const char* stmt, const char* file, int line, const std::string& what);
const char* cublas_status_name(cublasStatus_t s);
bool sync_after_launch();
// True while the calling thread's stream is being recorded into a graph (no synchronising then).
bool stream_capturing(cudaStream_t s);

}  // namespace cuda
}  // namespace mistral

#define MR_CUDA_CHECK(stmt)                                                                                  \
  do {                                                                                                       \
    cudaError_t mr_err_ = (stmt);                                                                            \
    if (mr_err_ != cudaSuccess)                                                                              \
      ::mistral::cuda::throw_cuda(#stmt, __FILE__, __LINE__,                                                 \
                                  std::string(cudaGetErrorName(mr_err_)) + ": " + cudaGetErrorString(mr_err_)); \
  } while (0)

#define MR_CUBLAS_CHECK(stmt)                                                                                \
  do {                                                                                                       \
    cublasStatus_t mr_st_ = (stmt);                                                                          \
    if (mr_st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      ::mistral::cuda::throw_cuda(#stmt, __FILE__, __LINE__, ::mistral::cuda::cublas_status_name(mr_st_));   \
  } while (0)

// After a kernel launcher: its return code, then (in debug mode) a synchronisation.
#define MR_LAUNCH_CHECK(stmt, stream)                                            \
  do {                                                                           \
    MR_CUDA_CHECK(stmt);                                                         \
    if (::mistral::cuda::sync_after_launch() && !::mistral::cuda::stream_capturing(stream))          \
      MR_CUDA_CHECK(cudaStreamSynchronize(stream));                                                     \
  } while (0)
