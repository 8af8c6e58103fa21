// GGUF reader: strict, bounds-checked parsing of the header, metadata and tensor infos over a memory
// mapping (or caller-owned bytes); dequantization of F32/F16/BF16/Q8_0/Q4_0/Q4_1; llama/mistral
// metadata -> ModelConfig.
//
// Format reference: the GGUF specification in ggml's docs/gguf.md (header, gguf_type value types,
// tensor infos, general.alignment default 32, tensor offsets relative to the aligned data section and
// multiples of the alignment). Block layouts: ggml's ggml-common.h (block_q8_0, block_q4_0, block_q4_1,
// QK8_0 = QK4_0 = QK4_1 = 32) and the reference dequantize_row_q* in ggml-quants.c. Our own code.
#include "mistral/gguf.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "mistral/error.h"
#include "mistral/safetensors.h"

namespace mistral {

namespace {

constexpr uint64_t kMaxNameLen = 256;        // tensor names (ggml's GGML_MAX_NAME is 64)
constexpr uint64_t kMaxKeyLen = 65535;       // the spec's key limit
constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
constexpr int64_t kMaxDim = int64_t(1) << 40;
constexpr int64_t kMaxElems = int64_t(1) << 48;
constexpr int kMaxArrayDepth = 3;

// A name from the file, safe to print on one line: non-printable bytes escaped, long names cut.
std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  if (s.size() > 80) out += "...";
  return out;
}

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::Bool: return 1;
    case GgufType::U16:
    case GgufType::I16: return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32: return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64: return 8;
    default: return 0;
  }
}

// Bounds-checked little-endian cursor; every failure is a one-line FileError.
struct Cursor {
  const uint8_t* p;
  size_t n;
  size_t pos = 0;
  const std::string& name;

  [[noreturn]] void fail(const std::string& what) const { throw FileError(name + ": GGUF: " + what); }
  [[noreturn]] void truncated(const std::string& what, uint64_t need) const {
    fail("truncated file: " + what + " needs " + std::to_string(need) + " bytes at offset " + std::to_string(pos) +
         ", the file has " + std::to_string(n));
  }
  size_t left() const { return n - pos; }
  void need(uint64_t k, const std::string& what) const {
    if (k > left()) truncated(what, k);
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p + pos, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
    pos += sizeof(T);
    return v;
  }
  std::string str(uint64_t max_len, const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " length");
    if (len > max_len) fail(what + " length " + std::to_string(len) + " exceeds the limit of " + std::to_string(max_len));
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p + pos), size_t(len));
    pos += size_t(len);
    return s;
  }
};

GgufType value_type(Cursor& c, const std::string& what) {
  const uint32_t t = c.read<uint32_t>(what + " type");
  if (t > uint32_t(GgufType::F64)) c.fail(what + ": unknown value type " + std::to_string(t));
  return GgufType(t);
}

void read_value(Cursor& c, GgufType t, GgufValue& v, const std::string& what, int depth);

void read_scalar(Cursor& c, GgufType t, GgufValue& v, const std::string& what) {
  v.type = t;
  switch (t) {
    case GgufType::U8: v.u = c.read<uint8_t>(what); break;
    case GgufType::I8: v.i = c.read<int8_t>(what); break;
    case GgufType::U16: v.u = c.read<uint16_t>(what); break;
    case GgufType::I16: v.i = c.read<int16_t>(what); break;
    case GgufType::U32: v.u = c.read<uint32_t>(what); break;
    case GgufType::I32: v.i = c.read<int32_t>(what); break;
    case GgufType::U64: v.u = c.read<uint64_t>(what); break;
    case GgufType::I64: v.i = c.read<int64_t>(what); break;
    case GgufType::F32: v.f = c.read<float>(what); break;
    case GgufType::F64: v.f = c.read<double>(what); break;
    case GgufType::Bool: {
      const uint8_t b = c.read<uint8_t>(what);
      if (b > 1) c.fail(what + ": bool value " + std::to_string(b) + " (expected 0 or 1)");
      v.b = b != 0;
      v.u = b;
      break;
    }
    default: c.fail(what + ": not a scalar type");
  }
  v.is_signed = t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
  if (v.is_signed) {
    if (v.i >= 0) v.u = uint64_t(v.i);
  } else if (t != GgufType::F32 && t != GgufType::F64 && v.u <= uint64_t(std::numeric_limits<int64_t>::max())) {
    v.i = int64_t(v.u);
  }
}

double number_of(const GgufValue& v) {
  if (v.type == GgufType::F32 || v.type == GgufType::F64) return v.f;
  if (v.type == GgufType::Bool) return v.b ? 1 : 0;
  return v.is_signed ? double(v.i) : double(v.u);
}

void read_value(Cursor& c, GgufType t, GgufValue& v, const std::string& what, int depth) {
  v.type = t;
  if (t == GgufType::String) {
    v.s = c.str(std::numeric_limits<uint64_t>::max(), what);
    return;
  }
  if (t != GgufType::Array) {
    read_scalar(c, t, v, what);
    return;
  }
  if (depth >= kMaxArrayDepth) c.fail(what + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth));
  v.elem = value_type(c, what + " element");
  v.count = c.read<uint64_t>(what + " count");
  // The smallest encoding of one element bounds the count by the bytes left (absurd counts fail here,
  // before any allocation).
  const uint64_t min_elem = v.elem == GgufType::String ? 8 : v.elem == GgufType::Array ? 12 : scalar_size(v.elem);
  if (v.count > c.left() / min_elem)
    c.fail("truncated file or absurd count: " + what + ": array of " + std::to_string(v.count) + " " +
           gguf_type_name(v.elem) + " elements needs at least " + std::to_string(min_elem) + " bytes each, " +
           std::to_string(c.left()) + " bytes are left");
  if (v.elem == GgufType::String) {
    v.strs.reserve(size_t(v.count));
    for (uint64_t k = 0; k < v.count; ++k) v.strs.push_back(c.str(std::numeric_limits<uint64_t>::max(), what + "[" + std::to_string(k) + "]"));
  } else if (v.elem == GgufType::Array) {
    v.items.resize(size_t(v.count));
    for (uint64_t k = 0; k < v.count; ++k)
      read_value(c, GgufType::Array, v.items[size_t(k)], what + "[" + std::to_string(k) + "]", depth + 1);
  } else {
    v.nums.reserve(size_t(v.count));
    GgufValue e;
    for (uint64_t k = 0; k < v.count; ++k) {
      read_scalar(c, v.elem, e, what);
      v.nums.push_back(number_of(e));
    }
  }
}

bool regular_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

// ---- names and block sizes ------------------------------------------------------------------------------

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "uint8";
    case GgufType::I8: return "int8";
    case GgufType::U16: return "uint16";
    case GgufType::I16: return "int16";
    case GgufType::U32: return "uint32";
    case GgufType::I32: return "int32";
    case GgufType::F32: return "float32";
    case GgufType::Bool: return "bool";
    case GgufType::String: return "string";
    case GgufType::Array: return "array";
    case GgufType::U64: return "uint64";
    case GgufType::I64: return "int64";
    case GgufType::F64: return "float64";
  }
  return "?";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

std::string GgufValue::describe() const {
  if (type == GgufType::Array) return std::string("array<") + gguf_type_name(elem) + ">[" + std::to_string(count) + "]";
  if (type == GgufType::String) return "string \"" + printable(s) + "\"";
  if (type == GgufType::Bool) return b ? "bool true" : "bool false";
  if (type == GgufType::F32 || type == GgufType::F64) return std::string(gguf_type_name(type)) + " " + std::to_string(f);
  return std::string(gguf_type_name(type)) + " " + (is_signed ? std::to_string(i) : std::to_string(u));
}

const char* ggml_type_name(uint32_t type) {
  // ggml's type ids (ggml.h enum ggml_type); 4, 5 and 31-33 were removed there.
  static const char* const kNames[] = {"F32",     "F16",    "Q4_0",    "Q4_1",  "type 4",  "type 5", "Q5_0",
                                       "Q5_1",    "Q8_0",   "Q8_1",    "Q2_K",  "Q3_K",    "Q4_K",   "Q5_K",
                                       "Q6_K",    "Q8_K",   "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",  "IQ4_NL",
                                       "IQ3_S",   "IQ2_S",  "IQ4_XS",  "I8",    "I16",     "I32",    "I64",
                                       "F64",     "IQ1_M",  "BF16",    "type 31", "type 32", "type 33", "TQ1_0",
                                       "TQ2_0"};
  if (type < sizeof(kNames) / sizeof(kNames[0])) return kNames[type];
  return "unknown";
}

bool gguf_tensor_supported(uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0: case GgmlType::Q4_0:
    case GgmlType::Q4_1: return true;
  }
  return false;
}

int64_t ggml_block_elems(uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1: return 32;
    default: return 1;
  }
}

size_t ggml_block_bytes(uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::F32: return 4;
    case GgmlType::F16: case GgmlType::BF16: return 2;
    case GgmlType::Q8_0: return 2 + 32;      // fp16 d, int8 qs[32]
    case GgmlType::Q4_0: return 2 + 16;      // fp16 d, uint8 qs[16]
    case GgmlType::Q4_1: return 2 + 2 + 16;  // fp16 d, fp16 m, uint8 qs[16]
  }
  return 0;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::string GgufTensor::shape_str() const {
  std::string r = "[";
  for (size_t k = ne.size(); k-- > 0;) r += std::to_string(ne[k]) + (k ? ", " : "");
  return r + "]";
}

// ---- parsing --------------------------------------------------------------------------------------------

GgufFile::GgufFile(const std::string& path) : file_(new MappedFile(path)), name_(path) {
  parse(file_->data(), file_->size());
}

GgufFile::GgufFile(const uint8_t* data, size_t size, const std::string& name) : name_(name) { parse(data, size); }

GgufFile::~GgufFile() = default;

void GgufFile::parse(const uint8_t* p, size_t n) {
  Cursor c{p, n, 0, name_};
  if (n < 4) c.truncated("the magic", 4);
  if (std::memcmp(p, "GGUF", 4) != 0) {
    std::string got;
    for (int k = 0; k < 4; ++k) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "%02x", p[k]);
      got += buf;
    }
    c.fail("bad magic 0x" + got + " (expected \"GGUF\"); not a GGUF file");
  }
  c.pos = 4;
  version_ = c.read<uint32_t>("the version");
  if (version_ != 2 && version_ != 3)
    c.fail("unsupported version " + std::to_string(version_) + " (2 and 3 are supported)");
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the metadata count");
  // Smallest encodings: a key/value is a key length (8), a type (4) and a 1-byte value; a tensor info is
  // a name length (8), n_dims (4), one dim (8), a type (4) and an offset (8).
  if (n_kv > c.left() / 13)
    c.fail("truncated file or absurd metadata count " + std::to_string(n_kv) + " (a file of " + std::to_string(n) +
           " bytes)");
  if (n_tensors > c.left() / 32)
    c.fail("truncated file or absurd tensor count " + std::to_string(n_tensors) + " (a file of " + std::to_string(n) +
           " bytes)");

  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string where = "metadata entry " + std::to_string(k);
    std::string key = c.str(kMaxKeyLen, where + " key");
    const std::string what = "metadata '" + printable(key) + "'";
    const GgufType t = value_type(c, what);
    GgufValue v;
    read_value(c, t, v, what, 0);
    if (kv_.count(key)) c.fail("duplicate metadata key '" + printable(key) + "'");
    kv_.emplace(std::move(key), std::move(v));
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_integer() || (a->is_signed && a->i < 0))
      c.fail("general.alignment must be an unsigned integer, got " + a->describe());
    if (a->u == 0 || (a->u & (a->u - 1)) != 0 || a->u > (1u << 20))
      c.fail("general.alignment " + std::to_string(a->u) + " is not a power of two up to 1 MiB");
    alignment_ = size_t(a->u);
  }

  tensors_.reserve(size_t(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = c.str(kMaxNameLen, "tensor info " + std::to_string(k) + " name");
    const std::string what = "tensor '" + printable(t.name) + "'";
    if (index_.count(t.name)) c.fail("duplicate tensor name '" + printable(t.name) + "'");
    const uint32_t n_dims = c.read<uint32_t>(what + " n_dims");
    if (n_dims < 1 || n_dims > kMaxDims)
      c.fail(what + ": " + std::to_string(n_dims) + " dimensions (1 to " + std::to_string(kMaxDims) + " allowed)");
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.read<uint64_t>(what + " dimension");
      if (ne < 1 || ne > uint64_t(kMaxDim)) c.fail(what + ": absurd dimension " + std::to_string(ne));
      if (numel > kMaxElems / int64_t(ne)) c.fail(what + ": absurd element count (dimensions overflow)");
      numel *= int64_t(ne);
      t.ne.push_back(int64_t(ne));
    }
    t.type = c.read<uint32_t>(what + " type");
    if (!gguf_tensor_supported(t.type))
      c.fail(what + ": unsupported tensor type " + ggml_type_name(t.type) + " (" + std::to_string(t.type) +
             "); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1");
    const int64_t blk = ggml_block_elems(t.type);
    if (t.ne[0] % blk != 0)
      c.fail(what + ": row length " + std::to_string(t.ne[0]) + " is not a multiple of the " + ggml_type_name(t.type) +
             " block size " + std::to_string(blk));
    t.nbytes = size_t(numel / blk) * ggml_block_bytes(t.type);
    t.offset = c.read<uint64_t>(what + " offset");
    if (t.offset % alignment_ != 0)
      c.fail(what + ": offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
             std::to_string(alignment_));
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  data_offset_ = (c.pos + alignment_ - 1) / alignment_ * alignment_;
  const size_t data_size = data_offset_ <= n ? n - data_offset_ : 0;
  if (!tensors_.empty() && data_offset_ > n)
    c.fail("truncated file: the data section would start at offset " + std::to_string(data_offset_) +
           ", the file has " + std::to_string(n) + " bytes");
  for (GgufTensor& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      c.fail("truncated file or bad offset: tensor '" + printable(t.name) + "' (" + ggml_type_name(t.type) + " " +
             t.shape_str() + ", " + std::to_string(t.nbytes) + " bytes at data offset " + std::to_string(t.offset) +
             ") runs past the end of the file (" + std::to_string(data_size) + " data bytes)");
    t.data = p + data_offset_ + t.offset;
  }
  std::vector<const GgufTensor*> by_offset;
  for (const GgufTensor& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensor& a = *by_offset[k - 1];
    const GgufTensor& b = *by_offset[k];
    if (a.offset + a.nbytes > b.offset)
      c.fail("tensors '" + printable(a.name) + "' and '" + printable(b.name) + "' overlap (data offsets " +
             std::to_string(a.offset) + "+" + std::to_string(a.nbytes) + " and " + std::to_string(b.offset) + ")");
  }
}

const GgufTensor* GgufFile::tensor(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

bool GgufFile::get_int(const std::string& key, int64_t* out) const {
  const GgufValue* v = find(key);
  if (!v) return false;
  if (!v->is_integer() || (!v->is_signed && v->u > uint64_t(std::numeric_limits<int64_t>::max())))
    throw ConfigError(name_ + ": metadata " + key + " must be an integer, got " + v->describe());
  *out = v->i;
  return true;
}

bool GgufFile::get_float(const std::string& key, double* out) const {
  const GgufValue* v = find(key);
  if (!v) return false;
  if (!v->is_number()) throw ConfigError(name_ + ": metadata " + key + " must be a number, got " + v->describe());
  *out = number_of(*v);
  return true;
}

bool GgufFile::get_string(const std::string& key, std::string* out) const {
  const GgufValue* v = find(key);
  if (!v) return false;
  if (v->type != GgufType::String) throw ConfigError(name_ + ": metadata " + key + " must be a string, got " + v->describe());
  *out = v->s;
  return true;
}

bool GgufFile::get_bool(const std::string& key, bool* out) const {
  const GgufValue* v = find(key);
  if (!v) return false;
  if (v->type != GgufType::Bool) throw ConfigError(name_ + ": metadata " + key + " must be a bool, got " + v->describe());
  *out = v->b;
  return true;
}

bool is_gguf_file(const std::string& path) {
  if (!regular_file(path)) return false;
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) return true;
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  f.read(magic, 4);
  return f.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

// ---- dequantization -------------------------------------------------------------------------------------

void gguf_dequantize(uint32_t type, const uint8_t* src, float* dst, size_t n) {
  auto half = [](const uint8_t* q) {
    uint16_t h;
    std::memcpy(&h, q, 2);
    return f16_to_f32(h);
  };
  switch (GgmlType(type)) {
    case GgmlType::F32: std::memcpy(dst, src, n * 4); return;
    case GgmlType::F16: to_f32(DType::F16, src, dst, n); return;
    case GgmlType::BF16: to_f32(DType::BF16, src, dst, n); return;
    case GgmlType::Q8_0:
      for (size_t b = 0; b < n / 32; ++b, src += 34, dst += 32) {
        const float d = half(src);
        const int8_t* q = reinterpret_cast<const int8_t*>(src + 2);
        for (int j = 0; j < 32; ++j) dst[j] = d * float(q[j]);
      }
      return;
    case GgmlType::Q4_0:
      for (size_t b = 0; b < n / 32; ++b, src += 18, dst += 32) {
        const float d = half(src);
        const uint8_t* q = src + 2;
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * float(int(q[j] & 0x0f) - 8);
          dst[j + 16] = d * float(int(q[j] >> 4) - 8);
        }
      }
      return;
    case GgmlType::Q4_1:
      for (size_t b = 0; b < n / 32; ++b, src += 20, dst += 32) {
        const float d = half(src), m = half(src + 2);
        const uint8_t* q = src + 4;
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * float(q[j] & 0x0f) + m;
          dst[j + 16] = d * float(q[j] >> 4) + m;
        }
      }
      return;
  }
  throw WeightError(std::string("cannot dequantize ggml type ") + ggml_type_name(type));
}

// ---- config ---------------------------------------------------------------------------------------------

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string& src = f.path();
  std::string arch;
  if (!f.get_string("general.architecture", &arch)) throw ConfigError(src + ": no general.architecture metadata");
  if (arch != "llama" && arch != "mistral")
    throw ConfigError(src + ": architecture '" + printable(arch) + "' is not supported (llama and mistral are)");
  auto req = [&](const std::string& key) {
    int64_t v = 0;
    if (!f.get_int(arch + "." + key, &v)) throw ConfigError(src + ": missing metadata " + arch + "." + key);
    return v;
  };
  auto opt_int = [&](const std::string& key, int64_t def) {
    int64_t v = def;
    f.get_int(arch + "." + key, &v);
    return v;
  };
  ModelConfig c;
  c.layout = Layout::HF;  // rows are brought to the rotate-half order at load
  c.hidden_size = req("embedding_length");
  c.intermediate_size = req("feed_forward_length");
  c.num_layers = req("block_count");
  c.num_heads = req("attention.head_count");
  c.num_kv_heads = opt_int("attention.head_count_kv", c.num_heads);
  c.head_dim = opt_int("attention.key_length", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  const int64_t vdim = opt_int("attention.value_length", c.head_dim);
  if (vdim != c.head_dim)
    throw ConfigError(src + ": " + arch + ".attention.value_length " + std::to_string(vdim) + " differs from key_length " +
                      std::to_string(c.head_dim) + " (not supported)");
  const int64_t rot = opt_int("rope.dimension_count", c.head_dim);
  if (rot != c.head_dim)
    throw ConfigError(src + ": " + arch + ".rope.dimension_count " + std::to_string(rot) + " differs from the head size " +
                      std::to_string(c.head_dim) + " (partial rotary embeddings are not supported)");
  std::string scaling;
  if (f.get_string(arch + ".rope.scaling.type", &scaling) && scaling != "none")
    throw ConfigError(src + ": " + arch + ".rope.scaling.type '" + printable(scaling) + "' is not supported");
  c.max_position_embeddings = opt_int("context_length", 32768);
  c.sliding_window = opt_int("attention.sliding_window", 0);
  double eps = 1e-5, theta = 10000.0;
  if (!f.get_float(arch + ".attention.layer_norm_rms_epsilon", &eps))
    throw ConfigError(src + ": missing metadata " + arch + ".attention.layer_norm_rms_epsilon");
  f.get_float(arch + ".rope.freq_base", &theta);
  c.rms_norm_eps = eps;
  c.rope_theta = theta;
  // Vocabulary: the token list, else <arch>.vocab_size, else the embedding's rows.
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  const GgufTensor* embd = f.tensor("token_embd.weight");
  if (tokens && tokens->type == GgufType::Array && tokens->elem == GgufType::String) c.vocab_size = int64_t(tokens->count);
  else c.vocab_size = opt_int("vocab_size", embd && embd->ne.size() == 2 ? embd->ne[1] : 0);
  c.tie_word_embeddings = f.tensor("output.weight") == nullptr;
  c.torch_dtype = DType::F32;
  int64_t bos = -1, eos = -1;
  f.get_int("tokenizer.ggml.bos_token_id", &bos);
  f.get_int("tokenizer.ggml.eos_token_id", &eos);
  if (bos >= 0 && bos < c.vocab_size) c.bos_token_id = int(bos);
  c.eos_token_ids.clear();
  if (eos >= 0 && eos < c.vocab_size) c.eos_token_ids.push_back(int(eos));
  c.validate();
  return c;
}

}  // namespace mistral
