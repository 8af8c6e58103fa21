// A loaded checkpoint: validated config plus every weight as a typed view (memory-mapped where the
// stored layout is used as is, owned where the loader had to convert or permute).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mistral/config.h"
#include "mistral/dtype.h"
#include "mistral/safetensors.h"

namespace mistral {

// A 2-D weight [rows, cols], row-major; 1-D weights (norms) have rows == 1.
struct Weight {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;
  size_t nbytes() const { return size_t(rows * cols) * dtype_size(dtype); }
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
  // Convert every weight to this dtype at load; "auto" keeps what is stored.
  enum class Cast { Auto, F32, F16, BF16 } cast = Cast::Auto;
};

class Model {
 public:
  // Loads a model directory (HF config.json + model.safetensors or shards; native params.json +
  // consolidated.safetensors). Throws FileError / ConfigError / WeightError naming the problem.
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opt = {});
  // Builds a model with random weights in memory (benchmarks, tests). Deterministic in `seed`.
  static std::unique_ptr<Model> random(const ModelConfig& cfg, DType dtype, uint64_t seed);

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }
  const std::string& dir() const { return dir_; }
  size_t weight_bytes() const;  // bytes of all distinct weights as loaded
  DType matmul_dtype() const { return w_.layers.empty() ? w_.embed.dtype : w_.layers[0].wq.dtype; }

 private:
  ModelConfig cfg_;
  ModelWeights w_;
  std::string dir_;
  std::vector<std::unique_ptr<SafeTensorsFile>> files_;
  std::vector<std::vector<uint8_t>> owned_;  // converted or permuted weights
  friend class ModelLoader;
};

// Where a model directory's config lives and which layout it is. Throws FileError.
struct ModelDirInfo {
  Layout layout;
  std::string config_path;
};
ModelDirInfo detect_model_dir(const std::string& dir);
ModelConfig load_model_config(const std::string& dir);

// Interleaved-pair rows (native RoPE order) to rotate-half rows, per head, for a [n_heads*hd, cols]
// matrix of element size esize. Exposed for tests.
void permute_interleaved_to_half(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t head_dim, int64_t cols,
                                 size_t esize);

}  // namespace mistral
