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
// Picks the backend named by --device ("auto" falls back to the CPU with a note under --verbose).
std::unique_ptr<Backend> make_backend(const ModelArgs& a);
std::string read_prompt_file(const std::string& path);
// Generation defaults for a model: EOS ids from the config, the tokenizer and generation_config.json;
// sampling from generation_config.json, else temperature 0.7 and top-p 0.95 (flags override later).
GenerateParams model_generate_defaults(const Model& model, const Tokenizer& tok, const std::string& model_path);
double now_seconds();

}  // namespace cli
}  // namespace mistral
