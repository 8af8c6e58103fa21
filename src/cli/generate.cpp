// One-shot generation: `mistral-run -m DIR -p TEXT`, streamed to stdout or printed as one JSON object.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "common.h"
#include "mistral/chat.h"
#include "mistral/config.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/generator.h"
#include "mistral/tokenizer.h"

namespace mistral {
namespace cli {

namespace {

std::atomic<bool> g_interrupted{false};
void on_sigint(int) { g_interrupted = true; }

std::string mib(double bytes) {
  char buf[32];
  if (bytes >= 1024.0 * 1048576.0) std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1048576.0));
  else if (bytes >= 1048576.0)
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  else
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024.0);
  return buf;
}

}  // namespace

int run_generate(const GenerateArgs& a) {
  if (a.prompt_set == a.prompt_file_set) throw UsageError("give exactly one of -p/--prompt and -f/--file");
  const std::string prompt = a.prompt_set ? a.prompt : read_prompt_file(a.prompt_file);
  const double t_load0 = now_seconds();
  std::unique_ptr<Model> model = load_model(a.model, true);
  std::unique_ptr<Tokenizer> tok = load_model_tokenizer(a.model.model_dir);
  if (tok->vocab_size() > model->config().vocab_size)
    throw ConfigError("tokenizer has " + std::to_string(tok->vocab_size()) + " pieces but the model's vocab_size is " +
                      std::to_string(model->config().vocab_size));
  std::unique_ptr<Backend> backend = make_backend(a.model);
  SessionOptions so;
  so.chunk = a.model.chunk;
  so.graphs = !a.model.no_graph;
  so.kv_dtype = kv_dtype(a.model);
  so.context = a.model.ctx;

  GenerateParams gp = generate_params_from_flags(*model, *tok, a);
  gp.stop = a.stop;
  SamplerParams& sp = gp.sampler;
  sp.seed = a.seed >= 0 ? uint64_t(a.seed) : std::random_device{}();

  // --chat: the prompt (with --system) is one user turn of the model's chat format (src/chat).
  std::unique_ptr<ChatEncoder> chat;
  if (!a.chat && (!a.system.empty() || !a.chat_format.empty()))
    throw UsageError("--system and --chat-format go with --chat");
  if (a.chat) {
    if (a.no_bos) throw UsageError("--no-bos does not go with --chat (the chat format decides)");
    chat = make_chat_encoder(a.model.model_dir, *tok, a.chat_format);
    for (int32_t id : chat->stop_ids()) gp.eos_ids.push_back(id);
    for (const auto& s : chat->stop_strings()) gp.stop.push_back(s);
  }
  Conversation conv;
  if (!a.system.empty()) conv.push_back({"system", a.system});
  conv.push_back({"user", prompt});
  const std::vector<int32_t> prompt_ids = chat ? chat->encode(conv, true) : tok->encode(prompt, !a.no_bos);
  if (prompt_ids.empty()) throw UsageError("the prompt is empty (and --no-bos leaves no token to start from)");
  // The cache holds what this run can reach: the prompt and max_tokens more (at most the context), not
  // the model's whole context (32k positions of Mistral-7B v0.3 would be 8.6 GB).
  Session session(*model, *backend, so, int64_t(prompt_ids.size()) + std::max(0, gp.max_tokens));
  const double load_s = now_seconds() - t_load0;
  if (a.model.verbose) {
    std::fprintf(stderr, "model: %s (%s, %.1f M params, %s weights)\n", a.model.model_dir.c_str(),
                 model->config().layout == Layout::HF ? "huggingface" : "mistral-native",
                 double(model->config().param_count()) / 1e6, dtype_name(model->matmul_dtype()));
    std::fprintf(stderr, "tokenizer: %s\n", tok->source().c_str());
    const int threads = cpu_backend_threads(*backend);
    if (threads > 0)
      std::fprintf(stderr, "backend: %s, %d threads; kv cache %s %s (%lld positions)\n", backend->name().c_str(),
                   threads, mib(double(session.cache_bytes())).c_str(), a.model.kv_type.c_str(),
                   (long long)session.cache_positions());
    else
      std::fprintf(stderr, "backend: %s; kv cache %s %s (%lld positions)\n", backend->name().c_str(),
                   mib(double(session.cache_bytes())).c_str(), a.model.kv_type.c_str(),
                   (long long)session.cache_positions());
    DeviceMemoryInfo dm;
    if (backend->device_memory(&dm)) {  // the plan for this run: weights placed, cache made, activations to come
      const int64_t chunk = std::min<int64_t>(int64_t(prompt_ids.size()), session.chunk());
      std::fprintf(stderr,
                   "device memory: weights %s, kv cache %s, activations %s (chunks of up to %lld tokens); "
                   "%s free of %s\n",
                   mib(double(dm.weights)).c_str(), mib(double(session.cache_bytes())).c_str(),
                   mib(double(session.scratch_bytes(int64_t(prompt_ids.size())))).c_str(), (long long)chunk,
                   mib(double(dm.free)).c_str(), mib(double(dm.total)).c_str());
    }
    std::fprintf(stderr, "sampling: temp %g top-k %d top-p %g min-p %g repeat-penalty %g seed %llu\n",
                 double(sp.temperature), sp.top_k, double(sp.top_p), double(sp.min_p), double(sp.repeat_penalty),
                 (unsigned long long)sp.seed);
    std::fprintf(stderr, "load: %.3f s; prompt: %zu tokens\n", load_s, prompt_ids.size());
  }

  g_interrupted = false;
  auto old = std::signal(SIGINT, on_sigint);
  std::function<void(const std::string&)> stream;
  bool answer_start = chat != nullptr;  // --chat: print the answer as the conversation stores it
  if (!a.json)
    stream = [&](const std::string& s) {
      const std::string t = answer_start && !s.empty() ? chat->answer_content(s) : s;
      answer_start = answer_start && s.empty();
      std::fwrite(t.data(), 1, t.size(), stdout);
      std::fflush(stdout);
    };
  GenerateResult r = generate(session, *tok, prompt_ids, gp, stream, [] { return g_interrupted.load(); });
  if (chat) r.text = chat->answer_content(r.text);
  std::signal(SIGINT, old);

  const double prefill_tps = r.prefill_s > 0 ? double(prompt_ids.size()) / r.prefill_s : 0;
  const double decode_tps = r.decode_s > 0 && r.decoded_tokens > 0 ? double(r.decoded_tokens) / r.decode_s : 0;
  if (a.json) {
    nlohmann::json j;
    j["prompt_ids"] = r.prompt_ids;
    j["ids"] = r.ids;
    j["text"] = r.text;
    j["finish_reason"] = r.finish_reason;
    j["timings"] = {{"load_s", load_s},
                    {"prompt_tokens", prompt_ids.size()},
                    {"prefill_s", r.prefill_s},
                    {"prefill_tok_s", prefill_tps},
                    {"completion_tokens", r.ids.size()},
                    {"decode_s", r.decode_s},
                    {"decode_tok_s", decode_tps}};
    const std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::printf("%s\n", s.c_str());
  } else {
    std::printf("\n");
  }
  std::fflush(stdout);
  // A generation cut short by the context, not by -n: say so (the text alone would look finished).
  if (r.finish_reason == "length" && int64_t(r.ids.size()) < int64_t(gp.max_tokens))
    std::fprintf(stderr, "mistral-run: the context is full after %zu of %d tokens (%lld positions; raise --ctx)\n",
                 r.ids.size(), gp.max_tokens, (long long)session.cache_positions());
  if (a.model.verbose) {
    std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tok/s); decode: %lld tokens in %.3f s (%.1f tok/s); %s\n",
                 prompt_ids.size(), r.prefill_s, prefill_tps, (long long)r.decoded_tokens, r.decode_s, decode_tps,
                 r.finish_reason.c_str());
    DeviceMemoryInfo dm;
    if (backend->device_memory(&dm))  // what the run held at its end
      std::fprintf(stderr,
                   "device memory after the run: weights %s, kv cache and activations %s, backend scratch %s; "
                   "%s free of %s\n",
                   mib(double(dm.weights)).c_str(), mib(double(dm.buffers)).c_str(), mib(double(dm.internal)).c_str(),
                   mib(double(dm.free)).c_str(), mib(double(dm.total)).c_str());
  }
  return g_interrupted ? 130 : 0;
}

}  // namespace cli
}  // namespace mistral
