// `mistral-run perplexity -m DIR -f TEXT [--ctx N] [--stride S] [--quant ...] [--kl-ref]`.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common.h"
#include "mistral/error.h"
#include "mistral/perplexity.h"
#include "mistral/quant.h"
#include "mistral/gguf.h"
#include "mistral/tokenizer.h"

namespace mistral {
namespace cli {

int run_perplexity(const PerplexityArgs& a) {
  const std::string text = read_prompt_file(a.text_file);
  const LoadOptions lo = load_options(a.model);
  std::unique_ptr<Model> model = load_model(a.model, true);
  std::unique_ptr<Model> ref;
  if (a.kl_ref) {
    LoadOptions full = lo;
    full.quant = Quant::None;
    full.quant_lm_head = false;
    ref = Model::load(a.model.model_dir, full);
    if (ref->quant() != Quant::None)
      throw UsageError("--kl-ref needs the full-precision checkpoint: " + a.model.model_dir + " is already quantized (" +
                       quant_name(ref->quant()) + ")");
  }
  std::unique_ptr<Tokenizer> tok = load_model_tokenizer(a.model.model_dir);
  const std::vector<int32_t> ids = tok->encode(text, !a.no_bos);
  std::unique_ptr<Backend> be = make_backend(a.model);
  PerplexityOptions po;
  po.ctx = a.model.ctx;
  po.stride = a.stride;
  po.chunk = a.model.chunk;
  po.kv_dtype = kv_dtype(a.model);
  const double t0 = now_seconds();
  auto progress = [&](int64_t done, int64_t total) {
    if (a.model.verbose) std::fprintf(stderr, "\r%lld / %lld tokens", (long long)done, (long long)total);
  };
  const PerplexityResult r = evaluate_perplexity(*model, *be, ids, po, ref.get(), progress);
  if (a.model.verbose) std::fprintf(stderr, "\n");
  const double secs = now_seconds() - t0;
  const std::string what = model->quant() == Quant::None
                         ? dtype_name(model->matmul_dtype())
                         : quant_name(model->quant()) +
                               std::string(is_quantized(model->weights().lm_head.dtype) ? " (lm_head too)" : "");
  if (a.json) {
    nlohmann::json j = {{"file", a.text_file}, {"tokens", ids.size()}, {"scored", r.tokens},        {"ctx", r.ctx},
                        {"stride", r.stride},  {"windows", r.windows}, {"weights", what},           {"nll", r.nll},
                        {"ppl", r.ppl},        {"seconds", secs},      {"kv_type", a.model.kv_type}};
    if (r.has_ref) {
      j["ref_weights"] = dtype_name(ref->matmul_dtype());
      j["ref_nll"] = r.ref_nll;
      j["ref_ppl"] = r.ref_ppl;
      j["ppl_ratio"] = r.ppl / r.ref_ppl;
      j["kl_mean"] = r.kl;
      j["kl_max"] = r.kl_max;
      j["top1_agreement"] = double(r.top1_agree) / double(r.tokens);
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("text         %s: %zu tokens, window %lld, stride %lld, %lld window%s, %lld tokens scored (%.1f s)\n",
              a.text_file.c_str(), ids.size(), (long long)r.ctx, (long long)r.stride, (long long)r.windows, r.windows == 1 ? "" : "s",
              (long long)r.tokens, secs);
  std::printf("perplexity   %.4f (mean NLL %.5f nats/token), weights %s%s\n", r.ppl, r.nll, what.c_str(),
              po.kv_dtype == DType::F16 ? ", kv cache f16" : "");
  if (r.has_ref) {
    std::printf("reference    %.4f (mean NLL %.5f), weights %s: perplexity ratio %.4f\n", r.ref_ppl, r.ref_nll,
                dtype_name(ref->matmul_dtype()), r.ppl / r.ref_ppl);
    std::printf("kl           mean KL(reference || model) %.6f nats/token (max %.6f); top-1 agreement %.2f%%\n", r.kl,
                r.kl_max, 100.0 * double(r.top1_agree) / double(r.tokens));
  }
  return 0;
}

}  // namespace cli
}  // namespace mistral
