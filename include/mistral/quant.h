// Quantized weight formats (--quant int8|nf4|int4): the byte layout every backend reads, and the
// quantizers that produce it. The CPU kernels (src/backend/cpu/quant_matmul.cpp) and the CUDA kernels
// consume exactly this layout; files written by `mistral-run quantize` store it unchanged.
//
// A quantized Weight W [rows, cols] (y = x W^T: rows = output channels N, cols = input features K) has
//   data    row-major bytes, row r at data + r * quant_row_bytes(dtype, cols). Rows are padded to a
//           multiple of 16 bytes, so every row is 16-byte aligned when `data` is (load-time buffers
//           come from malloc, 16-byte aligned; `quantize` writes packed tensors at 16-byte offsets).
//           Padding encodes the value 0.
//   scales  row-major [rows, n_groups], n_groups = ceil(cols / group): scale g of row r is
//           scales[r * n_groups + g] and applies to elements [g * group, min((g + 1) * group, cols)).
//           The last group of a row may be partial (cols need not be a multiple of the group).
//   group   elements per scale along a row.
//
// Q8   (int8)  group = cols (one scale per output channel), scales fp32.
//              data: int8, element k of a row at byte k; q in [-127, 127]; w = q * scale,
//              scale = absmax(row) / 127, q = round(w / scale) (ties away from zero).
// NF4          group = 64 (kNF4Group), scales fp16: the block's absmax rounded to fp16.
//              w = kNF4Codes[code] * scale; code = the nearest code book value to w / scale
//              (bitsandbytes' rule: ties go to the lower code).
// Q4   (int4)  group = 128 (kQ4Group), scales fp16. Symmetric (no zero point): w = (code - 8) * scale,
//              code in 0..15 (q = code - 8 in [-8, 7]). The scale is m / -8 rounded to fp16, m being the
//              group's element of largest magnitude (so m maps to q = -8 exactly; the scale may be
//              negative); q = clamp(round(w / scale), -8, 7), ties away from zero.
// The two 4-bit formats pack two elements per byte in order: element k of a row is in byte k / 2,
// in the low nibble when k is even and the high nibble when k is odd (so the little-endian 32-bit
// word w of a row holds elements 8w .. 8w+7 at bits 4i .. 4i+3). quant_row_bytes = 16 * ceil(cols / 32):
// a 16-byte load gives 32 consecutive elements; the padding of the last row chunk encodes 0.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mistral/dtype.h"

namespace mistral {

enum class Quant { None, Int8, NF4, Int4 };
const char* quant_name(Quant q);                   // "none", "int8", "nf4", "int4"
bool parse_quant(const std::string& s, Quant* out);  // the names above
DType quant_dtype(Quant q);                        // Q8, NF4, Q4 (F32 for None)
Quant quant_of(DType t);                           // the inverse; None for full-precision dtypes

constexpr int kNF4Group = 64;
constexpr int kQ4Group = 128;

// The 16 NF4 values (QLoRA's NormalFloat4, index = 4-bit code), as published by bitsandbytes:
// bitsandbytes-foundation/bitsandbytes, csrc/kernels.cu and csrc/xpu_kernels.cpp, dDequantizeNF4()
// (the same table as bitsandbytes.functional.get_4bit_type("nf4")).
extern const float kNF4Codes[16];

int64_t quant_group(DType t, int64_t cols);      // elements per scale: Q8 cols, NF4 64, Q4 128
int64_t quant_groups(DType t, int64_t cols);     // scales per row: ceil(cols / group)
size_t quant_row_bytes(DType t, int64_t cols);   // data bytes per row, padding included
DType quant_scale_dtype(DType t);                // F32 for Q8, F16 for NF4 and Q4
size_t quant_data_bytes(DType t, int64_t rows, int64_t cols);
size_t quant_scale_bytes(DType t, int64_t rows, int64_t cols);

// Quantizes one row of `cols` floats into data_row (quant_row_bytes bytes, padding written) and
// scales_row (quant_groups scales). Returns false, writing nothing useful, when the row has a
// non-finite value or a scale overflows fp16.
bool quantize_row(DType t, const float* x, int64_t cols, uint8_t* data_row, void* scales_row);
// Expands one quantized row to cols floats: code value times its scale, in fp32.
void dequantize_row(DType t, const uint8_t* data_row, const void* scales_row, int64_t cols, float* out);

// The rules above one element and one group at a time, shared by quantize_row and GPTQ (mistral/gptq.h):
// the scale of a group x[0, n) (Q8: the whole row; the 4-bit scales already rounded to fp16, so that
// storing them is exact), the code of x under a scale (Q8: q in [-127, 127]; NF4 and Q4: 0..15), the
// value a code stands for (times the scale), and the packing of a row's codes (padding written).
float quant_group_scale(DType t, const float* x, int64_t n);
int quant_code(DType t, float x, float scale);
float quant_code_value(DType t, int code);
void pack_codes(DType t, const int8_t* codes, int64_t cols, uint8_t* data_row);
// Stores one scale (fp32 for Q8, fp16 otherwise) as scale g of a row's scales.
void store_scale(DType t, float scale, void* scales_row, int64_t g);

struct QuantizedMatrix {
  DType dtype = DType::Q8;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> data;    // [rows, quant_row_bytes]
  std::vector<uint8_t> scales;  // [rows, quant_groups] of quant_scale_dtype
};
// Quantizes a full-precision [rows, cols] matrix (F32, F16 or BF16 at src) to Q8, NF4 or Q4, rows in
// parallel on `threads` threads (0: all cores). Throws WeightError naming the first bad row.
QuantizedMatrix quantize_matrix(DType qtype, DType src_dtype, const void* src, int64_t rows, int64_t cols,
                                int threads = 0);

}  // namespace mistral
