// Strided-window perplexity and KL divergence against a reference model.
#include "mistral/perplexity.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "mistral/engine.h"
#include "mistral/error.h"

namespace mistral {

namespace {

// log-softmax of one row of logits, in double.
void log_softmax(const float* l, int64_t V, std::vector<double>& out) {
  out.resize(size_t(V));
  double mx = -INFINITY;
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(double(l[v]) - mx);
  const double lse = mx + std::log(s);
  for (int64_t v = 0; v < V; ++v) out[size_t(v)] = double(l[v]) - lse;
}

}  // namespace

PerplexityResult evaluate_perplexity(const Model& model, Backend& be, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& opt, const Model* ref,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  const ModelConfig& c = model.config();
  if (ref && ref->config().vocab_size != c.vocab_size)
    throw UsageError("the reference model's vocabulary differs from the model's");
  const int64_t n = int64_t(ids.size());
  if (n < 2) throw UsageError("perplexity needs a text of at least 2 tokens, got " + std::to_string(n));
  PerplexityResult r;
  r.ctx = opt.ctx > 0 ? opt.ctx : std::min<int64_t>(c.max_position_embeddings, 2048);
  if (c.sliding_window <= 0 && r.ctx > c.max_position_embeddings)
    throw UsageError("--ctx " + std::to_string(r.ctx) + " is beyond max_position_embeddings (" +
                     std::to_string(c.max_position_embeddings) + ")");
  if (r.ctx < 2) throw UsageError("--ctx must be at least 2");
  r.stride = opt.stride > 0 ? opt.stride : std::max<int64_t>(1, r.ctx / 2);
  if (r.stride > r.ctx) throw UsageError("--stride must not exceed the window (--ctx)");
  r.has_ref = ref != nullptr;

  SessionOptions so;
  so.context = r.ctx;
  so.chunk = opt.chunk > 0 ? opt.chunk : 512;
  SessionOptions so_model = so;
  so_model.kv_dtype = opt.kv_dtype;
  Session sm(model, be, so_model);
  std::unique_ptr<Session> sr(ref ? new Session(*ref, be, so) : nullptr);
  const int64_t V = c.vocab_size;
  std::vector<double> lp, lq;
  double nll = 0, ref_nll = 0, kl = 0;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += r.stride) {
    const int64_t end = std::min(begin + r.ctx, n);
    const int64_t first = std::max(prev_end, begin + 1);  // first scored token (absolute index)
    sm.reset();
    if (sr) sr->reset();
    // Feed the window chunk by chunk; logits at position j predict token j + 1.
    for (int64_t p = begin; p < end - 1;) {
      const int64_t q = std::min(end - 1, p + int64_t(so.chunk));
      const std::vector<int32_t> chunk(ids.begin() + p, ids.begin() + q);
      const bool wanted = q >= first;  // some position in [p, q) predicts a scored token
      std::vector<float> lm = sm.feed(chunk, wanted), lr;
      if (sr) lr = sr->feed(chunk, wanted);
      if (wanted)
        for (int64_t j = std::max(p, first - 1); j < q; ++j) {
          const int32_t target = ids[size_t(j + 1)];
          const float* row = lm.data() + size_t(j - p) * size_t(V);
          log_softmax(row, V, lq);
          nll -= lq[size_t(target)];
          ++r.tokens;
          if (sr) {
            const float* rrow = lr.data() + size_t(j - p) * size_t(V);
            log_softmax(rrow, V, lp);
            ref_nll -= lp[size_t(target)];
            double k = 0;
            for (int64_t v = 0; v < V; ++v) k += std::exp(lp[size_t(v)]) * (lp[size_t(v)] - lq[size_t(v)]);
            k = std::max(0.0, k);  // rounding can make a zero divergence slightly negative
            kl += k;
            r.kl_max = std::max(r.kl_max, k);
            r.top1_agree += argmax(row, V) == argmax(rrow, V);
          }
        }
      p = q;
    }
    ++r.windows;
    prev_end = end;
    if (progress) progress(r.tokens, n - 1);
    if (end == n) break;
  }
  r.nll = nll / double(r.tokens);
  r.ppl = std::exp(r.nll);
  if (ref) {
    r.ref_nll = ref_nll / double(r.tokens);
    r.ref_ppl = std::exp(r.ref_nll);
    r.kl = kl / double(r.tokens);
  }
  return r;
}

}  // namespace mistral
