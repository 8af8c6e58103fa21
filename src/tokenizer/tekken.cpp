// Byte-level BPE: mistral-common's tekken.json (tiktoken semantics) and the encoder shared with
// GPT-2-style tokenizer.json files.
//
// tekken.json: `vocab` lists ordinary tokens by rank with base64 `token_bytes` (ranks 0..255 are the
// single bytes); `config.default_num_special_tokens` special tokens take ids 0..N-1 (from
// `special_tokens`, or mistral-common's built-in list for files of version <= v7, padded with
// "<SPECIAL_i>"), and the ordinary token of rank r has id N + r; only the first
// `default_vocab_size - N` ranks are used. Encoding splits the text with the file's regex
// (`config.pattern`, which must be the one we implement), then each chunk is one token if its bytes are
// one, else bytes are merged pairwise, always the adjacent pair whose concatenation has the lowest rank
// (leftmost on ties), as tiktoken does.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <queue>

#include "internal.h"
#include "mistral/config.h"
#include "mistral/error.h"

namespace mistral {

using json = nlohmann::json;

namespace tok {

bool base64_decode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < in.size(); ++i) {
    const char c = in[i];
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else break;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(char((acc >> bits) & 0xff));
    }
  }
  size_t pad = 0;
  for (; i < in.size(); ++i, ++pad)
    if (in[i] != '=') return false;
  // Leftover bits must be zero padding of a 2- or 3-character final group.
  if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) return false;
  if (pad && (pad > 2 || (in.size() % 4) != 0)) return false;
  return true;
}

namespace {
bool gpt2_printable(uint32_t b) { return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff); }
struct Gpt2Map {
  uint32_t to_cp[256];
  int16_t from_cp[324];
  Gpt2Map() {
    std::fill(std::begin(from_cp), std::end(from_cp), int16_t(-1));
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      to_cp[b] = gpt2_printable(b) ? b : 256 + extra++;
      from_cp[to_cp[b]] = int16_t(b);
    }
  }
};
const Gpt2Map kGpt2Map;
}  // namespace

uint32_t gpt2_byte_to_cp(uint8_t b) { return kGpt2Map.to_cp[b]; }
int gpt2_cp_to_byte(uint32_t cp) { return cp < 324 ? kGpt2Map.from_cp[cp] : -1; }

}  // namespace tok

namespace {

using tok::ByteLevelModel;

// Merges the bytes of one chunk into tokens. A pair (l, r) of adjacent parts can merge when `pair`
// gives it a rank; the lowest rank merges first, the leftmost on ties.
struct PairRank {
  const ByteLevelModel& m;
  const char* s;
  // Rank and merged id of parts [a, b) + [b, c) with ids la, ra; rank UINT32_MAX if they cannot merge.
  uint32_t operator()(uint32_t a, uint32_t c, int32_t la, int32_t ra, int32_t* id) const {
    if (m.use_merge_list) {
      auto it = m.merges.find(uint64_t(uint32_t(la)) << 32 | uint32_t(ra));
      if (it == m.merges.end()) return UINT32_MAX;
      *id = it->second.second;
      return it->second.first;
    }
    const int32_t t = m.vocab.find(s + a, c - a);
    if (t < 0) return UINT32_MAX;
    *id = t;
    return uint32_t(t);  // tiktoken rank order == id order
  }
};

struct Part {
  uint32_t start, end;
  int32_t id;
  uint32_t rank;  // of the pair this part starts
  int32_t merged;
};

// The initial symbols of a chunk: one per byte. A byte without a token (some tokenizer.json files lack a
// few) is dropped, or becomes <unk> (consecutive ones fused into one with fuse_unk), as tokenizers does.
void initial_parts(const ByteLevelModel& m, int32_t unk, const char* s, uint32_t len, std::vector<Part>& p) {
  p.clear();
  for (uint32_t i = 0; i < len; ++i) {
    const int32_t id = m.byte_id[uint8_t(s[i])];
    if (id >= 0) {
      p.push_back({i, i + 1, id, UINT32_MAX, -1});
    } else if (unk >= 0) {
      if (m.fuse_unk && !p.empty() && p.back().merged == -2) p.back().end = i + 1;
      else p.push_back({i, i + 1, unk, UINT32_MAX, -2});  // merged == -2 marks an initial <unk>
    }
  }
}

// O(n^2) in the number of symbols, like tiktoken; fast for the short chunks of ordinary text.
void merge_small(const PairRank& pr, std::vector<Part>& p, std::vector<int32_t>* out) {
  auto rank_at = [&](size_t i) {
    if (i + 1 >= p.size()) {
      p[i].rank = UINT32_MAX;
      return;
    }
    p[i].rank = pr(p[i].start, p[i + 1].end, p[i].id, p[i + 1].id, &p[i].merged);
  };
  for (size_t i = 0; i < p.size(); ++i) rank_at(i);
  while (p.size() > 1) {
    size_t best = 0;
    uint32_t best_rank = UINT32_MAX;
    for (size_t i = 0; i + 1 < p.size(); ++i)
      if (p[i].rank < best_rank) best_rank = p[i].rank, best = i;
    if (best_rank == UINT32_MAX) break;
    p[best].end = p[best + 1].end;
    p[best].id = p[best].merged;
    p.erase(p.begin() + long(best) + 1);
    rank_at(best);
    if (best > 0) rank_at(best - 1);
  }
  for (const Part& q : p) out->push_back(q.id);
}

// O(n log n): a linked list of parts and a heap of candidate merges, stale entries skipped.
void merge_large(const PairRank& pr, const std::vector<Part>& p, std::vector<int32_t>* out) {
  struct Node {
    uint32_t start, end;
    int32_t id, prev, next;
    uint32_t ver;
  };
  struct Cand {
    uint32_t rank, start;
    int32_t left, merged;
    uint32_t lver, rver;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : start > o.start; }
  };
  const uint32_t len = uint32_t(p.size());
  if (len == 0) return;
  std::vector<Node> nd(len);
  for (uint32_t i = 0; i < len; ++i) nd[i] = {p[i].start, p[i].end, p[i].id, int32_t(i) - 1, int32_t(i) + 1, 0};
  nd[len - 1].next = -1;
  std::priority_queue<Cand> pq;
  auto consider = [&](int32_t l) {
    if (l < 0 || nd[size_t(l)].next < 0) return;
    const Node& L = nd[size_t(l)];
    const Node& R = nd[size_t(L.next)];
    int32_t id;
    const uint32_t rank = pr(L.start, R.end, L.id, R.id, &id);
    if (rank != UINT32_MAX) pq.push({rank, L.start, l, id, L.ver, R.ver});
  };
  for (int32_t i = 0; i + 1 < int32_t(len); ++i) consider(i);
  while (!pq.empty()) {
    const Cand c = pq.top();
    pq.pop();
    Node& L = nd[size_t(c.left)];
    if (L.ver != c.lver || L.next < 0) continue;
    Node& R = nd[size_t(L.next)];
    if (R.ver != c.rver) continue;
    L.end = R.end;
    L.id = c.merged;
    L.next = R.next;
    L.ver++;
    if (R.next >= 0) nd[size_t(R.next)].prev = c.left;
    R.ver++;
    R.start = R.end = 0;
    consider(L.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = nd[size_t(i)].next) out->push_back(nd[size_t(i)].id);
}

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw FileError(path + ": not a valid tekken tokenizer (" + what + ")");
}

const char* const kDefaultSpecials[] = {
    "<unk>",   "<s>",         "</s>",   "[INST]",   "[/INST]",  "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"};

int64_t get_int(const json& o, const char* key, const std::string& path) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_number_integer()) bad(path, std::string("config.") + key + " is missing or not an integer");
  return it->get<int64_t>();
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load_tekken(const std::string& path) {
  return tok::Build::tekken(read_text_file(path), path);
}

std::unique_ptr<Tokenizer> tok::Build::tekken(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw FileError(path + ": not valid JSON: " + e.what());
  }
  try {
    return tekken_doc(j, path);
  } catch (const json::exception& e) {  // a value of an unexpected type somewhere
    bad(path, std::string("unexpected content: ") + e.what());
  }
}

std::unique_ptr<Tokenizer> tok::Build::tekken_doc(const json& j, const std::string& path) {
  if (!j.is_object()) bad(path, "not a JSON object");
  auto cfg_it = j.find("config");
  if (cfg_it == j.end() || !cfg_it->is_object()) bad(path, "no 'config' object");
  const json& cfg = *cfg_it;
  auto pat_it = cfg.find("pattern");
  if (pat_it == cfg.end() || !pat_it->is_string()) bad(path, "config.pattern is missing");
  tok::Pattern pattern;
  if (!tok::pattern_from_string(pat_it->get<std::string>(), &pattern) || pattern != tok::Pattern::Tekken)
    throw FileError(path + ": tekken pre-tokenizer pattern " + pat_it->dump() +
                    " is not supported (only mistral-common's tekken pattern is implemented)");
  const int64_t vocab_size = get_int(cfg, "default_vocab_size", path);
  const int64_t num_special = get_int(cfg, "default_num_special_tokens", path);
  if (num_special < 0 || vocab_size < num_special + 256 || vocab_size > tok::kMaxVocabId + 1)
    bad(path, "default_vocab_size " + std::to_string(vocab_size) + " and default_num_special_tokens " +
                  std::to_string(num_special) + " are inconsistent");
  int version = 0;
  auto ver_it = cfg.find("version");
  if (ver_it != cfg.end() && ver_it->is_string()) {
    const std::string v = ver_it->get<std::string>();
    if (v.size() >= 2 && v[0] == 'v' && v.size() < 8 && v.find_first_not_of("0123456789", 1) == std::string::npos)
      version = std::stoi(v.substr(1));
  }
  if (version <= 0) bad(path, "config.version must be a string like \"v3\"");

  auto vocab_it = j.find("vocab");
  if (vocab_it == j.end() || !vocab_it->is_array()) bad(path, "no 'vocab' array");
  const json& vocab = *vocab_it;
  const int64_t inner = vocab_size - num_special;
  if (int64_t(vocab.size()) < inner)
    bad(path, "vocab has " + std::to_string(vocab.size()) + " tokens, fewer than default_vocab_size - "
                  "default_num_special_tokens = " + std::to_string(inner));

  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->source_ = path;
  t->kind_ = TokenizerKind::Tekken;
  t->bl_.reset(new ByteLevelModel());
  ByteLevelModel& m = *t->bl_;
  m.pattern = pattern;
  m.whole_chunk_first = true;
  m.use_merge_list = false;
  m.flush_on_special = true;
  m.num_special = int32_t(num_special);
  t->pieces_.resize(size_t(vocab_size));
  t->types_.assign(size_t(vocab_size), PieceType::Normal);
  m.bytes.resize(size_t(vocab_size));

  // Special tokens.
  std::vector<std::string> specials;
  auto sp_it = j.find("special_tokens");
  if (sp_it != j.end() && !sp_it->is_null()) {
    if (!sp_it->is_array()) bad(path, "special_tokens is not an array");
    for (size_t i = 0; i < sp_it->size(); ++i) {
      const json& s = (*sp_it)[i];
      if (!s.is_object() || !s.contains("rank") || !s["rank"].is_number_integer() || !s.contains("token_str") ||
          !s["token_str"].is_string())
        bad(path, "special_tokens[" + std::to_string(i) + "] needs an integer rank and a string token_str");
      if (s["rank"].get<int64_t>() != int64_t(i))
        bad(path, "special_tokens[" + std::to_string(i) + "] has rank " + s["rank"].dump());
      specials.push_back(s["token_str"].get<std::string>());
    }
  } else {
    if (version > 7) bad(path, "no special_tokens (required for version v" + std::to_string(version) + ")");
    specials.assign(std::begin(kDefaultSpecials), std::end(kDefaultSpecials));
  }
  if (int64_t(specials.size()) > num_special)
    bad(path, std::to_string(specials.size()) + " special tokens but default_num_special_tokens is " +
                  std::to_string(num_special));
  for (int64_t i = int64_t(specials.size()); i < num_special; ++i) specials.push_back("<SPECIAL_" + std::to_string(i) + ">");
  {
    tok::StrMap seen;
    seen.reserve(specials.size());
    for (size_t i = 0; i < specials.size(); ++i) {
      if (!seen.insert(specials[i], int32_t(i))) bad(path, "special token " + specials[i] + " appears twice");
      t->pieces_[i] = specials[i];
      t->types_[i] = PieceType::Control;
    }
    t->unk_ = seen.find("<unk>");
    t->bos_ = seen.find("<s>");
    t->eos_ = seen.find("</s>");
  }

  // Ordinary tokens.
  m.vocab.reserve(size_t(inner));
  std::string bytes;
  for (int64_t r = 0; r < inner; ++r) {
    const json& e = vocab[size_t(r)];
    if (!e.is_object()) bad(path, "vocab[" + std::to_string(r) + "] is not an object");
    auto rk = e.find("rank");
    auto tb = e.find("token_bytes");
    if (rk == e.end() || !rk->is_number_integer() || rk->get<int64_t>() != r)
      bad(path, "vocab[" + std::to_string(r) + "] does not have rank " + std::to_string(r));
    if (tb == e.end() || !tb->is_string() || !tok::base64_decode(tb->get_ref<const std::string&>(), &bytes) ||
        bytes.empty())
      bad(path, "vocab[" + std::to_string(r) + "].token_bytes is not non-empty base64");
    if (r < 256 && (bytes.size() != 1 || uint8_t(bytes[0]) != r))
      bad(path, "vocab[" + std::to_string(r) + "] must be the single byte " + std::to_string(r));
    const int32_t id = int32_t(num_special + r);
    if (!m.vocab.insert(bytes, id)) bad(path, "vocab[" + std::to_string(r) + "] repeats the bytes of another token");
    if (r < 256) m.byte_id[r] = id;
    t->pieces_[size_t(id)] = bytes;
    m.bytes[size_t(id)] = bytes;
  }
  t->byte_fallback_ = false;
  t->add_dummy_prefix_ = false;
  return t;
}

std::vector<int32_t> Tokenizer::encode_byte_level(const std::string& text_in, bool add_bos) const {
  const ByteLevelModel& m = *bl_;
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  std::string fixed;
  const std::string* text = &text_in;
  if (!tok::utf8_is_valid(text_in)) {
    fixed = tok::utf8_sanitize_maximal(text_in);
    text = &fixed;
  }
  if (m.add_prefix_space && !text->empty() && (*text)[0] != ' ') {
    fixed = " " + *text;
    text = &fixed;
  }
  if (text->empty()) return out;
  thread_local std::vector<uint32_t> ends;
  thread_local std::vector<Part> parts;
  ends.clear();
  tok::pretokenize(m.pattern, *text, &ends, m.digits);
  out.reserve(out.size() + text->size() / 3);
  uint32_t start = 0;
  for (uint32_t end : ends) {
    const char* s = text->data() + start;
    const uint32_t len = end - start;
    start = end;
    if (len == 1 && m.byte_id[uint8_t(*s)] >= 0) {
      out.push_back(m.byte_id[uint8_t(*s)]);
      continue;
    }
    if (m.whole_chunk_first) {
      const int32_t id = m.vocab.find(s, len);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
    }
    const PairRank pr{m, s};
    initial_parts(m, unk_, s, len, parts);
    if (parts.size() <= 64) merge_small(pr, parts, &out);
    else merge_large(pr, parts, &out);
  }
  return out;
}

}  // namespace mistral
