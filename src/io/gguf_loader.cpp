// Model::load for GGUF files: llama.cpp tensor names mapped onto our weights, every tensor dequantized
// at load into owned buffers (F32 or F16, or what --dtype asks for; --quant re-quantizes the linear
// weights from the dequantized values), q/k rows brought from llama.cpp's interleaved RoPE order to
// rotate-half, strict name/shape checks as for safetensors.
#include <algorithm>
#include <cstring>
#include <functional>
#include <set>
#include <thread>

#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/model.h"
#include "mistral/quant.h"

namespace mistral {

namespace {

// Quantized GGUF tensors are dequantized to F32 when the whole model fits in this many bytes that way
// (exact: every Q8_0/Q4_0/Q4_1 value is representable), else to F16 (half the memory).
constexpr double kF32Budget = 4.0 * (1ull << 30);

void parallel_rows(int64_t rows, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  n = int(std::min<int64_t>(n, std::max<int64_t>(1, rows / 64)));
  if (n <= 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> ts;
  for (int k = 0; k < n; ++k) ts.emplace_back(fn, rows * k / n, rows * (k + 1) / n);
  for (auto& t : ts) t.join();
}

std::string shape_str(int64_t rows, int64_t cols, bool one_dim) {
  return one_dim ? "[" + std::to_string(cols) + "]" : "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

}  // namespace

class GgufLoader {
 public:
  GgufLoader(Model& m, const GgufFile& f, const LoadOptions& opt) : m_(m), f_(f), opt_(opt) {}

  void load() {
    const ModelConfig& c = m_.cfg_;
    double f32_bytes = 0;
    for (const GgufTensor& t : f_.tensors()) f32_bytes += double(t.numel()) * 4;
    dequant_target_ = f32_bytes <= kF32Budget ? DType::F32 : DType::F16;
    if (opt_.quant != Quant::None && opt_.cast == LoadOptions::Cast::Auto) dequant_target_ = DType::F32;

    const int64_t D = c.hidden_size, V = c.vocab_size;
    ModelWeights& w = m_.w_;
    w.embed = take("token_embd.weight", V, D, false, 0);
    struct Entry {
      const char* gguf;
      Weight LayerWeights::*field;
      int64_t rows;
      bool one_dim, linear;
      int64_t heads;  // > 0: interleaved RoPE rows to rotate-half
    };
    const int64_t F = c.intermediate_size, QD = c.q_dim(), KD = c.kv_dim();
    const Entry entries[] = {
        {"attn_norm", &LayerWeights::attn_norm, 1, true, false, 0},
        {"attn_q", &LayerWeights::wq, QD, false, true, c.num_heads},
        {"attn_k", &LayerWeights::wk, KD, false, true, c.num_kv_heads},
        {"attn_v", &LayerWeights::wv, KD, false, true, 0},
        {"attn_output", &LayerWeights::wo, D, false, true, 0},
        {"ffn_norm", &LayerWeights::ffn_norm, 1, true, false, 0},
        {"ffn_gate", &LayerWeights::w_gate, F, false, true, 0},
        {"ffn_up", &LayerWeights::w_up, F, false, true, 0},
        {"ffn_down", &LayerWeights::w_down, D, false, true, 0},
    };
    w.layers.resize(size_t(c.num_layers));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string g = "blk." + std::to_string(l) + ".";
      for (const Entry& e : entries) {
        const int64_t cols = e.field == &LayerWeights::wo ? QD : e.field == &LayerWeights::w_down ? F : D;
        w.layers[size_t(l)].*e.field = take(g + e.gguf + ".weight", e.rows, cols, e.linear, e.heads, e.one_dim);
      }
    }
    w.norm = take("output_norm.weight", 1, D, false, 0, true);
    const bool qhead = opt_.quant != Quant::None && opt_.quant_lm_head;
    if (c.tie_word_embeddings) {
      if (qhead) w.lm_head = take("token_embd.weight", V, D, true, 0);
      else w.lm_head = w.embed;
    } else {
      w.lm_head = take("output.weight", V, D, qhead, 0);
    }
    for (const GgufTensor& t : f_.tensors())
      if (!used_.count(t.name))
        throw WeightError(f_.path() + ": unexpected tensor '" + t.name + "' " + ggml_type_name(t.type) + " " +
                          t.shape_str() + " (not part of a " + std::to_string(c.num_layers) + "-layer llama model)");
  }

 private:
  // Reads tensor `name` as a [rows, cols] matrix (or a [cols] vector when one_dim), dequantized; linear
  // weights quantized with --quant; heads > 0: rows permuted from interleaved to rotate-half RoPE order.
  Weight take(const std::string& name, int64_t rows, int64_t cols, bool linear, int64_t heads, bool one_dim = false) {
    const GgufTensor* t = f_.tensor(name);
    if (!t)
      throw WeightError(f_.path() + ": missing tensor '" + name + "' (expected shape " + shape_str(rows, cols, one_dim) + ")");
    const bool shape_ok = one_dim ? t->ne.size() == 1 && t->ne[0] == cols
                                  : t->ne.size() == 2 && t->ne[0] == cols && t->ne[1] == rows;
    if (!shape_ok)
      throw WeightError(f_.path() + ": tensor '" + name + "': expected shape " + shape_str(rows, cols, one_dim) + ", got " +
                        t->shape_str());
    used_.insert(name);
    const size_t n = size_t(rows) * size_t(cols);
    const int64_t blk = ggml_block_elems(t->type);
    const size_t row_bytes = size_t(cols / blk) * ggml_block_bytes(t->type);
    std::vector<float> x(n);
    parallel_rows(rows, opt_.threads, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        gguf_dequantize(t->type, t->data + size_t(r) * row_bytes, x.data() + size_t(r) * size_t(cols), size_t(cols));
    });
    if (heads > 0) {  // llama.cpp's converter stores q/k rows in interleaved-pair RoPE order
      std::vector<float> y(n);
      permute_interleaved_to_half(reinterpret_cast<const uint8_t*>(x.data()), reinterpret_cast<uint8_t*>(y.data()),
                                  heads, m_.cfg_.head_dim, cols, sizeof(float));
      x.swap(y);
    }
    Weight w;
    w.rows = rows;
    w.cols = cols;
    if (linear && opt_.quant != Quant::None) {
      QuantizedMatrix q;
      try {
        q = quantize_matrix(quant_dtype(opt_.quant), DType::F32, x.data(), rows, cols, opt_.threads);
      } catch (const WeightError& e) {
        throw WeightError("tensor '" + name + "': " + e.what());
      }
      w.dtype = q.dtype;
      w.group = quant_group(q.dtype, cols);
      m_.owned_.push_back(std::move(q.data));
      w.data = m_.owned_.back().data();
      m_.owned_.push_back(std::move(q.scales));
      w.scales = m_.owned_.back().data();
    } else {
      w.dtype = target(t->type);
      std::vector<uint8_t> buf(n * dtype_size(w.dtype));
      if (w.dtype == DType::F32) {
        std::memcpy(buf.data(), x.data(), n * 4);
      } else {
        uint16_t* d = reinterpret_cast<uint16_t*>(buf.data());
        const bool f16 = w.dtype == DType::F16;
        parallel_rows(rows, opt_.threads, [&](int64_t r0, int64_t r1) {
          for (size_t k = size_t(r0) * size_t(cols); k < size_t(r1) * size_t(cols); ++k)
            d[k] = f16 ? f32_to_f16(x[k]) : f32_to_bf16(x[k]);
        });
      }
      m_.owned_.push_back(std::move(buf));
      w.data = m_.owned_.back().data();
    }
    return w;
  }

  DType target(uint32_t stored) const {
    switch (opt_.cast) {
      case LoadOptions::Cast::F32: return DType::F32;
      case LoadOptions::Cast::F16: return DType::F16;
      case LoadOptions::Cast::BF16: return DType::BF16;
      case LoadOptions::Cast::Auto: break;
    }
    switch (GgmlType(stored)) {
      case GgmlType::F32: return DType::F32;
      case GgmlType::F16: return DType::F16;
      case GgmlType::BF16: return DType::BF16;
      default: return dequant_target_;
    }
  }

 private:
  Model& m_;
  const GgufFile& f_;
  LoadOptions opt_;
  DType dequant_target_ = DType::F32;
  std::set<std::string> used_;

 public:
  // Fills Model::named_ with the HF names of the weights (after the layers vector is final), so that
  // `mistral-run quantize` can write a GGUF model out as a safetensors checkpoint.
  void name_weights() {
    const ModelConfig& c = m_.cfg_;
    ModelWeights& w = m_.w_;
    auto& named = m_.named_;
    named.push_back({"model.embed_tokens.weight", &w.embed, 0, false});
    const char* hf[] = {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    Weight LayerWeights::*fields[] = {&LayerWeights::attn_norm, &LayerWeights::wq,     &LayerWeights::wk,
                                      &LayerWeights::wv,        &LayerWeights::wo,     &LayerWeights::ffn_norm,
                                      &LayerWeights::w_gate,    &LayerWeights::w_up,   &LayerWeights::w_down};
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (int k = 0; k < 9; ++k)
        named.push_back({"model.layers." + std::to_string(l) + "." + hf[k] + ".weight", &(w.layers[size_t(l)].*fields[k]), 0,
                         k == 0 || k == 5});
    named.push_back({"model.norm.weight", &w.norm, 0, true});
    if (w.lm_head.data != w.embed.data) named.push_back({"lm_head.weight", &w.lm_head, 0, false});
  }

  static std::unique_ptr<Model> load(const std::string& path, const LoadOptions& opt) {
    GgufFile f(path);
    std::unique_ptr<Model> m(new Model());
    m->dir_ = path;
    m->cfg_ = gguf_model_config(f);
    GgufLoader ld(*m, f, opt);
    ld.load();
    ld.name_weights();
    return m;
  }
};

std::unique_ptr<Model> load_gguf_model(const std::string& path, const LoadOptions& opt) {
  return GgufLoader::load(path, opt);
}

}  // namespace mistral
