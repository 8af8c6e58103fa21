// Host check of the Q4 and Q8 tile layouts for the tensor-core GEMV (kernels/quant_mma_layout.h, used by
// kernels/quant_mma.cu): after repack, every nibble (Q8: byte) the kernel turns into an A-fragment register holds
// the matrix element that the PTX ISA's fragment table puts there (rows past N and columns past K: code
// 8), and an emulation of the kernel's arithmetic (mma.m16n8k16 as the ISA defines it: D = A B + C,
// x rounded to fp16 in column 0 of B; per-group fp32 scaling; warps' partials summed in order) matches
// a float64 reference over random matrices, odd shapes included. No GPU needed:
//   g++ -O2 -std=c++17 -Iinclude -Ikernels tools/q4_mma_host_check.cpp build/libmistral_core.a -o /tmp/q4c
//   /tmp/q4c
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "mistral/dtype.h"
#include "quant_mma_layout.h"

using namespace mistral;
namespace q4mma = mistral::cuda::q4mma;

namespace {

// The ISA's table for the f16 A fragment of m16n8k16: element a_i (register i / 2, half i % 2).
void a_element(int lane, int i, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3;
  *row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  *col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}

int failures = 0;
#define CHECK(cond, ...)                   \
  do {                                     \
    if (!(cond)) {                         \
      if (failures++ < 10) {               \
        std::printf("FAIL: " __VA_ARGS__); \
        std::printf("\n");                 \
      }                                    \
    }                                      \
  } while (0)

void check(int64_t N, int64_t K, int group, std::mt19937& rng) {
  const size_t row_bytes = size_t(16 * ((K + 31) / 32));
  std::vector<uint8_t> q4(size_t(N) * row_bytes);
  for (auto& b : q4) b = uint8_t(rng());
  auto code = [&](int64_t n, int64_t k) -> int {
    if (n >= N || k >= K) return 8;
    return (q4[size_t(n) * row_bytes + size_t(k / 2)] >> (4 * (k & 1))) & 0xF;
  };
  const int64_t n_groups = (K + group - 1) / group;
  std::vector<float> scales(size_t(N * n_groups)), x(static_cast<size_t>(K));
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& s : scales) s = f16_to_f32(f32_to_f16(0.02f * nd(rng)));  // fp16 scales
  for (auto& v : x) v = nd(rng);
  std::vector<uint8_t> tiles(q4mma::bytes(N, K));
  q4mma::repack(q4.data(), N, K, row_bytes, tiles.data());

  const int64_t RT = q4mma::row_tiles(N), CT = q4mma::col_tiles(K);
  // 1. Every register half holds the ISA's element.
  for (int64_t rt = 0; rt < RT; ++rt)
    for (int64_t ct = 0; ct < CT; ++ct)
      for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 4; ++j) {
          uint32_t w;
          std::memcpy(&w, &tiles[size_t(rt * CT + ct) * q4mma::kTileBytes + 16 * lane + 4 * j], 4);
          for (int r = 0; r < 4; ++r) {
            const uint32_t v = (w >> (4 * r)) & 0x000F000Fu;  // the kernel's mask, before the fp16 bias
            for (int h = 0; h < 2; ++h) {
              int row, col;
              a_element(lane, 2 * r + h, &row, &col);
              const int got = int(h ? (v >> 16) & 0xF : v & 0xF);
              CHECK(got == code(rt * 16 + row, ct * 64 + 16 * j + col),
                    "N %lld K %lld tile (%lld,%lld) lane %d j %d r %d h %d", (long long)N, (long long)K, (long long)rt,
                    (long long)ct, lane, j, r, h);
            }
          }
        }
  // 2. The kernel's arithmetic, emulated, against float64.
  std::vector<float> xh(static_cast<size_t>(CT * 64), 0.f);
  for (int64_t k = 0; k < K; ++k) xh[size_t(k)] = f16_to_f32(f32_to_f16(x[size_t(k)]));
  const int gt = group / 64;
  double worst = 0;
  for (int64_t rt = 0; rt < RT; ++rt) {
    double part[q4mma::kWarps][16] = {};
    std::vector<int> groups_seen(size_t(n_groups), 0);
    for (int warp = 0; warp < q4mma::kWarps; ++warp) {
      double acc[16] = {};  // D column 0, rows 0..15 (fp32 in the hardware; fp64 here)
      for (int m = 0; m < q4mma::warp_steps(warp, int(n_groups), gt); ++m) {  // the kernel's steps
        const int64_t ct = q4mma::warp_tile(warp, m, gt), gi = q4mma::warp_group(warp, m, gt);
        CHECK(gi < n_groups && ct / gt == gi, "warp %d step %d: tile %lld of group %lld", warp, m, (long long)ct,
              (long long)gi);
        if (ct < CT) {
          for (int j = 0; j < 4; ++j)
            for (int lane = 0; lane < 32; ++lane) {
              uint32_t w;
              std::memcpy(&w, &tiles[size_t(rt * CT + ct) * q4mma::kTileBytes + 16 * lane + 4 * j], 4);
              for (int i = 0; i < 8; ++i) {
                int row, col;
                a_element(lane, i, &row, &col);
                const int c = int((w >> (4 * (i / 2) + 16 * (i % 2))) & 0xF);
                acc[row] += double(c - 8) * xh[size_t(ct * 64 + 16 * j + col)];  // B[k][0] = x_k
              }
            }
        }
        if (m % gt == gt - 1) {  // the group ends
          ++groups_seen[size_t(gi)];
          for (int row = 0; row < 16; ++row) {
            const int64_t n = rt * 16 + row;
            part[warp][row] += n < N ? double(scales[size_t(n * n_groups + gi)]) * acc[row] : 0.0;
            acc[row] = 0;
          }
        }
      }
    }
    for (int64_t gi = 0; gi < n_groups; ++gi)
      CHECK(groups_seen[size_t(gi)] == 1, "group %lld taken %d times", (long long)gi, groups_seen[size_t(gi)]);
    for (int row = 0; row < 16; ++row) {
      const int64_t n = rt * 16 + row;
      if (n >= N) continue;
      double got = 0, want = 0, mag = 0;
      for (int w = 0; w < q4mma::kWarps; ++w) got += part[w][row];
      for (int64_t k = 0; k < K; ++k) {
        const double e = double(code(n, k) - 8) * scales[size_t(n * n_groups + k / group)] * xh[size_t(k)];
        want += e, mag += std::fabs(e);
      }
      const double err = std::fabs(got - want) / (mag > 0 ? mag : 1);
      worst = std::max(worst, err);
      CHECK(err < 1e-12, "N %lld K %lld row %lld: %g vs %g", (long long)N, (long long)K, (long long)n, got, want);
    }
  }
  std::printf("Q4 N %5lld K %5lld group %3d: layout ok, emulated GEMV within %.1e of float64\n", (long long)N,
              (long long)K, group, worst);
}

}  // namespace

// Q8: every register half the kernel makes (XOR 0x80, under 0x64, less 1152) holds the ISA's element,
// and the emulated arithmetic (fp16 x, one fp32 scale a row at the end) matches float64.
void check_q8(int64_t N, int64_t K, std::mt19937& rng) {
  const size_t row_bytes = size_t(16 * ((K + 15) / 16));
  std::vector<uint8_t> q8(size_t(N) * row_bytes);
  for (auto& b : q8) b = uint8_t(rng());
  auto code = [&](int64_t n, int64_t k) -> int {
    return n < N && k < K ? int(int8_t(q8[size_t(n) * row_bytes + size_t(k)])) : 0;
  };
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> scales(static_cast<size_t>(N)), x(static_cast<size_t>(K));
  for (auto& s : scales) s = 0.01f * nd(rng);
  for (auto& v : x) v = nd(rng);
  std::vector<uint8_t> tiles(q4mma::q8_bytes(N, K));
  q4mma::repack_q8(q8.data(), N, K, row_bytes, tiles.data());
  const int64_t RT = q4mma::row_tiles(N), CT = q4mma::q8_col_tiles(K);
  std::vector<float> xh(static_cast<size_t>(CT * 32), 0.f);
  for (int64_t k = 0; k < K; ++k) xh[size_t(k)] = f16_to_f32(f32_to_f16(x[size_t(k)]));
  double worst = 0;
  for (int64_t rt = 0; rt < RT; ++rt) {
    double part[q4mma::kWarps][16] = {};
    for (int warp = 0; warp < q4mma::kWarps; ++warp)
      for (int m = 0; m < q4mma::warp_steps(warp, int(CT), 1); ++m) {
        const int64_t ct = q4mma::warp_tile(warp, m, 1);
        for (int lane = 0; lane < 32; ++lane)
          for (int j = 0; j < 2; ++j)      // k16 steps of the tile
            for (int i = 0; i < 8; ++i) {  // element a_i: register i / 2 (word 2j + i / 4), half i % 2
              uint32_t w;
              std::memcpy(&w, &tiles[size_t(rt * CT + ct) * q4mma::kTileBytes + 16 * lane + 4 * (2 * j + i / 4)], 4);
              w ^= 0x80808080u;
              const int byte = 2 * ((i / 2) & 1) + (i % 2);  // registers 0, 2: bytes 0, 1; registers 1, 3: bytes 2, 3
              const int q = int((w >> (8 * byte)) & 0xFF) + 1024 - 1152;
              int row, col;
              a_element(lane, i, &row, &col);
              const int64_t n = rt * 16 + row, k = ct * 32 + 16 * j + col;
              CHECK(q == code(n, k), "Q8 N %lld K %lld tile (%lld,%lld) lane %d step %d a%d: %d vs %d", (long long)N,
                    (long long)K, (long long)rt, (long long)ct, lane, j, i, q, code(n, k));
              part[warp][row] += double(q) * xh[size_t(ct * 32 + 16 * j + col)];
            }
      }
    for (int row = 0; row < 16; ++row) {
      const int64_t n = rt * 16 + row;
      if (n >= N) continue;
      double got = 0, want = 0, mag = 0;
      for (int w = 0; w < q4mma::kWarps; ++w) got += part[w][row];
      got *= scales[size_t(n)];
      for (int64_t k = 0; k < K; ++k) {
        const double e = double(code(n, k)) * scales[size_t(n)] * xh[size_t(k)];
        want += e, mag += std::fabs(e);
      }
      const double err = std::fabs(got - want) / (mag > 0 ? mag : 1);
      worst = std::max(worst, err);
      CHECK(err < 1e-12, "Q8 N %lld K %lld row %lld: %g vs %g", (long long)N, (long long)K, (long long)n, got, want);
    }
  }
  std::printf("Q8 N %5lld K %5lld: layout ok, emulated GEMV within %.1e of float64\n", (long long)N, (long long)K,
              worst);
}

int main() {
  std::mt19937 rng(7);
  const int64_t shapes[][2] = {{16, 64}, {1, 64}, {17, 100}, {40, 256}, {33, 1000}, {128, 4096}, {48, 14336}};
  for (const auto& s : shapes)
    for (int group : {64, 128}) check(s[0], s[1], group, rng);
  for (const auto& s : shapes) check_q8(s[0], s[1], rng);
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all ok\n");
  return 0;
}
