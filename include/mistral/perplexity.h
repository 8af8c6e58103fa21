// Perplexity of a token sequence with a strided window (the recipe of transformers' "Perplexity of
// fixed-length models" guide), and, against a reference model, the KL divergence of the next-token
// distributions (how far quantization moves the model).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "mistral/backend.h"
#include "mistral/model.h"

namespace mistral {

struct PerplexityOptions {
  int64_t ctx = 0;     // window length in tokens (0: min(max_position_embeddings, 2048))
  int64_t stride = 0;  // window step (0: ctx / 2); must be <= ctx
  int chunk = 512;     // prefill chunk inside a window (memory: chunk x vocab logits)
  DType kv_dtype = DType::F32;  // the evaluated model's KV cache (the --kl-ref model's is always F32)
};

struct PerplexityResult {
  int64_t ctx = 0, stride = 0;
  int64_t windows = 0;
  int64_t tokens = 0;      // tokens scored: each token after the first once (stride == ctx: not a window's first)
  double nll = 0;          // mean negative log-likelihood, nats per token
  double ppl = 0;          // exp(nll)
  bool has_ref = false;    // the fields below need a reference model
  double ref_nll = 0, ref_ppl = 0;
  double kl = 0;           // mean over scored tokens of KL(ref || model), nats
  double kl_max = 0;       // the largest per-token KL
  int64_t top1_agree = 0;  // scored positions where both models' argmax agree
};

// Windows start at 0, stride, 2*stride, ... and end at min(start + ctx, n); a window scores the
// tokens after the previous window's end (the first window: all but its first token), each predicted
// from the tokens before it inside the window. With `ref`, both models see the same windows.
// progress(tokens_scored, tokens_total) is called after each window.
PerplexityResult evaluate_perplexity(const Model& model, Backend& be, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& opt, const Model* ref = nullptr,
                                     const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace mistral
