// GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers", 2022): quantize each linear weight column by column, spreading every column's rounding
// error over the columns not yet quantized, weighted by the inverse Hessian H = sum x x^T of the
// layer's inputs on a calibration text. The result has the exact layout of mistral/quant.h, so every
// kernel and `quantize` checkpoint reads it unchanged; only the choice of codes (and, without
// act-order, of the scales) differs from round-to-nearest.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mistral/model.h"
#include "mistral/quant.h"

namespace mistral {

// sum over calibration rows of x x^T for one linear input of one layer: K x K, row-major, float64.
struct Hessian {
  int64_t K = 0;
  int64_t rows = 0;  // calibration rows accumulated
  std::vector<double> h;
  void add(const float* x, int T, int threads = 0);  // x: [T, K]
};

// The upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 (H^-1 = U^T U), row-major K x K in
// float, with the columns no calibration row touched (diag H == 0) given a unit diagonal first; with
// `order`, of that matrix with rows and columns taken in that order (as permute_hessian(H, order),
// without the copy). damp in (0, 1]; it is raised tenfold (up to 1.0) while the matrix is not positive
// definite; throws WeightError if it never is.
std::vector<float> gptq_inverse_factor(const Hessian& H, double damp, int threads = 0,
                                       const std::vector<int64_t>& order = {});

// GPTQ's act-order: the columns by decreasing diagonal of H (ties in column order).
std::vector<int64_t> gptq_act_order(const Hessian& H);
// H with rows and columns taken in `order` (P[a][b] = H[order[a]][order[b]]).
Hessian permute_hessian(const Hessian& H, const std::vector<int64_t>& order);

// Quantizes a full-precision [rows, cols] weight to qtype (Q8, NF4 or Q4) with GPTQ. Rows are
// independent and run in parallel.
// - order empty: columns in their natural order, U from gptq_inverse_factor(H); each group's scale is
//   taken from its values when the group is reached (GPTQ's original scheme).
// - order given (act-order with static groups): columns in that order, U from
//   gptq_inverse_factor(H, damp, threads, order); every group's scale is fixed up front from the
//   weight as stored (the round-to-nearest scale), so the groups stay contiguous in the layout.
// With a diagonal H (no correlation between inputs) nothing is spread and either way the result
// equals quantize_matrix's.
QuantizedMatrix gptq_quantize(DType qtype, const Weight& w, const std::vector<float>& U, int threads = 0,
                              const std::vector<int64_t>& order = {});

struct GptqOptions {
  Quant quant = Quant::NF4;
  int64_t ctx = 512;                  // calibration window (tokens per forward pass, fresh cache each)
  double damp = 0.01;                 // GPTQ's percdamp: damping as a fraction of the mean Hessian diagonal
  int threads = 0;                    // 0: all cores
  size_t hessian_budget = size_t(4) << 30;  // bytes of Hessians held at once: layers are calibrated in groups
  std::function<void(const std::string&)> progress;  // one line per step, when set
};

// Quantizes every layer's linear weights of a full-precision `model` in place with GPTQ (act-order,
// static groups), calibrated on the token ids `calib` (split into windows of o.ctx). Layers go in groups whose Hessians fit
// o.hessian_budget; each group's inputs come from the model with the groups before it already
// quantized (GPTQ's sequential order; a small model is one group). Embeddings, norms and lm_head stay
// as they are. Runs on the CPU. Throws UsageError for a quantized model or too few tokens.
void gptq_quantize_model(Model& model, const std::vector<int32_t>& calib, const GptqOptions& o);

}  // namespace mistral
