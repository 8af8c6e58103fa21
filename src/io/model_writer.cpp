// save_checkpoint: a loaded (typically quantized) model written back as a checkpoint directory.
#include <dirent.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>

#include "mistral/error.h"
#include "mistral/model.h"
#include "mistral/quant.h"
#include "mistral/safetensors.h"

namespace mistral {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Weight files are never copied: the new checkpoint replaces them.
bool is_weight_file(const std::string& name) {
  for (const char* ext : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth", ".gguf"})
    if (ends_with(name, ext)) return true;
  return false;
}

void make_dirs(const std::string& dir) {
  std::string cur;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
        throw FileError(cur + ": cannot create directory: " + std::strerror(errno));
    }
    if (i < dir.size()) cur.push_back(dir[i]);
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw FileError(dir + ": not a directory");
}

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) throw FileError(from + ": cannot read");
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  if (!out) throw FileError(to + ": cannot write");
  out << in.rdbuf();
  if (!out) throw FileError(to + ": write failed");
}

bool same_dir(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

}  // namespace

void save_checkpoint(const Model& m, const std::string& out_dir) {
  const auto& named = m.named_weights();
  struct stat src_st;
  if (named.empty() || ::stat(m.dir().c_str(), &src_st) != 0 || !S_ISDIR(src_st.st_mode))
    throw UsageError("only a model loaded from a safetensors directory can be saved");
  make_dirs(out_dir);
  if (same_dir(out_dir, m.dir())) throw UsageError(out_dir + " is the source directory; choose another output");
  const ModelConfig& c = m.config();
  const Quant q = m.quant();

  // Quantized data first (each tensor a multiple of 16 bytes, so all start 16-byte aligned), then the
  // scales, then the full-precision tensors. Rows permuted at load go back to the stored order.
  std::vector<TensorRef> data, scales, plain;
  std::vector<std::vector<uint8_t>> tmp;  // un-permuted copies, alive until written
  auto stored = [&](const void* p, size_t bytes, const NamedWeight& nw, int64_t row_elems, size_t esize) {
    if (nw.permuted_heads == 0) return p;
    tmp.emplace_back(bytes);
    permute_half_to_interleaved(static_cast<const uint8_t*>(p), tmp.back().data(), nw.permuted_heads, c.head_dim,
                                row_elems, esize);
    return static_cast<const void*>(tmp.back().data());
  };
  bool lm_head_quantized = false;
  for (const NamedWeight& nw : named) {
    const Weight& w = *nw.weight;
    if (is_quantized(w.dtype)) {
      if (&w == &m.weights().lm_head) lm_head_quantized = true;
      const size_t rb = quant_row_bytes(w.dtype, w.cols);
      const int64_t ng = quant_groups(w.dtype, w.cols);
      const DType sdt = quant_scale_dtype(w.dtype);
      data.push_back({nw.name, w.dtype == DType::Q8 ? DType::I8 : DType::U8, {w.rows, int64_t(rb)},
                      stored(w.data, w.nbytes(), nw, int64_t(rb), 1), w.nbytes()});
      scales.push_back({quant_scales_name(nw.name), sdt, {w.rows, ng},
                        stored(w.scales, w.scale_bytes(), nw, ng, dtype_size(sdt)), w.scale_bytes()});
    } else {
      std::vector<int64_t> shape = nw.one_dim ? std::vector<int64_t>{w.cols} : std::vector<int64_t>{w.rows, w.cols};
      plain.push_back({nw.name, w.dtype, shape, stored(w.data, w.nbytes(), nw, w.cols, dtype_size(w.dtype)),
                       w.nbytes()});
    }
  }
  std::vector<TensorRef> all = data;
  all.insert(all.end(), scales.begin(), scales.end());
  all.insert(all.end(), plain.begin(), plain.end());
  std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (q != Quant::None) {
    meta[kQuantFormatKey] = kQuantFormat;
    meta[kQuantMetaKey] = quant_name(q);
    meta[kQuantLmHeadKey] = lm_head_quantized ? "true" : "false";
  }
  const std::string weights = out_dir + (c.layout == Layout::HF ? "/model.safetensors" : "/consolidated.safetensors");
  write_safetensors(weights + ".tmp", all, meta, 16);
  if (std::rename((weights + ".tmp").c_str(), weights.c_str()) != 0)
    throw FileError(weights + ": cannot rename into place: " + std::strerror(errno));

  // Config, tokenizer and the other small files.
  DIR* d = ::opendir(m.dir().c_str());
  if (!d) throw FileError(m.dir() + ": cannot list: " + std::strerror(errno));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) names.push_back(e->d_name);
  ::closedir(d);
  for (const std::string& n : names) {
    const std::string from = m.dir() + "/" + n;
    struct stat st;
    if (::stat(from.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || is_weight_file(n)) continue;
    copy_file(from, out_dir + "/" + n);
  }
}

}  // namespace mistral
