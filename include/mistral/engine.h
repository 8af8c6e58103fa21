// The forward pass, written once against Backend, over a ragged batch of sequences (each with its own
// positions and KV cache); Session wraps it for one sequence.
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mistral/backend.h"
#include "mistral/model.h"

namespace mistral {

struct SessionOptions {
  int64_t context = 0;  // max positions without a window (0: max_position_embeddings)
  int chunk = 512;      // prefill chunk size (tokens per forward call)
  bool graphs = true;   // replay single-token decode steps as recorded graphs where the backend can
  // Fused backend ops (residual add + next norm, RoPE + KV-cache write); false runs the unfused sequence
  // (for comparisons). MISTRAL_UNFUSED=1 in the environment turns them off too.
  bool fused = true;
  // Candidates the backend finds for each sampled draw (Sampler::request's max_k); a draw they do not
  // settle takes the whole row. Tests set it small to take that route.
  int sample_candidates = kSampleCandidates;
  // What the KV cache holds: F32, or F16 (half the memory and half the bytes decode attention reads;
  // AttnShape::kv_half).
  DType kv_dtype = DType::F32;
};

// One sequence's KV cache: per layer K and V [slots, Hkv*hd] (fp32, or fp16 with AttnShape::kv_half);
// position p lives in row p % slots.
class KVCache {
 public:
  KVCache(Backend& be, const AttnShape& shape, int64_t n_layers);
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;
  const KVLayer& layer(size_t l) const { return layers_[l]; }
  int64_t bytes() const { return bytes_; }
  int64_t slots() const { return slots_; }
  // Positions this cache can hold: unbounded with a sliding window (rolling), else its rows.
  int64_t capacity() const { return rolling_ ? INT64_MAX : slots_; }
  int64_t n_past = 0;  // positions already stored (the next token's position)
  uint64_t id() const { return id_; }  // unique per cache ever made (keys recorded decode graphs)
  bool kv_half() const { return kv_half_; }  // holds fp16 (AttnShape::kv_half)
  int kv_dim() const { return kv_dim_; }

 private:
  Backend& be_;
  std::vector<KVLayer> layers_;
  int64_t bytes_ = 0, slots_ = 0;
  bool rolling_ = false, kv_half_ = false;
  int kv_dim_ = 0;
  uint64_t id_ = 0;
};

// T tokens of one sequence, at positions cache->n_past .. n_past+T-1.
struct BatchSegment {
  KVCache* cache = nullptr;
  const int32_t* ids = nullptr;
  int T = 0;
  bool all_logits = false;  // logits of every token, else only of the last one
  bool want_logits = true;  // false: a prefill chunk whose logits nobody reads
};

// The inputs of the linear layers, as an ActivationObserver sees them (calibration for GPTQ): the
// attention's normed input (q/k/v), its output (o_proj), the MLP's normed input (gate/up) and the
// SwiGLU product (down_proj).
enum class LinearInput { AttnIn, AttnOut, MlpIn, MlpAct };
constexpr int kLinearInputs = 4;

class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  // Layers [first_layer(), end_layer()) are observed; a pass stops after end_layer() - 1.
  virtual int64_t first_layer() const = 0;
  virtual int64_t end_layer() const = 0;
  // x: [T, K] floats in host memory, the rows of every segment of the pass in order.
  virtual void observe(int64_t layer, LinearInput which, const float* x, int T, int64_t K) = 0;
};

// How ForwardPass::run chooses a row's next token on the backend: the row's sampler (one per row: a
// request's penalised ids live in it until the draw; null: the argmax) and the ids its sequence holds so
// far (the repetition penalty's history; null: none).
struct RowSampler {
  Sampler* sampler = nullptr;
  const std::vector<int32_t>* history = nullptr;
};

class ForwardPass {
 public:
  ForwardPass(const Model& model, Backend& backend, const SessionOptions& opt);
  ~ForwardPass();
  ForwardPass(const ForwardPass&) = delete;
  ForwardPass& operator=(const ForwardPass&) = delete;

  // Runs every segment through the model together (weights are read once for the whole batch),
  // advances each cache's n_past by its T, and writes the requested logits rows to logits_host,
  // segment after segment ([rows, V]). Returns the number of rows written. With ids_host instead
  // (logits_host null), each row's next token goes there ([rows]), the logits staying on the device:
  // the argmax (Backend::argmax_rows), or with `samplers` ([rows]) each row's draw from the candidates
  // the backend finds (Backend::top_candidates_rows; the whole row comes over only when they do not
  // settle the draw).
  size_t run(const std::vector<BatchSegment>& segments, float* logits_host, int32_t* ids_host = nullptr,
             const RowSampler* samplers = nullptr);

  // A cache for one sequence of at most max_positions positions (0: no bound). Without a window it
  // holds that many rows (0 or more than the context: the whole context). With a window W it holds W
  // rows and rolls, or, for a bound below W, only that many rows (no position ever leaves the window:
  // a batch request of a short prompt and answer needs a fraction of W).
  std::unique_ptr<KVCache> new_cache(int64_t max_positions = 0);
  const AttnShape& shape() const { return shape_; }
  const Model& model() const { return model_; }
  int64_t capacity() const;  // positions a sequence can hold: unbounded with a sliding window
  int64_t cache_bytes(int64_t max_positions = 0) const;  // what new_cache(max_positions) allocates
  int chunk() const { return chunk_; }
  int64_t cache_slots(int64_t max_positions) const;  // rows a new_cache(max_positions) has
  // Bytes of activation buffers a pass of T tokens with `rows` logits rows allocates on the backend.
  int64_t scratch_bytes(int T, int rows) const;
  // Shows the observer every observed layer's linear inputs in later runs (nullptr: none); while one is
  // set, runs stop after its last layer and return no logits. Needs a backend whose buffers are host
  // memory (the CPU backend); throws UsageError otherwise.
  void set_observer(ActivationObserver* o);

 private:
  void ensure_scratch(int T, int rows);
  // The layers, final norm and lm_head for the segments (embedding already in x_); logits rows stay on
  // the device in logits_.
  void body(const std::vector<BatchSegment>& segs, int T, int rows);
  // The next token of each of the `rows` logits rows in logits_ (see run()).
  void choose(int rows, int32_t* ids_host, const RowSampler* samplers);

  const Model& model_;
  Backend& be_;
  ModelWeights w_;  // the model's weights as placed on the backend
  AttnShape shape_;
  int64_t n_layers_;
  int64_t context_;
  int chunk_;
  int sample_candidates_;
  bool graphs_;
  bool fused_;
  int scratch_T_ = 0, scratch_rows_ = 0;
  std::vector<DecodeRow> rows_;  // body(): the current run of single-token segments
  std::vector<CandidateRequest> cand_req_;  // choose(): the candidates of each row, and a row's logits
  std::vector<int32_t> cand_ids_;
  std::vector<float> cand_logits_, row_host_;
  std::vector<double> cand_z_;
  std::vector<char> whole_;  // rows sampled from the whole row (Sampler::needs_whole_row)
  ActivationObserver* observer_ = nullptr;
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *att_ = nullptr, *gate_ = nullptr,
        *up_ = nullptr, *xg_ = nullptr, *logits_ = nullptr;
};

// One sequence: a ForwardPass and its cache, fed in chunks.
class Session {
 public:
  // max_positions: the most positions this sequence will hold (0: no bound), which sizes its cache
  // (ForwardPass::new_cache).
  Session(const Model& model, Backend& backend, const SessionOptions& opt, int64_t max_positions = 0);
  // Feeds ids at positions n_past() ... in chunks. Returns the logits of the last id ([V]); with
  // all_logits, the logits of every id ([n, V]).
  std::vector<float> feed(const std::vector<int32_t>& ids, bool all_logits = false);
  // As feed(ids), but returns only the argmax of the last id's logits (the greedy next token), computed
  // by the backend: the logits stay in device memory.
  int32_t feed_greedy(const std::vector<int32_t>& ids);
  // As feed(ids), but returns the next token as `sampler` draws it from the last id's logits (history:
  // the ids the repetition penalty looks at), the backend finding the candidates (ForwardPass::run).
  int32_t feed_sample(const std::vector<int32_t>& ids, Sampler& sampler, const std::vector<int32_t>& history);
  void reset() { cache_->n_past = 0; }
  int64_t n_past() const { return cache_->n_past; }
  int64_t capacity() const { return cache_->capacity(); }  // positions its cache holds (INT64_MAX: rolling)
  int64_t cache_bytes() const { return cache_->bytes(); }
  int64_t cache_positions() const { return cache_->slots(); }  // rows of the cache
  const AttnShape& shape() const { return fp_.shape(); }
  int chunk() const { return fp_.chunk(); }
  // Activation buffers feeding n tokens at once (in chunks) and then decoding allocates on the backend.
  int64_t scratch_bytes(int64_t n) const { return fp_.scratch_bytes(int(std::min<int64_t>(n, fp_.chunk())), 1); }

 private:
  // The next token after ids: the argmax (sampler null) or the sampler's draw.
  int32_t feed_next(const std::vector<int32_t>& ids, const RowSampler* sampler);
  // Feeds ids in chunks; the last chunk's logits row to logits_host, or its next token to ids_host (the
  // argmax, or the sampler's draw).
  void feed_chunks(const std::vector<int32_t>& ids, bool all_logits, float* logits_host, int32_t* ids_host,
                   const RowSampler* sampler = nullptr);

  ForwardPass fp_;
  std::unique_ptr<KVCache> cache_;
};

}  // namespace mistral
