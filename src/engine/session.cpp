// ForwardPass over ragged batches, KVCache, and the single-sequence Session.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>

#include "mistral/engine.h"
#include "mistral/error.h"

namespace mistral {

namespace {

// Floats (alloc()'s unit) of one K or V buffer of a cache of shape s: its bytes rounded up.
size_t kv_buffer_floats(const AttnShape& s) {
  const size_t bytes = size_t(s.slots) * size_t(s.kv_dim()) * kv_elem_bytes(s);
  return (bytes + sizeof(float) - 1) / sizeof(float);
}

}  // namespace

KVCache::KVCache(Backend& be, const AttnShape& s, int64_t n_layers) : be_(be) {
  static std::atomic<uint64_t> next_id{1};
  id_ = next_id++;
  slots_ = s.slots;
  rolling_ = s.window > 0 && s.slots >= s.window;  // a windowed cache bounded below W never wraps
  kv_half_ = s.kv_half;
  kv_dim_ = s.kv_dim();
  const size_t floats = kv_buffer_floats(s);
  for (int64_t l = 0; l < n_layers; ++l) {
    KVLayer kv;
    kv.k = be_.alloc(floats);
    kv.v = be_.alloc(floats);
    layers_.push_back(kv);
  }
  bytes_ = int64_t(n_layers) * 2 * int64_t(floats * sizeof(float));
}

KVCache::~KVCache() {
  be_.graph_forget(id_);
  for (auto& kv : layers_) {
    be_.free(static_cast<float*>(kv.k));
    be_.free(static_cast<float*>(kv.v));
  }
}

ForwardPass::ForwardPass(const Model& model, Backend& backend, const SessionOptions& opt)
    : model_(model), be_(backend), w_(backend.place_weights(model.weights())) {
  const ModelConfig& c = model.config();
  shape_.n_heads = int(c.num_heads);
  shape_.n_kv_heads = int(c.num_kv_heads);
  shape_.head_dim = int(c.head_dim);
  shape_.window = int(c.sliding_window);
  shape_.rope_theta = float(c.rope_theta);
  shape_.half_precision = model.matmul_dtype() != DType::F32;
  if (opt.kv_dtype != DType::F32 && opt.kv_dtype != DType::F16) throw UsageError("the KV cache holds f32 or f16");
  shape_.kv_half = opt.kv_dtype == DType::F16;
  n_layers_ = c.num_layers;
  context_ = opt.context > 0 ? opt.context : c.max_position_embeddings;
  if (opt.chunk <= 0) throw UsageError("--chunk must be positive");
  chunk_ = opt.chunk;
  if (opt.sample_candidates <= 0) throw UsageError("sample_candidates must be positive");
  sample_candidates_ = opt.sample_candidates;
  graphs_ = opt.graphs;
  const char* unfused = std::getenv("MISTRAL_UNFUSED");
  fused_ = opt.fused && !(unfused && *unfused && *unfused != '0');
  shape_.slots = c.sliding_window > 0 ? c.sliding_window : context_;
}

ForwardPass::~ForwardPass() {
  be_.graph_reset();  // recorded graphs point at this pass's scratch buffers
  for (float* p : {x_, xn_, q_, k_, v_, att_, gate_, up_, xg_, logits_})
    if (p) be_.free(p);
}

void ForwardPass::set_observer(ActivationObserver* o) {
  if (o && be_.name() != "cpu") throw UsageError("calibration runs on the CPU backend (got " + be_.name() + ")");
  observer_ = o;
}

int64_t ForwardPass::capacity() const { return shape_.window > 0 ? INT64_MAX : context_; }

int64_t ForwardPass::cache_slots(int64_t max_positions) const {
  if (max_positions <= 0) return shape_.slots;
  if (shape_.window > 0) return std::min<int64_t>(max_positions, shape_.window);
  return std::min(max_positions, context_);
}

std::unique_ptr<KVCache> ForwardPass::new_cache(int64_t max_positions) {
  AttnShape s = shape_;
  s.slots = cache_slots(max_positions);
  return std::unique_ptr<KVCache>(new KVCache(be_, s, n_layers_));
}

int64_t ForwardPass::cache_bytes(int64_t max_positions) const {
  AttnShape s = shape_;
  s.slots = cache_slots(max_positions);
  return n_layers_ * 2 * int64_t(kv_buffer_floats(s) * sizeof(float));
}

int64_t ForwardPass::scratch_bytes(int T, int rows) const {
  const ModelConfig& c = model_.config();
  const int64_t t = std::max(T, 1), r = std::max(rows, 1);
  const int64_t per_token = 2 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.intermediate_size;
  return (t * per_token + r * (c.hidden_size + c.vocab_size)) * int64_t(sizeof(float));
}

void ForwardPass::ensure_scratch(int T, int rows) {
  const ModelConfig& c = model_.config();
  if (T > scratch_T_ || rows > scratch_rows_) be_.graph_reset();  // recorded graphs point at the old buffers
  if (T > scratch_T_) {
    for (float** p : {&x_, &xn_, &q_, &k_, &v_, &att_, &gate_, &up_})
      if (*p) be_.free(*p), *p = nullptr;
    const size_t t = size_t(T);
    x_ = be_.alloc(t * c.hidden_size);
    xn_ = be_.alloc(t * c.hidden_size);
    q_ = be_.alloc(t * c.q_dim());
    k_ = be_.alloc(t * c.kv_dim());
    v_ = be_.alloc(t * c.kv_dim());
    att_ = be_.alloc(t * c.q_dim());
    gate_ = be_.alloc(t * c.intermediate_size);
    up_ = be_.alloc(t * c.intermediate_size);
    scratch_T_ = T;
  }
  if (rows > scratch_rows_) {
    for (float** p : {&xg_, &logits_})
      if (*p) be_.free(*p), *p = nullptr;
    xg_ = be_.alloc(size_t(rows) * c.hidden_size);
    logits_ = be_.alloc(size_t(rows) * c.vocab_size);
    scratch_rows_ = rows;
  }
}

size_t ForwardPass::run(const std::vector<BatchSegment>& segs, float* logits_host, int32_t* ids_host,
                        const RowSampler* samplers) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = w_;
  int T = 0, rows = 0;
  std::vector<int32_t> ids;
  for (const auto& s : segs) {
    if (s.T <= 0 || !s.cache) throw UsageError("empty batch segment");
    if (s.cache->kv_half() != shape_.kv_half || s.cache->kv_dim() != shape_.kv_dim())
      throw UsageError("a KV cache made for another KV type or model shape");
    if (s.cache->n_past + s.T > s.cache->capacity())
      throw UsageError("context full: " + std::to_string(s.cache->n_past + s.T) + " positions needed, " +
                       std::to_string(s.cache->capacity()) + " available (use --ctx, up to max_position_embeddings)");
    for (int t = 0; t < s.T; ++t) {
      if (s.ids[t] < 0 || s.ids[t] >= c.vocab_size)
        throw UsageError("token id " + std::to_string(s.ids[t]) + " is out of range (vocab " +
                         std::to_string(c.vocab_size) + ")");
      ids.push_back(s.ids[t]);
    }
    T += s.T;
    if (s.want_logits) rows += s.all_logits ? s.T : 1;
  }
  if (segs.size() > 1) {  // each segment's positions follow its own cache's n_past
    std::vector<const KVCache*> caches;
    for (const auto& s : segs) caches.push_back(s.cache);
    std::sort(caches.begin(), caches.end());
    if (std::adjacent_find(caches.begin(), caches.end()) != caches.end())
      throw UsageError("two segments of one batch share a KV cache");
  }
  if (T == 0) return 0;
  if (logits_host && ids_host) throw Error("internal: a forward pass asked for both logits and next tokens");
  if (observer_) rows = 0, logits_host = nullptr, ids_host = nullptr;
  const bool want = logits_host || ids_host;
  ensure_scratch(T, rows);
  const size_t V = size_t(c.vocab_size);
  // A single-token step of a sequence that has been fed before: replay (or record) its graph.
  const bool graph = graphs_ && be_.graphs_supported() && segs.size() == 1 && T == 1 && rows == 1 && want &&
                     segs[0].cache->n_past > 0;
  if (graph) {
    const BatchSegment& s = segs[0];
    be_.set_step_inputs(s.ids[0], s.cache->n_past);
    if (!be_.graph_launch(s.cache->id())) {
      be_.graph_capture_begin();
      try {
        be_.embed(w.embed, ids.data(), T, x_);
        body(segs, T, rows);
      } catch (...) {
        be_.graph_capture_abort();
        throw;
      }
      be_.graph_capture_end(s.cache->id());
      if (!be_.graph_launch(s.cache->id())) throw Error("internal: a recorded decode graph did not launch");
    }
    s.cache->n_past += 1;
    if (ids_host)
      choose(1, ids_host, samplers);
    else be_.to_host(logits_host, logits_, V);
    return 1;
  }
  be_.embed(w.embed, ids.data(), T, x_);
  body(segs, T, rows);
  for (const auto& s : segs) s.cache->n_past += s.T;
  if (rows == 0 || !want) return 0;
  if (ids_host)
    choose(rows, ids_host, samplers);
  else be_.to_host(logits_host, logits_, size_t(rows) * V);
  return size_t(rows);
}

void ForwardPass::choose(int rows, int32_t* ids_host, const RowSampler* samplers) {
  const int64_t V = model_.config().vocab_size;
  bool greedy = true;
  for (int r = 0; samplers && r < rows; ++r) greedy = greedy && (!samplers[r].sampler || samplers[r].sampler->greedy());
  if (greedy) {
    be_.argmax_rows(logits_, rows, V, ids_host);
    return;
  }
  static const std::vector<int32_t> kNoHistory;
  const int max_k = int(std::min<int64_t>(V, sample_candidates_));
  cand_req_.resize(size_t(rows));
  whole_.assign(size_t(rows), 0);
  int kmax = 1;
  bool any_candidates = false;
  for (int r = 0; r < rows; ++r) {
    const RowSampler& s = samplers[r];
    if (!s.sampler) {  // the argmax: the first of one candidate
      cand_req_[size_t(r)] = CandidateRequest();
      any_candidates = true;
      continue;
    }
    if (s.sampler->needs_whole_row(V, max_k)) {  // no candidates would settle it: none are looked for
      whole_[size_t(r)] = 1;
      cand_req_[size_t(r)] = CandidateRequest();
      continue;
    }
    cand_req_[size_t(r)] = s.sampler->request(s.history ? *s.history : kNoHistory, V, max_k);
    kmax = std::max(kmax, cand_req_[size_t(r)].k);
    any_candidates = true;
  }
  cand_ids_.resize(size_t(rows) * size_t(kmax));
  cand_logits_.resize(cand_ids_.size());
  cand_z_.resize(size_t(rows));
  if (any_candidates)
    be_.top_candidates_rows(logits_, rows, V, cand_req_.data(), kmax, cand_ids_.data(), cand_logits_.data(),
                            cand_z_.data());
  // A draw from the whole row r (the same draw pick() would have made).
  auto whole_row_draw = [&](int r) {
    const RowSampler& s = samplers[r];
    row_host_.resize(size_t(V));
    be_.to_host(row_host_.data(), logits_ + size_t(r) * size_t(V), size_t(V));
    return s.sampler->sample(row_host_.data(), V, s.history ? *s.history : kNoHistory);
  };
  for (int r = 0; r < rows; ++r) {
    const RowSampler& s = samplers[r];
    if (whole_[size_t(r)]) {
      ids_host[r] = whole_row_draw(r);
      continue;
    }
    Candidates c;
    c.ids = cand_ids_.data() + size_t(r) * size_t(kmax);
    c.logits = cand_logits_.data() + size_t(r) * size_t(kmax);
    c.n = cand_req_[size_t(r)].k;
    c.vocab = V;
    c.z = cand_z_[size_t(r)];
    if (!s.sampler) {
      ids_host[r] = c.ids[0];
      continue;
    }
    const int32_t id = s.sampler->pick(c);
    ids_host[r] = id >= 0 ? id : whole_row_draw(r);  // candidates that do not settle it: the whole row
  }
}

void ForwardPass::body(const std::vector<BatchSegment>& segs, int T, int rows) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = w_;
  const size_t D = size_t(c.hidden_size);
  const float eps = float(c.rms_norm_eps);
  const size_t QD = size_t(c.q_dim()), KD = size_t(c.kv_dim());
  const size_t n_layers = w.layers.size();
  // x += delta; xn = rmsnorm(x) * norm: one fused op, or the add and the norm.
  auto add_norm = [&](const Weight& norm) {
    if (fused_) {
      be_.add_rmsnorm(x_, xn_, norm, eps, T, xn_);
    } else {
      be_.add(x_, xn_, size_t(T) * D);
      be_.rmsnorm(x_, norm, eps, T, xn_);
    }
  };
  // With fn (a backend that folds the norms into the products, for this T): each product that follows a
  // norm computes it (norm_matmul_*), the output and down projections add into x_ (matmul_residual), and
  // xn_ is their scratch; only the final norm runs alone. Otherwise xn_ holds the input of each layer's
  // attention: the first layer's norm here, the others' fused with the residual add that ends the layer
  // before. Calibration (observer_) reads xn_: it takes the unfused order.
  const bool fn = fused_ && !observer_ && n_layers > 0 && be_.fuses_norm(T);
  if (!fn) be_.rmsnorm(x_, n_layers > 0 ? w.layers[0].attn_norm : w.norm, eps, T, xn_);
  const int64_t obs_begin = observer_ ? observer_->first_layer() : INT64_MAX;
  auto observe = [&](size_t l, LinearInput which, const float* p, size_t K) {
    if (int64_t(l) >= obs_begin) observer_->observe(int64_t(l), which, p, T, int64_t(K));
  };
  for (size_t l = 0; l < n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    if (observer_ && int64_t(l) >= observer_->end_layer()) return;  // nothing after the observed layers is needed
    observe(l, LinearInput::AttnIn, xn_, D);
    {
      const Weight* qkv[3] = {&L.wq, &L.wk, &L.wv};
      float* const out[3] = {q_, k_, v_};
      if (fn) {
        be_.norm_matmul_multi(x_, L.attn_norm, eps, T, qkv, out, 3, xn_);
      } else if (fused_) {
        be_.matmul_multi(xn_, T, qkv, out, 3);
      } else {
        for (int i = 0; i < 3; ++i) be_.matmul(xn_, T, *qkv[i], out[i]);
      }
    }
    size_t off = 0;  // row offset of the segment in the batch
    for (size_t i = 0; i < segs.size();) {
      // A run of two or more single-token segments (decode steps of different sequences): one decode_rows
      // call, which a GPU backend runs in a few launches. A lone one (batch 1, whose step may be recorded
      // as a graph) keeps the per-segment path.
      size_t e = i;
      while (e < segs.size() && segs[e].T == 1) ++e;
      if (e - i >= 2) {
        rows_.clear();
        for (size_t j = i; j < e; ++j) {
          DecodeRow r;
          r.cache = segs[j].cache->layer(l);
          r.pos = segs[j].cache->n_past;
          r.slots = segs[j].cache->slots();
          rows_.push_back(r);
        }
        be_.decode_rows(q_ + off * QD, k_ + off * KD, v_ + off * KD, rows_.data(), int(e - i), shape_, fused_,
                        att_ + off * QD);
        off += e - i;
        i = e;
        continue;
      }
      const BatchSegment& s = segs[i++];
      AttnShape sh = shape_;
      sh.slots = s.cache->slots();
      // Attention reads positions before the chunk's start from the cache and the chunk's own from k/v:
      // storing the chunk first is only allowed where that evicts nothing the chunk's queries read (every
      // decode step); attend_chunk picks the order.
      be_.attend_chunk(q_ + off * QD, k_ + off * KD, v_ + off * KD, s.cache->layer(l), s.T, s.cache->n_past, sh, fused_,
                       att_ + off * QD);
      off += size_t(s.T);
    }
    observe(l, LinearInput::AttnOut, att_, QD);
    if (fn) {
      be_.matmul_residual(att_, T, L.wo, x_, xn_);
      be_.norm_matmul_swiglu(x_, L.ffn_norm, eps, T, L.w_gate, L.w_up, gate_, up_, xn_);
      be_.matmul_residual(gate_, T, L.w_down, x_, xn_);
      if (l + 1 == n_layers && rows > 0) be_.rmsnorm(x_, w.norm, eps, T, xn_);  // the final norm, every row
      continue;
    }
    be_.matmul(att_, T, L.wo, xn_);
    add_norm(L.ffn_norm);
    observe(l, LinearInput::MlpIn, xn_, D);
    if (fused_) {
      be_.matmul_swiglu(xn_, T, L.w_gate, L.w_up, gate_, up_);
    } else {
      be_.matmul(xn_, T, L.w_gate, gate_);
      be_.matmul(xn_, T, L.w_up, up_);
      be_.swiglu(gate_, up_, size_t(T) * size_t(c.intermediate_size), gate_);
    }
    observe(l, LinearInput::MlpAct, gate_, size_t(c.intermediate_size));
    be_.matmul(gate_, T, L.w_down, xn_);
    if (l + 1 < n_layers) add_norm(w.layers[l + 1].attn_norm);
    else if (rows > 0) add_norm(w.norm);  // the final norm, over every row (row by row, so as exact as on a few)
  }
  if (rows == 0) return;
  // xn_ holds the final norm of every row: gather the rows whose logits are wanted (unless that is all of
  // them, in order), then lm_head on those rows only.
  bool every_row = true;
  for (const auto& s : segs) every_row = every_row && s.want_logits && (s.all_logits || s.T == 1);
  const float* normed = xn_;
  if (!every_row) {
    size_t off = 0, r = 0;
    for (const auto& s : segs) {
      if (s.want_logits) {
        const size_t first = s.all_logits ? off : off + size_t(s.T) - 1;
        const size_t n = s.all_logits ? size_t(s.T) : 1;
        be_.copy(xg_ + r * D, xn_ + first * D, n * D);
        r += n;
      }
      off += size_t(s.T);
    }
    normed = xg_;
  }
  be_.matmul(normed, rows, w.lm_head, logits_);
}

Session::Session(const Model& model, Backend& backend, const SessionOptions& opt, int64_t max_positions)
    : fp_(model, backend, opt), cache_(fp_.new_cache(max_positions)) {}

std::vector<float> Session::feed(const std::vector<int32_t>& ids, bool all_logits) {
  const size_t V = size_t(fp_.model().config().vocab_size);
  std::vector<float> out(all_logits ? ids.size() * V : V);
  feed_chunks(ids, all_logits, out.data(), nullptr);
  return out;
}

int32_t Session::feed_greedy(const std::vector<int32_t>& ids) { return feed_next(ids, nullptr); }

int32_t Session::feed_sample(const std::vector<int32_t>& ids, Sampler& sampler, const std::vector<int32_t>& history) {
  const RowSampler rs{&sampler, &history};
  return feed_next(ids, &rs);
}

int32_t Session::feed_next(const std::vector<int32_t>& ids, const RowSampler* sampler) {
  int32_t id = -1;
  feed_chunks(ids, false, nullptr, &id, sampler);
  if (id < 0) throw Error("internal: no next token (a forward pass with an observer returns none)");
  return id;
}

void Session::feed_chunks(const std::vector<int32_t>& ids, bool all_logits, float* logits_host, int32_t* ids_host,
                          const RowSampler* sampler) {
  if (ids.empty()) throw UsageError("nothing to feed: empty token sequence");
  if (n_past() + int64_t(ids.size()) > capacity())
    throw UsageError("context full: " + std::to_string(n_past() + int64_t(ids.size())) + " positions needed, " +
                     std::to_string(capacity()) + " available (use --ctx, up to max_position_embeddings)");
  const size_t V = size_t(fp_.model().config().vocab_size);
  size_t done = 0;
  while (done < ids.size()) {
    BatchSegment s;
    s.cache = cache_.get();
    s.ids = ids.data() + done;
    s.T = int(std::min<size_t>(size_t(fp_.chunk()), ids.size() - done));
    const bool last = done + size_t(s.T) == ids.size();
    s.all_logits = all_logits;
    s.want_logits = all_logits || last;
    if (!s.want_logits) fp_.run({s}, nullptr);
    else if (ids_host)
      fp_.run({s}, nullptr, ids_host, sampler);
    else fp_.run({s}, logits_host + (all_logits ? done * V : 0));
    done += size_t(s.T);
  }
}

}  // namespace mistral
