// UTF-8 validation and replacement, and the byte-string hash map used by the tokenizers.
#include "internal.h"

namespace mistral {
namespace tok {

namespace {
// Valid range of the second byte after lead byte c (Unicode Table 3-7); other continuation bytes are
// 0x80..0xBF. Returns the sequence length, or 0 for a byte that cannot start a sequence.
inline size_t lead_info(unsigned char c, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80, *hi = 0xbf;
  if (c < 0x80) return 1;
  if (c < 0xc2) return 0;
  if (c < 0xe0) return 2;
  if (c < 0xf0) {
    if (c == 0xe0) *lo = 0xa0;
    if (c == 0xed) *hi = 0x9f;
    return 3;
  }
  if (c < 0xf5) {
    if (c == 0xf0) *lo = 0x90;
    if (c == 0xf4) *hi = 0x8f;
    return 4;
  }
  return 0;
}

// Number of leading bytes of p[0..n) that are a prefix of a valid sequence (0 if p[0] cannot start
// one), and via *need the length the sequence would have.
inline size_t valid_prefix(const unsigned char* p, size_t n, size_t* need) {
  unsigned char lo, hi;
  const size_t len = lead_info(p[0], &lo, &hi);
  *need = len;
  if (len <= 1) return len;
  size_t k = 1;
  for (; k < len && k < n; ++k) {
    const unsigned char d = p[k];
    if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xbf)) break;
  }
  return k;
}
}  // namespace

size_t utf8_valid_len(const unsigned char* p, size_t n) {
  if (p[0] < 0x80) return 1;
  size_t need;
  const size_t k = valid_prefix(p, n, &need);
  return k == need ? k : 0;
}

size_t utf8_maximal_subpart(const unsigned char* p, size_t n) {
  size_t need;
  const size_t k = valid_prefix(p, n, &need);
  return k ? k : 1;
}

bool utf8_is_valid(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Skip ASCII eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const size_t len = utf8_valid_len(p + i, n - i);
    if (!len) return false;
    i += len;
  }
  return true;
}

std::string utf8_sanitize_maximal(std::string_view in, bool complete_only, std::string* rest) {
  std::string out;
  out.reserve(in.size());
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      out.push_back(char(p[i++]));
      continue;
    }
    size_t need;
    const size_t k = valid_prefix(p + i, n - i, &need);
    if (k && k == need) {
      out.append(in.data() + i, k);
    } else if (k && i + k == n && complete_only) {  // truncated at the end: more bytes may complete it
      if (rest) rest->assign(in.data() + i, k);
      return out;
    } else {
      out += "\xef\xbf\xbd";
    }
    i += k ? k : 1;
  }
  if (rest) rest->clear();
  return out;
}

void StrMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(cap, Slot());
  mask_ = cap - 1;
  for (const Slot& s : old) {
    if (s.value < 0) continue;
    const uint64_t h = hash_bytes(blob_.data() + s.off, s.len);
    size_t i = size_t(h) & mask_;
    while (slots_[i].value >= 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

bool StrMap::insert(std::string_view key, int32_t value) {
  if ((count_ + 1) * 2 > slots_.size()) reserve(count_ + 1 > 8 ? (count_ + 1) * 2 : 16);
  const uint64_t h = hash_bytes(key.data(), key.size());
  const uint32_t tag = uint32_t(h >> 32);
  size_t i = size_t(h) & mask_;
  for (;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.value < 0) break;
    if (s.tag == tag && s.len == key.size() && std::memcmp(blob_.data() + s.off, key.data(), key.size()) == 0) {
      s.value = value;
      return false;
    }
  }
  Slot& s = slots_[i];
  s.off = uint32_t(blob_.size());
  s.len = uint32_t(key.size());
  s.tag = tag;
  s.value = value;
  blob_.append(key.data(), key.size());
  ++count_;
  return true;
}

}  // namespace tok
}  // namespace mistral
