// Tokenizer file formats: SentencePiece ModelProto (protobuf wire format, parsed here with bounds
// checks) and Hugging Face tokenizer.json (BPE with byte fallback, SentencePiece-style normaliser).
#include <sys/stat.h>

#include <map>
#include <nlohmann/json.hpp>

#include "internal.h"
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
  return tok::Build::sentencepiece(read_text_file(path), path);
}

std::unique_ptr<Tokenizer> tok::Build::sentencepiece(const std::string& data, const std::string& path) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->source_ = path;
  PbReader r{reinterpret_cast<const uint8_t*>(data.data()), reinterpret_cast<const uint8_t*>(data.data()) + data.size(),
             path};
  int model_type = 1;  // UNIGRAM is the protobuf default
  int bos = 1, eos = 2;
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
        if (swt == 0 && (sf == 3 || sf == 35 || sf == 41 || sf == 42)) {
          const int64_t v = int64_t(s.varint());
          if (sf == 3) model_type = int(v);
          else if (sf == 35) t->byte_fallback_ = v != 0;
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
  // SentencePiece takes <unk> from the piece types, not from trainer_spec.unk_id, and refuses a model
  // without exactly one UNKNOWN piece.
  t->unk_ = -1;
  for (int id = 0; id < n; ++id)
    if (t->types_[size_t(id)] == PieceType::Unknown) {
      if (t->unk_ >= 0) throw FileError(path + ": corrupt SentencePiece model (two pieces of type UNKNOWN)");
      t->unk_ = id;
    }
  if (t->unk_ < 0) throw FileError(path + ": corrupt SentencePiece model (no piece of type UNKNOWN)");
  t->bos_ = in_range(bos);
  t->eos_ = in_range(eos);
  t->finish_load();
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::load_hf_json(const std::string& path) {
  return tok::Build::hf_json(read_text_file(path), path);
}

std::unique_ptr<Tokenizer> tok::Build::hf_json(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw FileError(path + ": not valid JSON: " + e.what());
  }
  try {
    return hf_json_doc(j, path);
  } catch (const json::exception& e) {  // a value of an unexpected type somewhere
    throw FileError(path + ": unexpected tokenizer.json content: " + e.what());
  }
}

std::unique_ptr<Tokenizer> tok::Build::hf_json_doc(const json& j, const std::string& path) {
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
  if (!sp_style) {
    auto is_byte_level = [](const json& x) { return x.is_object() && x.value("type", "") == "ByteLevel"; };
    bool byte_level = j.contains("decoder") && is_byte_level(j["decoder"]);
    if (j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object()) {
      const json& pt = j["pre_tokenizer"];
      byte_level = byte_level || is_byte_level(pt);
      if (pt.contains("pretokenizers") && pt["pretokenizers"].is_array())
        for (const json& x : pt["pretokenizers"]) byte_level = byte_level || is_byte_level(x);
    }
    if (byte_level) return tok::Build::hf_byte_level(path, j);
    throw FileError(path + ": neither a SentencePiece-style (Metaspace or Prepend normaliser) nor a byte-level "
                           "(ByteLevel pre-tokenizer) BPE tokenizer.json");
  }
  size_t n = 0;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > tok::kMaxVocabId)
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

namespace tok {

namespace {

// The bytes a tokenizers ByteLevel token string stands for: each character mapped back through GPT-2's
// byte table; a string with a character outside the table stands for its own UTF-8 (as the ByteLevel
// decoder does). *mapped tells which.
std::string byte_level_bytes(const std::string& s, bool* mapped) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    size_t len = utf8_valid_len(p + i, s.size() - i);
    uint32_t c = p[i];
    if (len == 0) break;
    if (len == 2) c = ((c & 0x1f) << 6) | (p[i + 1] & 0x3f);
    else if (len == 3) c = ((c & 0x0f) << 12) | ((p[i + 1] & 0x3fu) << 6) | (p[i + 2] & 0x3f);
    else if (len == 4) c = ((c & 0x07) << 18) | ((p[i + 1] & 0x3fu) << 12) | ((p[i + 2] & 0x3fu) << 6) | (p[i + 3] & 0x3f);
    const int b = gpt2_cp_to_byte(c);
    if (b < 0) break;
    out.push_back(char(b));
    i += len;
    if (i == s.size()) {
      *mapped = true;
      return out;
    }
  }
  *mapped = false;
  return s;
}

[[noreturn]] void byte_level_fail(const std::string& path, const std::string& what) {
  throw FileError(path + ": byte-level tokenizer.json: " + what);
}

// The token name of a tokenizer_config.json entry ("</s>" or {"content": "</s>", ...}).
std::string config_token(const json& c, const char* key) {
  if (!c.is_object() || !c.contains(key)) return "";
  const json& v = c[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

// GPT-2-style byte-level BPE tokenizer.json: ByteLevel pre-tokenizer (GPT-2 regex), or a Sequence of an
// optional Digits, a Split with one of the patterns we implement (Llama-3, tekken, GPT-2; behaviour
// Isolated) and ByteLevel(use_regex=false); BPE model with a merges list; no normaliser.
std::unique_ptr<Tokenizer> Build::hf_byte_level(const std::string& path, const json& j) {
  auto fail = [&](const std::string& what) { byte_level_fail(path, what); };
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& n = j["normalizer"];
    const bool empty_seq = n.is_object() && n.value("type", "") == "Sequence" && n.contains("normalizers") &&
                           n["normalizers"].is_array() && n["normalizers"].empty();
    if (!empty_seq) fail("normalizer " + (n.is_object() ? n.value("type", std::string("?")) : std::string("?")) +
                         " is not supported");
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->source_ = path;
  t->kind_ = TokenizerKind::ByteLevel;
  t->bl_.reset(new ByteLevelModel());
  ByteLevelModel& m = *t->bl_;
  m.flush_on_special = false;

  // Pre-tokenizer.
  if (!j.contains("pre_tokenizer") || !j["pre_tokenizer"].is_object()) fail("no pre_tokenizer");
  std::vector<json> steps;
  const json& pt = j["pre_tokenizer"];
  if (pt.value("type", "") == "Sequence") {
    if (!pt.contains("pretokenizers") || !pt["pretokenizers"].is_array()) fail("Sequence without pretokenizers");
    for (const json& x : pt["pretokenizers"]) steps.push_back(x);
  } else {
    steps.push_back(pt);
  }
  bool have_pattern = false, have_byte_level = false;
  for (size_t i = 0; i < steps.size(); ++i) {
    const json& st = steps[i];
    const std::string type = st.is_object() ? st.value("type", "") : "";
    if (have_byte_level) fail("pre-tokenizer " + type + " after ByteLevel is not supported");
    if (type == "Digits") {
      if (have_pattern || m.digits != Digits::None) fail("Digits must come first");
      m.digits = st.value("individual_digits", false) ? Digits::Individual : Digits::Contiguous;
    } else if (type == "Split") {
      if (have_pattern) fail("only one Split pre-tokenizer is supported");
      if (st.value("behavior", "") != "Isolated" || st.value("invert", false))
        fail("Split must have behavior Isolated and invert false");
      std::string re;
      if (st.contains("pattern") && st["pattern"].is_object() && st["pattern"].contains("Regex") &&
          st["pattern"]["Regex"].is_string())
        re = st["pattern"]["Regex"].get<std::string>();
      if (!pattern_from_string(re, &m.pattern))
        fail("Split pattern " + json(re).dump() + " is not one we implement (GPT-2, Llama-3 or tekken)");
      have_pattern = true;
    } else if (type == "ByteLevel") {
      have_byte_level = true;
      m.add_prefix_space = st.value("add_prefix_space", true);
      if (st.value("use_regex", true)) {
        if (have_pattern) fail("Split followed by ByteLevel(use_regex=true) is not supported");
        m.pattern = Pattern::Gpt2;
        have_pattern = true;
      }
      if (m.add_prefix_space && steps.size() > 1) fail("ByteLevel(add_prefix_space) inside a Sequence is not supported");
    } else {
      fail("pre-tokenizer " + (type.empty() ? std::string("?") : type) + " is not supported");
    }
  }
  if (!have_byte_level) fail("no ByteLevel pre-tokenizer");
  if (!have_pattern) fail("no regex pre-tokenizer");

  // Model.
  if (!j.contains("model") || !j["model"].is_object()) fail("no model");
  const json& mo = j["model"];
  if (mo.value("type", "BPE") != "BPE") fail("model type must be BPE");
  if (mo.contains("dropout") && !mo["dropout"].is_null()) fail("BPE dropout is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (mo.contains(k) && !mo[k].is_null() && !(mo[k].is_string() && mo[k].get<std::string>().empty()))
      fail(std::string(k) + " is not supported");
  m.whole_chunk_first = mo.contains("ignore_merges") && mo["ignore_merges"].is_boolean() && mo["ignore_merges"].get<bool>();
  m.use_merge_list = true;
  if (!mo.contains("vocab") || !mo["vocab"].is_object()) fail("model.vocab is missing");
  const json& vocab = mo["vocab"];
  int64_t n = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > tok::kMaxVocabId)
      fail("vocab id for " + json(it.key()).dump() + " is not a valid id");
    n = std::max(n, it.value().get<int64_t>() + 1);
  }
  const json empty = json::array();
  const json& added = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"] : empty;
  for (const json& a : added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || a["id"].get<int64_t>() < 0 ||
        a["id"].get<int64_t>() > kMaxVocabId || !a.contains("content") || !a["content"].is_string())
      fail("added_tokens entries need an id and a content");
    n = std::max(n, a["id"].get<int64_t>() + 1);
  }
  t->pieces_.assign(size_t(n), "");
  t->types_.assign(size_t(n), PieceType::Unused);
  m.bytes.assign(size_t(n), "");
  m.vocab.reserve(size_t(n));
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const size_t id = size_t(it.value().get<int64_t>());
    if (t->types_[id] != PieceType::Unused) fail("two vocab entries have id " + std::to_string(id));
    bool mapped;
    t->pieces_[id] = it.key();
    t->types_[id] = PieceType::Normal;
    m.bytes[id] = byte_level_bytes(it.key(), &mapped);
    if (mapped) m.vocab.insert(m.bytes[id], int32_t(id));
  }
  // Some vocabularies lack a few bytes (SmolLM2: 21, mostly ones that never occur in UTF-8); such a byte
  // is dropped or becomes <unk> when encoding, as in tokenizers.
  for (int b = 0; b < 256; ++b) m.byte_id[b] = m.vocab.find(std::string(1, char(b)));
  m.fuse_unk = mo.contains("fuse_unk") && mo["fuse_unk"].is_boolean() && mo["fuse_unk"].get<bool>();
  if (mo.contains("merges") && mo["merges"].is_array()) {
    const json& merges = mo["merges"];
    for (size_t r = 0; r < merges.size(); ++r) {
      std::string a, b;
      const json& e = merges[r];
      if (e.is_string()) {
        const std::string s = e.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos) fail("bad merge " + json(s).dump());
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>(), b = e[1].get<std::string>();
      } else {
        fail("bad merge entry " + std::to_string(r));
      }
      auto ia = vocab.find(a), ib = vocab.find(b), ic = vocab.find(a + b);
      if (ia == vocab.end() || ib == vocab.end() || ic == vocab.end())
        fail("merge " + std::to_string(r) + " (" + json(a).dump() + ", " + json(b).dump() + ") is not in the vocabulary");
      const uint64_t key = uint64_t(ia.value().get<uint32_t>()) << 32 | ib.value().get<uint32_t>();
      m.merges[key] = std::make_pair(uint32_t(r), ic.value().get<int32_t>());
    }
  } else {
    fail("model.merges is missing");
  }

  // Added tokens: special ones are control tokens (skipped by decode); none is matched in text.
  std::map<std::string, int32_t> added_ids;
  for (const json& a : added) {
    const size_t id = size_t(a["id"].get<int64_t>());
    const std::string c = a["content"].get<std::string>();
    added_ids[c] = int32_t(id);
    t->pieces_[id] = c;
    if (a.value("special", false)) {
      t->types_[id] = PieceType::Control;
      m.bytes[id].clear();
    } else {
      bool mapped;
      if (t->types_[id] == PieceType::Unused) t->types_[id] = PieceType::UserDefined;
      m.bytes[id] = byte_level_bytes(c, &mapped);
    }
  }
  auto id_of = [&](const std::string& name) -> int {
    if (name.empty()) return -1;
    auto it = added_ids.find(name);
    if (it != added_ids.end()) return it->second;
    auto v = vocab.find(name);
    return v != vocab.end() ? v.value().get<int>() : -1;
  };
  t->unk_ = mo.contains("unk_token") && mo["unk_token"].is_string() ? id_of(mo["unk_token"].get<std::string>()) : -1;
  // BOS: the special token a TemplateProcessing post-processor puts before the text, if any.
  t->bos_ = -1;
  std::vector<const json*> procs;
  if (j.contains("post_processor") && j["post_processor"].is_object()) {
    const json& pp = j["post_processor"];
    if (pp.value("type", "") == "Sequence" && pp.contains("processors") && pp["processors"].is_array())
      for (const json& x : pp["processors"]) procs.push_back(&x);
    else
      procs.push_back(&pp);
  }
  for (const json* p : procs) {
    if (!p->is_object() || p->value("type", "") != "TemplateProcessing" || !p->contains("single") ||
        !(*p)["single"].is_array() || (*p)["single"].empty())
      continue;
    const json& first = (*p)["single"][0];
    if (first.is_object() && first.contains("SpecialToken") && first["SpecialToken"].is_object() &&
        first["SpecialToken"].contains("id") && first["SpecialToken"]["id"].is_string()) {
      const std::string name = first["SpecialToken"]["id"].get<std::string>();
      t->bos_ = id_of(name);
      if (p->contains("special_tokens") && (*p)["special_tokens"].is_object()) {
        const json& st = (*p)["special_tokens"];
        if (st.contains(name) && st[name].is_object() && st[name].contains("ids") && st[name]["ids"].is_array() &&
            st[name]["ids"].size() == 1 && st[name]["ids"][0].is_number_integer())
          t->bos_ = st[name]["ids"][0].get<int>();
      }
      if (t->bos_ >= int(n)) t->bos_ = -1;
    }
  }
  // EOS: tokenizer_config.json beside the file, else a conventional name.
  t->eos_ = -1;
  const size_t slash = path.find_last_of('/');
  const std::string cfg_path = (slash == std::string::npos ? std::string(".") : path.substr(0, slash)) + "/tokenizer_config.json";
  if (file_exists(cfg_path)) {
    try {
      t->eos_ = id_of(config_token(json::parse(read_text_file(cfg_path)), "eos_token"));
    } catch (const json::exception&) {
      t->eos_ = -1;  // the tokenizer itself is fine; chat/generation code reports a missing EOS
    }
  }
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>"})
    if (t->eos_ < 0) t->eos_ = id_of(name);
  t->byte_fallback_ = false;
  t->add_dummy_prefix_ = false;
  return t;
}

}  // namespace tok

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
