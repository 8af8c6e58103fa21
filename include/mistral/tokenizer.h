// Byte-fallback BPE tokenizer (SentencePiece semantics) loaded from tokenizer.model or tokenizer.json,
// and a streaming decoder that only emits complete UTF-8 characters.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace mistral {

enum class PieceType : uint8_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

class Tokenizer {
 public:
  // Searches a model directory: tokenizer.model, tokenizer.model.v3/.v2/.v1, then tokenizer.json.
  static std::unique_ptr<Tokenizer> load_dir(const std::string& dir);
  static std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path);  // protobuf ModelProto
  static std::unique_ptr<Tokenizer> load_hf_json(const std::string& path);        // tokenizers' JSON

  std::vector<int32_t> encode(const std::string& text, bool add_bos) const;
  // SentencePiece decode: control tokens vanish, byte pieces are joined before UTF-8 decoding
  // (invalid bytes become U+FFFD), and the first text piece loses its leading space.
  std::string decode(const std::vector<int32_t>& ids) const;

  int vocab_size() const { return int(pieces_.size()); }
  const std::string& piece(int id) const { return pieces_.at(size_t(id)); }
  PieceType type(int id) const { return types_.at(size_t(id)); }
  int bos_id() const { return bos_; }
  int eos_id() const { return eos_; }
  int unk_id() const { return unk_; }
  const std::string& source() const { return source_; }  // the file it came from
  // Raw bytes of one piece ('▁' as a space, byte pieces as their byte); controls give "".
  std::string piece_bytes(int id) const;

 private:
  Tokenizer() = default;
  void finish_load();
  int byte_id(uint8_t b) const { return byte_ids_[b]; }

  std::string source_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<PieceType> types_;
  std::unordered_map<std::string, int32_t> normal_;  // text pieces (normal + user-defined) -> id
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
