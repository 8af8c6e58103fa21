// `mistral-run info`: the parsed config, parameter count, and the memory weights and a full KV cache need.
#include <cstdio>

#include "common.h"
#include "mistral/config.h"
#include "mistral/error.h"
#include "mistral/quant.h"

namespace mistral {
namespace cli {

int run_info(const ModelArgs& a) {
  ModelConfig c = load_model_config(a.model_dir);
  DType wt = c.torch_dtype;
  if (a.dtype == "f32") wt = DType::F32;
  else if (a.dtype == "f16") wt = DType::F16;
  else if (a.dtype == "bf16") wt = DType::BF16;
  else if (a.dtype != "auto") throw UsageError("--dtype must be auto, f32, f16 or bf16");
  Quant q = Quant::None;
  if (!parse_quant(a.quant, &q)) throw UsageError("--quant must be none, int8, nf4 or int4");
  if (a.quant_lm_head && q == Quant::None) throw UsageError("--quant-lm-head needs --quant int8, nf4 or int4");
  const int64_t ctx = a.ctx > 0 ? a.ctx : c.max_position_embeddings;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf("%s", c.summary().c_str());
  std::printf("parameters          %lld (%.3f B)\n", (long long)c.param_count(), double(c.param_count()) / 1e9);
  const size_t bytes = estimate_weight_bytes(c, wt, q, a.quant_lm_head);
  std::printf("weights             %.3f GB = %.3f GiB (%zu bytes)", double(bytes) / 1e9, double(bytes) / gib, bytes);
  if (q == Quant::None) {
    std::printf(" as %s\n", dtype_name(wt));
  } else {
    const DType qt = quant_dtype(q);
    const char* scheme = q == Quant::Int8  ? "int8, one fp32 scale per output channel"
                         : q == Quant::NF4 ? "NF4, blocks of 64 with an fp16 absmax"
                                           : "int4, groups of 128 with an fp16 scale";
    std::printf(": linear layers%s %s (%s); embeddings, norms%s %s\n", a.quant_lm_head ? " and lm_head" : "",
                dtype_name(qt), scheme, a.quant_lm_head || c.tie_word_embeddings ? "" : ", lm_head", dtype_name(wt));
    const size_t full = estimate_weight_bytes(c, wt, Quant::None, false);
    std::printf("                    %.2fx smaller than %s (%.3f GB)\n", double(full) / double(bytes), dtype_name(wt),
                double(full) / 1e9);
  }
  std::printf("kv cache            %.3f GiB fp32 / %.3f GiB fp16 for %lld positions (%s)\n",
              double(c.kv_cache_bytes(ctx, 4)) / gib, double(c.kv_cache_bytes(ctx, 2)) / gib, (long long)ctx,
              c.sliding_window > 0 ? "rolling window cache" : "full cache");
  return 0;
}

}  // namespace cli
}  // namespace mistral
