// Model directory detection and strict, table-driven weight loading.
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/model.h"
#include "mistral/quant.h"
#include "mistral/safetensors.h"
#include "mistral/threadpool.h"

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
  if (is_gguf_file(dir)) return gguf_model_config(GgufFile(dir));
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

void permute_half_to_interleaved(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t hd, int64_t cols,
                                 size_t esize) {
  const size_t row = size_t(cols) * esize;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const uint8_t* s = src + size_t(h * hd + j * (hd / 2) + i) * row;
        uint8_t* d = dst + size_t(h * hd + 2 * i + j) * row;
        std::copy(s, s + row, d);
      }
}

std::string quant_scales_name(const std::string& weight_name) {
  const std::string suffix = ".weight";
  if (weight_name.size() > suffix.size() &&
      weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) == 0)
    return weight_name.substr(0, weight_name.size() - suffix.size()) + ".scales";
  return weight_name + ".scales";
}

namespace {

// How the loader treats a tensor: norms and embeddings stay in full precision; linear weights are
// quantized with --quant; lm_head only with --quant-lm-head.
enum class Role { Plain, Linear, LmHead };
enum class Dim { One, D, F, QD, KD };

// The per-layer tensors, in checkpoint order: HF name, native name, shape, role, and whether native
// checkpoints store the rows in interleaved RoPE order (permuted at load; 1 = query heads, 2 = kv heads).
struct LayerTensor {
  const char* hf;
  const char* native;
  Weight LayerWeights::*field;
  Dim rows, cols;
  Role role;
  int permute;
};
const LayerTensor kLayerTensors[] = {
    {"input_layernorm.weight", "attention_norm.weight", &LayerWeights::attn_norm, Dim::One, Dim::D, Role::Plain, 0},
    {"self_attn.q_proj.weight", "attention.wq.weight", &LayerWeights::wq, Dim::QD, Dim::D, Role::Linear, 1},
    {"self_attn.k_proj.weight", "attention.wk.weight", &LayerWeights::wk, Dim::KD, Dim::D, Role::Linear, 2},
    {"self_attn.v_proj.weight", "attention.wv.weight", &LayerWeights::wv, Dim::KD, Dim::D, Role::Linear, 0},
    {"self_attn.o_proj.weight", "attention.wo.weight", &LayerWeights::wo, Dim::D, Dim::QD, Role::Linear, 0},
    {"post_attention_layernorm.weight", "ffn_norm.weight", &LayerWeights::ffn_norm, Dim::One, Dim::D, Role::Plain, 0},
    {"mlp.gate_proj.weight", "feed_forward.w1.weight", &LayerWeights::w_gate, Dim::F, Dim::D, Role::Linear, 0},
    {"mlp.up_proj.weight", "feed_forward.w3.weight", &LayerWeights::w_up, Dim::F, Dim::D, Role::Linear, 0},
    {"mlp.down_proj.weight", "feed_forward.w2.weight", &LayerWeights::w_down, Dim::D, Dim::F, Role::Linear, 0},
};

int64_t dim_of(const ModelConfig& c, Dim d) {
  switch (d) {
    case Dim::One: return 1;
    case Dim::D: return c.hidden_size;
    case Dim::F: return c.intermediate_size;
    case Dim::QD: return c.q_dim();
    case Dim::KD: return c.kv_dim();
  }
  return 0;
}

}  // namespace

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
    // A checkpoint written by `quantize` holds quantized linear weights; every shard must agree.
    for (size_t i = 0; i < m_.files_.size(); ++i) {
      const auto& md = m_.files_[i]->metadata();
      Quant q = Quant::None;
      if (md.count(kQuantFormatKey)) parse_quant(md.at(kQuantMetaKey), &q);  // validated by the reader
      if (i > 0 && q != file_quant_)
        throw WeightError(m_.files_[i]->path() + ": quantization " + quant_name(q) + " differs from " +
                          m_.files_[0]->path() + " (" + quant_name(file_quant_) + ")");
      file_quant_ = q;
    }
    quant_ = opt_.quant;
    if (file_quant_ != Quant::None) {
      if (opt_.quant != Quant::None && opt_.quant != file_quant_)
        throw UsageError(m_.dir_ + " is already quantized (" + quant_name(file_quant_) + "); --quant " +
                         quant_name(opt_.quant) + " cannot requantize it (use --quant none or " +
                         quant_name(file_quant_) + ", or quantize the full-precision checkpoint)");
      quant_ = file_quant_;
    }
    if (opt_.quant_lm_head && quant_ == Quant::None)
      throw UsageError("--quant-lm-head needs --quant int8, nf4 or int4 (or a quantized checkpoint)");
  }

  // Takes a tensor by name, checking shape; records it as used. Linear weights (and lm_head with
  // quant_lm_head) are quantized when a quant is chosen, or read as stored quantized data; n_heads > 0
  // permutes native interleaved RoPE rows to rotate-half order (quantization is per row, so quantizing
  // before or after the permutation gives the same bytes).
  Weight take(const std::string& name, const std::vector<int64_t>& shape, Role role, int64_t n_heads = 0) {
    auto it = all_.find(name);
    if (it == all_.end()) throw WeightError("missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")");
    const TensorView& tv = *it->second;
    Weight w;
    w.rows = shape.size() == 2 ? shape[0] : 1;
    w.cols = shape.back();
    if (tv.dtype == DType::I8 || tv.dtype == DType::U8) return take_quantized(name, tv, w.rows, w.cols, role, n_heads);
    if (tv.shape != shape)
      throw WeightError("tensor '" + name + "': expected shape " + shape_str(shape) + ", got " + tv.shape_str());
    if (file_quant_ != Quant::None && role == Role::Linear)
      throw WeightError("tensor '" + name + "': expected " + quant_name(file_quant_) +
                        " data in this quantized checkpoint, got " + dtype_name(tv.dtype));
    used_.insert(name);
    w.dtype = tv.dtype;
    w.data = tv.data;
    if (quantizes(role)) return quantize(name, w, n_heads);
    if (n_heads > 0) {
      m_.owned_.emplace_back(tv.nbytes);
      permute_interleaved_to_half(static_cast<const uint8_t*>(tv.data), m_.owned_.back().data(), n_heads,
                                  m_.cfg_.head_dim, w.cols, dtype_size(w.dtype));
      w.data = m_.owned_.back().data();
    }
    return cast(w);
  }

  bool quantizes(Role role) const {
    return quant_ != Quant::None && (role == Role::Linear || (role == Role::LmHead && opt_.quant_lm_head));
  }

  // Quantizes a full-precision weight as stored (rows permuted afterwards when n_heads > 0).
  Weight quantize(const std::string& name, const Weight& w, int64_t n_heads) {
    QuantizedMatrix q;
    try {
      q = quantize_matrix(quant_dtype(quant_), w.dtype, w.data, w.rows, w.cols, opt_.threads);
    } catch (const WeightError& e) {
      throw WeightError("tensor '" + name + "': " + e.what());
    }
    return own_quantized(std::move(q.data), std::move(q.scales), quant_dtype(quant_), w.rows, w.cols, n_heads);
  }

  Weight own_quantized(std::vector<uint8_t> data, std::vector<uint8_t> scales, DType t, int64_t rows, int64_t cols,
                       int64_t n_heads) {
    if (n_heads > 0) {
      std::vector<uint8_t> d(data.size()), s(scales.size());
      permute_interleaved_to_half(data.data(), d.data(), n_heads, m_.cfg_.head_dim, int64_t(quant_row_bytes(t, cols)),
                                  1);
      permute_interleaved_to_half(scales.data(), s.data(), n_heads, m_.cfg_.head_dim, quant_groups(t, cols),
                                  dtype_size(quant_scale_dtype(t)));
      data.swap(d);
      scales.swap(s);
    }
    Weight w;
    w.dtype = t;
    w.rows = rows;
    w.cols = cols;
    w.group = quant_group(t, cols);
    m_.owned_.push_back(std::move(data));
    w.data = m_.owned_.back().data();
    m_.owned_.push_back(std::move(scales));
    w.scales = m_.owned_.back().data();
    return w;
  }

  // A weight stored quantized (I8/U8 data plus its scales tensor) in a checkpoint written by `quantize`.
  Weight take_quantized(const std::string& name, const TensorView& tv, int64_t rows, int64_t cols, Role role,
                        int64_t n_heads) {
    const std::vector<int64_t> logical = role == Role::Plain && rows == 1 ? std::vector<int64_t>{cols}
                                                                            : std::vector<int64_t>{rows, cols};
    if (role == Role::Plain)
      throw WeightError("tensor '" + name + "' is stored as " + dtype_name(tv.dtype) + " (quantized data), but only " +
                        "linear weights may be quantized; expected a full-precision " + shape_str(logical));
    const DType t = quant_dtype(file_quant_);
    const DType want = t == DType::Q8 ? DType::I8 : DType::U8;
    if (tv.dtype != want)
      throw WeightError("tensor '" + name + "': " + quant_name(file_quant_) + " data must be " + dtype_name(want) +
                        ", got " + dtype_name(tv.dtype));
    const std::vector<int64_t> dshape = {rows, int64_t(quant_row_bytes(t, cols))};
    if (tv.shape != dshape)
      throw WeightError("tensor '" + name + "': expected " + quant_name(file_quant_) + " data of shape " +
                        shape_str(dshape) + " (for " + shape_str(logical) + "), got " + tv.shape_str());
    const std::string sname = quant_scales_name(name);
    auto sit = all_.find(sname);
    const std::vector<int64_t> sshape = {rows, quant_groups(t, cols)};
    const DType sdt = quant_scale_dtype(t);
    if (sit == all_.end())
      throw WeightError("missing tensor '" + sname + "' (the scales of " + name + ", " + dtype_name(sdt) + " " +
                        shape_str(sshape) + ")");
    const TensorView& sv = *sit->second;
    if (sv.dtype != sdt || sv.shape != sshape)
      throw WeightError("tensor '" + sname + "': expected " + dtype_name(sdt) + " " + shape_str(sshape) + ", got " +
                        dtype_name(sv.dtype) + " " + sv.shape_str());
    used_.insert(name);
    used_.insert(sname);
    if (n_heads > 0) {
      const uint8_t *d = static_cast<const uint8_t*>(tv.data), *sc = static_cast<const uint8_t*>(sv.data);
      return own_quantized(std::vector<uint8_t>(d, d + tv.nbytes), std::vector<uint8_t>(sc, sc + sv.nbytes), t, rows,
                           cols, n_heads);
    }
    Weight w;
    w.dtype = t;
    w.rows = rows;
    w.cols = cols;
    w.group = quant_group(t, cols);
    w.data = tv.data;
    w.scales = sv.data;
    return w;
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
    const int64_t D = c.hidden_size, V = c.vocab_size;
    ModelWeights& w = m_.w_;
    const bool hf = c.layout == Layout::HF;
    const std::string embed_name = hf ? "model.embed_tokens.weight" : "tok_embeddings.weight";
    w.embed = take(embed_name, {V, D}, Role::Plain);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      LayerWeights lw;
      const std::string p = (hf ? "model.layers." : "layers.") + std::to_string(l) + ".";
      for (const LayerTensor& t : kLayerTensors) {
        const int64_t rows = dim_of(c, t.rows), cols = dim_of(c, t.cols);
        const std::vector<int64_t> shape = t.rows == Dim::One ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
        const int64_t heads = hf || !t.permute ? 0 : t.permute == 1 ? c.num_heads : c.num_kv_heads;
        lw.*t.field = take(p + (hf ? t.hf : t.native), shape, t.role, heads);
      }
      if (hf) used_.insert(p + "self_attn.rotary_emb.inv_freq");  // old checkpoints carry this buffer; it is recomputed
      w.layers.push_back(lw);
    }
    const std::string norm_name = hf ? "model.norm.weight" : "norm.weight";
    w.norm = take(norm_name, {D}, Role::Plain);
    const std::string head = hf ? "lm_head.weight" : "output.weight";
    bool head_stored = true;
    if (c.tie_word_embeddings) {
      auto it = all_.find(head);
      if (it != all_.end() && (it->second->dtype == DType::I8 || it->second->dtype == DType::U8)) {
        w.lm_head = take(head, {V, D}, Role::LmHead);  // a quantized copy written by `quantize --quant-lm-head`
      } else if (quantizes(Role::LmHead)) {
        const TensorView& e = *all_.at(embed_name);  // quantize the embedding as stored
        Weight raw;
        raw.dtype = e.dtype;
        raw.rows = V;
        raw.cols = D;
        raw.data = e.data;
        if (e.dtype == DType::I8 || e.dtype == DType::U8) throw WeightError("tensor '" + embed_name + "' is quantized");
        w.lm_head = quantize(head, raw, 0);
        if (it != all_.end()) used_.insert(head);
      } else {
        w.lm_head = w.embed;
        head_stored = false;
        if (it != all_.end()) used_.insert(head);  // some tied checkpoints store a copy; it is not used
      }
    } else {
      w.lm_head = take(head, {V, D}, Role::LmHead);
    }
    for (const auto& kv : all_)
      if (!used_.count(kv.first))
        throw WeightError("unexpected tensor '" + kv.first + "' " + kv.second->shape_str() + " in " + kv.second->file +
                          " (not part of a " + std::to_string(c.num_layers) + "-layer model)");
    // The checkpoint names of every weight, for `quantize` (after the layers vector is final).
    auto& named = m_.named_;
    named.push_back({embed_name, &w.embed, 0, false});
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string p = (hf ? "model.layers." : "layers.") + std::to_string(l) + ".";
      for (const LayerTensor& t : kLayerTensors) {
        const int64_t heads = hf || !t.permute ? 0 : t.permute == 1 ? c.num_heads : c.num_kv_heads;
        named.push_back({p + (hf ? t.hf : t.native), &(w.layers[size_t(l)].*t.field), heads, t.rows == Dim::One});
      }
    }
    named.push_back({norm_name, &w.norm, 0, true});
    if (head_stored) named.push_back({head, &w.lm_head, 0, false});
  }

 private:
  Model& m_;
  LoadOptions opt_;
  Quant file_quant_ = Quant::None;  // scheme of a checkpoint written by `quantize`
  Quant quant_ = Quant::None;       // what linear weights end up as
  std::map<std::string, const TensorView*> all_;
  std::map<std::string, std::string> index_;
  std::set<std::string> used_;
};

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opt) {
  if (is_gguf_file(dir)) return load_gguf_model(dir, opt);
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->cfg_ = load_model_config(dir);
  ModelLoader ld(*m, opt);
  ld.open_files();
  ld.load();
  return m;
}

namespace {
Weight LayerWeights::*linear_field(LinearWeight which) {
  switch (which) {
    case LinearWeight::Q: return &LayerWeights::wq;
    case LinearWeight::K: return &LayerWeights::wk;
    case LinearWeight::V: return &LayerWeights::wv;
    case LinearWeight::O: return &LayerWeights::wo;
    case LinearWeight::Gate: return &LayerWeights::w_gate;
    case LinearWeight::Up: return &LayerWeights::w_up;
    case LinearWeight::Down: return &LayerWeights::w_down;
  }
  return &LayerWeights::wq;
}
}  // namespace

const Weight& Model::linear(int64_t layer, LinearWeight which) const {
  if (layer < 0 || layer >= int64_t(w_.layers.size())) throw UsageError("no layer " + std::to_string(layer));
  return w_.layers[size_t(layer)].*linear_field(which);
}

void Model::replace_linear(int64_t layer, LinearWeight which, QuantizedMatrix q) {
  const Weight& old = linear(layer, which);
  if (q.rows != old.rows || q.cols != old.cols || !is_quantized(q.dtype))
    throw UsageError("replace_linear: a quantized [" + std::to_string(old.rows) + ", " + std::to_string(old.cols) +
                     "] matrix is needed");
  // The old values go when the model owns them (converted or permuted at load; mapped ones stay mapped).
  for (auto& buf : owned_)
    if (!buf.empty() && (buf.data() == old.data || (old.scales && buf.data() == old.scales))) std::vector<uint8_t>().swap(buf);
  Weight w;
  w.dtype = q.dtype;
  w.rows = q.rows;
  w.cols = q.cols;
  w.group = quant_group(q.dtype, q.cols);
  owned_.push_back(std::move(q.data));
  w.data = owned_.back().data();
  owned_.push_back(std::move(q.scales));
  w.scales = owned_.back().data();
  w_.layers[size_t(layer)].*linear_field(which) = w;
}

std::unique_ptr<Model> Model::random(const ModelConfig& cfg, DType dtype, uint64_t seed, Quant quant,
                                     bool quant_lm_head) {
  cfg.validate();
  std::unique_ptr<Model> m(new Model());
  m->cfg_ = cfg;
  m->dir_ = "<random>";
  // Full-precision random values in `dtype`; linear weights then quantized when a quant is chosen.
  // Element i of the t-th tensor is a hash of (seed, t, i), so the values do not depend on the number of
  // threads that fill them (a 7B-shape model is made in seconds on a many-core machine).
  ThreadPool pool(0);
  uint64_t tensor = 0;
  auto make = [&](int64_t rows, int64_t cols, float scale, float offset, bool linear) {
    const size_t n = size_t(rows * cols);
    std::vector<uint8_t> buf(n * dtype_size(dtype));
    uint8_t* d = buf.data();
    const uint64_t base = seed * 0x9E3779B97F4A7C15ull + (++tensor) * 0xD1B54A32D192ED03ull;
    // Cheap uniform noise in [offset - scale, offset + scale): the values only need to be finite and
    // not degenerate.
    pool.parallel_for(int64_t(n), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        uint64_t z = base + uint64_t(i) * 0x9E3779B97F4A7C15ull;  // splitmix64 finalizer
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float v = offset + scale * (float(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
        if (dtype == DType::F32) std::memcpy(d + 4 * size_t(i), &v, 4);
        else {
          const uint16_t h = dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
          std::memcpy(d + 2 * size_t(i), &h, 2);
        }
      }
    }, 1 << 16);
    Weight w;
    w.rows = rows;
    w.cols = cols;
    if (linear && quant != Quant::None) {
      QuantizedMatrix q = quantize_matrix(quant_dtype(quant), dtype, d, rows, cols);
      w.dtype = q.dtype;
      w.group = quant_group(q.dtype, cols);
      m->owned_.push_back(std::move(q.data));
      w.data = m->owned_.back().data();
      m->owned_.push_back(std::move(q.scales));
      w.scales = m->owned_.back().data();
      return w;
    }
    m->owned_.push_back(std::move(buf));
    w.dtype = dtype;
    w.data = m->owned_.back().data();
    return w;
  };
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, V = cfg.vocab_size;
  const float s = 1.0f / std::sqrt(float(D));
  m->w_.embed = make(V, D, 1.0f, 0.0f, false);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm = make(1, D, 0.1f, 1.0f, false);
    lw.wq = make(cfg.q_dim(), D, s, 0, true);
    lw.wk = make(cfg.kv_dim(), D, s, 0, true);
    lw.wv = make(cfg.kv_dim(), D, s, 0, true);
    lw.wo = make(D, cfg.q_dim(), s, 0, true);
    lw.ffn_norm = make(1, D, 0.1f, 1.0f, false);
    lw.w_gate = make(F, D, s, 0, true);
    lw.w_up = make(F, D, s, 0, true);
    lw.w_down = make(D, F, 1.0f / std::sqrt(float(F)), 0, true);
    m->w_.layers.push_back(lw);
  }
  m->w_.norm = make(1, D, 0.1f, 1.0f, false);
  if (!cfg.tie_word_embeddings) {
    m->w_.lm_head = make(V, D, s, 0, quant_lm_head);
  } else if (quant_lm_head && quant != Quant::None) {
    const Weight& e = m->w_.embed;
    QuantizedMatrix q = quantize_matrix(quant_dtype(quant), e.dtype, e.data, V, D);
    Weight w;
    w.dtype = q.dtype;
    w.rows = V;
    w.cols = D;
    w.group = quant_group(q.dtype, D);
    m->owned_.push_back(std::move(q.data));
    w.data = m->owned_.back().data();
    m->owned_.push_back(std::move(q.scales));
    w.scales = m->owned_.back().data();
    m->w_.lm_head = w;
  } else {
    m->w_.lm_head = m->w_.embed;
  }
  return m;
}

size_t Model::weight_bytes() const {
  auto b = [](const Weight& w) { return w.nbytes() + w.scale_bytes(); };
  size_t n = b(w_.embed) + b(w_.norm);
  if (w_.lm_head.data != w_.embed.data) n += b(w_.lm_head);
  for (const auto& l : w_.layers)
    n += b(l.attn_norm) + b(l.wq) + b(l.wk) + b(l.wv) + b(l.wo) + b(l.ffn_norm) + b(l.w_gate) + b(l.w_up) + b(l.w_down);
  return n;
}

size_t estimate_weight_bytes(const ModelConfig& c, DType full, Quant quant, bool quant_lm_head) {
  const size_t es = dtype_size(full);
  const DType qt = quant_dtype(quant);
  auto plain = [&](int64_t rows, int64_t cols) { return size_t(rows) * size_t(cols) * es; };
  auto lin = [&](int64_t rows, int64_t cols) {
    return quant == Quant::None ? plain(rows, cols) : quant_data_bytes(qt, rows, cols) + quant_scale_bytes(qt, rows, cols);
  };
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  size_t n = plain(V, D) + plain(1, D);
  n += size_t(c.num_layers) * (2 * plain(1, D) + lin(c.q_dim(), D) + 2 * lin(c.kv_dim(), D) + lin(D, c.q_dim()) +
                               2 * lin(F, D) + lin(D, F));
  const bool qhead = quant_lm_head && quant != Quant::None;
  if (qhead) n += lin(V, D);
  else if (!c.tie_word_embeddings) n += plain(V, D);
  return n;
}

}  // namespace mistral
