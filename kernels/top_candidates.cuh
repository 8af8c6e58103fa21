// Sampling on the device: the head of each logits row (its largest values after the repetition
// penalty, in order, and the softmax normaliser), so that a few KB a row reach the host instead of
// the whole row (mistral::top_candidates is the host version, Sampler::pick the consumer).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

// The most candidates a row can ask for.
constexpr int kMaxTopCandidates = 1024;

// One row's request (device memory): k in [1, kMaxTopCandidates]; temperature (<= 0: no normaliser);
// ids pen[pen_offset .. pen_offset + n_pen) (distinct, in [0, n)) get the penalty.
struct TopRequest {
  int k;
  float temperature;
  float penalty;
  int pen_offset;
  int n_pen;
};

// For each row r of x[rows, n] (device): the min(k, n) largest values after the penalty, ordered by
// value descending then index ascending (NaN as -inf), into ids/vals[r * kmax ..], and z[r] = sum over
// the row of exp((v - max) / temperature) (fp32 terms, fp64 sum). work: device [rows, n] scratch for
// the penalised rows (may be null when no row has a penalty). n <= 2^30. One block a row.
cudaError_t top_candidates_cuda(const float* x, int rows, int n, const TopRequest* req, const int32_t* pen, float* work,
                                int kmax, int32_t* ids, float* vals, double* z, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
