// The per-row table of a batched decode step (Backend::decode_rows): one entry per single-token row,
// each with its own KV cache, position and slot count, staged by the host and read by the RoPE + cache
// write kernel (rope.cuh) and the split-KV decode attention kernels (attention_decode.cuh).
#pragma once
#include <cstdint>

namespace mistral {
namespace cuda {

// Row i is token i of q[n, Hq*hd], k, v[n, Hkv*hd] and out[n, Hq*hd].
struct DecodeRowArgs {
  void* cache_k = nullptr;  // this row's cache for the layer, [slots, Hkv*hd] (float or __half, as the
  void* cache_v = nullptr;  // launch says): position j in row j % slots
  int64_t pos = 0;    // the token's position (>= 0): RoPE angle, keys j0 .. pos, its K/V go to row pos % slots
  int64_t slots = 0;  // > 0: W for a rolling cache, else more than any position it holds
  int split0 = 0;     // first of this row's splits in the attention partials (prefix sum of `splits`)
  int splits = 1;     // KV splits of this row (>= 1)
};

// One block of the split-KV partial kernel: split `split` of row `row`.
struct DecodeWork {
  int row = 0;
  int split = 0;
};

}  // namespace cuda
}  // namespace mistral
