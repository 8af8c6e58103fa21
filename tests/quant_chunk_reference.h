// What the references of the quantized GEMV's fp16 and int8 paths (tests/quant_half_reference.h,
// tests/quant_i8_reference.h) read of a packed row (include/mistral/quant.h layout): an element's code
// value and a 16-byte chunk's scale, written from the layout, not from the kernels.
#pragma once
#include <cstdint>
#include <cstring>

#include "mistral/dtype.h"
#include "mistral/quant.h"

namespace quant_chunk_ref {

// Code value of element k of a packed row: Q4 code - 8, Q8 the int8.
inline int code(mistral::DType t, const uint8_t* row, int k) {
  if (t == mistral::DType::Q8) return int(int8_t(row[k]));
  const uint8_t b = row[k / 2];
  return int(k % 2 ? b >> 4 : b & 15) - 8;
}

// The scale of the chunk starting at element c0 of a row whose scales are `scales` (fp32 for Q8, one a
// row; fp16 bits for Q4, one a group of kQ4Group).
inline double chunk_scale(mistral::DType t, const void* scales, int c0) {
  if (t == mistral::DType::Q8) {
    float f;
    std::memcpy(&f, scales, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, static_cast<const uint8_t*>(scales) + 2 * (c0 / mistral::kQ4Group), 2);
  return mistral::f16_to_f32(h);
}

}  // namespace quant_chunk_ref
