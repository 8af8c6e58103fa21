// Our BPE tokenizer, in three flavours sharing one interface:
//  - SentencePiece: byte-fallback BPE with SentencePiece semantics, from tokenizer.model (protobuf) or a
//    SentencePiece-style tokenizer.json;
//  - Tekken: tiktoken-style byte-level BPE from mistral-common's tekken.json (Mistral-Nemo and later);
//  - ByteLevel: GPT-2-style byte-level BPE tokenizer.json (GPT-2 / Llama-3 / tekken regex pre-tokenizers).
// And a streaming decoder that only emits complete UTF-8 characters.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mistral {

enum class PieceType : uint8_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };
enum class TokenizerKind : uint8_t { SentencePiece, Tekken, ByteLevel };

namespace tok {
struct ByteLevelModel;  // src/tokenizer/internal.h
struct SpModel;
struct Build;
}

class Tokenizer {
 public:
  // Searches a model directory, taking the first file present: tekken.json, tokenizer.model,
  // tokenizer.model.v7, .v3, .v2, .v1, tokenizer.json.
  static std::unique_ptr<Tokenizer> load_dir(const std::string& dir);
  static std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path);  // protobuf ModelProto
  // tokenizers' JSON: SentencePiece-style (Metaspace / Prepend+Replace, byte fallback) or byte-level BPE.
  static std::unique_ptr<Tokenizer> load_hf_json(const std::string& path);
  static std::unique_ptr<Tokenizer> load_tekken(const std::string& path);  // mistral-common tekken.json
  ~Tokenizer();

  // Text to ids. Special and control tokens are never produced from text. Invalid UTF-8 input is
  // replaced first: SentencePiece kind, each bad byte becomes U+FFFD (as SentencePiece does); byte-level
  // kinds, each maximal ill-formed subpart becomes U+FFFD (as Python's decode(errors="replace")).
  // add_bos prepends bos_id() when there is one (byte-level tokenizer.json: only if its post-processor
  // adds a BOS).
  std::vector<int32_t> encode(const std::string& text, bool add_bos) const;
  // SentencePiece decode: control tokens vanish, byte pieces are joined before UTF-8 decoding
  // (invalid bytes become U+FFFD), and the first text piece loses its leading space.
  // Tekken (as mistral-common): special tokens vanish, each run of ordinary tokens is joined and decoded
  // with maximal-subpart U+FFFD replacement. ByteLevel (as tokenizers with skip_special_tokens): the
  // same over all non-special tokens together.
  std::string decode(const std::vector<int32_t>& ids) const;

  int vocab_size() const { return int(pieces_.size()); }
  const std::string& piece(int id) const { return pieces_.at(size_t(id)); }
  PieceType type(int id) const { return types_.at(size_t(id)); }
  int bos_id() const { return bos_; }
  int eos_id() const { return eos_; }
  int unk_id() const { return unk_; }
  const std::string& source() const { return source_; }  // the file it came from
  void set_source(std::string s) { source_ = std::move(s); }
  TokenizerKind kind() const { return kind_; }
  // Raw bytes of one piece ('▁' as a space, byte pieces as their byte); controls give "".
  std::string piece_bytes(int id) const;

 private:
  Tokenizer();
  void finish_load();
  int byte_id(uint8_t b) const { return byte_ids_[b]; }
  std::vector<int32_t> encode_byte_level(const std::string& text, bool add_bos) const;
  friend struct tok::Build;

  uint64_t uid_ = 0;  // unique per instance (keys the encoder's per-thread cache)
  TokenizerKind kind_ = TokenizerKind::SentencePiece;
  std::unique_ptr<tok::ByteLevelModel> bl_;  // byte-level kinds only

  std::string source_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<PieceType> types_;
  std::unique_ptr<tok::SpModel> sp_;  // SentencePiece kind: piece index for the encoder
  std::unordered_map<uint64_t, std::pair<float, int32_t>> merges_;  // HF: (left,right) -> (priority, id)
  bool use_merges_ = false;  // HF merges list instead of SentencePiece scores
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = false;
  bool byte_fallback_ = true;
  int byte_ids_[256];
  int bos_ = 1, eos_ = 2, unk_ = 0;
  friend class StreamDecoder;
};

// Incremental decode for streaming. The concatenation of every push() and the final flush() equals
// Tokenizer::decode of all ids pushed, byte for byte; no output ends inside a UTF-8 character.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string flush();  // whatever is pending, incomplete sequences replaced by U+FFFD
  void reset() { pending_.clear(), started_ = false; }

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool started_ = false;
};

// Replaces invalid UTF-8 as SentencePiece does (each bad byte becomes U+FFFD). If `complete_only`,
// a truncated sequence at the end is left in *rest instead.
std::string utf8_sanitize(const std::string& in, bool complete_only = false, std::string* rest = nullptr);

}  // namespace mistral
