// Helpers shared by the CLI modes: loading a model with the chosen backend, reading prompt files.
#pragma once
#include <memory>
#include <string>

#include "cli.h"
#include "mistral/backend.h"
#include "mistral/generator.h"
#include "mistral/tokenizer.h"
#include "mistral/model.h"

namespace mistral {
namespace cli {

LoadOptions load_options(const ModelArgs& a);
// Model::load with the flags of `a`; with --calib, the model is loaded in full precision and its linear
// weights quantized with GPTQ calibrated on that text (progress on stderr when `progress`).
std::unique_ptr<Model> load_model(const ModelArgs& a, bool progress);
// Picks the backend named by --device ("auto" falls back to the CPU with a note under --verbose).
std::unique_ptr<Backend> make_backend(const ModelArgs& a);
std::string read_prompt_file(const std::string& path);
// The KV cache's element type named by --kv-type.
inline DType kv_dtype(const ModelArgs& a) { return a.kv_type == "f16" ? DType::F16 : DType::F32; }
// Generation defaults for a model: EOS ids from the config, the tokenizer and generation_config.json;
// sampling from generation_config.json, else temperature 0.7 and top-p 0.95 (flags override later).
GenerateParams model_generate_defaults(const Model& model, const Tokenizer& tok, const std::string& model_path);

// The model's defaults with the sampling flags of `a` (GenerateArgs or ChatArgs) on top.
template <typename Args>
GenerateParams generate_params_from_flags(const Model& model, const Tokenizer& tok, const Args& a) {
  GenerateParams gp = model_generate_defaults(model, tok, a.model.model_dir);
  gp.max_tokens = a.max_tokens;
  gp.ignore_eos = a.ignore_eos;
  SamplerParams& sp = gp.sampler;
  if (a.temp_set) sp.temperature = a.temperature;
  if (a.top_p_set) sp.top_p = a.top_p;
  if (a.top_k_set) sp.top_k = a.top_k;
  sp.min_p = a.min_p;
  sp.repeat_penalty = a.repeat_penalty;
  sp.repeat_last_n = a.repeat_last_n;
  return gp;
}
double now_seconds();

}  // namespace cli
}  // namespace mistral
