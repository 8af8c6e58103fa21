// GPTQ: Hessians of the linear inputs from a calibration pass, the inverse Cholesky factor, and the
// column-by-column quantization with error feedback (mistral/gptq.h).
#include "mistral/gptq.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>

#include "mistral/backend.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/threadpool.h"

namespace mistral {

namespace {

// Dot product in four partial sums (a fixed order, so results do not depend on threads).
double dot(const double* a, const double* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) s0 += a[k] * b[k], s1 += a[k + 1] * b[k + 1], s2 += a[k + 2] * b[k + 2], s3 += a[k + 3] * b[k + 3];
  for (; k < n; ++k) s0 += a[k] * b[k];
  return (s0 + s1) + (s2 + s3);
}

// A = L L^T in place: L in the lower triangle (the strict upper triangle is left as it was). False when
// A is not (numerically) positive definite.
bool cholesky_lower(std::vector<double>& A, int64_t K, ThreadPool& pool) {
  for (int64_t j = 0; j < K; ++j) {
    double* Aj = A.data() + j * K;
    const double d = Aj[j] - dot(Aj, Aj, j);
    if (!(d > 0) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    Aj[j] = ljj;
    pool.parallel_for(K - j - 1, [&](int64_t a, int64_t b) {
      for (int64_t i = j + 1 + a; i < j + 1 + b; ++i) {
        double* Ai = A.data() + i * K;
        Ai[j] = (Ai[j] - dot(Ai, Aj, j)) / ljj;
      }
    }, 32);
  }
  return true;
}

// The observer of a calibration pass: one Hessian per observed layer and linear input.
class Calibrator : public ActivationObserver {
 public:
  Calibrator(int64_t l0, int64_t l1, const int64_t (&dims)[kLinearInputs], ThreadPool& pool)
      : l0_(l0), l1_(l1), pool_(pool), h_(size_t(l1 - l0) * kLinearInputs) {
    for (int64_t l = l0; l < l1; ++l)
      for (int i = 0; i < kLinearInputs; ++i) {
        Hessian& H = at(l, LinearInput(i));
        H.K = dims[i];
        H.h.assign(size_t(dims[i] * dims[i]), 0.0);
      }
  }
  int64_t first_layer() const override { return l0_; }
  int64_t end_layer() const override { return l1_; }
  void observe(int64_t layer, LinearInput which, const float* x, int T, int64_t K) override {
    if (layer < l0_ || layer >= l1_) return;
    Hessian& H = at(layer, which);
    if (K != H.K) throw Error("internal: calibration input of width " + std::to_string(K) + ", expected " +
                              std::to_string(H.K));
    accumulate_upper(H, x, T, pool_);  // mirrored once, when the pass is over (finish)
  }
  void finish() {
    for (Hessian& H : h_) mirror(H, pool_);
  }
  Hessian& at(int64_t layer, LinearInput which) { return h_[size_t(layer - l0_) * kLinearInputs + size_t(which)]; }

  // H += x^T x in its upper triangle, each entry summed over t in order. Rows go in blocks of 16, block b
  // paired with block nb - 1 - b so that every thread's share of the triangle is about the same.
  static void accumulate_upper(Hessian& H, const float* x, int T, ThreadPool& pool) {
    const int64_t K = H.K, nb = (K + 15) / 16;
    if (H.h.size() != size_t(K * K)) H.h.assign(size_t(K * K), 0.0);
    auto block = [&](int64_t b, std::vector<double>& xt) {
      const int64_t ib = b * 16, ie = std::min(K, ib + 16);
      for (int t = 0; t < T; ++t) {
        const float* row = x + int64_t(t) * K;
        for (int64_t j = ib; j < K; ++j) xt[size_t(j)] = row[j];
        for (int64_t i = ib; i < ie; ++i) {
          const double a = xt[size_t(i)];
          if (a == 0) continue;
          double* hi = H.h.data() + i * K;
          for (int64_t j = i; j < K; ++j) hi[j] += a * xt[size_t(j)];
        }
      }
    };
    pool.parallel_for((nb + 1) / 2, [&](int64_t p0, int64_t p1) {
      std::vector<double> xt(static_cast<size_t>(K));
      for (int64_t p = p0; p < p1; ++p) {
        block(p, xt);
        if (nb - 1 - p != p) block(nb - 1 - p, xt);
      }
    });
    H.rows += T;
  }
  // The lower triangle from the upper one, rows in parallel.
  static void mirror(Hessian& H, ThreadPool& pool) {
    const int64_t K = H.K;
    pool.parallel_for(K, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < i; ++j) H.h[size_t(i * K + j)] = H.h[size_t(j * K + i)];
    }, 64);
  }

 private:
  int64_t l0_, l1_;
  ThreadPool& pool_;
  std::vector<Hessian> h_;
};

}  // namespace

void Hessian::add(const float* x, int T, int threads) {
  ThreadPool pool(threads);
  Calibrator::accumulate_upper(*this, x, T, pool);
  Calibrator::mirror(*this, pool);
}

std::vector<int64_t> gptq_act_order(const Hessian& H) {
  std::vector<int64_t> order(static_cast<size_t>(H.K));
  for (int64_t k = 0; k < H.K; ++k) order[size_t(k)] = k;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return H.h[size_t(a * H.K + a)] > H.h[size_t(b * H.K + b)];
  });
  return order;
}

Hessian permute_hessian(const Hessian& H, const std::vector<int64_t>& order) {
  if (order.size() != size_t(H.K)) throw UsageError("gptq: the column order does not match the Hessian");
  Hessian P;
  P.K = H.K;
  P.rows = H.rows;
  P.h.resize(H.h.size());
  for (int64_t a = 0; a < H.K; ++a) {
    const double* src = H.h.data() + order[size_t(a)] * H.K;
    for (int64_t b = 0; b < H.K; ++b) P.h[size_t(a * H.K + b)] = src[order[size_t(b)]];
  }
  return P;
}

std::vector<float> gptq_inverse_factor(const Hessian& H, double damp, int threads, const std::vector<int64_t>& order) {
  const int64_t K = H.K;
  if (K <= 0 || H.h.size() != size_t(K * K)) throw UsageError("gptq: empty Hessian");
  if (!(damp > 0) || damp > 1) throw UsageError("gptq: the damping must be in (0, 1]");
  if (!order.empty() && order.size() != size_t(K)) throw UsageError("gptq: the column order does not match the Hessian");
  ThreadPool pool(threads);
  // Column c of the ordered matrix is column col(c) of H.
  auto col = [&](int64_t c) { return order.empty() ? c : order[size_t(c)]; };
  // Columns no input reached get a unit diagonal (GPTQ's "dead" inputs); then the damping, as a
  // fraction of the mean diagonal.
  auto diag = [&](int64_t c) {
    const double d = H.h[size_t(c * K + c)];
    return d == 0 ? 1.0 : d;
  };
  double mean = 0;
  for (int64_t i = 0; i < K; ++i) mean += diag(i);
  mean /= double(K);
  // U is the upper factor of H^-1. With J the order-reversing permutation and J H J = M M^T (M lower),
  // H = R R^T for the upper R = J M J, so H^-1 = (R^-1)^T R^-1 and U = R^-1 = J M^-1 J: one Cholesky
  // factorization of the reversed matrix and one triangular inverse. M is built straight from H (the
  // order and the reversal in one gather), so no other K x K copy is held.
  std::vector<double> M(H.h.size());
  for (double frac = damp;; frac *= 10) {
    pool.parallel_for(K, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t ci = col(K - 1 - i);
        const double* Hi = H.h.data() + ci * K;
        double* Mi = M.data() + i * K;
        for (int64_t j = 0; j < K; ++j) Mi[j] = Hi[col(K - 1 - j)];
        Mi[i] = diag(ci) + frac * mean;
      }
    }, 64);
    if (cholesky_lower(M, K, pool)) break;
    if (frac >= 1.0)
      throw WeightError("gptq: the calibration Hessian is not positive definite even with damping " +
                        std::to_string(frac) + " (too little or degenerate calibration text?)");
  }
  // X = M^-1 column by column (forward substitution on a unit vector); U[i][j] = X[K-1-i][K-1-j].
  std::vector<float> U(size_t(K * K), 0.0f);
  pool.parallel_for(K, [&](int64_t c0, int64_t c1) {
    std::vector<double> x(static_cast<size_t>(K));
    for (int64_t c = c0; c < c1; ++c) {
      x[size_t(c)] = 1.0 / M[size_t(c * K + c)];
      for (int64_t i = c + 1; i < K; ++i) {
        const double* Mi = M.data() + i * K;
        x[size_t(i)] = -dot(Mi + c, x.data() + c, i - c) / Mi[i];
      }
      for (int64_t i = c; i < K; ++i) U[size_t((K - 1 - i) * K + (K - 1 - c))] = float(x[size_t(i)]);
    }
  }, 8);
  return U;
}

QuantizedMatrix gptq_quantize(DType qt, const Weight& w, const std::vector<float>& U, int threads,
                              const std::vector<int64_t>& order) {
  if (!is_quantized(qt)) throw UsageError(std::string("gptq: cannot quantize to ") + dtype_name(qt));
  if (is_quantized(w.dtype)) throw UsageError("gptq: the weight is already quantized");
  const int64_t N = w.rows, K = w.cols;
  if (U.size() != size_t(K * K)) throw UsageError("gptq: the inverse factor does not match the weight's columns");
  if (!order.empty() && order.size() != size_t(K)) throw UsageError("gptq: the column order does not match the weight");
  const bool permuted = !order.empty();
  QuantizedMatrix q;
  q.dtype = qt;
  q.rows = N;
  q.cols = K;
  const size_t rb = quant_row_bytes(qt, K);
  const int64_t G = quant_group(qt, K), ng = quant_groups(qt, K);
  const size_t sb = size_t(ng) * dtype_size(quant_scale_dtype(qt));
  q.data.resize(size_t(N) * rb);
  q.scales.resize(size_t(N) * sb);
  const size_t es = dtype_size(w.dtype);
  constexpr int64_t B = 32;  // rows per block: each row of U is read once per block
  std::atomic<int64_t> bad{-1};
  auto flag = [&](int64_t row) {  // the first bad row is reported
    int64_t expected = -1;
    bad.compare_exchange_strong(expected, row);
  };
  auto check = [&](float& s, int64_t row) {
    if (!std::isfinite(s)) flag(row), s = 0;
  };
  ThreadPool pool(threads);
  pool.parallel_for(N, [&](int64_t r0, int64_t r1) {
    std::vector<float> W(size_t(B * K)), row(static_cast<size_t>(K)), scale(size_t(B * ng));
    std::vector<int8_t> codes(size_t(B * K));
    for (int64_t rb0 = r0; rb0 < r1; rb0 += B) {
      const int64_t nb = std::min(B, r1 - rb0);
      for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* src = static_cast<const uint8_t*>(w.data) + size_t(rb0 + i) * size_t(K) * es;
        float* Wi = W.data() + i * K;
        to_f32(w.dtype, src, row.data(), size_t(K));
        for (int64_t k = 0; k < K; ++k)
          if (!std::isfinite(row[size_t(k)])) flag(rb0 + i), row[size_t(k)] = 0;
        if (!permuted) {
          std::copy(row.begin(), row.end(), Wi);
          continue;
        }
        // Columns in `order`; the scales of every group fixed up front from the weight as stored.
        for (int64_t k = 0; k < K; ++k) Wi[k] = row[size_t(order[size_t(k)])];
        for (int64_t g = 0; g < ng; ++g) {
          float& s = scale[size_t(i * ng + g)];
          s = quant_group_scale(qt, row.data() + g * G, std::min(K, (g + 1) * G) - g * G);
          check(s, rb0 + i);
          store_scale(qt, s, q.scales.data() + size_t(rb0 + i) * sb, g);
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const int64_t col = permuted ? order[size_t(k)] : k;
        if (!permuted && k % G == 0) {  // the group's scale, from its values as they are now
          const int64_t n = std::min(K, k + G) - k;
          for (int64_t i = 0; i < nb; ++i) {
            float& s = scale[size_t(i * ng + k / G)];
            s = quant_group_scale(qt, W.data() + i * K + k, n);
            check(s, rb0 + i);
            store_scale(qt, s, q.scales.data() + size_t(rb0 + i) * sb, k / G);
          }
        }
        const float* Uk = U.data() + k * K;
        const float ukk = Uk[k];
        for (int64_t i = 0; i < nb; ++i) {
          float* Wi = W.data() + i * K;
          const float s = scale[size_t(i * ng + col / G)];
          const int c = quant_code(qt, Wi[k], s);
          codes[size_t(i * K + col)] = int8_t(c);
          const float err = (Wi[k] - quant_code_value(qt, c) * s) / ukk;
          for (int64_t j = k + 1; j < K; ++j) Wi[j] -= err * Uk[j];
        }
      }
      for (int64_t i = 0; i < nb; ++i) pack_codes(qt, codes.data() + i * K, K, q.data.data() + size_t(rb0 + i) * rb);
    }
  }, B);
  if (bad.load() >= 0)
    throw WeightError("row " + std::to_string(bad.load()) + " cannot be quantized to " + dtype_name(qt) +
                      " (a non-finite value, or a scale beyond fp16)");
  return q;
}

void gptq_quantize_model(Model& model, const std::vector<int32_t>& calib, const GptqOptions& o) {
  if (model.quant() != Quant::None)
    throw UsageError(model.dir() + " is already quantized (" + quant_name(model.quant()) +
                     "); GPTQ needs full precision");
  if (o.quant == Quant::None) throw UsageError("GPTQ needs --quant int8, nf4 or int4");
  if (calib.size() < 2) throw UsageError("the calibration text is too short (at least 2 tokens)");
  const ModelConfig& c = model.config();
  const DType qt = quant_dtype(o.quant);
  const int64_t ctx = std::max<int64_t>(2, std::min(o.ctx, c.max_position_embeddings));
  const int64_t dims[kLinearInputs] = {c.hidden_size, c.q_dim(), c.hidden_size, c.intermediate_size};
  size_t per_layer = 0;
  for (int64_t d : dims) per_layer += size_t(d * d) * sizeof(double);
  const int64_t L = c.num_layers;
  const int64_t group = std::max<int64_t>(1, int64_t(o.hessian_budget / per_layer));
  // Which input feeds which weight.
  const struct {
    LinearWeight w;
    LinearInput in;
  } feeds[kLinearWeights] = {{LinearWeight::Q, LinearInput::AttnIn},  {LinearWeight::K, LinearInput::AttnIn},
                             {LinearWeight::V, LinearInput::AttnIn},  {LinearWeight::O, LinearInput::AttnOut},
                             {LinearWeight::Gate, LinearInput::MlpIn}, {LinearWeight::Up, LinearInput::MlpIn},
                             {LinearWeight::Down, LinearInput::MlpAct}};
  auto be = make_cpu_backend(o.threads);
  ThreadPool pool(o.threads);
  const int64_t n = int64_t(calib.size());
  for (int64_t l0 = 0; l0 < L; l0 += group) {
    const int64_t l1 = std::min(L, l0 + group);
    if (o.progress)
      o.progress("gptq: calibrating layers " + std::to_string(l0) + "-" + std::to_string(l1 - 1) + " on " +
                 std::to_string(n) + " tokens (windows of " + std::to_string(ctx) + ")");
    Calibrator cal(l0, l1, dims, pool);
    {
      SessionOptions so;
      so.context = ctx;
      so.graphs = false;
      ForwardPass fp(model, *be, so);
      fp.set_observer(&cal);
      for (int64_t b = 0; b < n; b += ctx) {
        const int64_t e = std::min(n, b + ctx);
        std::unique_ptr<KVCache> cache = fp.new_cache(ctx);
        for (int64_t t = b; t < e; t += fp.chunk()) {
          BatchSegment s;
          s.cache = cache.get();
          s.ids = calib.data() + t;
          s.T = int(std::min<int64_t>(fp.chunk(), e - t));
          s.want_logits = false;
          fp.run({s}, nullptr);
        }
      }
    }
    cal.finish();
    for (int64_t l = l0; l < l1; ++l) {
      for (int i = 0; i < kLinearInputs; ++i) {
        // Act-order: columns by decreasing Hessian diagonal (the inputs with the most energy first).
        Hessian& H = cal.at(l, LinearInput(i));
        const std::vector<int64_t> order = gptq_act_order(H);
        const std::vector<float> U = gptq_inverse_factor(H, o.damp, o.threads, order);
        H.h = {};  // memory back as soon as the input is done
        for (const auto& f : feeds)
          if (f.in == LinearInput(i))
            model.replace_linear(l, f.w, gptq_quantize(qt, model.linear(l, f.w), U, o.threads, order));
      }
      if (o.progress) o.progress("gptq: layer " + std::to_string(l + 1) + "/" + std::to_string(L) + " quantized");
    }
  }
}

}  // namespace mistral
