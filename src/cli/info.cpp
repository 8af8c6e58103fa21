// `mistral-run info`: the parsed config, parameter count, and the memory weights and a full KV cache need.
#include <cstdio>

#include "common.h"
#include "mistral/config.h"
#include "mistral/error.h"

namespace mistral {
namespace cli {

int run_info(const ModelArgs& a) {
  ModelConfig c = load_model_config(a.model_dir);
  DType wt = c.torch_dtype;
  if (a.dtype == "f32") wt = DType::F32;
  else if (a.dtype == "f16") wt = DType::F16;
  else if (a.dtype == "bf16") wt = DType::BF16;
  else if (a.dtype != "auto") throw UsageError("--dtype must be auto, f32, f16 or bf16");
  const int64_t ctx = a.ctx > 0 ? a.ctx : c.max_position_embeddings;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf("%s", c.summary().c_str());
  std::printf("parameters          %lld (%.3f B)\n", (long long)c.param_count(), double(c.param_count()) / 1e9);
  std::printf("weights             %.3f GiB as %s\n", double(c.param_count()) * double(dtype_size(wt)) / gib,
              dtype_name(wt));
  std::printf("kv cache            %.3f GiB fp32 / %.3f GiB fp16 for %lld positions (%s)\n",
              double(c.kv_cache_bytes(ctx, 4)) / gib, double(c.kv_cache_bytes(ctx, 2)) / gib, (long long)ctx,
              c.sliding_window > 0 ? "rolling window cache" : "full cache");
  return 0;
}

}  // namespace cli
}  // namespace mistral
