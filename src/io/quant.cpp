// Quantizers and dequantizers for the Q8 / NF4 / Q4 weight layouts described in mistral/quant.h.
#include "mistral/quant.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "mistral/error.h"
#include "mistral/threadpool.h"

namespace mistral {

const float kNF4Codes[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

const char* quant_name(Quant q) {
  switch (q) {
    case Quant::None: return "none";
    case Quant::Int8: return "int8";
    case Quant::NF4: return "nf4";
    case Quant::Int4: return "int4";
  }
  return "?";
}

bool parse_quant(const std::string& s, Quant* out) {
  if (s == "none") *out = Quant::None;
  else if (s == "int8") *out = Quant::Int8;
  else if (s == "nf4") *out = Quant::NF4;
  else if (s == "int4") *out = Quant::Int4;
  else return false;
  return true;
}

DType quant_dtype(Quant q) {
  switch (q) {
    case Quant::Int8: return DType::Q8;
    case Quant::NF4: return DType::NF4;
    case Quant::Int4: return DType::Q4;
    case Quant::None: break;
  }
  return DType::F32;
}

Quant quant_of(DType t) {
  switch (t) {
    case DType::Q8: return Quant::Int8;
    case DType::NF4: return Quant::NF4;
    case DType::Q4: return Quant::Int4;
    default: return Quant::None;
  }
}

int64_t quant_group(DType t, int64_t cols) {
  if (t == DType::NF4) return kNF4Group;
  if (t == DType::Q4) return kQ4Group;
  return std::max<int64_t>(cols, 1);
}

int64_t quant_groups(DType t, int64_t cols) {
  const int64_t g = quant_group(t, cols);
  return (cols + g - 1) / g;
}

size_t quant_row_bytes(DType t, int64_t cols) {
  if (t == DType::Q8) return size_t((cols + 15) / 16 * 16);
  return size_t((cols + 31) / 32 * 16);
}

DType quant_scale_dtype(DType t) { return t == DType::Q8 ? DType::F32 : DType::F16; }

size_t quant_data_bytes(DType t, int64_t rows, int64_t cols) { return size_t(rows) * quant_row_bytes(t, cols); }

size_t quant_scale_bytes(DType t, int64_t rows, int64_t cols) {
  return size_t(rows) * size_t(quant_groups(t, cols)) * dtype_size(quant_scale_dtype(t));
}

namespace {

// NF4: the code whose value is nearest to x (x already divided by the scale). Midpoints between
// neighbouring codes decide, with ties to the lower code (bitsandbytes' dQuantizeNF4 uses x > midpoint).
uint8_t nf4_code(float x) {
  static const auto mids = [] {
    std::vector<float> m(15);
    for (int i = 0; i < 15; ++i) m[size_t(i)] = (kNF4Codes[i] + kNF4Codes[i + 1]) * 0.5f;
    return m;
  }();
  uint8_t c = 0;
  while (c < 15 && x > mids[c]) ++c;
  return c;
}

inline uint8_t nibble(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k >> 1];
  return (k & 1) ? uint8_t(b >> 4) : uint8_t(b & 15);
}

}  // namespace

float quant_group_scale(DType t, const float* x, int64_t n) {
  float amax = 0, m = 0;  // m: the first element of largest magnitude
  for (int64_t k = 0; k < n; ++k)
    if (std::fabs(x[k]) > amax) amax = std::fabs(x[k]), m = x[k];
  if (t == DType::Q8) return amax / 127.0f;
  return f16_to_f32(f32_to_f16(t == DType::NF4 ? amax : m / -8.0f));
}

int quant_code(DType t, float x, float scale) {
  if (t == DType::Q8) return scale > 0 ? int(std::max(-127.0f, std::min(127.0f, std::round(x / scale)))) : 0;
  if (t == DType::NF4) return scale > 0 ? nf4_code(x / scale) : 7;
  return scale != 0 ? int(std::max(-8.0f, std::min(7.0f, std::round(x / scale)))) + 8 : 8;
}

float quant_code_value(DType t, int code) {
  if (t == DType::Q8) return float(code);
  return t == DType::NF4 ? kNF4Codes[code] : float(code - 8);
}

void pack_codes(DType t, const int8_t* codes, int64_t cols, uint8_t* dst) {
  if (t == DType::Q8) {
    std::memset(dst, 0, quant_row_bytes(t, cols));
    std::memcpy(dst, codes, size_t(cols));
    return;
  }
  // Two per byte, low nibble first; padding (up to 16-byte rows) encodes zero.
  const uint8_t zero = t == DType::NF4 ? 7 : 8;
  const int64_t n = (cols + 31) / 32 * 32;
  for (int64_t k = 0; k < n; k += 2) {
    const uint8_t a = k < cols ? uint8_t(codes[k]) : zero, b = k + 1 < cols ? uint8_t(codes[k + 1]) : zero;
    dst[k / 2] = uint8_t(a | (b << 4));
  }
}

void store_scale(DType t, float scale, void* scales, int64_t g) {
  if (t == DType::Q8) std::memcpy(static_cast<uint8_t*>(scales) + 4 * g, &scale, 4);
  else static_cast<uint16_t*>(scales)[g] = f32_to_f16(scale);
}

bool quantize_row(DType t, const float* x, int64_t cols, uint8_t* data, void* scales) {
  if (cols < 0) return false;
  for (int64_t k = 0; k < cols; ++k)
    if (!std::isfinite(x[k])) return false;
  const int64_t G = quant_group(t, cols), ng = quant_groups(t, cols);
  std::vector<int8_t> codes(static_cast<size_t>(cols));
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t k0 = g * G, k1 = std::min(cols, k0 + G);
    const float scale = quant_group_scale(t, x + k0, k1 - k0);
    if (!std::isfinite(scale)) return false;
    store_scale(t, scale, scales, g);
    for (int64_t k = k0; k < k1; ++k) codes[size_t(k)] = int8_t(quant_code(t, x[k], scale));
  }
  pack_codes(t, codes.data(), cols, data);
  return true;
}

void dequantize_row(DType t, const uint8_t* data, const void* scales, int64_t cols, float* out) {
  if (t == DType::Q8) {
    float scale;
    std::memcpy(&scale, scales, 4);
    const int8_t* q = reinterpret_cast<const int8_t*>(data);
    for (int64_t k = 0; k < cols; ++k) out[k] = float(q[k]) * scale;
    return;
  }
  const int64_t G = quant_group(t, cols);
  const uint16_t* s16 = static_cast<const uint16_t*>(scales);
  for (int64_t k = 0; k < cols; ++k) {
    const float scale = f16_to_f32(s16[k / G]);
    const uint8_t c = nibble(data, k);
    out[k] = (t == DType::NF4 ? kNF4Codes[c] : float(int(c) - 8)) * scale;
  }
}

QuantizedMatrix quantize_matrix(DType qtype, DType src_dtype, const void* src, int64_t rows, int64_t cols,
                                int threads) {
  if (!is_quantized(qtype)) throw WeightError(std::string("cannot quantize to ") + dtype_name(qtype));
  if (is_quantized(src_dtype) || src_dtype == DType::I8 || src_dtype == DType::U8)
    throw WeightError(std::string("cannot quantize a ") + dtype_name(src_dtype) + " tensor (full precision needed)");
  QuantizedMatrix q;
  q.dtype = qtype;
  q.rows = rows;
  q.cols = cols;
  const size_t rb = quant_row_bytes(qtype, cols);
  const size_t sb = size_t(quant_groups(qtype, cols)) * dtype_size(quant_scale_dtype(qtype));
  q.data.resize(size_t(rows) * rb);
  q.scales.resize(size_t(rows) * sb);
  const size_t es = dtype_size(src_dtype);
  std::atomic<int64_t> bad{-1};
  auto work = [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      to_f32(src_dtype, static_cast<const uint8_t*>(src) + size_t(r) * size_t(cols) * es, row.data(), size_t(cols));
      if (!quantize_row(qtype, row.data(), cols, q.data.data() + size_t(r) * rb, q.scales.data() + size_t(r) * sb)) {
        int64_t expected = -1;
        bad.compare_exchange_strong(expected, r);
      }
    }
  };
  if (rows * cols < (int64_t(1) << 18) || threads == 1) {
    work(0, rows);
  } else {
    ThreadPool pool(threads);
    pool.parallel_for(rows, work, 16);
  }
  if (bad.load() >= 0)
    throw WeightError("row " + std::to_string(bad.load()) + " cannot be quantized to " + dtype_name(qtype) +
                      " (a non-finite value, or a scale beyond fp16)");
  return q;
}

}  // namespace mistral
