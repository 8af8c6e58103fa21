// The command-line modes. main.cpp parses arguments into these structs; each mode lives in its own file.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mistral {
namespace cli {

struct ModelArgs {
  std::string model_dir;
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // auto | f32 | f16 | bf16
  int threads = 0;              // 0 = all cores
  int chunk = 512;
  int64_t ctx = 0;              // 0 = max_position_embeddings
  bool verbose = false;
  bool no_graph = false;        // CUDA: run decode steps eagerly instead of replaying a recorded graph
  std::string kv_type = "f32";  // f32 | f16: what the KV cache holds
  std::string quant = "none";   // none | int8 | nf4 | int4 (linear weights, at load)
  bool quant_lm_head = false;   // also quantize lm_head
  std::string calib;            // with quant: GPTQ calibrated on this text file (quantize, perplexity)
  int64_t calib_tokens = 8192;  // calibration tokens used at most (the start of the text)
};

struct GenerateArgs {
  ModelArgs model;
  std::string prompt, prompt_file;
  bool prompt_set = false, prompt_file_set = false;
  int max_tokens = 256;
  float temperature = 0.7f, top_p = 0.95f, min_p = 0.0f, repeat_penalty = 1.0f;
  int top_k = 0, repeat_last_n = 64;
  bool temp_set = false, top_p_set = false, top_k_set = false;
  int64_t seed = -1;  // -1 = random
  bool ignore_eos = false, json = false, no_bos = false;
  std::vector<std::string> stop;
  bool chat = false;                 // --chat: the prompt is one user turn of the chat format
  std::string system, chat_format;   // --system, --chat-format (with --chat)
};

// `mistral-run chat` (src/cli/chat.cpp).
struct ChatArgs {
  ModelArgs model;
  std::string system, chat_format;
  int max_tokens = 512;
  float temperature = 0.7f, top_p = 0.95f, min_p = 0.0f, repeat_penalty = 1.0f;
  int top_k = 0, repeat_last_n = 64;
  bool temp_set = false, top_p_set = false, top_k_set = false;
  int64_t seed = -1;  // -1 = random
  bool ignore_eos = false, no_color = false, no_history = false;
};

struct TokenizeArgs {
  std::string model_dir, prompt, prompt_file;
  bool prompt_set = false, prompt_file_set = false, no_bos = false;
  std::string messages_file, chat_format;  // --messages CONV.json: encode a conversation (src/chat)
};

struct DetokenizeArgs {
  std::string model_dir, ids;
};

struct BenchArgs {
  ModelArgs model;  // model_dir empty: a synthetic model
  int64_t hidden = 2048, intermediate = 5632, layers = 8, heads = 16, kv_heads = 4, vocab = 32000, window = 4096;
  std::string synth_dtype = "bf16";
  int prompt_tokens = 128, gen_tokens = 32, reps = 1, batch = 1;
  bool json = false, skip_bandwidth = false;
  std::string quant_list;  // --quant-list int8,nf4,int4: each against one baseline
  float temperature = 0, top_p = 1;  // decode sampling (temperature 0: greedy)
  int top_k = 0;
};

struct BatchArgs {
  ModelArgs model;
  std::string input, output;
  bool resume = false;
  int batch_size = 8;
  int64_t kv_budget_mb = 4096;
  int max_tokens = 256;
  float temperature = 0.7f, top_p = 0.95f;
  int top_k = 0;
  bool temp_set = false, top_p_set = false, top_k_set = false;
  int64_t seed = -1;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  bool chat = false;         // wrap every text prompt as one user turn
  std::string chat_format;   // "" = from the tokenizer / chat_template
  std::string system;        // system prompt for --chat text prompts
};

struct QuantizeArgs {
  ModelArgs model;      // model_dir, quant, quant_lm_head, dtype (of the full-precision tensors), threads
  std::string out_dir;
};

struct PerplexityArgs {
  ModelArgs model;      // ctx: the window length (default min(max_position_embeddings, 2048))
  std::string text_file;
  int64_t stride = 0;   // 0 = ctx / 2
  bool kl_ref = false;  // also run the full-precision model: KL divergence and top-1 agreement
  bool json = false, no_bos = false;
};

int run_generate(const GenerateArgs& a);
int run_chat(const ChatArgs& a);
int run_batch(const BatchArgs& a);
int run_info(const ModelArgs& a);
int run_tokenize(const TokenizeArgs& a);
int run_detokenize(const DetokenizeArgs& a);
int run_bench(const BenchArgs& a);
int run_quantize(const QuantizeArgs& a);
int run_perplexity(const PerplexityArgs& a);

}  // namespace cli
}  // namespace mistral
