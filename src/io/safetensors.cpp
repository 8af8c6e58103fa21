// safetensors reader (mmap) and writer.
#include "mistral/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mistral/error.h"

namespace mistral {

using json = nlohmann::json;

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw FileError(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FileError(path + ": not a regular file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw FileError(path + ": mmap failed: " + std::strerror(errno));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

SafeTensorsFile::SafeTensorsFile(const std::string& path) : file_(new MappedFile(path)) {
  const size_t size = file_->size();
  if (size < 8) throw FileError(path + ": truncated safetensors file (" + std::to_string(size) + " bytes, no header)");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | file_->data()[i];
  if (hlen > size - 8)
    throw FileError(path + ": safetensors header length " + std::to_string(hlen) + " runs past the end of the file (" +
                    std::to_string(size) + " bytes)");
  const char* hbeg = reinterpret_cast<const char*>(file_->data() + 8);
  json header;
  try {
    header = json::parse(hbeg, hbeg + hlen);
  } catch (const json::exception& e) {
    throw FileError(path + ": safetensors header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw FileError(path + ": safetensors header is not a JSON object");
  const uint8_t* data = file_->data() + 8 + hlen;
  const uint64_t data_size = size - 8 - hlen;

  if (header.contains("__metadata__")) {
    const json& e = header["__metadata__"];
    if (!e.is_object()) throw FileError(path + ": __metadata__ is not an object");
    for (auto m = e.begin(); m != e.end(); ++m)
      if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
  }
  // Raw bytes (I8/U8) are quantized data: only in files that declare a quantization scheme.
  bool quantized = false;
  if (metadata_.count(kQuantFormatKey)) {
    const std::string& f = metadata_.at(kQuantFormatKey);
    if (f != kQuantFormat)
      throw FileError(path + ": quantized checkpoint in an unknown layout '" + f + "' (this build reads " +
                      kQuantFormat + ")");
    const auto q = metadata_.find(kQuantMetaKey);
    if (q == metadata_.end() || (q->second != "int8" && q->second != "nf4" && q->second != "int4"))
      throw FileError(path + ": quantized checkpoint without a known scheme in __metadata__ (int8, nf4 or int4)");
    quantized = true;
  }
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> range_names;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") continue;
    auto bad = [&](const std::string& why) { return FileError(path + ": tensor '" + name + "': " + why); };
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw bad("entry needs dtype, shape and data_offsets");
    if (!e["dtype"].is_string()) throw bad("dtype is not a string");
    TensorView tv;
    tv.name = name;
    tv.file = path;
    const std::string dt = e["dtype"].get<std::string>();
    if (!parse_safetensors_dtype(dt, &tv.dtype) || ((tv.dtype == DType::I8 || tv.dtype == DType::U8) && !quantized))
      throw bad("unsupported dtype " + dt + " (supported: F32, F16, BF16; I8 and U8 only in quantized checkpoints)");
    if (!e["shape"].is_array()) throw bad("shape is not an array");
    uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) throw bad("shape has a negative or non-integer dimension");
      uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > (uint64_t(1) << 50) / v) throw bad("shape is too large");
      numel *= v;
      tv.shape.push_back(int64_t(v));
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad("data_offsets must be two non-negative integers");
    uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en) throw bad("data_offsets begin > end");
    if (en > data_size)
      throw bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(en) + "] out of range (data region is " +
                std::to_string(data_size) + " bytes)");
    const uint64_t want = numel * dtype_size(tv.dtype);
    if (en - b != want)
      throw bad("byte length " + std::to_string(en - b) + " does not match shape " + tv.shape_str() + " x " + dt +
                " = " + std::to_string(want));
    tv.data = data + b;
    tv.nbytes = size_t(en - b);
    if (en > b) {
      ranges.emplace_back(b, en);
      range_names.push_back(name);
    }
    tensors_.emplace(name, std::move(tv));
  }
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = ranges[order[i - 1]];
    const auto& cur = ranges[order[i]];
    if (cur.first < prev.second)
      throw FileError(path + ": tensors '" + range_names[order[i - 1]] + "' and '" + range_names[order[i]] +
                      "' overlap");
  }
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorRef> refs;
  for (const auto& t : tensors) refs.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  write_safetensors(path, refs, metadata, 8);
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata, size_t align) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string h = header.dump();
  if (align < 8) align = 8;
  while ((h.size() + 8) % align) h.push_back(' ');
  std::ofstream f(path, std::ios::binary);
  if (!f) throw FileError(path + ": cannot write");
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) f.put(char((n >> (8 * i)) & 0xff));
  f.write(h.data(), std::streamsize(h.size()));
  for (const auto& t : tensors) f.write(static_cast<const char*>(t.data), std::streamsize(t.nbytes));
  if (!f) throw FileError(path + ": write failed");
}

}  // namespace mistral
