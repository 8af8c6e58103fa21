// config.json / params.json / generation_config.json parsing and validation.
#include "mistral/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mistral/error.h"

namespace mistral {

using json = nlohmann::json;

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw FileError(path + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

namespace {

json parse_json(const std::string& text, const std::string& source) {
  try {
    json j = json::parse(text);
    if (!j.is_object()) throw ConfigError(source + ": expected a JSON object");
    return j;
  } catch (const json::exception& e) {
    throw ConfigError(source + ": not valid JSON: " + e.what());
  }
}

int64_t req_int(const json& j, const char* key, const std::string& src) {
  if (!j.contains(key)) throw ConfigError(src + ": required key '" + key + "' is missing");
  const json& v = j[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();  // range-check before the cast: converting an out-of-range double is UB
    if (d >= -9.0e18 && d <= 9.0e18 && d == double(int64_t(d))) return int64_t(d);
  }
  throw ConfigError(src + ": '" + key + "' must be an integer");
}

double opt_num(const json& j, const char* key, double def, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number()) throw ConfigError(src + ": '" + key + "' must be a number");
  return j[key].get<double>();
}

int64_t opt_int(const json& j, const char* key, int64_t def, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return def;
  return req_int(j, key, src);
}

std::vector<int> id_list(const json& v, const char* key, const std::string& src) {
  std::vector<int> out;
  if (v.is_number_integer()) out.push_back(v.get<int>());
  else if (v.is_array()) {
    for (const json& e : v) {
      if (!e.is_number_integer()) throw ConfigError(src + ": '" + key + "' must hold integers");
      out.push_back(e.get<int>());
    }
  } else if (!v.is_null()) {
    throw ConfigError(src + ": '" + key + "' must be an integer or a list of integers");
  }
  return out;
}

}  // namespace

int64_t ModelConfig::param_count() const {
  const int64_t D = hidden_size;
  int64_t per_layer = D * q_dim() * 2 + D * kv_dim() * 2 + 3 * D * intermediate_size + 2 * D;
  int64_t n = num_layers * per_layer + vocab_size * D + D;
  if (!tie_word_embeddings) n += vocab_size * D;
  return n;
}

int64_t ModelConfig::kv_cache_bytes(int64_t ctx, int64_t elem_size) const {
  int64_t slots = sliding_window > 0 ? sliding_window : ctx;
  return 2 * num_layers * slots * kv_dim() * elem_size;
}

void ModelConfig::validate() const {
  auto pos = [](int64_t v, const char* name) {
    if (v <= 0) throw ConfigError(std::string("config: '") + name + "' must be positive, got " + std::to_string(v));
  };
  pos(hidden_size, "hidden_size");
  pos(intermediate_size, "intermediate_size");
  pos(num_layers, "num_hidden_layers");
  pos(num_heads, "num_attention_heads");
  pos(num_kv_heads, "num_key_value_heads");
  pos(head_dim, "head_dim");
  pos(vocab_size, "vocab_size");
  pos(max_position_embeddings, "max_position_embeddings");
  if (num_heads % num_kv_heads != 0)
    throw ConfigError("config: num_attention_heads (" + std::to_string(num_heads) +
                      ") is not a multiple of num_key_value_heads (" + std::to_string(num_kv_heads) + ")");
  if (head_dim % 2 != 0) throw ConfigError("config: head_dim must be even for RoPE, got " + std::to_string(head_dim));
  if (sliding_window < 0) throw ConfigError("config: 'sliding_window' must be positive or null");
  if (!(rms_norm_eps > 0)) throw ConfigError("config: 'rms_norm_eps' must be positive");
  if (!(rope_theta > 0)) throw ConfigError("config: 'rope_theta' must be positive");
  // In double: products of the int64 sizes could overflow (UB) and wrap to a small value.
  const double limit = double(int64_t(1) << 40), D = double(hidden_size);
  if (D * double(intermediate_size) > limit || double(vocab_size) * D > limit ||
      double(num_heads) * double(head_dim) * D > limit || double(num_layers) * D * D > limit)
    throw ConfigError("config: sizes are implausibly large");
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << "layout              " << (layout == Layout::HF ? "huggingface" : "mistral-native") << "\n"
     << "hidden_size         " << hidden_size << "\n"
     << "intermediate_size   " << intermediate_size << "\n"
     << "num_hidden_layers   " << num_layers << "\n"
     << "num_attention_heads " << num_heads << "\n"
     << "num_key_value_heads " << num_kv_heads << "\n"
     << "head_dim            " << head_dim << "\n"
     << "vocab_size          " << vocab_size << "\n"
     << "rms_norm_eps        " << rms_norm_eps << "\n"
     << "rope_theta          " << rope_theta << "\n"
     << "max_position        " << max_position_embeddings << "\n"
     << "sliding_window      " << (sliding_window > 0 ? std::to_string(sliding_window) : std::string("none")) << "\n"
     << "tie_word_embeddings " << (tie_word_embeddings ? "true" : "false") << "\n"
     << "torch_dtype         " << dtype_name(torch_dtype) << "\n";
  return os.str();
}

ModelConfig parse_hf_config(const std::string& text, const std::string& src) {
  json j = parse_json(text, src);
  ModelConfig c;
  c.layout = Layout::HF;
  if (j.contains("model_type") && j["model_type"].is_string()) {
    std::string mt = j["model_type"].get<std::string>();
    if (mt != "mistral" && mt != "llama")
      throw ConfigError(src + ": model_type '" + mt + "' is not supported (mistral or llama)");
  }
  c.hidden_size = req_int(j, "hidden_size", src);
  c.intermediate_size = req_int(j, "intermediate_size", src);
  c.num_layers = req_int(j, "num_hidden_layers", src);
  c.num_heads = req_int(j, "num_attention_heads", src);
  c.num_kv_heads = opt_int(j, "num_key_value_heads", c.num_heads, src);
  c.vocab_size = req_int(j, "vocab_size", src);
  if (c.num_heads <= 0) throw ConfigError(src + ": 'num_attention_heads' must be positive");
  c.head_dim = opt_int(j, "head_dim", c.hidden_size / c.num_heads, src);
  if (!j.contains("head_dim") || j["head_dim"].is_null()) {
    if (c.hidden_size % c.num_heads != 0)
      throw ConfigError(src + ": hidden_size is not a multiple of num_attention_heads and head_dim is absent");
  }
  c.rms_norm_eps = opt_num(j, "rms_norm_eps", 1e-5, src);
  c.rope_theta = opt_num(j, "rope_theta", 10000.0, src);
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {  // transformers >= 5 spelling
    const json& rp = j["rope_parameters"];
    if (rp.contains("rope_type") && rp["rope_type"].is_string() && rp["rope_type"].get<std::string>() != "default")
      throw ConfigError(src + ": rope_type '" + rp["rope_type"].get<std::string>() + "' is not supported (default)");
    c.rope_theta = opt_num(rp, "rope_theta", c.rope_theta, src);
  }
  c.max_position_embeddings = opt_int(j, "max_position_embeddings", 32768, src);
  c.sliding_window = opt_int(j, "sliding_window", 0, src);
  if (j.contains("use_sliding_window") && j["use_sliding_window"].is_boolean() && !j["use_sliding_window"].get<bool>())
    c.sliding_window = 0;
  if (j.contains("tie_word_embeddings")) {
    if (!j["tie_word_embeddings"].is_boolean()) throw ConfigError(src + ": 'tie_word_embeddings' must be a boolean");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  if (j.contains("hidden_act") && j["hidden_act"].is_string()) {
    std::string act = j["hidden_act"].get<std::string>();
    if (act != "silu" && act != "swish") throw ConfigError(src + ": hidden_act '" + act + "' is not supported (silu)");
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    throw ConfigError(src + ": rope_scaling is not supported");
  std::string dt = j.contains("torch_dtype") && j["torch_dtype"].is_string() ? j["torch_dtype"].get<std::string>()
                   : j.contains("dtype") && j["dtype"].is_string()           ? j["dtype"].get<std::string>()
                                                                             : "bfloat16";
  if (dt == "float32") c.torch_dtype = DType::F32;
  else if (dt == "float16") c.torch_dtype = DType::F16;
  else if (dt == "bfloat16") c.torch_dtype = DType::BF16;
  else throw ConfigError(src + ": torch_dtype '" + dt + "' is not supported (float32, float16, bfloat16)");
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) c.bos_token_id = j["bos_token_id"].get<int>();
  if (j.contains("eos_token_id")) {
    auto e = id_list(j["eos_token_id"], "eos_token_id", src);
    if (!e.empty()) c.eos_token_ids = e;
  }
  c.validate();
  return c;
}

ModelConfig parse_native_params(const std::string& text, const std::string& src) {
  json j = parse_json(text, src);
  ModelConfig c;
  c.layout = Layout::Native;
  c.hidden_size = req_int(j, "dim", src);
  c.num_layers = req_int(j, "n_layers", src);
  c.num_heads = req_int(j, "n_heads", src);
  c.num_kv_heads = opt_int(j, "n_kv_heads", c.num_heads, src);
  c.intermediate_size = req_int(j, "hidden_dim", src);
  c.vocab_size = req_int(j, "vocab_size", src);
  if (c.num_heads <= 0) throw ConfigError(src + ": 'n_heads' must be positive");
  c.head_dim = opt_int(j, "head_dim", c.hidden_size / c.num_heads, src);
  c.rms_norm_eps = opt_num(j, "norm_eps", 1e-5, src);
  c.rope_theta = opt_num(j, "rope_theta", 10000.0, src);
  c.sliding_window = opt_int(j, "sliding_window", 0, src);
  c.max_position_embeddings = opt_int(j, "max_seq_len", 32768, src);
  c.tie_word_embeddings = false;
  c.torch_dtype = DType::BF16;
  if (j.contains("moe") && !j["moe"].is_null()) throw ConfigError(src + ": mixture-of-experts models are not supported");
  c.validate();
  return c;
}

GenerationDefaults parse_generation_config(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw ConfigError(src + ": not valid JSON: " + e.what());
  }
  GenerationDefaults g;
  if (!j.is_object()) throw ConfigError(src + ": expected a JSON object");
  if (j.contains("temperature") && j["temperature"].is_number()) {
    g.has_temperature = true;
    g.temperature = j["temperature"].get<float>();
  }
  if (j.contains("top_p") && j["top_p"].is_number()) {
    g.has_top_p = true;
    g.top_p = j["top_p"].get<float>();
  }
  if (j.contains("top_k") && j["top_k"].is_number_integer()) {
    g.has_top_k = true;
    g.top_k = j["top_k"].get<int>();
  }
  if (j.contains("do_sample") && j["do_sample"].is_boolean()) {
    g.has_do_sample = true;
    g.do_sample = j["do_sample"].get<bool>();
  }
  if (j.contains("eos_token_id")) g.eos_token_ids = id_list(j["eos_token_id"], "eos_token_id", src);
  return g;
}

}  // namespace mistral
