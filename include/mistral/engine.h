// The forward pass (written once against Backend) and a Session: one sequence with its KV cache.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mistral/backend.h"
#include "mistral/model.h"

namespace mistral {

struct SessionOptions {
  int64_t context = 0;  // max positions without a window (0: max_position_embeddings); cache rows = min(W, ctx)
  int chunk = 512;      // prefill chunk size (tokens per forward call)
};

class Session {
 public:
  Session(const Model& model, Backend& backend, const SessionOptions& opt);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Feeds ids at positions n_past() ... in chunks of opt.chunk. Returns the logits of the last id
  // ([V]); with all_logits, the logits of every id ([n, V]).
  std::vector<float> feed(const std::vector<int32_t>& ids, bool all_logits = false);
  void reset() { n_past_ = 0; }
  int64_t n_past() const { return n_past_; }
  // Positions this session can hold: unbounded (INT64_MAX) with a sliding window.
  int64_t capacity() const;
  int64_t cache_bytes() const;
  const AttnShape& shape() const { return shape_; }
  int chunk() const { return chunk_; }

 private:
  void forward_chunk(const int32_t* ids, int T, bool all_logits, float* logits_host);
  void ensure_scratch(int T);

  const Model& model_;
  Backend& be_;
  AttnShape shape_;
  int64_t context_;
  int chunk_;
  int64_t n_past_ = 0;
  std::vector<KVLayer> cache_;
  // Scratch activations for up to scratch_T_ tokens.
  int scratch_T_ = 0;
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *att_ = nullptr, *gate_ = nullptr,
        *up_ = nullptr, *logits_ = nullptr;
};

}  // namespace mistral
