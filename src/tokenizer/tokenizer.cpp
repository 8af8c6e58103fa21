// BPE encode/decode with SentencePiece semantics (add_dummy_prefix, U+2581 for spaces, byte fallback).
#include "mistral/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "internal.h"
#include "mistral/error.h"

namespace mistral {

namespace {

const char kSpace[] = "\xe2\x96\x81";  // U+2581

// Length of the UTF-8 sequence starting at s[i] if valid, else 0.
size_t utf8_len(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f;
  else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f;
  else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3f);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

// True if s[i..] is a proper prefix of some valid UTF-8 sequence (more bytes could complete it).
bool utf8_incomplete_prefix(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  if ((c & 0xe0) == 0xc0) n = 2;
  else if ((c & 0xf0) == 0xe0) n = 3;
  else if ((c & 0xf8) == 0xf0) n = 4;
  else return false;
  if (c == 0xc0 || c == 0xc1 || c > 0xf4) return false;
  const size_t have = s.size() - i;
  if (have >= n) return false;
  for (size_t k = 1; k < have; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xc0) != 0x80) return false;
    if (k == 1) {  // second-byte ranges that keep the sequence valid
      if (c == 0xe0 && d < 0xa0) return false;
      if (c == 0xed && d > 0x9f) return false;
      if (c == 0xf0 && d < 0x90) return false;
      if (c == 0xf4 && d > 0x8f) return false;
    }
  }
  return true;
}

}  // namespace

std::string utf8_sanitize(const std::string& in, bool complete_only, std::string* rest) {
  std::string out;
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    size_t n = utf8_len(in, i);
    if (n) {
      out.append(in, i, n);
      i += n;
      continue;
    }
    if (complete_only && utf8_incomplete_prefix(in, i)) {
      if (rest) *rest = in.substr(i);
      return out;
    }
    out += "\xef\xbf\xbd";
    ++i;
  }
  if (rest) rest->clear();
  return out;
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

void Tokenizer::finish_load() {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  for (size_t id = 0; id < pieces_.size(); ++id) {
    const std::string& p = pieces_[id];
    if (types_[id] == PieceType::Byte || (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>')) {
      unsigned v = 0;
      bool ok = true;
      for (int k = 3; k < 5; ++k) {
        char ch = p[size_t(k)];
        v = v * 16 + unsigned(ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : (ok = false));
      }
      if (ok && p.size() == 6) {
        types_[id] = PieceType::Byte;
        byte_ids_[v] = int(id);
        continue;
      }
    }
    if (types_[id] == PieceType::Normal || types_[id] == PieceType::UserDefined) normal_.emplace(p, int32_t(id));
  }
  if (byte_fallback_)
    for (int b = 0; b < 256; ++b)
      if (byte_ids_[b] < 0) {
        byte_fallback_ = false;  // incomplete byte table: fall back to <unk> like SentencePiece without bytes
        break;
      }
}

std::vector<int32_t> Tokenizer::encode(const std::string& text_in, bool add_bos) const {
  if (kind_ != TokenizerKind::SentencePiece) return encode_byte_level(text_in, add_bos);
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  std::string text = text_in;
  if (remove_extra_whitespaces_) {
    std::string t;
    bool prev_space = true;
    for (char ch : text) {
      if (ch == ' ') {
        if (!prev_space) t.push_back(' ');
        prev_space = true;
      } else {
        t.push_back(ch);
        prev_space = false;
      }
    }
    while (!t.empty() && t.back() == ' ') t.pop_back();
    text = t;
  }
  if (text.empty()) return out;
  // Normalise: dummy prefix, spaces to U+2581, invalid UTF-8 bytes to U+FFFD.
  std::string norm;
  norm.reserve(text.size() + 16);
  if (add_dummy_prefix_) norm += kSpace;
  const std::string clean = utf8_sanitize(text);
  for (char ch : clean) {
    if (ch == ' ') norm += kSpace;
    else norm.push_back(ch);
  }

  struct Sym {
    int32_t start, len, prev, next, id;
    uint32_t ver;
  };
  std::vector<Sym> sy;
  for (size_t i = 0; i < norm.size();) {
    size_t n = utf8_len(norm, i);
    if (n == 0) n = 1;
    auto it = normal_.find(norm.substr(i, n));
    sy.push_back({int32_t(i), int32_t(n), int32_t(sy.size()) - 1, int32_t(sy.size()) + 1,
                  it == normal_.end() ? -1 : it->second, 0});
    i += n;
  }
  sy.back().next = -1;

  struct Cand {
    float prio;
    int32_t left, right, id;
    uint32_t lv, rv;
    int32_t pos;
    bool operator<(const Cand& o) const {  // max-heap: higher priority first, then leftmost
      if (prio != o.prio) return prio < o.prio;
      return pos > o.pos;
    }
  };
  std::priority_queue<Cand> pq;
  auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    if (use_merges_) {
      if (sy[size_t(l)].id < 0 || sy[size_t(r)].id < 0) return;
      auto it = merges_.find(uint64_t(uint32_t(sy[size_t(l)].id)) << 32 | uint32_t(sy[size_t(r)].id));
      if (it == merges_.end()) return;
      pq.push({it->second.first, l, r, it->second.second, sy[size_t(l)].ver, sy[size_t(r)].ver, sy[size_t(l)].start});
    } else {
      auto it = normal_.find(norm.substr(size_t(sy[size_t(l)].start), size_t(sy[size_t(l)].len + sy[size_t(r)].len)));
      if (it == normal_.end()) return;
      pq.push({scores_[size_t(it->second)], l, r, it->second, sy[size_t(l)].ver, sy[size_t(r)].ver,
               sy[size_t(l)].start});
    }
  };
  for (int32_t i = 0; i + 1 < int32_t(sy.size()); ++i) consider(i, i + 1);
  while (!pq.empty()) {
    Cand c = pq.top();
    pq.pop();
    Sym& L = sy[size_t(c.left)];
    if (L.len == 0 || L.next != c.right || L.ver != c.lv) continue;
    Sym& R = sy[size_t(c.right)];
    if (R.len == 0 || R.ver != c.rv) continue;
    L.len += R.len;
    L.id = c.id;
    L.next = R.next;
    L.ver++;
    if (R.next >= 0) sy[size_t(R.next)].prev = c.left;
    R.len = 0;
    R.ver++;
    consider(L.prev, c.left);
    consider(c.left, L.next);
  }
  for (int32_t i = 0; i >= 0 && i < int32_t(sy.size()); i = sy[size_t(i)].next) {
    const Sym& s = sy[size_t(i)];
    if (s.id >= 0) {
      out.push_back(s.id);
    } else if (byte_fallback_) {
      for (int32_t k = 0; k < s.len; ++k) out.push_back(byte_ids_[static_cast<unsigned char>(norm[size_t(s.start + k)])]);
    } else if (out.empty() || out.back() != unk_ || true) {
      out.push_back(unk_);
    }
  }
  return out;
}

std::string Tokenizer::piece_bytes(int id) const {
  if (id < 0 || id >= vocab_size()) throw UsageError("token id " + std::to_string(id) + " is out of range (vocab " +
                                                     std::to_string(vocab_size()) + ")");
  if (kind_ != TokenizerKind::SentencePiece) return types_[size_t(id)] == PieceType::Control ? "" : bl_->bytes[size_t(id)];
  switch (types_[size_t(id)]) {
    case PieceType::Control: return "";
    case PieceType::Unknown: return " \xe2\x81\x87 ";  // SentencePiece's surface for <unk>
    case PieceType::Byte: {
      for (int b = 0; b < 256; ++b)
        if (byte_ids_[b] == id) return std::string(1, char(b));
      return "";
    }
    default: break;
  }
  std::string s;
  const std::string& p = pieces_[size_t(id)];
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, 3, kSpace) == 0) {
      s.push_back(' ');
      i += 3;
    } else {
      s.push_back(p[i++]);
    }
  }
  return s;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  StreamDecoder d(*this);
  std::string out;
  for (int32_t id : ids) out += d.push(id);
  out += d.flush();
  return out;
}

std::string StreamDecoder::push(int32_t id) {
  std::string b = tok_.piece_bytes(id);
  if (tok_.kind_ != TokenizerKind::SentencePiece) {
    // Byte-level: bytes joined, maximal-subpart replacement; tekken decodes each run between special
    // tokens on its own.
    if (b.empty()) return tok_.bl_->flush_on_special && tok_.type(id) == PieceType::Control ? flush() : "";
    pending_ += b;
    std::string rest;
    std::string out = tok::utf8_sanitize_maximal(pending_, true, &rest);
    pending_ = rest;
    return out;
  }
  if (b.empty()) return "";
  if (!started_ && tok_.add_dummy_prefix_) {
    // The first text piece loses the dummy-prefix space (SentencePiece strips it when it decodes).
    if (tok_.type(id) != PieceType::Byte && b[0] == ' ') b.erase(0, 1);
  }
  started_ = true;
  pending_ += b;
  std::string rest;
  std::string out = utf8_sanitize(pending_, true, &rest);
  pending_ = rest;
  return out;
}

std::string StreamDecoder::flush() {
  std::string out =
      tok_.kind_ != TokenizerKind::SentencePiece ? tok::utf8_sanitize_maximal(pending_) : utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace mistral
