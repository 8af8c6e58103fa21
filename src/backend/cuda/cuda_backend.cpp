// CUDA backend: the Backend ops on one stream over device memory. Weights are uploaded once
// (place_weights); activations and KV caches are fp32 device buffers. Small-T matmuls use our GEMV
// kernels, larger ones cuBLAS (activations converted to the weight dtype, fp32 accumulation; quantized
// weights are first dequantized to fp16 into a scratch matrix).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "argmax.cuh"
#include "attention.cuh"
#include "attention_decode.cuh"
#include "cuda_check.h"
#include "elementwise.cuh"
#include "embed.cuh"
#include "gemv.cuh"
#include "mistral/backend.h"
#include "quant_gemv.cuh"
#include "quant_mma.cuh"
#include "rmsnorm.cuh"
#include "rope.cuh"
#include "top_candidates.cuh"

namespace mistral {
namespace cuda {

void throw_cuda(const char* stmt, const char* file, int line, const std::string& what) {
  int dev = -1;
  cudaGetDevice(&dev);
  throw Error(std::string("CUDA error on device ") + std::to_string(dev) + ": " + what + " in `" + stmt + "` at " +
              file + ":" + std::to_string(line));
}

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

bool stream_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(s, &st) == cudaSuccess && st == cudaStreamCaptureStatusActive;
}

// Whether environment variable `name` is exactly "1" (the experiments' switches, read once per backend).
bool env_is_one(const char* name) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, "1") == 0;
}

bool sync_after_launch() {
  static const bool on = [] {
    const char* e = std::getenv("MISTRAL_CUDA_SYNC");
    return e && *e && *e != '0';
  }();
  return on;
}

namespace {

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    MR_CUDA_CHECK(cudaSetDevice(device));
    MR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MR_CUBLAS_CHECK(cublasCreate(&blas_));
    MR_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    cudaDeviceProp prop;
    MR_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ", sm_" + std::to_string(prop.major) +
            std::to_string(prop.minor) + ")";
    n_sms_ = prop.multiProcessorCount;
    if (knockout_)
      std::fprintf(stderr,
                   "note: MISTRAL_CUDA_KNOCKOUT=%s: those single-token ops are not run, so every output "
                   "is wrong (for timing what they cost)\n",
                   std::getenv("MISTRAL_CUDA_KNOCKOUT"));
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    graph_reset();
    if (step_host_) cudaFreeHost(step_host_);
    if (step_dev_) cudaFree(step_dev_);
    for (auto& kv : uploaded_) cudaFree(kv.second);
    for (auto& kv : mma_tiles_) cudaFree(kv.second);
    for (auto& kv : inv_freq_) cudaFree(kv.second);
    for (auto& kv : norm_f32_) cudaFree(kv.second);
    if (ids_) cudaFree(ids_);
    if (conv_) cudaFree(conv_);
    if (deq_) cudaFree(deq_);
    if (split_) cudaFree(split_);
    for (cudaEvent_t& e : rows_ev_)
      if (e) cudaEventDestroy(e);
    if (rows_host_) cudaFreeHost(rows_host_);
    if (rows_dev_) cudaFree(rows_dev_);
    if (rows_split_) cudaFree(rows_split_);
    for (PinnedPair* b : {&top_in_, &top_out_, &argmax_out_}) {
      if (b->host) cudaFreeHost(b->host);
      if (b->dev) cudaFree(b->dev);
    }
    if (top_work_) cudaFree(top_work_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  size_t weight_bytes() const override { return weight_bytes_; }

  ModelWeights place_weights(const ModelWeights& w) override {
    std::vector<const Weight*> all = {&w.embed, &w.norm, &w.lm_head};
    for (const auto& l : w.layers)
      for (const Weight* x : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down})
        all.push_back(x);
    std::map<const void*, size_t> distinct;  // host buffers not yet on the device (data and scales)
    std::map<const void*, size_t> mma_bytes;  // MISTRAL_CUDA_QUANT_MMA=1: the tile copies to come
    size_t dequant = 0;                      // fp16 scratch for the largest quantized matrix (prefill)
    for (const Weight* x : all) {
      check_dtype(*x);
      if (!uploaded_.count(x->data)) distinct[x->data] = x->nbytes();
      if (is_quantized(x->dtype)) {
        if (!uploaded_.count(x->scales)) distinct[x->scales] = x->scale_bytes();
        dequant = std::max(dequant, size_t(x->rows) * size_t(x->cols) * 2);
        if (!uploaded_.count(x->data) && wants_mma(*x))
          mma_bytes[x->data] = quant_mma_bytes(x->dtype, x->rows, x->cols);  // its tile copy
      }
    }
    size_t need = 0;
    for (const auto& kv : distinct) need += kv.second;
    for (const auto& kv : mma_bytes) need += kv.second;
    if (dequant > deq_cap_) need += dequant;
    size_t free_b = 0, total_b = 0;
    MR_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (need > free_b) {
      const std::string scratch =
          dequant > deq_cap_ ? " (" + gib(dequant) + " of it to dequantize one matrix for prefill)" : "";
      throw UsageError("not enough GPU memory for the weights: " + gib(need) + " needed" + scratch + ", " +
                       gib(free_b) + " free of " + gib(total_b) + " on " + name_ + " (try --quant or --device cpu)");
    }
    auto dev = [&](const Weight& x) { return place_weight(x); };
    ModelWeights out;
    out.embed = dev(w.embed);
    out.norm = dev(w.norm);
    out.lm_head = dev(w.lm_head);
    for (const auto& l : w.layers) {
      LayerWeights d;
      d.attn_norm = dev(l.attn_norm), d.wq = dev(l.wq), d.wk = dev(l.wk), d.wv = dev(l.wv), d.wo = dev(l.wo);
      d.ffn_norm = dev(l.ffn_norm), d.w_gate = dev(l.w_gate), d.w_up = dev(l.w_up), d.w_down = dev(l.w_down);
      out.layers.push_back(d);
    }
    if (norm_fusion_) {  // the folded norms' fp32 weights, made now: a decode step may be captured first
      norm_f32(out.norm);
      for (const LayerWeights& d : out.layers) norm_f32(d.attn_norm), norm_f32(d.ffn_norm);
    }
    return out;
  }

  // Full-precision weights: `data` copied. Quantized ones: `data` and `scales` copied (each keyed by its
  // host address), `group` kept; the result points at the device copies.
  Weight place_weight(const Weight& x) override {
    check_dtype(x);
    Weight y = x;
    y.data = upload(x.data, x.nbytes());
    if (is_quantized(x.dtype)) y.scales = upload(x.scales, x.scale_bytes());
    // MISTRAL_CUDA_QUANT_MMA=1: a second copy of a Q4 or Q8 matrix in the tensor-core GEMV's tile layout.
    if (wants_mma(x) && !mma_tiles_.count(y.data)) {
      std::vector<uint8_t> tiles(quant_mma_bytes(x.dtype, x.rows, x.cols));
      quant_mma_repack(x.dtype, x.data, x.rows, x.cols, tiles.data());
      void* d = nullptr;
      MR_CUDA_CHECK(cudaMalloc(&d, tiles.size()));
      copy_in_now(d, tiles.data(), tiles.size());
      mma_tiles_[y.data] = d;
      weight_bytes_ += tiles.size();
    }
    return y;
  }

  float* alloc(size_t n) override {
    void* p = nullptr;
    const size_t bytes = (n == 0 ? 1 : n) * sizeof(float);
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw UsageError("out of GPU memory allocating " + gib(bytes) + " (" + gib(free_b) + " free of " + gib(total_b) +
                       " on " + name_ + "); lower --batch-size, --kv-budget-mb or --ctx");
    }
    allocs_[p] = bytes;
    alloc_bytes_ += bytes;
    MR_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    return static_cast<float*>(p);
  }
  void free(float* p) override {
    cudaStreamSynchronize(stream_);
    auto it = allocs_.find(p);
    if (it != allocs_.end()) {
      alloc_bytes_ -= it->second;
      allocs_.erase(it);
    }
    cudaFree(p);
  }
  void to_device(float* dst, const float* src, size_t n) override { copy_in_now(dst, src, n * sizeof(float)); }
  void to_host(float* dst, const float* src, size_t n) override {
    MR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void zero(float* p, size_t n) override { MR_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), stream_)); }
  void copy(float* dst, const float* src, size_t n) override {
    MR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  void synchronize() override { MR_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  // Greedy decoding: the row argmax on the device, then only the ids cross to the host (through a pinned
  // buffer), not rows * n logits.
  void argmax_rows(const float* x, int rows, int64_t n, int32_t* out) override {
    if (rows <= 0) return;
    if (n <= 0 || n > INT_MAX) throw Error("internal: argmax over " + std::to_string(n) + " values");
    const size_t bytes = size_t(rows) * sizeof(int32_t);
    reserve_pinned(argmax_out_, bytes);
    MR_LAUNCH_CHECK(argmax_rows_cuda(x, rows, int(n), static_cast<int32_t*>(argmax_out_.dev), stream_), stream_);
    fetch_pinned(argmax_out_, bytes);
    std::memcpy(out, argmax_out_.host, bytes);
  }

  // Sampling: each row's candidates found on the device (kernels/top_candidates.cu); the requests and
  // penalised ids go over in one copy, the ids, logits and normalisers come back in one.
  void top_candidates_rows(const float* x, int rows, int64_t n, const CandidateRequest* req, int kmax, int32_t* ids,
                           float* logits, double* z) override {
    if (rows <= 0) return;
    if (n <= 0 || n > (int64_t(1) << 30)) throw Error("internal: candidates among " + std::to_string(n) + " values");
    if (kmax > cuda::kMaxTopCandidates) {  // more than the kernel sorts: the host finds them
      Backend::top_candidates_rows(x, rows, n, req, kmax, ids, logits, z);
      return;
    }
    size_t n_pen = 0;
    for (int r = 0; r < rows; ++r) n_pen += size_t(std::max(0, req[r].n_penalised));
    const size_t in_bytes = size_t(rows) * sizeof(cuda::TopRequest) + n_pen * sizeof(int32_t);
    const size_t cand_bytes = size_t(rows) * size_t(kmax) * sizeof(int32_t);
    const size_t out_bytes = 2 * cand_bytes + size_t(rows) * sizeof(double);  // ids, logits, then z (8-aligned)
    reserve_pinned(top_in_, in_bytes);
    reserve_pinned(top_out_, out_bytes);
    auto* rq = static_cast<cuda::TopRequest*>(top_in_.host);
    auto* pen = reinterpret_cast<int32_t*>(rq + rows);
    size_t off = 0;
    for (int r = 0; r < rows; ++r) {
      const CandidateRequest& c = req[r];
      rq[r].k = std::max(1, std::min(c.k, kmax));
      rq[r].temperature = c.temperature;
      rq[r].penalty = c.penalty;
      rq[r].pen_offset = int(off);
      rq[r].n_pen = std::max(0, c.n_penalised);
      for (int i = 0; i < rq[r].n_pen; ++i) {
        if (c.penalised[i] < 0 || c.penalised[i] >= n) throw Error("internal: penalised id out of range");
        pen[off++] = c.penalised[i];
      }
    }
    if (n_pen > 0 && size_t(rows) * size_t(n) > top_work_cap_) {
      if (top_work_) MR_CUDA_CHECK(cudaFree(top_work_));
      top_work_ = nullptr, top_work_cap_ = 0;
      MR_CUDA_CHECK(cudaMalloc(&top_work_, size_t(rows) * size_t(n) * sizeof(float)));
      top_work_cap_ = size_t(rows) * size_t(n);
    }
    MR_CUDA_CHECK(cudaMemcpyAsync(top_in_.dev, top_in_.host, in_bytes, cudaMemcpyHostToDevice, stream_));
    char* out = static_cast<char*>(top_out_.dev);
    const auto* rq_dev = static_cast<const cuda::TopRequest*>(top_in_.dev);
    MR_LAUNCH_CHECK(top_candidates_cuda(x, rows, int(n), rq_dev, reinterpret_cast<const int32_t*>(rq_dev + rows),
                                        n_pen > 0 ? top_work_ : nullptr, kmax, reinterpret_cast<int32_t*>(out),
                                        reinterpret_cast<float*>(out + cand_bytes),
                                        reinterpret_cast<double*>(out + 2 * cand_bytes), stream_),
                    stream_);
    fetch_pinned(top_out_, out_bytes);
    const char* h = static_cast<const char*>(top_out_.host);
    std::memcpy(ids, h, cand_bytes);
    std::memcpy(logits, h + cand_bytes, cand_bytes);
    std::memcpy(z, h + 2 * cand_bytes, size_t(rows) * sizeof(double));
  }

  // Best of 5 device-to-device copies of one buffer of up to 1 GiB into another (fewer bytes when memory
  // is short), timed with events on the backend's stream; counts bytes read + bytes written.
  double copy_bandwidth_gbs() override {
    if (capturing_) throw Error("internal: copy_bandwidth_gbs during graph capture");
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    size_t free_b = 0, total_b = 0;
    MR_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const size_t reserve = size_t(256) << 20;  // left free for everyone else
    size_t bytes = size_t(1) << 30;
    while (bytes > (size_t(16) << 20) && 2 * bytes + reserve > free_b) bytes /= 2;
    if (2 * bytes + reserve > free_b) return 0;  // not even 2 x 16 MiB free: nothing meaningful to measure
    struct Scratch {  // frees on every exit path
      void *a = nullptr, *b = nullptr;
      cudaEvent_t e0 = nullptr, e1 = nullptr;
      ~Scratch() {
        if (e0) cudaEventDestroy(e0);
        if (e1) cudaEventDestroy(e1);
        if (a) cudaFree(a);
        if (b) cudaFree(b);
      }
    } m;
    MR_CUDA_CHECK(cudaMalloc(&m.a, bytes));
    MR_CUDA_CHECK(cudaMalloc(&m.b, bytes));
    MR_CUDA_CHECK(cudaEventCreate(&m.e0));
    MR_CUDA_CHECK(cudaEventCreate(&m.e1));
    MR_CUDA_CHECK(cudaMemsetAsync(m.a, 1, bytes, stream_));
    MR_CUDA_CHECK(cudaMemsetAsync(m.b, 2, bytes, stream_));
    MR_CUDA_CHECK(cudaMemcpyAsync(m.b, m.a, bytes, cudaMemcpyDeviceToDevice, stream_));  // warm-up
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      MR_CUDA_CHECK(cudaEventRecord(m.e0, stream_));
      MR_CUDA_CHECK(cudaMemcpyAsync(m.b, m.a, bytes, cudaMemcpyDeviceToDevice, stream_));
      MR_CUDA_CHECK(cudaEventRecord(m.e1, stream_));
      MR_CUDA_CHECK(cudaEventSynchronize(m.e1));
      float ms = 0;
      MR_CUDA_CHECK(cudaEventElapsedTime(&ms, m.e0, m.e1));
      if (ms > 0) best = std::max(best, 2.0 * double(bytes) / (double(ms) * 1e-3) / 1e9);
    }
    return best;
  }

  bool device_memory(DeviceMemoryInfo* m) const override {
    MR_CUDA_CHECK(cudaMemGetInfo(&m->free, &m->total));
    m->weights = weight_bytes_;
    m->buffers = alloc_bytes_;
    m->internal = conv_cap_ + deq_cap_ + split_cap_ * sizeof(float) + ids_cap_ * sizeof(int32_t) +
                  inv_freq_bytes_ + (step_dev_ ? sizeof(StepInputs) : 0) + rows_slot_ +
                  rows_split_cap_ * sizeof(float);
    return true;
  }

  bool graphs_supported() const override { return true; }
  void set_step_inputs(int32_t id, int64_t pos) override {
    if (!step_dev_) {
      MR_CUDA_CHECK(cudaMallocHost(&step_host_, sizeof(StepInputs)));
      MR_CUDA_CHECK(cudaMalloc(&step_dev_, sizeof(StepInputs)));
    }
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the previous step has read the staging copy
    step_host_->pos = pos;
    step_host_->id = id;
    MR_CUDA_CHECK(cudaMemcpyAsync(step_dev_, step_host_, sizeof(StepInputs), cudaMemcpyHostToDevice, stream_));
  }
  bool graph_launch(uint64_t key) override {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) return false;
    MR_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
    if (sync_after_launch()) MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return true;
  }
  void graph_capture_begin() override {
    MR_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
  }
  void graph_capture_end(uint64_t key) override {
    capturing_ = false;
    cudaGraph_t g = nullptr;
    MR_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    MR_CUDA_CHECK(e);
    if (graphs_.size() >= kMaxGraphs) graph_reset();  // one per live sequence is the common case
    graphs_[key] = exec;
  }
  void graph_capture_abort() override {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();  // clear the capture's error state
  }
  void graph_forget(uint64_t key) override {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) return;
    cudaStreamSynchronize(stream_);
    cudaGraphExecDestroy(it->second);
    graphs_.erase(it);
  }
  void graph_reset() override {
    if (graphs_.empty()) return;
    cudaStreamSynchronize(stream_);
    for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
    graphs_.clear();
  }

  void embed(const Weight& E, const int32_t* ids, int T, float* x) override {
    if (capturing_) {  // recorded step: the token id comes from set_step_inputs
      MR_LAUNCH_CHECK(embed_cuda(E.data, E.dtype, &step_dev_->id, 1, int(E.cols), x, stream_), stream_);
      return;
    }
    if (size_t(T) > ids_cap_) {
      if (ids_) MR_CUDA_CHECK(cudaFree(ids_));
      ids_cap_ = size_t(T) * 2;
      MR_CUDA_CHECK(cudaMalloc(&ids_, ids_cap_ * sizeof(int32_t)));
    }
    MR_CUDA_CHECK(cudaMemcpyAsync(ids_, ids, size_t(T) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    MR_LAUNCH_CHECK(embed_cuda(E.data, E.dtype, ids_, T, int(E.cols), x, stream_), stream_);
  }

  void rmsnorm(const float* x, const Weight& w, float eps, int T, float* y) override {
    if (knocked_out(kKnockNorm, T)) return;
    MR_LAUNCH_CHECK(rmsnorm_cuda(x, w.data, w.dtype, eps, T, int(w.cols), y, stream_), stream_);
  }

  void add_rmsnorm(float* x, const float* delta, const Weight& w, float eps, int T, float* y) override {
    if (knocked_out(kKnockNorm, T)) return;
    MR_LAUNCH_CHECK(add_rmsnorm_cuda(x, delta, w.data, w.dtype, eps, T, int(w.cols), y, stream_), stream_);
  }

  void matmul(const float* x, int T, const Weight& W, float* y) override {
    if (knocked_out(kKnockGemv, T)) return;
    const int N = int(W.rows), K = int(W.cols);
    const bool quant = is_quantized(W.dtype);
    if (quant) launches_for(W);                    // the unfused order's q/k/v and gate/up come here
    if (T == 1 && quant && !mma_tiles_.empty()) {  // MISTRAL_CUDA_QUANT_MMA=1
      auto it = mma_tiles_.find(W.data);
      if (it != mma_tiles_.end()) {
        MR_LAUNCH_CHECK(quant_mma_gemv_cuda(x, it->second, W.scales, W.dtype, N, K, int(quant_group_of(W)), y, stream_),
                        stream_);
        return;
      }
    }
    if (T <= kGemvMaxT) {
      if (quant)
        MR_LAUNCH_CHECK(quant_gemv_cuda(x, T, W.data, W.scales, W.dtype, N, K, int(quant_group_of(W)), y, n_sms_,
                                        stream_, quant_xmath_),
                        stream_);
      else
        MR_LAUNCH_CHECK(gemv_cuda(x, T, W.data, W.dtype, N, K, y, n_sms_, stream_), stream_);
      return;
    }
    if (W.dtype == DType::F32) {
      const float one = 1.0f, zero = 0.0f;
      // Column-major view: y^T [N, T] = W^T(as [K, N])^T * x^T [K, T].
      MR_CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, static_cast<const float*>(W.data), K,
                                  x, K, &zero, y, N));
      return;
    }
    gemm16(convert_x(x, T, K, gemm_dtype(W.dtype)), T, W, y);
  }

  // The 16-bit type a cuBLAS product with weights of dtype t rounds its activations to (quantized weights
  // are dequantized to fp16).
  static DType gemm_dtype(DType t) { return is_quantized(t) ? DType::F16 : t; }

  // Replaces the prefill scratch *buf (capacity *cap) by one of `bytes`. Prefill only (T > kGemvMaxT):
  // recorded decode steps never get here. An earlier product may still read the old buffer: synchronize.
  void grow_scratch(void** buf, size_t* cap, size_t bytes, const char* what) {
    if (capturing_) throw Error(std::string("internal: ") + what + " scratch grew during graph capture");
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (*buf) MR_CUDA_CHECK(cudaFree(*buf));
    *buf = nullptr;
    *cap = 0;
    MR_CUDA_CHECK(cudaMalloc(buf, bytes));
    *cap = bytes;
  }

  // x [T, K] rounded to `at` (F16 or BF16) in the conversion scratch; returns the scratch.
  const void* convert_x(const float* x, int T, int K, DType at) {
    const size_t need = size_t(T) * size_t(K) * 2;
    if (need > conv_cap_) grow_scratch(&conv_, &conv_cap_, need * 2, "conversion");
    MR_LAUNCH_CHECK(convert_cuda(x, conv_, at, size_t(T) * size_t(K), stream_), stream_);
    return conv_;
  }

  // y [T, N] = xc W^T by cuBLAS, xc the activations already rounded to gemm_dtype(W.dtype); quantized W
  // is dequantized to fp16 scratch first.
  void gemm16(const void* xc, int T, const Weight& W, float* y) {
    const int N = int(W.rows), K = int(W.cols);
    const float one = 1.0f, zero = 0.0f;
    const void* A = W.data;
    if (is_quantized(W.dtype)) {
      const size_t bytes = size_t(N) * size_t(K) * 2;
      if (bytes > deq_cap_) grow_scratch(&deq_, &deq_cap_, bytes, "dequantization");
      MR_LAUNCH_CHECK(dequantize_f16_cuda(W.data, W.scales, W.dtype, N, K, int(quant_group_of(W)), deq_, stream_),
                      stream_);
      A = deq_;
    }
    const cudaDataType_t dt = gemm_dtype(W.dtype) == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
    MR_CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, A, dt, K, xc, dt, K, &zero, y,
                                 CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // q, k, v (or gate, up) of a decode step in one GEMV launch: one grid over all their rows, so the small
  // k and v products no longer run as launches of a few blocks each. T > kGemvMaxT (cuBLAS) and mixed
  // shapes or dtypes take matmul one product at a time.
  void matmul_multi(const float* x, int T, const Weight* const* W, float* const* y, int n) override {
    if (knocked_out(kKnockGemv, T)) return;
    if (n > 0) launches_for(*W[0]);
    if (T > kGemvMaxT && n >= 2 && W[0]->dtype != DType::F32) {
      // cuBLAS products of one x: it is rounded to 16 bits once for all of them when they agree on the
      // type and on K (bit for bit what matmul does one product at a time).
      bool shared = true;
      for (int i = 1; i < n; ++i)
        shared = shared && W[i]->cols == W[0]->cols && gemm_dtype(W[i]->dtype) == gemm_dtype(W[0]->dtype);
      if (shared) {
        const void* xc = convert_x(x, T, int(W[0]->cols), gemm_dtype(W[0]->dtype));
        for (int i = 0; i < n; ++i) gemm16(xc, T, *W[i], y[i]);
        return;
      }
    }
    if (!multi_launch(x, T, W, y, n, GemvFusion{}, 2)) Backend::matmul_multi(x, T, W, y, n);
  }

  // The n products as one GEMV launch (T <= kGemvMaxT, at least min_n and at most kGemvMaxParts weights of
  // one dtype, K and group; full-precision ones 16-byte aligned, as matmul would take the vector path),
  // with `fuse` folded in; false (nothing launched) when they do not qualify.
  bool multi_launch(const float* x, int T, const Weight* const* W, float* const* y, int n, const GemvFusion& fuse,
                    int min_n) {
    bool one = T <= kGemvMaxT && n >= min_n && n <= kGemvMaxParts;
    const bool quant = n > 0 && is_quantized(W[0]->dtype);
    for (int i = 0; one && i < n; ++i)
      one =
          W[i]->dtype == W[0]->dtype && W[i]->cols == W[0]->cols &&
          (quant ? quant_group_of(*W[i]) == quant_group_of(*W[0]) : reinterpret_cast<uintptr_t>(W[i]->data) % 16 == 0);
    if (one && quant && fuse.g) one = quant_gemv_fusion_ok(W[0]->dtype, T, int(W[0]->cols), quant_xmath_);
    if (!one) return false;
    const void* w[kGemvMaxParts];
    const void* sc[kGemvMaxParts];
    int rows[kGemvMaxParts];
    float* out[kGemvMaxParts];
    for (int i = 0; i < n; ++i) w[i] = W[i]->data, sc[i] = W[i]->scales, rows[i] = int(W[i]->rows), out[i] = y[i];
    if (quant)
      MR_LAUNCH_CHECK(quant_gemv_multi_cuda(x, T, w, sc, rows, out, n, W[0]->dtype, int(W[0]->cols),
                                            int(quant_group_of(*W[0])), n_sms_, stream_, quant_xmath_, fuse),
                      stream_);
    else
      MR_LAUNCH_CHECK(gemv_multi_cuda(x, T, w, rows, out, n, W[0]->dtype, int(W[0]->cols), n_sms_, stream_, fuse),
                      stream_);
    return true;
  }

  // MISTRAL_CUDA_FUSED_NORM=1 (an experiment): decode steps fold the RMSNorms into the products that read
  // them and the residual adds into the products that write them (GemvFusion, gemv.cuh): two launches a
  // layer fewer. Where a product does not qualify, the Backend composition runs instead.
  bool fuses_norm(int T) const override { return norm_fusion_ && T <= kGemvMaxT; }

  void norm_matmul_multi(const float* x, const Weight& norm, float eps, int T, const Weight* const* W, float* const* y,
                         int n, float* xn) override {
    if (knocked_out(kKnockGemv, T)) return;
    if (n > 0) launches_for(*W[0]);
    const float* g = fuses_norm(T) ? norm_f32(norm) : nullptr;
    if (!g || !multi_launch(x, T, W, y, n, GemvFusion{g, eps, false}, 1))
      Backend::norm_matmul_multi(x, norm, eps, T, W, y, n, xn);
  }

  void norm_matmul_swiglu(const float* x, const Weight& norm, float eps, int T, const Weight& w_gate,
                          const Weight& w_up, float* gate, float* up, float* xn) override {
    if (knocked_out(kKnockGemv, T)) return;
    launches_for(w_gate);
    const float* g = fuses_norm(T) ? norm_f32(norm) : nullptr;
    if (!g || !swiglu_launch(x, T, w_gate, w_up, gate, GemvFusion{g, eps, false}))
      Backend::norm_matmul_swiglu(x, norm, eps, T, w_gate, w_up, gate, up, xn);
  }

  void matmul_residual(const float* a, int T, const Weight& W, float* x, float* tmp) override {
    if (knocked_out(kKnockGemv, T)) return;
    const Weight* w[1] = {&W};
    float* const y[1] = {x};
    if (is_quantized(W.dtype)) launches_for(W);
    if (!fuses_norm(T) || (T == 1 && mma_tiles_.count(W.data)) ||
        !multi_launch(a, T, w, y, 1, GemvFusion{nullptr, 0.f, true}, 1))
      Backend::matmul_residual(a, T, W, x, tmp);
  }

  // The norm's weight as fp32 on the device (the fused kernels read it beside fp32 x): the weight itself
  // when it is fp32 and 16-byte aligned, else a copy (place_weights makes the model's; others are made at
  // their first use). nullptr for one first seen during graph capture, where nothing can be copied: the
  // caller then runs the unfolded composition.
  const float* norm_f32(const Weight& w) {
    if (w.dtype == DType::F32 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0)
      return static_cast<const float*>(w.data);
    auto it = norm_f32_.find(w.data);
    if (it != norm_f32_.end()) return it->second;
    if (capturing_) return nullptr;
    const size_t n = size_t(w.cols), bytes = n * dtype_size(w.dtype);
    std::vector<uint8_t> raw(bytes);
    std::vector<float> f(n);
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    MR_CUDA_CHECK(cudaMemcpy(raw.data(), w.data, bytes, cudaMemcpyDeviceToHost));
    to_f32(w.dtype, raw.data(), f.data(), n);
    float* d = nullptr;
    MR_CUDA_CHECK(cudaMalloc(&d, n * sizeof(float)));
    MR_CUDA_CHECK(cudaMemcpy(d, f.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    norm_f32_[w.data] = d;
    return d;
  }

  // Gate and up GEMVs and SwiGLU in one launch for decode steps (T <= kGemvMaxT, weights of one dtype and
  // shape; full-precision ones 16-byte aligned); otherwise matmul_multi and swiglu.
  void matmul_swiglu(const float* x, int T, const Weight& w_gate, const Weight& w_up, float* gate,
                     float* up) override {
    if (knocked_out(kKnockGemv, T)) return;
    launches_for(w_gate);
    if (!swiglu_launch(x, T, w_gate, w_up, gate, GemvFusion{})) Backend::matmul_swiglu(x, T, w_gate, w_up, gate, up);
  }

  // Gate, up and SwiGLU as one launch with `fuse` (the norm) folded in; false when the weights do not qualify.
  bool swiglu_launch(const float* x, int T, const Weight& w_gate, const Weight& w_up, float* gate,
                     const GemvFusion& fuse) {
    const bool quant = is_quantized(w_gate.dtype);
    bool one = T <= kGemvMaxT && w_gate.dtype == w_up.dtype && w_gate.rows == w_up.rows && w_gate.cols == w_up.cols &&
               (quant ? quant_group_of(w_gate) == quant_group_of(w_up)
                      : reinterpret_cast<uintptr_t>(w_gate.data) % 16 == 0 &&
                            reinterpret_cast<uintptr_t>(w_up.data) % 16 == 0);
    if (one && quant && fuse.g) one = quant_gemv_fusion_ok(w_gate.dtype, T, int(w_gate.cols), quant_xmath_);
    if (!one) return false;
    if (quant)
      MR_LAUNCH_CHECK(quant_gemv_swiglu_cuda(x, T, w_gate.data, w_gate.scales, w_up.data, w_up.scales, w_gate.dtype,
                                             int(w_gate.rows), int(w_gate.cols), int(quant_group_of(w_gate)), gate,
                                             n_sms_, stream_, quant_xmath_, fuse),
                      stream_);
    else
      MR_LAUNCH_CHECK(gemv_swiglu_cuda(x, T, w_gate.data, w_up.data, w_gate.dtype, int(w_gate.rows), int(w_gate.cols),
                                       gate, n_sms_, stream_, fuse),
                      stream_);
    return true;
  }

  void rope(float* q, float* k, int T, int64_t start, const AttnShape& s) override {
    if (knocked_out(kKnockRope, T)) return;
    MR_LAUNCH_CHECK(rope_cuda(q, k, T, start, capturing_ ? &step_dev_->pos : nullptr, s.n_heads, s.n_kv_heads,
                              s.head_dim, inv_freq(s), stream_),
                    stream_);
  }

  // Under graph capture the cache rows follow the recorded step's device-side position, as rope and
  // attention do.
  void rope_cache_write(float* q, float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                        const AttnShape& s) override {
    if (knocked_out(kKnockRope, T)) return;
    MR_LAUNCH_CHECK(
        rope_cache_write_cuda(q, k, v, cache.k, cache.v, s.kv_half, T, start, capturing_ ? &step_dev_->pos : nullptr,
                              s.n_heads, s.n_kv_heads, s.head_dim, s.slots, inv_freq(s), stream_),
        stream_);
  }

  void attention(const float* q, const float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                 const AttnShape& s, float* out) override {
    if (knocked_out(kKnockAttn, T)) return;
    const AttnParams p = params(s);
    if (decode_attention_supported(p)) split_scratch(p);
    if (T == 1 && use_split_kv_ && decode_attention_supported(p)) {
      MR_LAUNCH_CHECK(decode_attention_cuda(q, k, v, cache.k, cache.v, start, p, decode_attention_splits(p, n_sms_),
                                            split_, out, stream_),
                      stream_);
      return;
    }
    AttnParams pc = p;
    pc.half = s.half_precision && T > kGemvMaxT && use_tc_attention_;  // where the matmuls use cuBLAS
    MR_LAUNCH_CHECK(attention_cuda(q, k, v, cache.k, cache.v, T, start, pc, out, stream_), stream_);
  }

  // Scratch for the split-KV decode kernel, sized for the most splits any cache of this shape uses; made
  // outside graph capture (every captured step follows an eager one).
  void split_scratch(const AttnParams& p) {
    AttnParams widest = p;
    widest.window = 0;
    widest.slots = INT64_MAX / 2;
    const size_t need = decode_attention_scratch_floats(p, decode_attention_splits(widest, n_sms_));
    if (need <= split_cap_) return;
    if (capturing_) throw Error("internal: decode-attention scratch grew during graph capture");
    graph_reset();  // recorded graphs point at the old scratch
    if (split_) MR_CUDA_CHECK(cudaFree(split_));
    MR_CUDA_CHECK(cudaMalloc(&split_, need * sizeof(float)));
    // The kernel's counters start at zero; on stream_ (non-blocking: a legacy-stream memset would not be
    // ordered before the kernels queued there).
    MR_CUDA_CHECK(cudaMemsetAsync(split_, 0, need * sizeof(float), stream_));
    split_cap_ = need;
  }

  // MISTRAL_CUDA_DECODE_ROPE=1 (an experiment): a decode step's RoPE and cache write done by the split-KV
  // attention kernel (decode_attention_cuda with inv_freq), one launch a layer fewer; the same bits.
  void rope_attend(float* q, float* k, const float* v, const KVLayer& cache, int T, int64_t start, const AttnShape& s,
                   float* out) override {
    const AttnParams p = params(s);
    if (!rope_fold_ || knockout_ || T != 1 || !use_split_kv_ || !decode_rope_fold_supported(p)) {
      Backend::rope_attend(q, k, v, cache, T, start, s, out);
      return;
    }
    split_scratch(p);
    MR_LAUNCH_CHECK(decode_attention_cuda(q, k, v, cache.k, cache.v, start, p, decode_attention_splits(p, n_sms_),
                                          split_, out, stream_, inv_freq(s)),
                    stream_);
  }

  void cache_write(const float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                   const AttnShape& s) override {
    if (knocked_out(kKnockRope, T)) return;
    MR_LAUNCH_CHECK(cache_write_cuda(k, v, cache.k, cache.v, T, start, params(s), stream_), stream_);
  }

  // A batched decode step in three stream operations: the row table (caches, positions, slots, the
  // attention's split plan) and its work items copied from a pinned staging slot, RoPE + cache write for
  // every row, split-KV attention for every row (partial and combine kernels). Rows the split-KV kernel
  // cannot take, the unfused order (fused == false, kept for comparisons), MISTRAL_CUDA_SPLIT_KV=0 and
  // MISTRAL_CUDA_DECODE_ROWS=0 run the per-row ops instead (Backend's default).
  void decode_rows(float* q, float* k, const float* v, const DecodeRow* rows, int n, const AttnShape& s, bool fused,
                   float* out) override {
    if (n <= 0) return;
    // Recorded steps are single-segment ones; a table of host-side positions cannot be replayed.
    if (capturing_) throw Error("internal: decode_rows during graph capture");
    AttnParams p = params(s);  // d_start null: not capturing
    p.slots = 0;               // each row has its own
    bool batched = fused && use_split_kv_ && use_decode_rows_ && decode_attention_supported(p) && s.head_dim > 0 &&
                   s.head_dim % 2 == 0;
    for (int i = 0; batched && i < n; ++i) {
      AttnShape sh = s;
      sh.slots = rows[i].slots;
      // Stores before attention (as the fused per-row path): fine for every step of a cache the engine makes.
      batched =
          rows[i].pos >= 0 && rows[i].cache.k && rows[i].cache.v && cache_write_before_attention_ok(1, rows[i].pos, sh);
    }
    if (!batched) {
      Backend::decode_rows(q, k, v, rows, n, s, fused, out);
      return;
    }
    rows_plan_.resize(size_t(n));
    for (int i = 0; i < n; ++i) {
      DecodeRowArgs& r = rows_plan_[size_t(i)];
      r.cache_k = rows[i].cache.k;
      r.cache_v = rows[i].cache.v;
      r.pos = rows[i].pos;
      r.slots = rows[i].slots;
    }
    const int64_t total = decode_attention_rows_plan(rows_plan_.data(), n, s.window, s.n_kv_heads, n_sms_);
    if (total < n) throw Error("internal: decode_rows split plan overflows");
    const size_t need = decode_attention_rows_scratch_floats(p, total);
    if (need > rows_split_cap_) {
      MR_CUDA_CHECK(cudaStreamSynchronize(stream_));  // queued steps may still use the old partials
      if (rows_split_) MR_CUDA_CHECK(cudaFree(rows_split_));
      rows_split_ = nullptr;
      rows_split_cap_ = 0;
      const size_t cap = need + need / 2;
      MR_CUDA_CHECK(cudaMalloc(&rows_split_, cap * sizeof(float)));
      rows_split_cap_ = cap;
    }
    const size_t table = size_t(n) * sizeof(DecodeRowArgs);
    const size_t bytes = table + size_t(total) * sizeof(DecodeWork);
    int slot = 0;
    char* h = stage_rows(bytes, &slot);
    std::memcpy(h, rows_plan_.data(), table);
    decode_attention_rows_work(rows_plan_.data(), n, reinterpret_cast<DecodeWork*>(h + table));
    // In stream order after every kernel that read the previous table, before the two that read this one.
    MR_CUDA_CHECK(cudaMemcpyAsync(rows_dev_, h, bytes, cudaMemcpyHostToDevice, stream_));
    MR_CUDA_CHECK(cudaEventRecord(rows_ev_[slot], stream_));
    const auto* dt = static_cast<const DecodeRowArgs*>(rows_dev_);
    const auto* dw = reinterpret_cast<const DecodeWork*>(static_cast<const char*>(rows_dev_) + table);
    MR_LAUNCH_CHECK(rope_cache_write_rows_cuda(q, k, v, dt, n, s.kv_half, s.n_heads, s.n_kv_heads, s.head_dim,
                                               inv_freq(s), stream_),
                    stream_);
    MR_LAUNCH_CHECK(decode_attention_rows_cuda(q, k, v, dt, n, dw, int(total), p, rows_split_, out, stream_),
                    stream_);
  }

  void swiglu(const float* gate, const float* up, size_t n, float* out) override {
    MR_LAUNCH_CHECK(swiglu_cuda(gate, up, n, out, stream_), stream_);
  }

  void add(float* x, const float* y, size_t n) override { MR_LAUNCH_CHECK(add_cuda(x, y, n, stream_), stream_); }

 private:
  static void check_dtype(const Weight& x) {
    if (!is_float_dtype(x.dtype) && !is_quantized(x.dtype))
      throw UsageError(std::string("the CUDA backend cannot run ") + dtype_name(x.dtype) + " weights");
    if (is_quantized(x.dtype) && !x.scales) throw Error("internal: a quantized weight without scales");
  }
  static int64_t quant_group_of(const Weight& W) { return W.group > 0 ? W.group : quant_group(W.dtype, W.cols); }
  // The device copy of host buffer `host` (bytes long), made on first use; keyed by the host address.
  // Host to device on the backend's own stream, finished before returning. A plain cudaMemcpy from pageable
  // memory may return before its DMA lands, and it runs on the legacy default stream, with which stream_
  // (non-blocking) does not synchronize: kernels could read a half-written weight (seen on an H200: a 2 MB
  // bf16 matrix read just after its upload gave GEMV errors of 5%).
  void copy_in_now(void* dst, const void* src, size_t bytes) {
    MR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void* upload(const void* host, size_t bytes) {
    auto it = uploaded_.find(host);
    if (it != uploaded_.end()) return it->second;
    void* d = nullptr;
    MR_CUDA_CHECK(cudaMalloc(&d, bytes == 0 ? 1 : bytes));
    copy_in_now(d, host, bytes);
    uploaded_[host] = d;
    weight_bytes_ += bytes;
    return d;
  }
  // Device table of 1 / theta^(2i/hd), computed like the CPU backend; cached per (theta, hd).
  const float* inv_freq(const AttnShape& s) {
    const auto key = std::make_pair(s.rope_theta, s.head_dim);
    auto it = inv_freq_.find(key);
    if (it != inv_freq_.end()) return it->second;
    // Made by the eager step that precedes every recorded one (no allocation or copy inside a capture).
    if (capturing_) throw Error("internal: RoPE frequency table made during graph capture");
    const int half = s.head_dim / 2;
    std::vector<float> h(static_cast<size_t>(half));
    for (int i = 0; i < half; ++i) h[size_t(i)] = 1.0f / std::pow(s.rope_theta, float(2 * i) / float(s.head_dim));
    void* d = nullptr;
    MR_CUDA_CHECK(cudaMalloc(&d, h.size() * sizeof(float)));
    copy_in_now(d, h.data(), h.size() * sizeof(float));
    inv_freq_[key] = static_cast<float*>(d);
    inv_freq_bytes_ += h.size() * sizeof(float);
    return static_cast<float*>(d);
  }
  // A pinned staging slot of at least `bytes` for a decode_rows table, and its index. The slot's previous
  // copy to the device has finished (its event), so the host may overwrite it; growing waits for the
  // stream (no copy still reads the old staging, no kernel the old device table).
  char* stage_rows(size_t bytes, int* slot) {
    if (bytes > rows_slot_) {
      MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (rows_host_) MR_CUDA_CHECK(cudaFreeHost(rows_host_));
      rows_host_ = nullptr;
      if (rows_dev_) MR_CUDA_CHECK(cudaFree(rows_dev_));
      rows_dev_ = nullptr;
      rows_slot_ = 0;
      const size_t cap = (std::max<size_t>(2 * bytes, 4096) + 255) / 256 * 256;
      MR_CUDA_CHECK(cudaMallocHost(&rows_host_, cap * kRowRing));
      MR_CUDA_CHECK(cudaMalloc(&rows_dev_, cap));
      rows_slot_ = cap;
    }
    for (cudaEvent_t& e : rows_ev_)
      if (!e) MR_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    const int s = rows_next_;
    rows_next_ = (s + 1) % kRowRing;
    MR_CUDA_CHECK(cudaEventSynchronize(rows_ev_[s]));  // returns at once for a slot never used
    *slot = s;
    return rows_host_ + size_t(s) * rows_slot_;
  }
  // Programmatic dependent launch (pdl.cuh) by the layers' weight format, unless MISTRAL_CUDA_PDL sets it:
  // each layer's q/k/v and gate/up products (matmul_multi, matmul_swiglu) turn it on for quantized weights
  // and off for 16- or 32-bit ones, and the launches after them follow (the output projection, the
  // unquantized lm_head of a quantized model), so that a step of a quantized model runs with it and one
  // of an fp16 model without, also when both share a process (bench --quant alternates them). A single
  // quantized product (the unfused order, MISTRAL_UNFUSED=1) turns it on too, but only the fused products
  // turn it off. Only the launch attribute changes, never a result.
  static void launches_for(const Weight& W) { set_pdl_default(is_quantized(W.dtype)); }
  AttnParams params(const AttnShape& s) const {
    AttnParams p;
    p.d_start = capturing_ ? &step_dev_->pos : nullptr;
    p.n_heads = s.n_heads;
    p.n_kv_heads = s.n_kv_heads;
    p.head_dim = s.head_dim;
    p.window = s.window;
    p.slots = s.slots;
    p.kv_half = s.kv_half;
    return p;
  }
  static std::string gib(size_t b) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / (1024.0 * 1024.0 * 1024.0));
    return buf;
  }

  struct StepInputs {
    int64_t pos;
    int32_t id;
  };
  static constexpr size_t kMaxGraphs = 16;
  // Staging slots for decode_rows tables: the host runs at most this many calls (two 32-layer steps)
  // ahead of the copies before it waits.
  static constexpr int kRowRing = 64;

  int device_;
  std::string name_;
  int n_sms_ = 1;
  float* split_ = nullptr;  // split-KV decode partials
  size_t split_cap_ = 0;
  // MISTRAL_CUDA_ATTN_FP32=1: chunk attention in fp32 even for 16-bit models (AttnShape::half_precision).
  bool use_tc_attention_ = [] {
    const char* e = std::getenv("MISTRAL_CUDA_ATTN_FP32");
    return !(e && *e && *e != '0');
  }();
  // MISTRAL_CUDA_SPLIT_KV=0 selects the one-block-per-head kernel for decode too (for comparisons).
  bool use_split_kv_ = [] {
    const char* e = std::getenv("MISTRAL_CUDA_SPLIT_KV");
    return !(e && *e == '0');
  }();
  // MISTRAL_CUDA_QUANT_MMA=1 (an experiment): Q4 and Q8 matrices also kept in the tile layout of
  // quant_mma_layout.h, single-token products of one of them on the tensor cores (quant_mma.cu).
  bool use_quant_mma_ = env_is_one("MISTRAL_CUDA_QUANT_MMA");
  std::map<const void*, void*> mma_tiles_;  // device data of a Q4 / Q8 weight -> its tiles
  // MISTRAL_CUDA_KNOCKOUT=norm,rope,attn,gemv (any of them; a diagnostic, every output is then wrong):
  // single-token calls (decode steps) of those ops return without launching anything, so that timing
  // decode with and without them shows what each costs inside the real step (tools/gpu-check.sh
  // knockout). norm: RMSNorm and add + RMSNorm; rope: RoPE and the cache writes; attn: attention;
  // gemv: the GEMVs, lm_head included.
  static constexpr unsigned kKnockNorm = 1, kKnockRope = 2, kKnockAttn = 4, kKnockGemv = 8;
  unsigned knockout_ = [] {
    const char* e = std::getenv("MISTRAL_CUDA_KNOCKOUT");
    if (!e) return 0u;
    unsigned m = 0;
    const std::string v = std::string(",") + e + ",";
    const std::pair<const char*, unsigned> names[] = {
        {",norm,", kKnockNorm}, {",rope,", kKnockRope}, {",attn,", kKnockAttn}, {",gemv,", kKnockGemv}};
    for (const auto& [n, bit] : names)
      if (v.find(n) != std::string::npos) m |= bit;
    return m;
  }();
  bool knocked_out(unsigned op, int T) const { return T == 1 && (knockout_ & op); }
  bool rope_fold_ = env_is_one("MISTRAL_CUDA_DECODE_ROPE");
  bool norm_fusion_ = env_is_one("MISTRAL_CUDA_FUSED_NORM");
  std::map<const void*, float*> norm_f32_;  // device data of a norm weight -> its fp32 copy
  // Experiments (quant_gemv.cuh, QuantXMath): MISTRAL_CUDA_QUANT_HALF=1, the Q4 and Q8 GEMVs sum each
  // chunk's products in fp16; MISTRAL_CUDA_QUANT_I8=1 (before HALF), they quantize x to int8 a chunk and
  // sum its products in integers (dp4a).
  QuantXMath quant_xmath_ = env_is_one("MISTRAL_CUDA_QUANT_I8")     ? QuantXMath::i8
                            : env_is_one("MISTRAL_CUDA_QUANT_HALF") ? QuantXMath::f16
                                                                    : QuantXMath::f32;
  bool wants_mma(const Weight& x) const {   // a tile copy of x is kept
    return use_quant_mma_ && quant_mma_supported(x.dtype, x.rows, x.cols, quant_group_of(x));
  }
  // MISTRAL_CUDA_DECODE_ROWS=0 runs batched decode steps row by row (for comparisons).
  bool use_decode_rows_ = [] {
    const char* e = std::getenv("MISTRAL_CUDA_DECODE_ROWS");
    return !(e && *e == '0');
  }();
  bool capturing_ = false;
  // decode_rows: the host-side plan, kRowRing pinned staging slots of rows_slot_ bytes (rows_ev_[i]
  // recorded after the copy from slot i), the device table [rows_slot_ bytes] and the attention partials.
  std::vector<DecodeRowArgs> rows_plan_;
  char* rows_host_ = nullptr;
  size_t rows_slot_ = 0;
  void* rows_dev_ = nullptr;
  cudaEvent_t rows_ev_[kRowRing] = {};
  int rows_next_ = 0;
  float* rows_split_ = nullptr;
  size_t rows_split_cap_ = 0;
  // A pinned host buffer and a device buffer of the same size, grown on demand (synchronized: the
  // stream is idle whenever one of them is reused).
  struct PinnedPair {
    void* host = nullptr;
    void* dev = nullptr;
    size_t cap = 0;
  };
  void reserve_pinned(PinnedPair& b, size_t bytes) {
    if (bytes <= b.cap) return;
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (b.host) MR_CUDA_CHECK(cudaFreeHost(b.host));
    if (b.dev) MR_CUDA_CHECK(cudaFree(b.dev));
    b = PinnedPair{};
    MR_CUDA_CHECK(cudaMallocHost(&b.host, bytes));
    MR_CUDA_CHECK(cudaMalloc(&b.dev, bytes));
    b.cap = bytes;
  }
  // The first `bytes` of b's device buffer into its host buffer, the stream then waited for.
  void fetch_pinned(PinnedPair& b, size_t bytes) {
    MR_CUDA_CHECK(cudaMemcpyAsync(b.host, b.dev, bytes, cudaMemcpyDeviceToHost, stream_));
    MR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  PinnedPair top_in_, top_out_;  // top_candidates_rows: requests and penalised ids; ids, logits, z
  float* top_work_ = nullptr;    // the penalised rows
  size_t top_work_cap_ = 0;
  PinnedPair argmax_out_;            // argmax_rows: the ids
  StepInputs* step_host_ = nullptr;  // pinned staging for the step inputs
  StepInputs* step_dev_ = nullptr;
  std::map<uint64_t, cudaGraphExec_t> graphs_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::map<const void*, void*> uploaded_;  // host weight pointer -> device copy
  std::map<std::pair<float, int>, float*> inv_freq_;
  size_t inv_freq_bytes_ = 0;
  size_t weight_bytes_ = 0;
  std::map<void*, size_t> allocs_;  // alloc()'s buffers and their sizes
  size_t alloc_bytes_ = 0;
  int32_t* ids_ = nullptr;
  size_t ids_cap_ = 0;
  void* conv_ = nullptr;  // activations converted to fp16/bf16 for cuBLAS
  size_t conv_cap_ = 0;
  void* deq_ = nullptr;  // a quantized weight dequantized to fp16 [N, K] for cuBLAS (prefill)
  size_t deq_cap_ = 0;
};

}  // namespace
}  // namespace cuda

std::string cuda_unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorInsufficientDriver) return "no usable NVIDIA driver (none installed, or older than this build's CUDA runtime)";
  if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) return "no CUDA GPU is present";
  if (e != cudaSuccess) return std::string("CUDA is unavailable: ") + cudaGetErrorString(e);
  return "";
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const std::string why = cuda_unavailable_reason();
  if (!why.empty()) throw UsageError(why);
  return std::unique_ptr<Backend>(new cuda::CudaBackend(device));
}

}  // namespace mistral
