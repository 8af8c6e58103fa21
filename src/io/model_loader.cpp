// Model directory detection and strict, table-driven weight loading.
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "mistral/error.h"
#include "mistral/model.h"

namespace mistral {

using json = nlohmann::json;

namespace {

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

ModelDirInfo detect_model_dir(const std::string& dir) {
  if (!is_dir(dir)) throw FileError(dir + ": no such model directory");
  if (is_file(dir + "/config.json")) return {Layout::HF, dir + "/config.json"};
  if (is_file(dir + "/params.json")) return {Layout::Native, dir + "/params.json"};
  throw FileError(dir + ": no config.json (Hugging Face) or params.json (Mistral native) in the model directory");
}

ModelConfig load_model_config(const std::string& dir) {
  ModelDirInfo info = detect_model_dir(dir);
  std::string text = read_text_file(info.config_path);
  return info.layout == Layout::HF ? parse_hf_config(text, info.config_path)
                                   : parse_native_params(text, info.config_path);
}

void permute_interleaved_to_half(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t hd, int64_t cols,
                                 size_t esize) {
  const size_t row = size_t(cols) * esize;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const uint8_t* s = src + size_t(h * hd + 2 * i + j) * row;
        uint8_t* d = dst + size_t(h * hd + j * (hd / 2) + i) * row;
        std::copy(s, s + row, d);
      }
}

class ModelLoader {
 public:
  ModelLoader(Model& m, const LoadOptions& opt) : m_(m), opt_(opt) {}

  void open_files() {
    const std::string& dir = m_.dir_;
    std::vector<std::string> files;
    if (m_.cfg_.layout == Layout::Native) {
      if (!is_file(dir + "/consolidated.safetensors"))
        throw FileError(dir + ": params.json found but consolidated.safetensors is missing");
      files.push_back(dir + "/consolidated.safetensors");
    } else if (is_file(dir + "/model.safetensors.index.json")) {
      const std::string ipath = dir + "/model.safetensors.index.json";
      json idx;
      try {
        idx = json::parse(read_text_file(ipath));
      } catch (const json::exception& e) {
        throw FileError(ipath + ": not valid JSON: " + e.what());
      }
      if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
        throw FileError(ipath + ": no weight_map object");
      std::set<std::string> names;
      for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
        if (!it.value().is_string()) throw FileError(ipath + ": weight_map values must be file names");
        std::string f = it.value().get<std::string>();
        if (f.find('/') != std::string::npos || f == "..") throw FileError(ipath + ": bad shard name '" + f + "'");
        index_[it.key()] = f;
        names.insert(f);
      }
      for (const auto& f : names) {
        if (!is_file(dir + "/" + f)) throw FileError(ipath + ": shard '" + f + "' is listed but missing");
        files.push_back(dir + "/" + f);
      }
    } else if (is_file(dir + "/model.safetensors")) {
      files.push_back(dir + "/model.safetensors");
    } else {
      throw FileError(dir + ": no model.safetensors or model.safetensors.index.json");
    }
    for (const auto& f : files) {
      m_.files_.emplace_back(new SafeTensorsFile(f));
      for (const auto& kv : m_.files_.back()->tensors()) {
        if (all_.count(kv.first))
          throw WeightError("tensor '" + kv.first + "' appears in both " + all_[kv.first]->file + " and " + f);
        all_[kv.first] = &kv.second;
      }
    }
    for (const auto& kv : index_) {
      auto it = all_.find(kv.first);
      if (it == all_.end())
        throw WeightError("tensor '" + kv.first + "' is listed in the index (shard " + kv.second + ") but not found");
    }
  }

  // Takes a tensor by name, checking shape; records it as used.
  Weight take(const std::string& name, std::vector<int64_t> shape, bool permute_heads = false, int64_t n_heads = 0) {
    auto it = all_.find(name);
    if (it == all_.end()) throw WeightError("missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")");
    const TensorView& tv = *it->second;
    if (tv.shape != shape)
      throw WeightError("tensor '" + name + "': expected shape " + shape_str(shape) + ", got " + tv.shape_str());
    used_.insert(name);
    Weight w;
    w.dtype = tv.dtype;
    w.rows = shape.size() == 2 ? shape[0] : 1;
    w.cols = shape.back();
    w.data = tv.data;
    if (permute_heads) {
      m_.owned_.emplace_back(tv.nbytes);
      permute_interleaved_to_half(static_cast<const uint8_t*>(tv.data), m_.owned_.back().data(), n_heads,
                                  m_.cfg_.head_dim, w.cols, dtype_size(w.dtype));
      w.data = m_.owned_.back().data();
    }
    return cast(w);
  }

  Weight cast(const Weight& w) {
    DType target = w.dtype;
    switch (opt_.cast) {
      case LoadOptions::Cast::Auto: return w;
      case LoadOptions::Cast::F32: target = DType::F32; break;
      case LoadOptions::Cast::F16: target = DType::F16; break;
      case LoadOptions::Cast::BF16: target = DType::BF16; break;
    }
    if (target == w.dtype) return w;
    const size_t n = size_t(w.rows * w.cols);
    std::vector<float> tmp(n);
    to_f32(w.dtype, w.data, tmp.data(), n);
    m_.owned_.emplace_back(n * dtype_size(target));
    uint8_t* dst = m_.owned_.back().data();
    if (target == DType::F32) {
      std::memcpy(dst, tmp.data(), n * 4);
    } else {
      uint16_t* d = reinterpret_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = target == DType::F16 ? f32_to_f16(tmp[i]) : f32_to_bf16(tmp[i]);
    }
    Weight out = w;
    out.dtype = target;
    out.data = dst;
    return out;
  }

  void load() {
    const ModelConfig& c = m_.cfg_;
    const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
    const int64_t QD = c.q_dim(), KD = c.kv_dim();
    ModelWeights& w = m_.w_;
    const bool hf = c.layout == Layout::HF;
    w.embed = take(hf ? "model.embed_tokens.weight" : "tok_embeddings.weight", {V, D});
    for (int64_t l = 0; l < c.num_layers; ++l) {
      LayerWeights lw;
      const std::string p = (hf ? "model.layers." : "layers.") + std::to_string(l) + ".";
      if (hf) {
        lw.attn_norm = take(p + "input_layernorm.weight", {D});
        lw.wq = take(p + "self_attn.q_proj.weight", {QD, D});
        lw.wk = take(p + "self_attn.k_proj.weight", {KD, D});
        lw.wv = take(p + "self_attn.v_proj.weight", {KD, D});
        lw.wo = take(p + "self_attn.o_proj.weight", {D, QD});
        lw.ffn_norm = take(p + "post_attention_layernorm.weight", {D});
        lw.w_gate = take(p + "mlp.gate_proj.weight", {F, D});
        lw.w_up = take(p + "mlp.up_proj.weight", {F, D});
        lw.w_down = take(p + "mlp.down_proj.weight", {D, F});
        used_.insert(p + "self_attn.rotary_emb.inv_freq");  // old checkpoints carry this buffer; it is recomputed
      } else {
        lw.attn_norm = take(p + "attention_norm.weight", {D});
        lw.wq = take(p + "attention.wq.weight", {QD, D}, true, c.num_heads);
        lw.wk = take(p + "attention.wk.weight", {KD, D}, true, c.num_kv_heads);
        lw.wv = take(p + "attention.wv.weight", {KD, D});
        lw.wo = take(p + "attention.wo.weight", {D, QD});
        lw.ffn_norm = take(p + "ffn_norm.weight", {D});
        lw.w_gate = take(p + "feed_forward.w1.weight", {F, D});
        lw.w_up = take(p + "feed_forward.w3.weight", {F, D});
        lw.w_down = take(p + "feed_forward.w2.weight", {D, F});
      }
      w.layers.push_back(lw);
    }
    w.norm = take(hf ? "model.norm.weight" : "norm.weight", {D});
    const std::string head = hf ? "lm_head.weight" : "output.weight";
    if (c.tie_word_embeddings) {
      w.lm_head = w.embed;
      if (all_.count(head)) used_.insert(head);  // some tied checkpoints store a copy; it is not used
    } else {
      w.lm_head = take(head, {V, D});
    }
    for (const auto& kv : all_)
      if (!used_.count(kv.first))
        throw WeightError("unexpected tensor '" + kv.first + "' " + kv.second->shape_str() + " in " + kv.second->file +
                          " (not part of a " + std::to_string(c.num_layers) + "-layer model)");
  }

 private:
  Model& m_;
  LoadOptions opt_;
  std::map<std::string, const TensorView*> all_;
  std::map<std::string, std::string> index_;
  std::set<std::string> used_;
};

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opt) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->cfg_ = load_model_config(dir);
  ModelLoader ld(*m, opt);
  ld.open_files();
  ld.load();
  return m;
}

std::unique_ptr<Model> Model::random(const ModelConfig& cfg, DType dtype, uint64_t seed) {
  cfg.validate();
  std::unique_ptr<Model> m(new Model());
  m->cfg_ = cfg;
  m->dir_ = "<random>";
  std::mt19937_64 rng(seed);
  auto make = [&](int64_t rows, int64_t cols, float scale, float offset) {
    const size_t n = size_t(rows * cols);
    m->owned_.emplace_back(n * dtype_size(dtype));
    uint8_t* d = m->owned_.back().data();
    // Cheap uniform noise: the values only need to be finite and not degenerate.
    std::uniform_real_distribution<float> u(-scale, scale);
    for (size_t i = 0; i < n; ++i) {
      float v = offset + u(rng);
      if (dtype == DType::F32) std::memcpy(d + 4 * i, &v, 4);
      else {
        uint16_t h = dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
        std::memcpy(d + 2 * i, &h, 2);
      }
    }
    Weight w;
    w.dtype = dtype;
    w.rows = rows;
    w.cols = cols;
    w.data = d;
    return w;
  };
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, V = cfg.vocab_size;
  const float s = 1.0f / std::sqrt(float(D));
  m->w_.embed = make(V, D, 1.0f, 0.0f);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm = make(1, D, 0.1f, 1.0f);
    lw.wq = make(cfg.q_dim(), D, s, 0);
    lw.wk = make(cfg.kv_dim(), D, s, 0);
    lw.wv = make(cfg.kv_dim(), D, s, 0);
    lw.wo = make(D, cfg.q_dim(), s, 0);
    lw.ffn_norm = make(1, D, 0.1f, 1.0f);
    lw.w_gate = make(F, D, s, 0);
    lw.w_up = make(F, D, s, 0);
    lw.w_down = make(D, F, 1.0f / std::sqrt(float(F)), 0);
    m->w_.layers.push_back(lw);
  }
  m->w_.norm = make(1, D, 0.1f, 1.0f);
  m->w_.lm_head = cfg.tie_word_embeddings ? m->w_.embed : make(V, D, s, 0);
  return m;
}

size_t Model::weight_bytes() const {
  size_t n = w_.embed.nbytes() + w_.norm.nbytes();
  if (w_.lm_head.data != w_.embed.data) n += w_.lm_head.nbytes();
  for (const auto& l : w_.layers)
    n += l.attn_norm.nbytes() + l.wq.nbytes() + l.wk.nbytes() + l.wv.nbytes() + l.wo.nbytes() + l.ffn_norm.nbytes() +
         l.w_gate.nbytes() + l.w_up.nbytes() + l.w_down.nbytes();
  return n;
}

}  // namespace mistral
