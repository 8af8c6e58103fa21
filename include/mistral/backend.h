// The coarse ops the forward pass is written against. CpuBackend is the reference; a CUDA backend
// implements the same interface over device memory. Activations are fp32; weights keep their dtype.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mistral/model.h"
#include "mistral/sampler.h"

namespace mistral {

struct AttnShape {
  int n_heads = 0;     // Hq
  int n_kv_heads = 0;  // Hkv; query head h reads kv head h / (Hq / Hkv)
  int head_dim = 0;    // hd
  int window = 0;      // sliding window W (0 = full attention)
  int64_t slots = 0;   // cache rows per layer: W with a window, else the context size
  float rope_theta = 10000.f;
  // The model's prefill matmuls round activations to 16 bits (fp16/bf16 or quantized weights): a
  // device backend may then run chunk attention on fp16 q, k, v with fp32 accumulation. The CPU
  // ignores it.
  bool half_precision = false;
  // The KV cache holds fp16 (saturated at +-65504, round to nearest even) instead of fp32. Attention then
  // reads a chunk's own K/V rows rounded the same way, so a token's keys have the same values whether
  // they come from the cache or from its chunk (decode equals prefill, whatever the chunking).
  bool kv_half = false;
  int kv_dim() const { return n_kv_heads * head_dim; }
  int q_dim() const { return n_heads * head_dim; }
};

// One layer's cache: K and V, each [slots, Hkv*hd] of fp32, or of fp16 (uint16 bits) with
// AttnShape::kv_half; position p lives in row p % slots.
struct KVLayer {
  void* k = nullptr;
  void* v = nullptr;
};

// Bytes of one cache element.
inline size_t kv_elem_bytes(const AttnShape& s) { return s.kv_half ? 2 : 4; }

// Whether a chunk of T positions at start .. start+T-1 may be stored in its cache BEFORE its attention
// runs (rope_cache_write, then attention) with the same result as storing it after: true when no row the
// chunk writes evicts a cached position that one of its queries still reads. That holds for every
// single-token step of a rolling cache (whatever its position, so also for recorded decode graphs
// replayed later), for any chunk of a cache that never wraps (full attention, or a windowed cache
// bounded below W), and for a windowed chunk until the cache wraps; a chunk that wraps the rolling
// cache, or is longer than it, must attend first.
inline bool cache_write_before_attention_ok(int T, int64_t start, const AttnShape& s) {
  if (T <= 0 || s.slots <= 0) return false;
  // Oldest position any query of the chunk reads from the cache (the first query's window start).
  const int64_t oldest_read = s.window > 0 && start - s.window + 1 > 0 ? start - s.window + 1 : 0;
  // Newest position the chunk's writes evict: slot (start + T - 1) % slots held start + T - 1 - slots.
  const int64_t newest_evicted = start + int64_t(T) - 1 - s.slots;
  return newest_evicted < oldest_read;
}

// One row of Backend::decode_rows: a single token of a sequence that has its own KV cache.
struct DecodeRow {
  KVLayer cache;      // the sequence's cache for this layer, [slots, Hkv*hd] each
  int64_t pos = 0;    // the token's position (the cache's n_past): RoPE angle, cache row pos % slots
  int64_t slots = 0;  // rows of this cache (full-attention caches differ per sequence)
};

// Device memory a backend holds (GPU backends; see Backend::device_memory).
struct DeviceMemoryInfo {
  size_t free = 0, total = 0;  // the device's free and total memory now
  size_t weights = 0;          // weight copies (weight_bytes())
  size_t buffers = 0;          // held through alloc(): KV caches and activations
  size_t internal = 0;         // the backend's own scratch (operand conversion, dequantization, attention partials...)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Places the model's weights where the ops read them (the CPU reads them where they are; a GPU
  // backend uploads them once and owns the copies). The result stays valid while the backend lives.
  virtual ModelWeights place_weights(const ModelWeights& w) { return w; }
  // One weight (tests, tools). Device copies are keyed by the host address: the host memory must stay
  // alive and unchanged while the backend lives.
  virtual Weight place_weight(const Weight& w) { return w; }
  // Bytes of device memory this backend holds for weights (0 for the CPU, which maps the files).
  virtual size_t weight_bytes() const { return 0; }

  // Memory for activations and caches (fp32), owned by the backend until free().
  virtual float* alloc(size_t n_floats) = 0;
  virtual void free(float* p) = 0;
  virtual void to_device(float* dst, const float* src, size_t n) = 0;
  virtual void to_host(float* dst, const float* src, size_t n) = 0;
  virtual void zero(float* p, size_t n) = 0;
  virtual void copy(float* dst, const float* src, size_t n) = 0;  // device to device

  // x[T, D] = E[ids[t], :]; ids on the host.
  virtual void embed(const Weight& E, const int32_t* ids, int T, float* x) = 0;
  // y[T, D] = x / sqrt(mean(x^2) + eps) * w, per row.
  virtual void rmsnorm(const float* x, const Weight& w, float eps, int T, float* y) = 0;
  // y[T, N] = x[T, K] * W[N, K]^T.
  virtual void matmul(const float* x, int T, const Weight& W, float* y) = 0;
  // y[i][T, N_i] = x[T, K] * W[i][N_i, K]^T for i < n: several products of the same input (q, k, v;
  // gate, up), which a device backend may run as one launch. Each result equals matmul's.
  virtual void matmul_multi(const float* x, int T, const Weight* const* W, float* const* y, int n) {
    for (int i = 0; i < n; ++i) matmul(x, T, *W[i], y[i]);
  }
  // The feed-forward's first half: gate[T, N] = swiglu(x * W_gate^T, x * W_up^T), up[T, N] scratch (its
  // contents after the call are unspecified). A device backend may fuse it into one launch; the result
  // equals matmul_multi followed by swiglu.
  virtual void matmul_swiglu(const float* x, int T, const Weight& w_gate, const Weight& w_up, float* gate,
                             float* up) {
    const Weight* w[2] = {&w_gate, &w_up};
    float* const y[2] = {gate, up};
    matmul_multi(x, T, w, y, 2);
    swiglu(gate, up, size_t(T) * size_t(w_gate.rows), gate);
  }
  // The norms folded into the products (a decode-step fusion): the forward pass uses the three calls
  // below instead of rmsnorm / add_rmsnorm around the products where fuses_norm(T) says so. Each default
  // is the composition it replaces; xn and tmp are scratch the call may overwrite.
  virtual bool fuses_norm(int T) const { return false; }
  // y[i] = (rmsnorm(x) * norm) * W[i]^T, i < n: rmsnorm(x, norm, eps, T, xn) then matmul_multi(xn, ...).
  virtual void norm_matmul_multi(const float* x, const Weight& norm, float eps, int T, const Weight* const* W,
                                 float* const* y, int n, float* xn) {
    rmsnorm(x, norm, eps, T, xn);
    matmul_multi(xn, T, W, y, n);
  }
  // matmul_swiglu of rmsnorm(x) * norm (xn as above).
  virtual void norm_matmul_swiglu(const float* x, const Weight& norm, float eps, int T, const Weight& w_gate,
                                  const Weight& w_up, float* gate, float* up, float* xn) {
    rmsnorm(x, norm, eps, T, xn);
    matmul_swiglu(xn, T, w_gate, w_up, gate, up);
  }
  // x[T, N] += a[T, K] * W[N, K]^T (the residual add): matmul(a, T, W, tmp) then add(x, tmp).
  virtual void matmul_residual(const float* a, int T, const Weight& W, float* x, float* tmp) {
    matmul(a, T, W, tmp);
    add(x, tmp, size_t(T) * size_t(W.rows));
  }
  // Rotate-half RoPE in place on q[T, Hq*hd] and k[T, Hkv*hd] for positions start .. start+T-1.
  virtual void rope(float* q, float* k, int T, int64_t start, const AttnShape& s) = 0;
  // out[T, Hq*hd]: causal (and windowed) attention of the chunk at positions start .. start+T-1.
  // Keys before `start` come from the cache, keys inside the chunk from k/v[T, Hkv*hd] (so a chunk
  // longer than the window is exact). Call before cache_write for the same chunk.
  virtual void attention(const float* q, const float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                         const AttnShape& s, float* out) = 0;
  // Stores the chunk's K/V rows into the cache (only the last `slots` positions when T > slots).
  virtual void cache_write(const float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                           const AttnShape& s) = 0;
  // out[i] = silu(gate[i]) * up[i].
  virtual void swiglu(const float* gate, const float* up, size_t n, float* out) = 0;
  // x[i] += y[i].
  virtual void add(float* x, const float* y, size_t n) = 0;
  virtual void synchronize() {}
  // out[r] (host memory) = the first index of the largest value of row r of x[rows, n] (n >= 1), as
  // mistral::argmax scans it: greedy decoding without bringing the logits to the host. The default
  // copies the rows over and scans them there.
  virtual void argmax_rows(const float* x, int rows, int64_t n, int32_t* out) {
    std::vector<float> h(size_t(rows) * size_t(n));
    to_host(h.data(), x, h.size());
    host_argmax_rows(h.data(), rows, n, out);
  }
  // For each row r of x[rows, n]: what req[r] asks for (Sampler::request, k <= kmax), as
  // mistral::top_candidates finds it, into ids[r * kmax ..], logits[r * kmax ..] and z[r] (host
  // memory): sampling with a few KB leaving the device. The default copies the rows over.
  virtual void top_candidates_rows(const float* x, int rows, int64_t n, const CandidateRequest* req, int kmax,
                                   int32_t* ids, float* logits, double* z) {
    std::vector<float> h(size_t(rows) * size_t(n));
    to_host(h.data(), x, h.size());
    host_top_candidates_rows(h.data(), rows, n, req, kmax, ids, logits, z);
  }
  // What the two defaults above do once the rows are in host memory.
  static void host_argmax_rows(const float* h, int rows, int64_t n, int32_t* out) {
    for (int r = 0; r < rows; ++r) out[r] = argmax(h + size_t(r) * size_t(n), n);
  }
  static void host_top_candidates_rows(const float* h, int rows, int64_t n, const CandidateRequest* req, int kmax,
                                       int32_t* ids, float* logits, double* z) {
    for (int r = 0; r < rows; ++r)
      top_candidates(h + size_t(r) * size_t(n), n, req[r], ids + size_t(r) * size_t(kmax),
                     logits + size_t(r) * size_t(kmax), z + r);
  }

  // Fused ops. Each default runs the unfused sequence, so a backend without its own version (the CPU)
  // gives exactly the results of the separate ops.
  //
  // The residual add fused with the norm that follows it: x[T, D] += delta[T, D], then
  // y[T, D] = rmsnorm(x) * w (D = w.cols). y may alias delta (not x).
  virtual void add_rmsnorm(float* x, const float* delta, const Weight& w, float eps, int T, float* y) {
    add(x, delta, size_t(T) * size_t(w.cols));
    rmsnorm(x, w, eps, T, y);
  }
  // RoPE fused with the cache write: rotates q[T, Hq*hd] and k[T, Hkv*hd] in place for positions
  // start .. start+T-1, then stores the rotated k rows and the v rows in their cache slots (only the last
  // `slots` positions when T > slots), as rope() then cache_write(). Attention for the chunk still reads
  // the chunk's own keys from k/v; call it before attention only where cache_write_before_attention_ok().
  virtual void rope_cache_write(float* q, float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                                const AttnShape& s) {
    rope(q, k, T, start, s);
    cache_write(k, v, cache, T, start, s);
  }

  // rope_cache_write then attention (only where cache_write_before_attention_ok()): a device backend may do
  // both in fewer launches, leaving q and k as they were or rotated (their contents afterwards are
  // unspecified); out and the cache as the two calls leave them.
  virtual void rope_attend(float* q, float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                           const AttnShape& s, float* out) {
    rope_cache_write(q, k, v, cache, T, start, s);
    attention(q, k, v, cache, T, start, s, out);
  }

  // RoPE, attention and the cache write of one chunk of T tokens at positions start .. start+T-1, in the
  // order the forward pass uses: with `fused`, and where cache_write_before_attention_ok(), RoPE fused with
  // the cache write and then attention; otherwise rope, attention, then cache_write. out: [T, Hq*hd].
  void attend_chunk(float* q, float* k, const float* v, const KVLayer& cache, int T, int64_t start, const AttnShape& s,
                    bool fused, float* out) {
    if (fused && cache_write_before_attention_ok(T, start, s)) {
      rope_attend(q, k, v, cache, T, start, s, out);
    } else {
      rope(q, k, T, start, s);
      attention(q, k, v, cache, T, start, s, out);
      cache_write(k, v, cache, T, start, s);
    }
  }
  // A run of n single-token segments of different sequences (a batched decode step): row i is token i of
  // q[n, Hq*hd], k and v[n, Hkv*hd] and out[n, Hq*hd], at position rows[i].pos of cache rows[i].cache
  // with rows[i].slots rows (s.slots is not used). Each row gets exactly attend_chunk() with T = 1; the
  // default runs that row after row, so a backend without its own version gives the per-segment results
  // bit for bit. A GPU backend does all rows in a few launches. Not for recorded graphs (each row has its
  // own host-side position); rows must use distinct caches.
  virtual void decode_rows(float* q, float* k, const float* v, const DecodeRow* rows, int n, const AttnShape& s,
                           bool fused, float* out) {
    const size_t qd = size_t(s.q_dim()), kvd = size_t(s.kv_dim());
    for (int i = 0; i < n; ++i) {
      AttnShape sh = s;
      sh.slots = rows[i].slots;
      const size_t r = size_t(i);
      attend_chunk(q + r * qd, k + r * kvd, v + r * kvd, rows[i].cache, 1, rows[i].pos, sh, fused, out + r * qd);
    }
  }

  // Device-to-device copy rate in GB/s, (bytes read + bytes written) / s, best of a few large copies;
  // 0 when the backend has no device memory of its own to measure (the CPU: bench measures host memory).
  virtual double copy_bandwidth_gbs() { return 0; }
  // Fills `m` and returns true for a backend with its own device memory; false (m untouched) otherwise.
  virtual bool device_memory(DeviceMemoryInfo* m) const { return false; }

  // Decode-step graphs (CUDA): a single-token step is recorded once per KV cache and replayed with
  // the token id and position read from device memory. Backends without graphs return false.
  virtual bool graphs_supported() const { return false; }
  // Sets the token and position the next captured or replayed step reads.
  virtual void set_step_inputs(int32_t id, int64_t pos) {}
  // Replays the graph recorded under `key`; false when there is none.
  virtual bool graph_launch(uint64_t key) { return false; }
  // Between begin and end, ops are recorded (reading the step inputs from device memory), not run.
  virtual void graph_capture_begin() {}
  virtual void graph_capture_end(uint64_t key) {}
  // Abandons a capture that failed half-way (the stream returns to normal execution).
  virtual void graph_capture_abort() {}
  // Forgets the graph recorded under `key` (its cache is going away), or every recorded graph
  // (their buffers are about to change).
  virtual void graph_forget(uint64_t key) {}
  virtual void graph_reset() {}
};

std::unique_ptr<Backend> make_cpu_backend(int n_threads);
// A CUDA backend on `device`. Throws Error when the build has no CUDA or no usable GPU is present.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);
// Why no CUDA device can be used ("" when one can): no CUDA in this build, no GPU, old driver...
std::string cuda_unavailable_reason();
// Reports the number of threads of a CPU backend (for --verbose); 0 for other backends.
int cpu_backend_threads(const Backend& b);

}  // namespace mistral
