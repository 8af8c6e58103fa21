// Backend selection and small utilities for the CLI modes.
#include "common.h"

#include <chrono>
#include <cstdio>

#include "mistral/config.h"
#include "mistral/error.h"

namespace mistral {
namespace cli {

LoadOptions load_options(const ModelArgs& a) {
  LoadOptions o;
  if (a.dtype == "auto") o.cast = LoadOptions::Cast::Auto;
  else if (a.dtype == "f32") o.cast = LoadOptions::Cast::F32;
  else if (a.dtype == "f16") o.cast = LoadOptions::Cast::F16;
  else if (a.dtype == "bf16") o.cast = LoadOptions::Cast::BF16;
  else throw UsageError("--dtype must be auto, f32, f16 or bf16");
  if (!parse_quant(a.quant, &o.quant)) throw UsageError("--quant must be none, int8, nf4 or int4");
  o.quant_lm_head = a.quant_lm_head;
  o.threads = a.threads;
  return o;
}

std::unique_ptr<Backend> make_backend(const ModelArgs& a) {
  if (a.device != "auto" && a.device != "cpu" && a.device != "cuda")
    throw UsageError("--device must be auto, cpu or cuda");
  if (a.device == "cuda") {
    const std::string why = cuda_unavailable_reason();
    if (!why.empty()) throw UsageError("--device cuda: " + why);
    return make_cuda_backend(0);
  }
  if (a.device == "auto") {
    std::string why = cuda_unavailable_reason();
    if (why.empty() && a.quant != "none") why = "the CUDA backend does not run --quant weights yet";
    if (why.empty()) return make_cuda_backend(0);
    if (a.verbose) std::fprintf(stderr, "device: cpu (%s)\n", why.c_str());
  }
  return make_cpu_backend(a.threads);
}

std::string read_prompt_file(const std::string& path) { return read_text_file(path); }

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace cli
}  // namespace mistral
