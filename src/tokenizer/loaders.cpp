// Tokenizer file formats: SentencePiece ModelProto (protobuf wire format, parsed here with bounds
// checks) and Hugging Face tokenizer.json (BPE with byte fallback, SentencePiece-style normaliser).
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "mistral/config.h"
#include "mistral/error.h"
#include "mistral/tokenizer.h"

namespace mistral {

using json = nlohmann::json;

namespace {

// Minimal protobuf reader over a byte range; every read is bounds-checked.
struct PbReader {
  const uint8_t* p;
  const uint8_t* end;
  const std::string& src;

  bool done() const { return p >= end; }
  [[noreturn]] void fail(const char* what) const { throw FileError(src + ": corrupt SentencePiece model (" + what + ")"); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) fail("truncated varint");
      const uint8_t b = *p++;
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint too long");
  }
  // Reads a key; returns field number and wire type.
  void key(uint32_t* field, uint32_t* wt) {
    const uint64_t k = varint();
    *field = uint32_t(k >> 3);
    *wt = uint32_t(k & 7);
  }
  PbReader sub() {
    const uint64_t n = varint();
    if (n > uint64_t(end - p)) fail("length past end");
    PbReader r{p, p + n, src};
    p += n;
    return r;
  }
  float fixed32f() {
    if (end - p < 4) fail("truncated fixed32");
    float f;
    std::memcpy(&f, p, 4);
    p += 4;
    return f;
  }
  void skip(uint32_t wt) {
    switch (wt) {
      case 0: varint(); break;
      case 1:
        if (end - p < 8) fail("truncated fixed64");
        p += 8;
        break;
      case 2: sub(); break;
      case 5:
        if (end - p < 4) fail("truncated fixed32");
        p += 4;
        break;
      default: fail("unknown wire type");
    }
  }
};

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load_sentencepiece(const std::string& path) {
  const std::string data = read_text_file(path);
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->source_ = path;
  PbReader r{reinterpret_cast<const uint8_t*>(data.data()), reinterpret_cast<const uint8_t*>(data.data()) + data.size(),
             path};
  int model_type = 1;  // UNIGRAM is the protobuf default
  int unk = 0, bos = 1, eos = 2;
  t->byte_fallback_ = false;
  t->add_dummy_prefix_ = true;
  t->remove_extra_whitespaces_ = true;
  while (!r.done()) {
    uint32_t f, wt;
    r.key(&f, &wt);
    if (f == 1 && wt == 2) {  // SentencePiece piece
      PbReader s = r.sub();
      std::string piece;
      float score = 0;
      int type = 1;
      while (!s.done()) {
        uint32_t sf, swt;
        s.key(&sf, &swt);
        if (sf == 1 && swt == 2) {
          PbReader b = s.sub();
          piece.assign(reinterpret_cast<const char*>(b.p), size_t(b.end - b.p));
        } else if (sf == 2 && swt == 5) {
          score = s.fixed32f();
        } else if (sf == 3 && swt == 0) {
          type = int(s.varint());
        } else {
          s.skip(swt);
        }
      }
      if (type < 1 || type > 6) r.fail("unknown piece type");
      t->pieces_.push_back(piece);
      t->scores_.push_back(score);
      t->types_.push_back(PieceType(type));
    } else if (f == 2 && wt == 2) {  // TrainerSpec
      PbReader s = r.sub();
      while (!s.done()) {
        uint32_t sf, swt;
        s.key(&sf, &swt);
        if (swt == 0 && (sf == 3 || sf == 35 || sf == 40 || sf == 41 || sf == 42)) {
          const int64_t v = int64_t(s.varint());
          if (sf == 3) model_type = int(v);
          else if (sf == 35) t->byte_fallback_ = v != 0;
          else if (sf == 40) unk = int(int32_t(v));
          else if (sf == 41) bos = int(int32_t(v));
          else eos = int(int32_t(v));
        } else {
          s.skip(swt);
        }
      }
    } else if (f == 3 && wt == 2) {  // NormalizerSpec
      PbReader s = r.sub();
      while (!s.done()) {
        uint32_t sf, swt;
        s.key(&sf, &swt);
        if (swt == 0 && sf == 3) t->add_dummy_prefix_ = s.varint() != 0;
        else if (swt == 0 && sf == 4) t->remove_extra_whitespaces_ = s.varint() != 0;
        else if (swt == 2 && sf == 1) {
          PbReader b = s.sub();
          std::string name(reinterpret_cast<const char*>(b.p), size_t(b.end - b.p));
          if (name != "identity")
            throw FileError(path + ": normalizer '" + name + "' is not supported (identity only)");
        } else {
          s.skip(swt);
        }
      }
    } else {
      r.skip(wt);
    }
  }
  if (t->pieces_.empty()) throw FileError(path + ": not a SentencePiece model (no pieces)");
  if (model_type != 2) throw FileError(path + ": SentencePiece model type " + std::to_string(model_type) +
                                       " is not supported (BPE only)");
  const int n = int(t->pieces_.size());
  auto in_range = [&](int id) { return id >= 0 && id < n ? id : -1; };
  t->unk_ = in_range(unk);
  t->bos_ = in_range(bos);
  t->eos_ = in_range(eos);
  t->finish_load();
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::load_hf_json(const std::string& path) {
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    throw FileError(path + ": not valid JSON: " + e.what());
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->source_ = path;
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) throw FileError(path + ": no 'model' object");
  const json& m = j["model"];
  if (!m.contains("type") || m["type"] != "BPE") throw FileError(path + ": only BPE tokenizer.json files are supported");
  if (!m.contains("vocab") || !m["vocab"].is_object()) throw FileError(path + ": model.vocab is missing");
  // Only the SentencePiece-style layout is handled here: a Prepend("▁") + Replace(" ", "▁") normaliser
  // or a Metaspace pre-tokenizer, and byte fallback.
  bool sp_style = false;
  auto check_norm = [&](const json& n) {
    if (n.is_object() && n.value("type", "") == "Prepend") sp_style = true;
  };
  if (j.contains("normalizer") && j["normalizer"].is_object()) {
    const json& n = j["normalizer"];
    check_norm(n);
    if (n.contains("normalizers") && n["normalizers"].is_array())
      for (const json& x : n["normalizers"]) check_norm(x);
  }
  if (j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object() &&
      j["pre_tokenizer"].value("type", "") == "Metaspace")
    sp_style = true;
  if (!sp_style) throw FileError(path + ": byte-level (GPT-2 style) tokenizer.json is not supported yet");
  size_t n = 0;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > 10000000)
      throw FileError(path + ": vocab id for '" + it.key() + "' is not a valid id");
    n = std::max(n, size_t(it.value().get<int64_t>()) + 1);
  }
  t->pieces_.assign(n, "");
  t->scores_.assign(n, 0.f);
  t->types_.assign(n, PieceType::Unused);
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    const size_t id = size_t(it.value().get<int64_t>());
    t->pieces_[id] = it.key();
    t->types_[id] = PieceType::Normal;
  }
  t->unk_ = -1;
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto it = m["vocab"].find(m["unk_token"].get<std::string>());
    if (it != m["vocab"].end()) t->unk_ = it.value().get<int>();
  }
  if (t->unk_ >= 0) t->types_[size_t(t->unk_)] = PieceType::Unknown;
  t->bos_ = t->eos_ = -1;
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content")) continue;
      const int64_t id = a["id"].get<int64_t>();
      if (id < 0 || size_t(id) >= n) continue;
      const std::string c = a["content"].get<std::string>();
      if (a.value("special", false) && id != t->unk_) t->types_[size_t(id)] = PieceType::Control;
      if (c == "<s>") t->bos_ = int(id);
      if (c == "</s>") t->eos_ = int(id);
    }
  }
  t->byte_fallback_ = m.value("byte_fallback", false);
  t->add_dummy_prefix_ = true;
  if (m.contains("merges") && m["merges"].is_array()) {
    t->use_merges_ = true;
    const json& merges = m["merges"];
    for (size_t r = 0; r < merges.size(); ++r) {
      std::string a, b;
      if (merges[r].is_string()) {
        const std::string s = merges[r].get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos) throw FileError(path + ": bad merge '" + s + "'");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (merges[r].is_array() && merges[r].size() == 2) {
        a = merges[r][0].get<std::string>(), b = merges[r][1].get<std::string>();
      } else {
        throw FileError(path + ": bad merge entry " + std::to_string(r));
      }
      auto ia = m["vocab"].find(a), ib = m["vocab"].find(b), ic = m["vocab"].find(a + b);
      if (ia == m["vocab"].end() || ib == m["vocab"].end() || ic == m["vocab"].end()) continue;
      const uint64_t key = uint64_t(uint32_t(ia.value().get<int>())) << 32 | uint32_t(ib.value().get<int>());
      t->merges_.emplace(key, std::make_pair(-float(r), ic.value().get<int32_t>()));
    }
  }
  t->finish_load();
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::load_dir(const std::string& dir) {
  if (file_exists(dir + "/tekken.json")) return load_tekken(dir + "/tekken.json");
  for (const char* name :
       {"tokenizer.model", "tokenizer.model.v7", "tokenizer.model.v3", "tokenizer.model.v2", "tokenizer.model.v1"})
    if (file_exists(dir + "/" + name)) return load_sentencepiece(dir + "/" + name);
  if (file_exists(dir + "/tokenizer.json")) return load_hf_json(dir + "/tokenizer.json");
  throw FileError(dir + ": no tokenizer (looked for tekken.json, tokenizer.model, tokenizer.model.v7/.v3/.v2/.v1, "
                        "tokenizer.json)");
}

}  // namespace mistral
