// make_cuda_backend for builds without CUDA: always unavailable.
#include "mistral/backend.h"
#include "mistral/error.h"

namespace mistral {

std::string cuda_unavailable_reason() { return "this build has no CUDA support (nvcc was not found at build time)"; }

std::unique_ptr<Backend> make_cuda_backend(int) { throw UsageError(cuda_unavailable_reason()); }

}  // namespace mistral
