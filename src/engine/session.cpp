// Session: chunked prefill and decode over a rolling (windowed) or full KV cache.
#include <algorithm>
#include <climits>

#include "mistral/engine.h"
#include "mistral/error.h"

namespace mistral {

Session::Session(const Model& model, Backend& backend, const SessionOptions& opt) : model_(model), be_(backend) {
  const ModelConfig& c = model.config();
  shape_.n_heads = int(c.num_heads);
  shape_.n_kv_heads = int(c.num_kv_heads);
  shape_.head_dim = int(c.head_dim);
  shape_.window = int(c.sliding_window);
  shape_.rope_theta = float(c.rope_theta);
  context_ = opt.context > 0 ? opt.context : c.max_position_embeddings;
  if (opt.chunk <= 0) throw UsageError("--chunk must be positive");
  chunk_ = opt.chunk;
  shape_.slots = c.sliding_window > 0 ? c.sliding_window : context_;
  const size_t n = size_t(shape_.slots) * size_t(shape_.kv_dim());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    KVLayer kv;
    kv.k = be_.alloc(n);
    kv.v = be_.alloc(n);
    cache_.push_back(kv);
  }
}

Session::~Session() {
  for (auto& kv : cache_) {
    be_.free(kv.k);
    be_.free(kv.v);
  }
  for (float* p : {x_, xn_, q_, k_, v_, att_, gate_, up_, logits_})
    if (p) be_.free(p);
}

int64_t Session::capacity() const { return shape_.window > 0 ? INT64_MAX : context_; }

int64_t Session::cache_bytes() const {
  return int64_t(cache_.size()) * 2 * shape_.slots * shape_.kv_dim() * int64_t(sizeof(float));
}

void Session::ensure_scratch(int T) {
  if (T <= scratch_T_) return;
  for (float** p : {&x_, &xn_, &q_, &k_, &v_, &att_, &gate_, &up_, &logits_})
    if (*p) be_.free(*p), *p = nullptr;
  const ModelConfig& c = model_.config();
  const size_t t = size_t(T);
  x_ = be_.alloc(t * c.hidden_size);
  xn_ = be_.alloc(t * c.hidden_size);
  q_ = be_.alloc(t * c.q_dim());
  k_ = be_.alloc(t * c.kv_dim());
  v_ = be_.alloc(t * c.kv_dim());
  att_ = be_.alloc(t * std::max(c.q_dim(), c.hidden_size));
  gate_ = be_.alloc(t * c.intermediate_size);
  up_ = be_.alloc(t * c.intermediate_size);
  logits_ = be_.alloc(t * c.vocab_size);
  scratch_T_ = T;
}

void Session::forward_chunk(const int32_t* ids, int T, bool all_logits, float* logits_host) {
  // logits_host == nullptr: a prefill chunk whose logits nobody reads (lm_head is skipped).
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  const size_t D = size_t(c.hidden_size);
  const float eps = float(c.rms_norm_eps);
  for (int t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= c.vocab_size)
      throw UsageError("token id " + std::to_string(ids[t]) + " is out of range (vocab " +
                       std::to_string(c.vocab_size) + ")");
  ensure_scratch(T);
  be_.embed(w.embed, ids, T, x_);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    be_.rmsnorm(x_, L.attn_norm, eps, T, xn_);
    be_.matmul(xn_, T, L.wq, q_);
    be_.matmul(xn_, T, L.wk, k_);
    be_.matmul(xn_, T, L.wv, v_);
    be_.rope(q_, k_, T, n_past_, shape_);
    be_.attention(q_, k_, v_, cache_[l], T, n_past_, shape_, att_);
    be_.cache_write(k_, v_, cache_[l], T, n_past_, shape_);
    be_.matmul(att_, T, L.wo, xn_);
    be_.add(x_, xn_, size_t(T) * D);
    be_.rmsnorm(x_, L.ffn_norm, eps, T, xn_);
    be_.matmul(xn_, T, L.w_gate, gate_);
    be_.matmul(xn_, T, L.w_up, up_);
    be_.swiglu(gate_, up_, size_t(T) * size_t(c.intermediate_size), gate_);
    be_.matmul(gate_, T, L.w_down, xn_);
    be_.add(x_, xn_, size_t(T) * D);
  }
  if (!logits_host) return;
  // Final norm and lm_head: every row, or only the last one.
  const int first = all_logits ? 0 : T - 1;
  const int n = T - first;
  be_.rmsnorm(x_ + size_t(first) * D, w.norm, eps, n, xn_);
  be_.matmul(xn_, n, w.lm_head, logits_);
  be_.to_host(logits_host, logits_, size_t(n) * size_t(c.vocab_size));
}

std::vector<float> Session::feed(const std::vector<int32_t>& ids, bool all_logits) {
  if (ids.empty()) throw UsageError("nothing to feed: empty token sequence");
  if (n_past_ + int64_t(ids.size()) > capacity())
    throw UsageError("context full: " + std::to_string(n_past_ + ids.size()) + " positions needed, " +
                     std::to_string(capacity()) + " available (use --ctx, up to max_position_embeddings)");
  const int64_t V = model_.config().vocab_size;
  std::vector<float> out(all_logits ? ids.size() * size_t(V) : size_t(V));
  size_t done = 0;
  while (done < ids.size()) {
    const int T = int(std::min<size_t>(size_t(chunk_), ids.size() - done));
    const bool last = done + size_t(T) == ids.size();
    if (all_logits) {
      forward_chunk(ids.data() + done, T, true, out.data() + done * size_t(V));
    } else if (last) {
      forward_chunk(ids.data() + done, T, false, out.data());
    } else {
      forward_chunk(ids.data() + done, T, false, nullptr);
    }
    n_past_ += T;
    done += size_t(T);
  }
  return out;
}

}  // namespace mistral
