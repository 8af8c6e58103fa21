// mistral-run: argument parsing only; every mode is implemented in the library and src/cli/.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include "cli/cli.h"
#include "mistral/error.h"

using namespace mistral::cli;

namespace {

// Error messages can quote file contents (tensor names, dtypes); keep them to one line on stderr.
std::string one_line(const char* msg) {
  std::string s;
  for (const char* p = msg; *p; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      s += buf;
    } else {
      s += char(c);
    }
  }
  return s;
}

// GPTQ calibration (quantize, perplexity).
void add_calib_args(CLI::App* app, ModelArgs& m) {
  app->add_option("--calib", m.calib, "With --quant: GPTQ calibrated on this text file (codes chosen to keep each layer's "
                                      "output on it close to full precision); runs on the CPU at load, minutes for big models");
  app->add_option("--calib-tokens", m.calib_tokens, "Calibration tokens used at most (the start of the text)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 31));
}

void add_model_args(CLI::App* app, ModelArgs& m, bool runtime) {
  app->add_option("-m,--model", m.model_dir, "Model directory (config.json + safetensors, or params.json + "
                                             "consolidated.safetensors) or GGUF file")
      ->required();
  app->add_option("--dtype", m.dtype, "Weight dtype after loading: auto keeps the stored one")
      ->check(CLI::IsMember({"auto", "f32", "f16", "bf16"}));
  app->add_option("--ctx", m.ctx,
                  "Context size without a sliding window (default: max_position_embeddings; chat: at most 8192)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 31));
  app->add_option("--quant", m.quant, "Quantize the linear weights at load: none, int8 (per-channel), nf4 (blocks of "
                                      "64) or int4 (groups of 128); embeddings and norms stay full precision")
      ->check(CLI::IsMember({"none", "int8", "nf4", "int4"}));
  app->add_flag("--quant-lm-head", m.quant_lm_head, "With --quant: quantize lm_head too");
  if (!runtime) return;
  app->add_option("--device", m.device, "auto, cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app->add_option("-t,--threads", m.threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1024));
  app->add_option("--chunk", m.chunk, "Prefill chunk size in tokens")->check(CLI::Range(1, 1 << 20));
  app->add_flag("-v,--verbose", m.verbose, "Print load time, prompt tokens and speeds on stderr");
  app->add_flag("--no-graph", m.no_graph, "CUDA: run each decode step eagerly instead of replaying a recorded graph");
  app->add_option("--kv-type", m.kv_type,
                  "What the KV cache holds: f32, or f16 (half the memory; keys and values rounded to fp16)")
      ->check(CLI::IsMember({"f32", "f16"}));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mistral-run: run Mistral-family language models on the CPU (and CUDA GPUs)\n\n"
               "  mistral-run -m MODEL_DIR -p \"prompt\"          generate a completion (streamed)\n"
               "  mistral-run info -m MODEL_DIR                  show the config and memory needs\n"
               "  mistral-run chat -m MODEL_DIR                  chat with an instruct model (REPL)\n"
               "  mistral-run tokenize -m MODEL_DIR -p TEXT      print token ids as JSON\n"
               "  mistral-run bench [-m MODEL_DIR]               measure prefill and decode speed\n"
               "  mistral-run quantize -m DIR -o OUT --quant nf4 write a quantized checkpoint\n"
               "  mistral-run perplexity -m DIR -f TEXT          perplexity (and KL vs full precision)"};
  app.require_subcommand(0, 1);

  GenerateArgs g;
  add_model_args(&app, g.model, true);
  add_calib_args(&app, g.model);
  app.get_option("--model")->required(false);
  auto* op = app.add_option("-p,--prompt", g.prompt, "Prompt text");
  auto* of = app.add_option("-f,--file", g.prompt_file, "Read the prompt from a file (bytes as they are)");
  op->excludes(of);
  app.add_option("-n,--max-tokens", g.max_tokens, "Maximum tokens to generate")->check(CLI::Range(0, 1 << 30));
  auto* ot = app.add_option("--temp", g.temperature, "Temperature; 0 = greedy (default: generation_config.json or 0.7)")
                 ->check(CLI::Range(0.0f, 100.0f));
  auto* ok = app.add_option("--top-k", g.top_k, "Keep the k most likely tokens; 0 = off")->check(CLI::Range(0, 1 << 30));
  auto* otp = app.add_option("--top-p", g.top_p, "Nucleus sampling mass (default: generation_config.json or 0.95)")
                  ->check(CLI::Range(0.0f, 1.0f));
  app.add_option("--min-p", g.min_p, "Drop tokens below min-p times the top probability; 0 = off")
      ->check(CLI::Range(0.0f, 1.0f));
  app.add_option("--repeat-penalty", g.repeat_penalty, "Repetition penalty (transformers' rule); 1 = off")
      ->check(CLI::Range(0.0f, 100.0f));
  app.add_option("--repeat-last-n", g.repeat_last_n, "Previous tokens the penalty looks at; -1 = all")
      ->check(CLI::Range(-1, 1 << 30));
  app.add_option("--seed", g.seed, "Random seed (default: random); the same seed gives the same output")
      ->check(CLI::Range(int64_t(-1), INT64_MAX));
  app.add_flag("--ignore-eos", g.ignore_eos, "Keep generating after the end-of-sequence token");
  app.add_option("--stop", g.stop, "Stop before this string (repeatable)")->take_all()->expected(1)->allow_extra_args(false);
  app.add_flag("--json", g.json, "Print one JSON object (prompt_ids, ids, text, finish_reason, timings) at the end");
  app.add_flag("--no-bos", g.no_bos, "Do not prepend the BOS token");
  app.add_flag("--chat", g.chat, "Wrap the prompt as one user turn of the model's chat format");
  app.add_option("--system", g.system, "With --chat: the system prompt");
  app.add_option("--chat-format", g.chat_format, "With --chat: v1, v2, v3, v7, chatml or zephyr (default: detected)");

  ChatArgs ch;
  CLI::App* chat_cmd = app.add_subcommand("chat", "Interactive chat (a REPL; one message per line when stdin is a pipe)");
  add_model_args(chat_cmd, ch.model, true);
  add_calib_args(chat_cmd, ch.model);
  chat_cmd->add_option("--system", ch.system, "System prompt");
  chat_cmd->add_option("--chat-format", ch.chat_format,
                       "v1, v2, v3, v7, chatml or zephyr (default: from the tokenizer and chat_template)");
  chat_cmd->add_option("-n,--max-tokens", ch.max_tokens, "Maximum tokens per answer")->check(CLI::Range(1, 1 << 30));
  auto* cht = chat_cmd->add_option("--temp", ch.temperature, "Temperature; 0 = greedy")->check(CLI::Range(0.0f, 100.0f));
  auto* chtk = chat_cmd->add_option("--top-k", ch.top_k, "Keep the k most likely tokens; 0 = off")
                   ->check(CLI::Range(0, 1 << 30));
  auto* chtp = chat_cmd->add_option("--top-p", ch.top_p, "Nucleus sampling mass")->check(CLI::Range(0.0f, 1.0f));
  chat_cmd->add_option("--min-p", ch.min_p, "Drop tokens below min-p times the top probability")
      ->check(CLI::Range(0.0f, 1.0f));
  chat_cmd->add_option("--repeat-penalty", ch.repeat_penalty, "Repetition penalty; 1 = off")
      ->check(CLI::Range(0.0f, 100.0f));
  chat_cmd->add_option("--repeat-last-n", ch.repeat_last_n, "Previous tokens the penalty looks at; -1 = all")
      ->check(CLI::Range(-1, 1 << 30));
  chat_cmd->add_option("--seed", ch.seed, "Random seed (turn i uses seed + i)")->check(CLI::Range(int64_t(-1), INT64_MAX));
  chat_cmd->add_flag("--ignore-eos", ch.ignore_eos, "Keep generating after the end-of-answer token");
  chat_cmd->add_flag("--no-color", ch.no_color, "No colours (also: NO_COLOR set, TERM=dumb, or not a terminal)");
  chat_cmd->add_flag("--no-history", ch.no_history, "Do not read or write ~/.mistral-run_history");

  ModelArgs info;
  CLI::App* info_cmd = app.add_subcommand("info", "Show the parsed config, parameter count and memory needs");
  add_model_args(info_cmd, info, false);

  TokenizeArgs tk;
  CLI::App* tok_cmd = app.add_subcommand("tokenize", "Print {\"ids\": [...], \"pieces\": [...]} for a text");
  tok_cmd->add_option("-m,--model", tk.model_dir, "Model or tokenizer directory")->required();
  auto* tp = tok_cmd->add_option("-p,--prompt", tk.prompt, "Text");
  auto* tf = tok_cmd->add_option("-f,--file", tk.prompt_file, "Read the text from a file (bytes as they are)");
  tp->excludes(tf);
  auto* tno_bos = tok_cmd->add_flag("--no-bos", tk.no_bos, "Do not prepend the BOS token");
  auto* tmsg = tok_cmd->add_option("--messages", tk.messages_file,
                                   "Encode a conversation (JSON list of {\"role\", \"content\"}) with the chat format; "
                                   "for generation when the last message is the user's");
  tmsg->excludes(tp)->excludes(tf)->excludes(tno_bos);
  tok_cmd->add_option("--chat-format", tk.chat_format, "With --messages: v1, v2, v3, v7, chatml or zephyr "
                                                       "(default: from the tokenizer and chat_template)");

  DetokenizeArgs dt;
  CLI::App* detok_cmd = app.add_subcommand("detokenize", "Print the text of comma-separated token ids");
  detok_cmd->add_option("-m,--model", dt.model_dir, "Model or tokenizer directory")->required();
  detok_cmd->add_option("--ids", dt.ids, "Token ids, e.g. 1,2,3")->required();

  BenchArgs b;
  CLI::App* bench_cmd = app.add_subcommand("bench", "Measure prefill and decode speed against memory bandwidth");
  add_model_args(bench_cmd, b.model, true);
  bench_cmd->get_option("--model")->required(false);
  bench_cmd->add_option("--hidden", b.hidden, "Synthetic model: hidden size")->check(CLI::Range(8, 65536));
  bench_cmd->add_option("--intermediate", b.intermediate, "Synthetic model: MLP size")->check(CLI::Range(8, 262144));
  bench_cmd->add_option("--layers", b.layers, "Synthetic model: layers")->check(CLI::Range(1, 512));
  bench_cmd->add_option("--heads", b.heads, "Synthetic model: attention heads")->check(CLI::Range(1, 1024));
  bench_cmd->add_option("--kv-heads", b.kv_heads, "Synthetic model: KV heads")->check(CLI::Range(1, 1024));
  bench_cmd->add_option("--vocab", b.vocab, "Synthetic model: vocabulary")->check(CLI::Range(8, 1 << 20));
  bench_cmd->add_option("--window", b.window, "Synthetic model: sliding window (0 = none)")->check(CLI::Range(0, 1 << 24));
  bench_cmd->add_option("--synthetic-dtype", b.synth_dtype, "Synthetic model: weight dtype")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  bench_cmd->add_option("--prompt-tokens", b.prompt_tokens, "Prefill length")->check(CLI::Range(1, 1 << 20));
  bench_cmd->add_option("--gen-tokens", b.gen_tokens, "Decode steps")->check(CLI::Range(1, 1 << 20));
  bench_cmd->add_option("--batch", b.batch, "Also decode this many sequences together and compare with batch 1")
      ->check(CLI::Range(1, 4096));
  bench_cmd->add_option("--reps", b.reps, "Repetitions (best is reported)")->check(CLI::Range(1, 1000));
  bench_cmd->add_option("--quant-list", b.quant_list,
                        "Measure each of these quantizations (comma-separated: int8,nf4,int4) against one "
                        "full-precision baseline built once; one report (JSON line) each");
  bench_cmd->add_option("--temp", b.temperature, "Decode by sampling at this temperature (default 0: greedy)")
      ->check(CLI::Range(0.0, 100.0));
  bench_cmd->add_option("--top-k", b.top_k, "With --temp: top-k (0 = off)")->check(CLI::Range(0, 1 << 24));
  bench_cmd->add_option("--top-p", b.top_p, "With --temp: top-p (1 = off)")->check(CLI::Range(0.0, 1.0));
  bench_cmd->add_flag("--json", b.json, "Print one JSON object (one per line with --quant-list)");
  bench_cmd->add_flag("--skip-bandwidth", b.skip_bandwidth, "Do not measure memory bandwidth (saves 512 MiB of RSS)");

  QuantizeArgs qa;
  CLI::App* quant_cmd = app.add_subcommand("quantize", "Quantize a checkpoint and save it (loads without requantizing)");
  quant_cmd->add_option("-m,--model", qa.model.model_dir, "Model directory (full precision)")->required();
  quant_cmd->add_option("-o,--output", qa.out_dir, "Output directory (created; config and tokenizer files copied)")
      ->required();
  quant_cmd->add_option("--quant", qa.model.quant, "int8, nf4 or int4")
      ->required()
      ->check(CLI::IsMember({"int8", "nf4", "int4"}));
  quant_cmd->add_flag("--quant-lm-head", qa.model.quant_lm_head, "Quantize lm_head too");
  quant_cmd->add_option("--dtype", qa.model.dtype, "dtype of the tensors left in full precision: auto keeps the stored one")
      ->check(CLI::IsMember({"auto", "f32", "f16", "bf16"}));
  quant_cmd->add_option("-t,--threads", qa.model.threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  add_calib_args(quant_cmd, qa.model);

  PerplexityArgs pa;
  CLI::App* ppl_cmd = app.add_subcommand(
      "perplexity", "Perplexity of a text with a strided window (transformers' recipe); --kl-ref adds the KL\n"
                    "divergence of the (quantized) model's next-token distributions from the full-precision model's");
  add_model_args(ppl_cmd, pa.model, true);
  ppl_cmd->add_option("-f,--file", pa.text_file, "Text file (UTF-8, tokenized as one sequence)")->required();
  ppl_cmd->add_option("--stride", pa.stride, "Window stride in tokens (default: ctx / 2)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 31));
  ppl_cmd->add_flag("--kl-ref", pa.kl_ref, "Also run the full-precision model: mean KL(full || this) and top-1 agreement");
  ppl_cmd->add_flag("--json", pa.json, "Print one JSON object");
  ppl_cmd->add_flag("--no-bos", pa.no_bos, "Do not prepend the BOS token");
  add_calib_args(ppl_cmd, pa.model);

  BatchArgs ba;
  CLI::App* batch_cmd = app.add_subcommand(
      "batch",
      "Process a prompt file with continuous batching; one JSON line per request in OUT.\n"
      "Input: .txt (one prompt per line; \\n is a newline, \\\\ a backslash; blank lines skipped) or .jsonl\n"
      "lines {\"id\", \"prompt\"} or {\"id\", \"messages\"} with optional max_tokens, temperature, top_p,\n"
      "top_k, seed, stop; or OpenAI batch lines {\"custom_id\", \"body\": {...}}. Ids default to line numbers.\n"
      "Output lines: {\"id\", \"text\", \"prompt_tokens\", \"completion_tokens\", \"finish_reason\"} or {\"id\", \"error\"}.");
  add_model_args(batch_cmd, ba.model, true);
  add_calib_args(batch_cmd, ba.model);
  batch_cmd->add_option("-i,--input", ba.input, "Prompt file (.txt or .jsonl)")->required();
  batch_cmd->add_option("-o,--output", ba.output, "Results file (.jsonl), written as requests finish")->required();
  batch_cmd->add_flag("--resume", ba.resume, "Skip ids already in the output file (a partial last line is redone)");
  batch_cmd->add_option("--batch-size", ba.batch_size, "Concurrent sequences at most")->check(CLI::Range(1, 4096));
  batch_cmd
      ->add_option("--kv-budget-mb", ba.kv_budget_mb,
                   "KV-cache memory for all sequences (MiB; --kv-type f16 fits twice the positions)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  batch_cmd->add_option("-n,--max-tokens", ba.max_tokens, "Default maximum tokens per request")
      ->check(CLI::Range(0, 1 << 30));
  auto* bt = batch_cmd->add_option("--temp", ba.temperature, "Default temperature; 0 = greedy")->check(CLI::Range(0.0f, 100.0f));
  auto* btp = batch_cmd->add_option("--top-p", ba.top_p, "Default top-p")->check(CLI::Range(0.0f, 1.0f));
  auto* btk = batch_cmd->add_option("--top-k", ba.top_k, "Default top-k; 0 = off")->check(CLI::Range(0, 1 << 30));
  batch_cmd->add_option("--seed", ba.seed, "Base seed; request i uses seed + i unless it gives its own")
      ->check(CLI::Range(int64_t(-1), INT64_MAX));
  batch_cmd->add_flag("--ignore-eos", ba.ignore_eos, "Keep generating after the end-of-sequence token");
  batch_cmd->add_flag("--chat", ba.chat, "Encode every text prompt as one user turn of the model's chat format");
  batch_cmd->add_option("--chat-format", ba.chat_format, "Chat format for --chat and 'messages' lines (default: detected)");
  batch_cmd->add_option("--system", ba.system, "System prompt for --chat text prompts");
  batch_cmd->add_option("--stop", ba.stop, "Default stop string (repeatable)")->take_all()->expected(1)->allow_extra_args(false);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*info_cmd) return run_info(info);
    if (*tok_cmd) {
      tk.prompt_set = tp->count() > 0;
      tk.prompt_file_set = tf->count() > 0;
      return run_tokenize(tk);
    }
    if (*detok_cmd) return run_detokenize(dt);
    if (*chat_cmd) {
      ch.temp_set = cht->count() > 0;
      ch.top_p_set = chtp->count() > 0;
      ch.top_k_set = chtk->count() > 0;
      return run_chat(ch);
    }
    if (*bench_cmd) return run_bench(b);
    if (*quant_cmd) return run_quantize(qa);
    if (*ppl_cmd) return run_perplexity(pa);
    if (*batch_cmd) {
      ba.temp_set = bt->count() > 0;
      ba.top_p_set = btp->count() > 0;
      ba.top_k_set = btk->count() > 0;
      return run_batch(ba);
    }
    if (g.model.model_dir.empty()) {
      std::fprintf(stderr, "mistral-run: error: -m/--model is required (see --help)\n");
      return 2;
    }
    g.prompt_set = op->count() > 0;
    g.prompt_file_set = of->count() > 0;
    g.temp_set = ot->count() > 0;
    g.top_p_set = otp->count() > 0;
    g.top_k_set = ok->count() > 0;
    return run_generate(g);
  } catch (const mistral::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "mistral-run: error: %s\n", one_line(e.what()).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mistral-run: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mistral-run: error: %s\n", one_line(e.what()).c_str());
    return 1;
  }
}
