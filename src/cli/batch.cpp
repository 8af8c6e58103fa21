// `mistral-run batch`: a prompt file in (.txt, .jsonl, OpenAI batch .jsonl), one JSON line per request
// out, written and flushed as each finishes; continuous batching; --resume skips finished ids.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "common.h"
#include "mistral/batch.h"
#include "mistral/chat.h"
#include "mistral/config.h"
#include "mistral/error.h"
#include "mistral/gguf.h"

namespace mistral {
namespace cli {

using json = nlohmann::json;

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

// One input line, parsed.
struct Item {
  json id;                 // echoed in the output
  std::string prompt;      // text prompt (when no messages)
  json messages;           // chat messages, or null
  json overrides;          // per-request sampling fields
  std::string error;       // parse error: reported as an error line
};

std::string unescape_txt(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'n' || s[i + 1] == '\\')) {
      out.push_back(s[i + 1] == 'n' ? '\n' : '\\');
      ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::vector<Item> read_items(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw FileError(path + ": cannot open the input file");
  const bool txt = ends_with(path, ".txt");
  const bool jsonl = ends_with(path, ".jsonl") || ends_with(path, ".json");
  if (!txt && !jsonl) throw UsageError(path + ": input must be .txt (one prompt per line) or .jsonl");
  std::vector<Item> items;
  std::string line;
  size_t lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are not requests
    Item it;
    it.id = lineno;
    if (txt) {
      it.prompt = unescape_txt(line);
      items.push_back(std::move(it));
      continue;
    }
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      it.error = "line " + std::to_string(lineno) + " is not valid JSON";
      items.push_back(std::move(it));
      continue;
    }
    if (!j.is_object()) {
      it.error = "line " + std::to_string(lineno) + " is not a JSON object";
      items.push_back(std::move(it));
      continue;
    }
    const json* body = &j;
    if (j.contains("custom_id")) {  // OpenAI batch format
      it.id = j["custom_id"];
      if (!j.contains("body") || !j["body"].is_object()) {
        it.error = "OpenAI batch line without a 'body' object";
        items.push_back(std::move(it));
        continue;
      }
      body = &j["body"];
    } else if (j.contains("id")) {
      it.id = j["id"];
    }
    if (body->contains("messages")) {
      it.messages = (*body)["messages"];
      if (!it.messages.is_array()) it.error = "'messages' must be a list";
    } else if (body->contains("prompt") && (*body)["prompt"].is_string()) {
      it.prompt = (*body)["prompt"].get<std::string>();
    } else {
      it.error = "needs a string 'prompt' or a 'messages' list";
    }
    it.overrides = json::object();
    for (const char* k : {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop", "min_p"})
      if (body->contains(k)) it.overrides[k] = (*body)[k];
    items.push_back(std::move(it));
  }
  return items;
}

// Reads OUT for --resume: ids already finished. A partial or corrupt tail is cut off so that its
// request is redone and the file keeps exactly one line per id.
std::set<std::string> read_done_ids(const std::string& path) {
  std::set<std::string> done;
  std::ifstream f(path, std::ios::binary);
  if (!f) return done;
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t pos = 0, good_end = 0;
  while (pos < data.size()) {
    const size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) break;  // half-written last line
    try {
      json j = json::parse(data.begin() + long(pos), data.begin() + long(nl));
      if (!j.is_object() || !j.contains("id")) break;
      done.insert(j["id"].dump());
    } catch (const json::exception&) {
      break;
    }
    pos = nl + 1;
    good_end = pos;
  }
  if (good_end < data.size()) {
    if (::truncate(path.c_str(), off_t(good_end)) != 0) throw FileError(path + ": cannot truncate the partial last line");
    std::fprintf(stderr, "resume: dropped a partial last line of %s\n", path.c_str());
  }
  return done;
}

}  // namespace

int run_batch(const BatchArgs& a) {
  std::vector<Item> items = read_items(a.input);
  std::set<std::string> done_ids;
  if (a.resume) done_ids = read_done_ids(a.output);

  std::unique_ptr<Model> model = load_model(a.model, true);
  std::unique_ptr<Tokenizer> tok = load_model_tokenizer(a.model.model_dir);
  std::unique_ptr<Backend> backend = make_backend(a.model);
  SessionOptions so;
  so.chunk = a.model.chunk;
  so.graphs = !a.model.no_graph;
  so.kv_dtype = kv_dtype(a.model);
  so.context = a.model.ctx;
  ForwardPass fp(*model, *backend, so);

  GenerateParams base = model_generate_defaults(*model, *tok, a.model.model_dir);  // flags override below
  base.max_tokens = a.max_tokens;
  base.ignore_eos = a.ignore_eos;
  base.stop = a.stop;
  if (a.temp_set) base.sampler.temperature = a.temperature;
  if (a.top_p_set) base.sampler.top_p = a.top_p;
  if (a.top_k_set) base.sampler.top_k = a.top_k;
  const uint64_t base_seed = a.seed >= 0 ? uint64_t(a.seed) : std::random_device{}();

  // Chat encoding for "messages" lines (and for every prompt with --chat), set up on first use so
  // that plain-prompt files work with models that have no chat format.
  std::unique_ptr<ChatEncoder> chat;
  std::string chat_error;
  bool chat_tried = false;
  ChatTemplateInfo chat_info;
  auto encoder = [&]() -> const ChatEncoder& {
    if (!chat_tried) {
      chat_tried = true;
      try {
        chat_info = read_chat_template_info(a.model.model_dir);
        chat.reset(new ChatEncoder(*tok, choose_chat_format(a.chat_format, *tok, chat_info), chat_info));
      } catch (const Error& e) {
        chat_error = e.what();
      }
    }
    if (!chat) throw UsageError(chat_error);
    return *chat;
  };

  FILE* out = std::fopen(a.output.c_str(), a.resume ? "ab" : "wb");
  if (!out) throw FileError(a.output + ": cannot open for writing");
  auto write_line = [&](const json& j) {
    const std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    std::fwrite(s.data(), 1, s.size(), out);
    std::fflush(out);  // each finished result is on disk (in the page cache) before the next
  };

  // Requests to run; parse errors are written at once.
  size_t skipped = 0, failed = 0, finished = 0;
  std::vector<size_t> todo;
  for (size_t i = 0; i < items.size(); ++i) {
    if (done_ids.count(items[i].id.dump())) {
      ++skipped;
      continue;
    }
    todo.push_back(i);
  }
  const size_t total = todo.size();

  BatchOptions bo;
  bo.max_batch = a.batch_size;
  bo.kv_budget_bytes = a.kv_budget_mb * 1024 * 1024;
  bo.prefill_tokens = a.model.chunk;
  BatchScheduler sched(fp, *tok, bo);
  if (a.model.verbose)
    std::fprintf(stderr, "kv cache %s: %.1f KiB a position; budget %s\n", a.model.kv_type.c_str(),
                 double(fp.cache_bytes(1)) / 1024.0,
                 bo.kv_budget_bytes > 0 ? (std::to_string(a.kv_budget_mb) + " MiB").c_str() : "none");

  g_stop = false;
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);
  const bool tty = ::isatty(2);
  const double t0 = now_seconds();
  int64_t tokens_out = 0, tokens_in = 0;
  auto progress = [&]() {
    if (!tty) return;
    const double dt = now_seconds() - t0;
    const double rate = dt > 0 ? double(finished) / dt : 0;
    const double eta = rate > 0 ? double(total - finished) / rate : 0;
    std::fprintf(stderr, "\r[%zu/%zu] %.1f tok/s, ETA %.0f s   ", finished, total,
                 dt > 0 ? double(tokens_out) / dt : 0.0, eta);
    std::fflush(stderr);
  };

  size_t cursor = 0;
  auto next = [&](BatchRequest* r) -> bool {
    while (cursor < todo.size()) {
      const size_t i = todo[cursor++];
      Item& it = items[i];
      std::string err = it.error;
      std::vector<int32_t> ids;
      GenerateParams gp = base;
      gp.sampler.seed = base_seed + i;
      if (err.empty()) {
        try {
          if (!it.messages.is_null() || a.chat) {
            const ChatEncoder& enc = encoder();
            Conversation conv = it.messages.is_null()
                                    ? Conversation{ChatMessage{"user", it.prompt}}
                                    : parse_conversation_json(it.messages.dump(), "messages of id " + it.id.dump());
            if (it.messages.is_null() && !a.system.empty()) conv.insert(conv.begin(), ChatMessage{"system", a.system});
            ids = enc.encode(conv, true);
            for (int32_t e : enc.stop_ids())
              if (std::find(gp.eos_ids.begin(), gp.eos_ids.end(), e) == gp.eos_ids.end()) gp.eos_ids.push_back(e);
            for (const auto& st : enc.stop_strings()) gp.stop.push_back(st);
          } else {
            ids = tok->encode(it.prompt, true);
          }
          const json& o = it.overrides;
          auto num = [&](const char* k) -> const json* {
            if (!o.contains(k)) return nullptr;
            if (!o[k].is_number()) throw UsageError(std::string("'") + k + "' must be a number");
            return &o[k];
          };
          if (auto v = num("max_tokens")) gp.max_tokens = v->get<int>();
          if (auto v = num("max_completion_tokens")) gp.max_tokens = v->get<int>();
          if (auto v = num("temperature")) gp.sampler.temperature = v->get<float>();
          if (auto v = num("top_p")) gp.sampler.top_p = v->get<float>();
          if (auto v = num("top_k")) gp.sampler.top_k = v->get<int>();
          if (auto v = num("min_p")) gp.sampler.min_p = v->get<float>();
          if (auto v = num("seed")) gp.sampler.seed = v->get<uint64_t>();
          if (o.contains("stop")) {
            if (o["stop"].is_string()) gp.stop = {o["stop"].get<std::string>()};
            else if (o["stop"].is_array()) {
              gp.stop.clear();
              for (const json& s : o["stop"]) {
                if (!s.is_string()) throw UsageError("'stop' must hold strings");
                gp.stop.push_back(s.get<std::string>());
              }
            } else if (!o["stop"].is_null()) {
              throw UsageError("'stop' must be a string or a list of strings");
            }
          }
          if (gp.max_tokens < 0) throw UsageError("'max_tokens' must not be negative");
          if (gp.sampler.temperature < 0) throw UsageError("'temperature' must not be negative");
        } catch (const Error& e) {
          err = e.what();
        } catch (const json::exception& e) {
          err = std::string("bad field: ") + e.what();
        }
      }
      if (!err.empty()) {
        write_line({{"id", it.id}, {"error", err}});
        ++failed, ++finished;
        progress();
        continue;
      }
      r->index = i;
      r->prompt_ids = std::move(ids);
      r->params = gp;
      return true;
    }
    return false;
  };
  auto done = [&](BatchResult&& r) {
    const Item& it = items[r.index];
    if (!r.error.empty()) {
      write_line({{"id", it.id}, {"error", r.error}});
      ++failed;
    } else {
      write_line({{"id", it.id},
                  {"text", r.gen.text},
                  {"prompt_tokens", r.gen.prompt_ids.size()},
                  {"completion_tokens", r.gen.ids.size()},
                  {"finish_reason", r.gen.finish_reason}});
      tokens_out += int64_t(r.gen.ids.size());
      tokens_in += int64_t(r.gen.prompt_ids.size());
    }
    ++finished;
    progress();
  };
  sched.run(next, done, [] { return g_stop.load(); });
  std::fclose(out);
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);

  const double dt = now_seconds() - t0;
  if (tty) std::fprintf(stderr, "\n");
  std::fprintf(stderr,
               "batch: %zu/%zu requests done (%zu failed, %zu skipped as already done)%s; %lld prompt + %lld "
               "completion tokens in %.2f s: %.1f tok/s total, %.1f tok/s output; up to %lld sequences at once\n",
               finished, total, failed, skipped, g_stop ? ", interrupted" : "", (long long)tokens_in,
               (long long)tokens_out, dt, dt > 0 ? double(tokens_in + tokens_out) / dt : 0.0,
               dt > 0 ? double(tokens_out) / dt : 0.0, (long long)sched.stats().max_concurrent);
  return g_stop ? 130 : 0;
}

}  // namespace cli
}  // namespace mistral
