// Memory-mapped safetensors files: header parsing with full validation, zero-copy tensor views.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mistral/dtype.h"

namespace mistral {

// A read-only view of one tensor inside a mapped file. Row-major, shape as stored.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // which file it came from (for messages)

  int64_t numel() const;
  std::string shape_str() const;  // "[4096, 1024]"
};

// A read-only memory mapping of a whole file (RAII).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws FileError
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One safetensors file. Validates: header length within the file, header is a JSON object,
// every entry has a known dtype, a non-negative shape, offsets inside the data region whose
// length matches the shape, and no two tensors overlap. I8/U8 tensors are accepted only in a
// quantized checkpoint (`__metadata__` has kQuantFormatKey = kQuantFormat and a scheme under
// kQuantMetaKey); the loader then accepts them only as the quantized data of linear weights.
class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path);  // throws FileError
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// `__metadata__` keys of quantized checkpoints (written by `mistral-run quantize`).
constexpr const char* kQuantFormatKey = "quantization_format";  // kQuantFormat: the layout of mistral/quant.h
constexpr const char* kQuantFormat = "mistral-run/1";
constexpr const char* kQuantMetaKey = "quantization";           // "int8", "nf4" or "int4"
constexpr const char* kQuantLmHeadKey = "quant_lm_head";        // "true" or "false" (informative)

// Writes tensors (already in their stored dtype) to a safetensors file. Used by tools and tests.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The same from memory the caller keeps alive during the call (no copies). Tensors are stored in
// the given order; the data region starts `align` bytes aligned in the file (the header is padded
// with spaces), so a tensor whose offset is a multiple of `align` is aligned in a mapping.
struct TensorRef {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata, size_t align);

}  // namespace mistral
