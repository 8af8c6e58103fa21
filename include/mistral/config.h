// The model's configuration, read once from config.json (Hugging Face) or params.json (Mistral native)
// and validated; derived sizes are computed here and nowhere else.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mistral/dtype.h"

namespace mistral {

enum class Layout { HF, Native };

struct ModelConfig {
  int64_t hidden_size = 0;         // D
  int64_t intermediate_size = 0;   // F
  int64_t num_layers = 0;          // L
  int64_t num_heads = 0;           // Hq
  int64_t num_kv_heads = 0;        // Hkv (Hq % Hkv == 0)
  int64_t head_dim = 0;            // hd (explicit, or D / Hq)
  int64_t vocab_size = 0;          // V
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 32768;
  int64_t sliding_window = 0;      // 0 = full attention
  bool tie_word_embeddings = false;
  DType torch_dtype = DType::BF16; // dtype the checkpoint declares
  int bos_token_id = 1;
  std::vector<int> eos_token_ids = {2};
  Layout layout = Layout::HF;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t param_count() const;  // all weights, lm_head counted once when tied
  // Bytes of a KV cache holding ctx positions per layer with elem_size bytes per value.
  int64_t kv_cache_bytes(int64_t ctx, int64_t elem_size) const;
  void validate() const;        // throws ConfigError on inconsistent or non-positive sizes
  std::string summary() const;  // multi-line human-readable description
};

// Parses a Hugging Face config.json text. `source` names it in error messages.
ModelConfig parse_hf_config(const std::string& text, const std::string& source);
// Parses a Mistral-native params.json text.
ModelConfig parse_native_params(const std::string& text, const std::string& source);

// Sampling defaults from generation_config.json, when present.
struct GenerationDefaults {
  bool has_temperature = false, has_top_p = false, has_top_k = false, has_do_sample = false;
  float temperature = 0.7f, top_p = 0.95f;
  int top_k = 0;
  bool do_sample = true;
  std::vector<int> eos_token_ids;
};
GenerationDefaults parse_generation_config(const std::string& text, const std::string& source);

std::string read_text_file(const std::string& path);  // throws FileError

}  // namespace mistral
