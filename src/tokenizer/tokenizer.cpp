// BPE encode/decode with SentencePiece semantics (add_dummy_prefix, U+2581 for spaces, byte fallback).
#include "mistral/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

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

Tokenizer::Tokenizer() {
  static std::atomic<uint64_t> next_uid{1};
  uid_ = next_uid++;
}
Tokenizer::~Tokenizer() = default;

void Tokenizer::finish_load() {
  sp_.reset(new tok::SpModel());
  std::fill(std::begin(sp_->ascii_id), std::end(sp_->ascii_id), -1);
  sp_->pieces.reserve(pieces_.size());
  scores_.resize(pieces_.size(), 0.f);
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
    if (types_[id] == PieceType::Normal || types_[id] == PieceType::UserDefined) sp_->pieces.insert_new(p, int32_t(id));
  }
  for (int c = 0; c < 128; ++c) {
    const char ch = char(c == ' ' ? 0 : c);
    sp_->ascii_id[c] = c == ' ' ? -1 : sp_->pieces.find(&ch, 1);  // a space is never in the text (U+2581)
  }
  // Every pair of adjacent characters inside any piece: the encoder's segment boundaries are the others.
  for (const std::string& piece : pieces_) {
    const auto* q = reinterpret_cast<const unsigned char*>(piece.data());
    uint32_t prev = 0;
    bool have_prev = false;
    for (size_t i = 0; i < piece.size();) {
      const size_t n = tok::utf8_valid_len(q + i, piece.size() - i);
      if (n == 0) break;  // such a piece never matches (the text is valid UTF-8 by then)
      uint32_t c = q[i];
      if (n == 2) c = ((c & 0x1fu) << 6) | (q[i + 1] & 0x3fu);
      else if (n == 3) c = ((c & 0x0fu) << 12) | ((q[i + 1] & 0x3fu) << 6) | (q[i + 2] & 0x3fu);
      else if (n == 4) c = ((c & 0x07u) << 18) | ((q[i + 1] & 0x3fu) << 12) | ((q[i + 2] & 0x3fu) << 6) | (q[i + 3] & 0x3fu);
      if (have_prev) sp_->bigrams.insert(tok::bigram_key(prev, c));
      prev = c, have_prev = true;
      i += n;
    }
  }
  for (float& sc : scores_)
    if (std::isnan(sc)) sc = -std::numeric_limits<float>::infinity();  // keep the merge order a strict order
  if (byte_fallback_)
    for (int b = 0; b < 256; ++b)
      if (byte_ids_[b] < 0) {
        byte_fallback_ = false;  // incomplete byte table: fall back to <unk> like SentencePiece without bytes
        break;
      }
}

namespace {

// What the SentencePiece-kind encoder needs from the Tokenizer.
struct SpCtx {
  const tok::SpModel& m;
  const std::vector<float>& scores;
  const std::unordered_map<uint64_t, std::pair<float, int32_t>>& merges;
  bool use_merges;
  const char* norm;
  // Priority (higher first) and merged id of adjacent symbols [a, a+la) [a+la, a+la+lb) with ids ia, ib;
  // false if they cannot merge.
  bool pair(uint32_t a, uint32_t la, uint32_t lb, int32_t ia, int32_t ib, float* prio, int32_t* id) const {
    if (use_merges) {
      if (ia < 0 || ib < 0) return false;
      auto it = merges.find(uint64_t(uint32_t(ia)) << 32 | uint32_t(ib));
      if (it == merges.end()) return false;
      *prio = it->second.first, *id = it->second.second;
      return true;
    }
    const int32_t v = m.pieces.find(norm + a, la + lb);
    if (v < 0) return false;
    *prio = scores[size_t(v)], *id = v;
    return true;
  }
};

struct SpScratch {
  std::vector<uint32_t> start, len;
  std::vector<int32_t> id, prev, next, pid;
  std::vector<float> pr;
  std::vector<int32_t> seg_ids;
};

// BPE over the characters of one segment (char_off[0..n] are byte offsets into the normalised text);
// appends the final symbols' ids, -1 for symbols that are not pieces. Highest priority merges first,
// the leftmost on ties (SentencePiece's order).
void sp_bpe(const SpCtx& c, const uint32_t* char_off, size_t n, SpScratch& w, std::vector<int32_t>* out) {
  w.start.assign(char_off, char_off + n);
  w.len.resize(n);
  w.id.resize(n);
  for (size_t i = 0; i < n; ++i) {
    w.len[i] = char_off[i + 1] - char_off[i];
    w.id[i] = c.m.pieces.find(c.norm + char_off[i], w.len[i]);
  }
  if (n <= 48) {
    // Few symbols: rescan the pair priorities each step (no heap).
    w.pr.resize(n);
    w.pid.resize(n);
    auto rate = [&](size_t i, size_t m) {
      if (i + 1 >= m || !c.pair(w.start[i], w.len[i], w.len[i + 1], w.id[i], w.id[i + 1], &w.pr[i], &w.pid[i]))
        w.pid[i] = -1;
    };
    size_t m = n;
    for (size_t i = 0; i < m; ++i) rate(i, m);
    while (m > 1) {
      long best = -1;
      float bp = 0;
      for (size_t i = 0; i + 1 < m; ++i)
        if (w.pid[i] >= 0 && (best < 0 || w.pr[i] > bp)) best = long(i), bp = w.pr[i];
      if (best < 0) break;
      const size_t b = size_t(best);
      w.len[b] += w.len[b + 1];
      w.id[b] = w.pid[b];
      for (size_t i = b + 1; i + 1 < m; ++i) {
        w.start[i] = w.start[i + 1], w.len[i] = w.len[i + 1], w.id[i] = w.id[i + 1];
        w.pr[i] = w.pr[i + 1], w.pid[i] = w.pid[i + 1];
      }
      --m;
      rate(b, m);
      if (b > 0) rate(b - 1, m);
    }
    for (size_t i = 0; i < m; ++i) out->push_back(w.id[i]), w.seg_ids.push_back(int32_t(w.start[i])),
                                                        w.seg_ids.push_back(int32_t(w.len[i]));
    return;
  }
  // Many symbols: a linked list and a heap of candidates; an entry is stale unless its left symbol is
  // alive and, with its right neighbour, still spans the same bytes (for a merges list: as the same pair).
  struct Cand {
    float prio;
    uint32_t left, len;
    int32_t id;
  };
  auto worse = [](const Cand& a, const Cand& b) { return a.prio != b.prio ? a.prio < b.prio : a.left > b.left; };
  std::vector<Cand> heap;
  heap.reserve(n);
  w.prev.resize(n);
  w.next.resize(n);
  for (size_t i = 0; i < n; ++i) w.prev[i] = int32_t(i) - 1, w.next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  auto consider = [&](int32_t l) {
    if (l < 0) return;
    const int32_t r = w.next[size_t(l)];
    if (r < 0) return;
    float p;
    int32_t id;
    if (c.pair(w.start[size_t(l)], w.len[size_t(l)], w.len[size_t(r)], w.id[size_t(l)], w.id[size_t(r)], &p, &id)) {
      heap.push_back({p, uint32_t(l), w.len[size_t(l)] + w.len[size_t(r)], id});
      std::push_heap(heap.begin(), heap.end(), worse);
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) {
    float p;
    int32_t id;
    if (c.pair(w.start[i], w.len[i], w.len[i + 1], w.id[i], w.id[i + 1], &p, &id))
      heap.push_back({p, uint32_t(i), w.len[i] + w.len[i + 1], id});
  }
  std::make_heap(heap.begin(), heap.end(), worse);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Cand k = heap.back();
    heap.pop_back();
    const size_t l = k.left;
    if (w.len[l] == 0) continue;
    const int32_t r = w.next[l];
    if (r < 0 || w.len[l] + w.len[size_t(r)] != k.len) continue;
    if (c.use_merges) {
      float p;
      int32_t id;
      if (!c.pair(w.start[l], w.len[l], w.len[size_t(r)], w.id[l], w.id[size_t(r)], &p, &id) || id != k.id || p != k.prio)
        continue;
    }
    w.len[l] = k.len;
    w.id[l] = k.id;
    w.len[size_t(r)] = 0;
    w.next[l] = w.next[size_t(r)];
    if (w.next[l] >= 0) w.prev[size_t(w.next[l])] = int32_t(l);
    consider(w.prev[l]);
    consider(int32_t(l));
  }
  for (int32_t i = 0; i >= 0; i = w.next[size_t(i)])
    out->push_back(w.id[size_t(i)]), w.seg_ids.push_back(int32_t(w.start[size_t(i)])),
        w.seg_ids.push_back(int32_t(w.len[size_t(i)]));
}

// Segment -> final symbols, kept per thread across calls (words repeat), for one tokenizer at a time;
// emptied when it grows past its budget.
struct SegCache {
  uint64_t owner = 0;
  tok::StrMap index;           // segment bytes -> first entry
  std::vector<int32_t> ents;   // per symbol: id, offset in the segment, length; preceded by the count
  void reset(uint64_t who) {
    owner = who;
    index.clear();
    ents.clear();
  }
};

}  // namespace

std::vector<int32_t> Tokenizer::encode(const std::string& text_in, bool add_bos) const {
  if (kind_ != TokenizerKind::SentencePiece) return encode_byte_level(text_in, add_bos);
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  const std::string* text = &text_in;
  std::string squeezed;
  if (remove_extra_whitespaces_) {
    bool prev_space = true;
    for (char ch : text_in) {
      if (ch == ' ') {
        if (!prev_space) squeezed.push_back(' ');
        prev_space = true;
      } else {
        squeezed.push_back(ch);
        prev_space = false;
      }
    }
    while (!squeezed.empty() && squeezed.back() == ' ') squeezed.pop_back();
    text = &squeezed;
  }
  if (text->empty()) return out;
  // Normalise: dummy prefix, spaces to U+2581, invalid UTF-8 bytes to U+FFFD; note where characters start.
  thread_local std::string norm;
  thread_local std::vector<uint32_t> char_off;
  thread_local std::vector<uint32_t> cps;
  norm.clear(), char_off.clear(), cps.clear();
  norm.reserve(text->size() * 3 / 2 + 16);
  if (add_dummy_prefix_) {
    char_off.push_back(0), cps.push_back(0x2581);
    norm += kSpace;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(text->data());
  const size_t tn = text->size();
  for (size_t i = 0; i < tn;) {
    const unsigned char ch = p[i];
    if (ch < 0x80) {
      char_off.push_back(uint32_t(norm.size()));
      if (ch == ' ') {
        norm += kSpace;
        cps.push_back(0x2581);
      } else {
        norm.push_back(char(ch));
        cps.push_back(ch);
      }
      ++i;
      continue;
    }
    const size_t n = tok::utf8_valid_len(p + i, tn - i);
    char_off.push_back(uint32_t(norm.size()));
    if (n == 0) {  // SentencePiece replaces each invalid byte
      norm += "\xef\xbf\xbd";
      cps.push_back(0xfffd);
      ++i;
      continue;
    }
    uint32_t c;
    if (n == 2) c = ((ch & 0x1fu) << 6) | (p[i + 1] & 0x3fu);
    else if (n == 3) c = ((ch & 0x0fu) << 12) | ((p[i + 1] & 0x3fu) << 6) | (p[i + 2] & 0x3fu);
    else c = ((ch & 0x07u) << 18) | ((p[i + 1] & 0x3fu) << 12) | ((p[i + 2] & 0x3fu) << 6) | (p[i + 3] & 0x3fu);
    norm.append(text->data() + i, n);
    cps.push_back(c);
    i += n;
  }
  const size_t nchars = cps.size();
  char_off.push_back(uint32_t(norm.size()));

  const SpCtx ctx{*sp_, scores_, merges_, use_merges_, norm.data()};
  thread_local SpScratch w;
  thread_local SegCache cache;
  thread_local std::vector<int32_t> seg;
  if (cache.owner != uid_ || cache.ents.size() > (size_t(1) << 22)) cache.reset(uid_);
  out.reserve(out.size() + nchars / 3 + 4);
  auto emit = [&](int32_t id, uint32_t off, uint32_t len) {
    if (id >= 0) {
      out.push_back(id);
    } else if (byte_fallback_) {
      for (uint32_t k = 0; k < len; ++k) out.push_back(byte_ids_[static_cast<unsigned char>(norm[off + k])]);
    } else if (unk_ >= 0) {
      out.push_back(unk_);
    }  // no <unk> (a tokenizer.json without unk_token): the character is dropped, as tokenizers does
  };
  // Segments end where no piece contains the two characters around the boundary: no symbol can ever
  // span such a boundary, so each segment's BPE is independent of the others.
  const tok::SpModel& m = *sp_;
  size_t s = 0;
  for (size_t i = 1; i <= nchars; ++i) {
    if (i < nchars && m.bigrams.contains(tok::bigram_key(cps[i - 1], cps[i]))) continue;
    const uint32_t off = char_off[s], len = char_off[i] - off;
    if (i - s == 1) {
      const uint32_t c = cps[s];
      emit(c < 128 ? m.ascii_id[c] : m.pieces.find(norm.data() + off, len), off, len);
      s = i;
      continue;
    }
    const bool cacheable = len <= 64;
    if (cacheable) {
      const int32_t at = cache.index.find(norm.data() + off, len);
      if (at >= 0) {
        const int32_t* e = &cache.ents[size_t(at)];
        for (int32_t k = 0; k < e[0]; ++k) emit(e[1 + 3 * k], off + uint32_t(e[2 + 3 * k]), uint32_t(e[3 + 3 * k]));
        s = i;
        continue;
      }
    }
    seg.clear();
    w.seg_ids.clear();
    sp_bpe(ctx, &char_off[s], i - s, w, &seg);
    for (size_t k = 0; k < seg.size(); ++k) emit(seg[k], uint32_t(w.seg_ids[2 * k]), uint32_t(w.seg_ids[2 * k + 1]));
    if (cacheable) {
      cache.index.insert(std::string_view(norm.data() + off, len), int32_t(cache.ents.size()));
      cache.ents.push_back(int32_t(seg.size()));
      for (size_t k = 0; k < seg.size(); ++k)
        cache.ents.insert(cache.ents.end(), {seg[k], w.seg_ids[2 * k] - int32_t(off), w.seg_ids[2 * k + 1]});
    }
    s = i;
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
