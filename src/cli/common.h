// Helpers shared by the CLI modes: loading a model with the chosen backend, reading prompt files.
#pragma once
#include <memory>
#include <string>

#include "cli.h"
#include "mistral/backend.h"
#include "mistral/model.h"

namespace mistral {
namespace cli {

LoadOptions load_options(const ModelArgs& a);
// Picks the backend named by --device ("auto" falls back to the CPU with a note under --verbose).
std::unique_ptr<Backend> make_backend(const ModelArgs& a);
std::string read_prompt_file(const std::string& path);
double now_seconds();

}  // namespace cli
}  // namespace mistral
