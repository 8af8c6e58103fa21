// GGUF files (llama.cpp's single-file format): a validating reader over a memory mapping, the
// dequantization of the tensor types we accept, and the mapping of llama/mistral metadata onto our
// ModelConfig, Tokenizer and chat template.
//
// Layout (GGUF spec, ggml docs/gguf.md): "GGUF" magic, uint32 version (2 or 3), uint64 tensor_count,
// uint64 metadata_kv_count; the key/value pairs (gguf string key, uint32 value type, value); the tensor
// infos (name, uint32 n_dims, uint64 ne[n_dims] with ne[0] the fastest-varying dimension, uint32 ggml
// type, uint64 offset into the data section); padding to general.alignment (default 32); tensor data.
// All integers little-endian; a gguf string is a uint64 length and that many bytes (no terminator).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mistral/config.h"
#include "mistral/dtype.h"

namespace mistral {

class MappedFile;
class Model;
class Tokenizer;
struct ChatTemplateInfo;
struct LoadOptions;

// Metadata value types (gguf_type).
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9, U64 = 10,
  I64 = 11, F64 = 12
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars keep their value in the matching field (integers in i/u, both set when
// the value fits; floats in f; bool in b); strings in s; arrays in `items` (element type `elem`), except
// that arrays of strings and of numbers are also flattened into strs / nums for quick access.
struct GgufValue {
  GgufType type = GgufType::U8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  bool is_signed = false;  // integer types: I8..I64
  std::string s;
  GgufType elem = GgufType::U8;      // arrays
  uint64_t count = 0;                // arrays: number of elements
  std::vector<std::string> strs;     // arrays of strings
  std::vector<double> nums;          // arrays of numbers and bools (exact for |x| < 2^53)
  std::vector<GgufValue> items;      // arrays of arrays (nested)

  bool is_integer() const;
  bool is_number() const { return is_integer() || type == GgufType::F32 || type == GgufType::F64; }
  std::string describe() const;      // "uint32 8192", "string \"llama\"", "array<string>[49152]"
};

// ggml tensor types that can appear in a GGUF file; only some are supported (see gguf_tensor_supported).
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, BF16 = 30 };
const char* ggml_type_name(uint32_t type);      // "Q4_K", "type 77" for unknown ids
bool gguf_tensor_supported(uint32_t type);      // F32, F16, BF16, Q8_0, Q4_0, Q4_1
// Elements per block and bytes per block of a supported type (1 and the element size for F32/F16/BF16).
int64_t ggml_block_elems(uint32_t type);
size_t ggml_block_bytes(uint32_t type);

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;   // ggml order: ne[0] is the row length (fastest), so [ne1, ne0] row-major
  uint32_t type = 0;         // GgmlType value
  uint64_t offset = 0;       // relative to the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
  std::string shape_str() const;  // row-major, "[49152, 576]"
};

class GgufFile {
 public:
  // Maps and validates a file. Throws FileError with one line naming the problem: truncated, bad magic,
  // unsupported version, unknown value or tensor type, absurd counts/lengths/dims/offsets, misaligned or
  // overlapping tensors, duplicate keys or names.
  explicit GgufFile(const std::string& path);
  // Validates bytes the caller keeps alive (tests, fuzzing); `name` is used in messages.
  GgufFile(const uint8_t* data, size_t size, const std::string& name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }  // start of the data section in the file
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }  // file order
  const GgufTensor* tensor(const std::string& name) const;             // nullptr when absent
  const GgufValue* find(const std::string& key) const;                 // nullptr when absent

  // Typed metadata access; a present key of the wrong type throws ConfigError naming it.
  bool get_int(const std::string& key, int64_t* out) const;  // any integer type (unsigned > INT64_MAX: error)
  bool get_float(const std::string& key, double* out) const; // any number
  bool get_string(const std::string& key, std::string* out) const;
  bool get_bool(const std::string& key, bool* out) const;

 private:
  void parse(const uint8_t* p, size_t n);
  std::unique_ptr<MappedFile> file_;
  std::string name_;
  uint32_t version_ = 0;
  size_t alignment_ = 32, data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> index_;
};

// True for a path naming a regular file that ends in ".gguf" or starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

// Converts n elements of a supported ggml type at src (n a multiple of the block size) to fp32.
// Q8_0: blocks of 32 {fp16 d; int8 q[32]}, x = d*q. Q4_0: {fp16 d; uint8 qs[16]}, element j < 16 is
// the low nibble of qs[j] and element j+16 its high nibble, x = d*(nibble - 8). Q4_1: {fp16 d; fp16 m;
// uint8 qs[16]}, same nibble order, x = d*nibble + m.
void gguf_dequantize(uint32_t type, const uint8_t* src, float* dst, size_t n);

// ModelConfig from `<arch>.*` metadata (arch = general.architecture: llama or mistral), the token list
// and the tensors (tie_word_embeddings when output.weight is absent). Throws ConfigError.
ModelConfig gguf_model_config(const GgufFile& f);

// Model::load of a GGUF file (src/io/gguf_loader.cpp): tensors token_embd, blk.N.{attn_norm, attn_q,
// attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, output (absent: tied),
// every one required and no other allowed. Quantized tensors are dequantized to F32 when the whole model
// takes at most 4 GiB that way, else to F16; F32/F16/BF16 tensors keep their type; opt.cast overrides
// both, opt.quant re-quantizes the linear weights. attn_q/attn_k rows are stored in llama.cpp's
// interleaved RoPE order and permuted to rotate-half order here.
std::unique_ptr<Model> load_gguf_model(const std::string& path, const LoadOptions& opt);

// The tokenizer that tokenizer.ggml.* describes: "llama" (SentencePiece-style BPE with scores and
// token types) or "gpt2" (byte-level BPE with merges; the pre-tokenizer from tokenizer.ggml.pre).
// Implemented in src/tokenizer/gguf_vocab.cpp. Throws FileError / ConfigError.
std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufFile& f);
std::unique_ptr<Tokenizer> gguf_tokenizer(const std::string& path);
// A model's tokenizer: from the metadata of a GGUF file, else Tokenizer::load_dir.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& path);
// tokenizer.chat_template and the control tokens of a GGUF file, as read_chat_template_info gives
// for a directory.
ChatTemplateInfo gguf_chat_template_info(const std::string& path);

}  // namespace mistral
