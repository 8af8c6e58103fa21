// Backend selection and small utilities for the CLI modes.
#include "common.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "mistral/config.h"
#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/gptq.h"

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

std::unique_ptr<Model> load_model(const ModelArgs& a, bool progress) {
  LoadOptions o = load_options(a);
  if (a.calib.empty()) return Model::load(a.model_dir, o);
  if (o.quant == Quant::None) throw UsageError("--calib needs --quant int8, nf4 or int4");
  if (o.quant_lm_head) throw UsageError("--calib quantizes the layers only; drop --quant-lm-head (or --calib)");
  const std::string text = read_text_file(a.calib);
  GptqOptions g;
  g.quant = o.quant;
  g.threads = a.threads;
  if (progress) g.progress = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  o.quant = Quant::None;
  std::unique_ptr<Model> m = Model::load(a.model_dir, o);
  std::vector<int32_t> ids = load_model_tokenizer(a.model_dir)->encode(text, true);
  if (int64_t(ids.size()) > a.calib_tokens) ids.resize(size_t(a.calib_tokens));
  gptq_quantize_model(*m, ids, g);
  return m;
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
    const std::string why = cuda_unavailable_reason();
    if (why.empty()) return make_cuda_backend(0);
    if (a.verbose) std::fprintf(stderr, "device: cpu (%s)\n", why.c_str());
  }
  return make_cpu_backend(a.threads);
}

std::string read_prompt_file(const std::string& path) { return read_text_file(path); }

GenerateParams model_generate_defaults(const Model& model, const Tokenizer& tok, const std::string& model_path) {
  GenerateParams gp;
  auto add_eos = [&](int e) {
    if (e >= 0 && std::find(gp.eos_ids.begin(), gp.eos_ids.end(), e) == gp.eos_ids.end()) gp.eos_ids.push_back(e);
  };
  gp.eos_ids = model.config().eos_token_ids;
  add_eos(tok.eos_id());
  SamplerParams& sp = gp.sampler;
  sp.temperature = 0.7f;
  sp.top_p = 0.95f;
  const std::string gc_path = model_path + "/generation_config.json";
  struct stat st;
  if (::stat(gc_path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    GenerationDefaults g = parse_generation_config(read_text_file(gc_path), gc_path);
    if (g.has_temperature) sp.temperature = g.temperature;
    if (g.has_top_p) sp.top_p = g.top_p;
    if (g.has_top_k) sp.top_k = g.top_k;
    if (g.has_do_sample && !g.do_sample) sp.temperature = 0.0f;
    for (int e : g.eos_token_ids) add_eos(e);
  }
  return gp;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace cli
}  // namespace mistral
