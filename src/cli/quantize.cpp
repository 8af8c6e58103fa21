// `mistral-run quantize -m DIR -o OUT_DIR --quant nf4`: quantize a checkpoint once and save it, so
// that later runs load the quantized weights directly (no requantizing).
#include <cstdio>

#include "common.h"
#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/quant.h"

namespace mistral {
namespace cli {

int run_quantize(const QuantizeArgs& a) {
  LoadOptions o = load_options(a.model);
  if (o.quant == Quant::None) throw UsageError("quantize needs --quant int8, nf4 or int4");
  if (is_gguf_file(a.model.model_dir))
    throw UsageError("quantize saves checkpoints of safetensors directories; load a GGUF file with --quant instead "
                     "(mistral-run -m " + a.model.model_dir + " --quant " + quant_name(o.quant) + " ...)");
  const double t0 = now_seconds();
  std::unique_ptr<Model> m = load_model(a.model, true);
  const double t1 = now_seconds();
  save_checkpoint(*m, a.out_dir);
  const double t2 = now_seconds();
  const size_t full = estimate_weight_bytes(m->config(), m->weights().embed.dtype, Quant::None, false);
  std::printf("wrote %s: %s%s%s, %.1f MB of weights (%.2fx smaller than %s); quantized in %.1f s, written in %.1f s\n",
              a.out_dir.c_str(), quant_name(m->quant()), a.model.calib.empty() ? "" : " (GPTQ)", is_quantized(m->weights().lm_head.dtype) ? " (lm_head too)" : "",
              double(m->weight_bytes()) / 1e6, double(full) / double(m->weight_bytes()),
              dtype_name(m->weights().embed.dtype), t1 - t0, t2 - t1);
  return 0;
}

}  // namespace cli
}  // namespace mistral
