// Storage dtypes of weights and their conversion to fp32. Quantized weight formats (Q8, NF4, Q4) are
// laid out as include/mistral/quant.h describes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace mistral {

// F32, F16, BF16: full-precision weights. I8, U8: raw bytes, only as safetensors storage of quantized
// data (a Weight never has them). Q8, NF4, Q4: quantized weights (data + scales, see quant.h).
enum class DType { F32, F16, BF16, I8, U8, Q8, NF4, Q4 };

// Bytes per element; 0 for the packed 4-bit formats (use quant_row_bytes from quant.h).
size_t dtype_size(DType t);
// "F32", "F16", "BF16", "I8", "U8" (safetensors spelling); "INT8", "NF4", "INT4" for quantized weights.
const char* dtype_name(DType t);
// F32, F16, BF16, I8, U8. The safetensors reader accepts I8/U8 only in quantized checkpoints.
bool parse_safetensors_dtype(const std::string& s, DType* out);
inline bool is_quantized(DType t) { return t == DType::Q8 || t == DType::NF4 || t == DType::Q4; }

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept quiet.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// Saturated at +-65504 first, never inf (the CUDA kernels' fminf/fmaxf clamp: NaN becomes -65504).
inline uint16_t f32_to_f16_sat(float f) {
  const float lo = f > -65504.f ? f : -65504.f;  // NaN compares false: -65504, as fmaxf(NaN, -65504)
  return f32_to_f16(lo < 65504.f ? lo : 65504.f);
}
// f as an fp16 KV cache holds it.
inline float kv_round(float f) { return f16_to_f32(f32_to_f16_sat(f)); }

// Converts n elements of type t (F32, F16 or BF16) at src to fp32.
void to_f32(DType t, const void* src, float* dst, size_t n);

}  // namespace mistral
