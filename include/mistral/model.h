// A loaded checkpoint: validated config plus every weight as a typed view (memory-mapped where the
// stored layout is used as is, owned where the loader had to convert or permute).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mistral/config.h"
#include "mistral/dtype.h"
#include "mistral/quant.h"
#include "mistral/safetensors.h"

namespace mistral {

// A 2-D weight [rows, cols], row-major; 1-D weights (norms) have rows == 1. Quantized dtypes (Q8, NF4,
// Q4) keep per-row data plus `scales`, laid out as mistral/quant.h describes.
struct Weight {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;
  const void* scales = nullptr;  // quantized only: [rows, ceil(cols / group)] (fp32 for Q8, fp16 otherwise)
  int64_t group = 0;             // quantized only: elements per scale along a row
  // Bytes at `data` (padded rows for quantized dtypes); the scales are counted by scale_bytes().
  size_t nbytes() const {
    return is_quantized(dtype) ? quant_data_bytes(dtype, rows, cols) : size_t(rows * cols) * dtype_size(dtype);
  }
  size_t scale_bytes() const { return is_quantized(dtype) ? quant_scale_bytes(dtype, rows, cols) : 0; }
  size_t row_bytes() const { return is_quantized(dtype) ? quant_row_bytes(dtype, cols) : size_t(cols) * dtype_size(dtype); }
};

struct LayerWeights {
  Weight attn_norm;  // [1, D]
  Weight wq;         // [Hq*hd, D]   rows in rotate-half order within each head
  Weight wk;         // [Hkv*hd, D]  rows in rotate-half order within each head
  Weight wv;         // [Hkv*hd, D]
  Weight wo;         // [D, Hq*hd]
  Weight ffn_norm;   // [1, D]
  Weight w_gate;     // [F, D]
  Weight w_up;       // [F, D]
  Weight w_down;     // [D, F]
};

struct ModelWeights {
  Weight embed;    // [V, D]
  std::vector<LayerWeights> layers;
  Weight norm;     // [1, D]
  Weight lm_head;  // [V, D] (the embedding when tied)
};

struct LoadOptions {
  // Convert every full-precision weight to this dtype at load; "auto" keeps what is stored.
  enum class Cast { Auto, F32, F16, BF16 } cast = Cast::Auto;
  // Quantize the linear weights (q/k/v/o, gate/up/down) at load, from the stored values; embeddings
  // and norms stay in full precision. A checkpoint written by `mistral-run quantize` already holds
  // quantized weights: quant must then be None (use them) or that checkpoint's scheme.
  Quant quant = Quant::None;
  bool quant_lm_head = false;  // also quantize lm_head (a separate copy when tied to the embeddings)
  int threads = 0;             // threads for quantizing (0: all cores)
};

// A weight as the checkpoint names it (kept by Model::load for `mistral-run quantize`).
struct NamedWeight {
  std::string name;            // e.g. "model.layers.0.self_attn.q_proj.weight"
  const Weight* weight = nullptr;
  int64_t permuted_heads = 0;  // > 0: rows were permuted at load from native interleaved RoPE order
  bool one_dim = false;        // stored as [cols] (norms)
};

// A layer's linear weights, by role.
enum class LinearWeight { Q, K, V, O, Gate, Up, Down };
constexpr int kLinearWeights = 7;

class Model {
 public:
  // Loads a model directory (HF config.json + model.safetensors or shards; native params.json +
  // consolidated.safetensors) or a GGUF file (mistral/gguf.h). Throws FileError / ConfigError /
  // WeightError naming the problem.
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opt = {});
  // Builds a model with random weights in memory (benchmarks, tests). Deterministic in `seed`; with a
  // quant, the same random weights quantized (as Model::load would).
  static std::unique_ptr<Model> random(const ModelConfig& cfg, DType dtype, uint64_t seed, Quant quant = Quant::None,
                                       bool quant_lm_head = false);

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }
  const std::string& dir() const { return dir_; }
  size_t weight_bytes() const;  // bytes of all distinct weights as loaded, quantization scales included
  DType matmul_dtype() const { return w_.layers.empty() ? w_.embed.dtype : w_.layers[0].wq.dtype; }
  Quant quant() const { return quant_of(matmul_dtype()); }  // None: full-precision linear weights
  // Every stored weight with its checkpoint name, in checkpoint order (empty for random models).
  const std::vector<NamedWeight>& named_weights() const { return named_; }

  // One layer's linear weight.
  const Weight& linear(int64_t layer, LinearWeight which) const;
  // Replaces it by a quantized matrix of the same shape, owned by the model from then on (GPTQ,
  // mistral/gptq.h); the old values are freed where the model owned them, so Weights copied from the
  // old one must not be used after. Throws UsageError on a bad layer or a shape mismatch.
  void replace_linear(int64_t layer, LinearWeight which, QuantizedMatrix q);

 private:
  ModelConfig cfg_;
  ModelWeights w_;
  std::string dir_;
  std::vector<std::unique_ptr<SafeTensorsFile>> files_;
  std::vector<std::vector<uint8_t>> owned_;  // converted, permuted or quantized weights
  std::vector<NamedWeight> named_;
  friend class ModelLoader;
  friend class GgufLoader;  // src/io/gguf_loader.cpp
};

// Where a model directory's config lives and which layout it is. Throws FileError.
struct ModelDirInfo {
  Layout layout;
  std::string config_path;
};
ModelDirInfo detect_model_dir(const std::string& dir);
ModelConfig load_model_config(const std::string& dir);

// Bytes of all weights a model of this config holds when its full-precision weights are `full` and
// its linear weights quantized with `quant` (and lm_head too with quant_lm_head): what
// Model::weight_bytes() reports after loading such a model, computed from the config alone.
size_t estimate_weight_bytes(const ModelConfig& c, DType full, Quant quant, bool quant_lm_head);

// Name of the scales tensor that goes with a quantized weight in a quantized checkpoint:
// "x.weight" -> "x.scales".
std::string quant_scales_name(const std::string& weight_name);

// Writes a loaded model as a checkpoint directory that Model::load reads back to the same bytes:
// model.safetensors (HF) or consolidated.safetensors (native) under the original tensor names and
// row order; quantized weights as I8 (int8) or U8 (4-bit) data [rows, row_bytes] plus an F32/F16
// "<name>.scales" tensor [rows, groups] (layout of mistral/quant.h, scheme in __metadata__, data
// placed at 16-byte aligned offsets), the other weights in the dtype they were loaded as. Every
// other regular file of the source directory (config, tokenizer, generation config) is copied,
// except weight files. out_dir is created if needed and must not be the source directory.
// Throws FileError / UsageError.
void save_checkpoint(const Model& m, const std::string& out_dir);

// Interleaved-pair rows (native RoPE order) to rotate-half rows, per head, for a [n_heads*hd, cols]
// matrix of element size esize. Exposed for tests.
void permute_interleaved_to_half(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t head_dim, int64_t cols,
                                 size_t esize);
// The inverse (rotate-half rows back to native interleaved order).
void permute_half_to_interleaved(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t head_dim, int64_t cols,
                                 size_t esize);

}  // namespace mistral
