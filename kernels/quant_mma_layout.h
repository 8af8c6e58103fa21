// Q4 (int4) and Q8 (int8) weights re-laid for the tensor-core decode GEMV (quant_mma.cu), an experiment behind
// MISTRAL_CUDA_QUANT_MMA=1: tiles of 16 rows x 64 columns of 512 bytes, a row tile's 64-column tiles in
// order, row tile after row tile. In a tile, lane L of a warp (g = L / 4, t = L % 4) owns bytes
// 16 L .. 16 L + 15, four little-endian 32-bit words; word j covers the tile's columns 16 j .. 16 j + 15
// (one k16 step of mma.m16n8k16), and its nibble p (bits 4p .. 4p+3) is element h = p / 4 of the A
// fragment's register r = p % 4 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type": register r holds row g + 8 (r & 1), columns 2t + 8 (r >> 1) and the next one, the first in
// the low half). So ((word >> 4r) & 0x000F000F) | 0x64006400 is register r as two fp16 values 1024 +
// code. Rows past N and columns past K hold code 8 (the value 0).
// Q8 in the same scheme: tiles of 16 rows x 32 columns (512 bytes); a lane's four words are two k16
// steps, words 2j and 2j + 1 for columns 16j .. 16j + 15, byte b of word 2j + u being element b % 2 of
// register 2u + b / 2. A byte XOR 0x80 under a high byte 0x64 is fp16 1024 + 128 + q. Rows past N and
// columns past K hold 0. Plain C++: the kernel and tools/q4_mma_host_check.cpp share it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define Q4MMA_FN __host__ __device__ inline
#else
#define Q4MMA_FN inline
#endif

namespace mistral {
namespace cuda {
namespace q4mma {

constexpr int kTileRows = 16, kTileCols = 64, kTileBytes = 512;
constexpr int kWarps = 8;  // warps of a block, which takes one row tile

// How the kernel shares a row tile out: warp w takes the groups (of group / 64 tiles each) w, w + 8, ...
// in order, one tile a step: warp_steps of them; step m is tile warp_tile(w, m, gt) of group
// warp_group(w, m, gt) (gt = group / 64), and a group's sums are scaled after its last step
// (m % gt == gt - 1).
Q4MMA_FN int warp_steps(int warp, int n_groups, int gt) {
  return (warp < n_groups ? (n_groups - warp + kWarps - 1) / kWarps : 0) * gt;
}
Q4MMA_FN int warp_group(int warp, int m, int gt) { return warp + kWarps * (m / gt); }
Q4MMA_FN int warp_tile(int warp, int m, int gt) { return warp_group(warp, m, gt) * gt + m % gt; }

inline int64_t row_tiles(int64_t N) { return (N + kTileRows - 1) / kTileRows; }
inline int64_t col_tiles(int64_t K) { return (K + kTileCols - 1) / kTileCols; }
inline size_t bytes(int64_t N, int64_t K) { return size_t(row_tiles(N) * col_tiles(K)) * kTileBytes; }

// Row and column, within its tile, of nibble p (0..7) of word j (0..3) of lane L (0..31).
struct TilePos {
  int row, col;
};
inline TilePos nibble_pos(int L, int j, int p) {
  const int g = L >> 2, t = L & 3, r = p & 3, h = p >> 2;
  return {g + 8 * (r & 1), 16 * j + 2 * t + h + 8 * (r >> 1)};
}

// Writes every tile (tile_cols columns wide) of an [N, K] matrix into out: element e (bits wide) of
// word j of lane L of a tile is the code code(n, k) of the matrix position pos(L, j, e) gives within the
// tile, or `pad` past N or K; words stored little-endian.
template <typename Pos, typename Code>
inline void fill_tiles(int64_t N, int64_t K, int tile_cols, int bits, uint32_t pad, Pos pos, Code code, uint8_t* out) {
  const int64_t RT = row_tiles(N), CT = (K + tile_cols - 1) / tile_cols;
  for (int64_t rt = 0; rt < RT; ++rt)
    for (int64_t ct = 0; ct < CT; ++ct)
      for (int L = 0; L < 32; ++L)
        for (int j = 0; j < 4; ++j) {
          uint32_t word = 0;
          for (int e = 0; e < 32 / bits; ++e) {
            const TilePos q = pos(L, j, e);
            const int64_t n = rt * kTileRows + q.row, k = ct * tile_cols + q.col;
            word |= (n < N && k < K ? code(n, k) : pad) << (bits * e);
          }
          std::memcpy(out + size_t(rt * CT + ct) * kTileBytes + 16 * L + 4 * j, &word, 4);
        }
}

// The tiles of a Q4 matrix [N, K] (quant.h: row n at q4 + n * row_bytes, element k in byte k / 2, the
// low nibble for even k) into out (bytes(N, K) bytes).
inline void repack(const uint8_t* q4, int64_t N, int64_t K, size_t row_bytes, uint8_t* out) {
  fill_tiles(
      N, K, kTileCols, 4, 8u, nibble_pos,
      [&](int64_t n, int64_t k) { return uint32_t(q4[size_t(n) * row_bytes + size_t(k / 2)] >> (4 * (k & 1))) & 0xFu; },
      out);
}

// Q8: tiles and the (row, column) within its tile of byte b (0..3) of word w (0..3) of lane L.
constexpr int kQ8TileCols = 32;
inline int64_t q8_col_tiles(int64_t K) { return (K + kQ8TileCols - 1) / kQ8TileCols; }
inline size_t q8_bytes(int64_t N, int64_t K) { return size_t(row_tiles(N) * q8_col_tiles(K)) * kTileBytes; }
inline TilePos q8_byte_pos(int L, int w, int b) {
  const int g = L >> 2, t = L & 3, j = w >> 1, r = 2 * (w & 1) + (b >> 1), h = b & 1;
  return {g + 8 * (r & 1), 16 * j + 2 * t + h + 8 * (r >> 1)};
}

// The Q8 tiles of an int8 matrix [N, K] (quant.h: row n at q8 + n * row_bytes, element k in byte k).
inline void repack_q8(const uint8_t* q8, int64_t N, int64_t K, size_t row_bytes, uint8_t* out) {
  fill_tiles(
      N, K, kQ8TileCols, 8, 0u, q8_byte_pos,
      [&](int64_t n, int64_t k) { return uint32_t(q8[size_t(n) * row_bytes + size_t(k)]); }, out);
}

}  // namespace q4mma
}  // namespace cuda
}  // namespace mistral
