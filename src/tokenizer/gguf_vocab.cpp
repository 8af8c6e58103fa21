// Tokenizer and chat template from a GGUF file's metadata (tokenizer.ggml.*, tokenizer.chat_template).
//
// Uses only the public Tokenizer loaders: the vocabulary is written out in a file format they read, in a
// private temporary directory that is removed right after loading:
//  - tokenizer.ggml.model "llama": a SentencePiece ModelProto (pieces with their scores and token types,
//    BPE, byte fallback when the vocabulary has byte pieces, add_dummy_prefix from
//    tokenizer.ggml.add_space_prefix) for Tokenizer::load_sentencepiece;
//  - "gpt2": a byte-level BPE tokenizer.json (vocab, merges, the pre-tokenizer that tokenizer.ggml.pre
//    names, control tokens as special added tokens, BOS through a TemplateProcessing post-processor when
//    tokenizer.ggml.add_bos_token) plus a tokenizer_config.json naming the EOS, for Tokenizer::load_hf_json.
// A Tokenizer::from_vocab(...) in tokenizer.h would make the round trip through files unnecessary.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mistral/chat.h"
#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/tokenizer.h"

namespace mistral {

using json = nlohmann::json;

namespace {

// The pre-tokenizer regexes that Tokenizer's byte-level loader implements (tokenizers' spelling).
const char kLlama3Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char kTekkenRegex[] =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A temporary directory removed (with the files we put there) on destruction.
struct ScratchDir {
  std::string path;
  std::vector<std::string> files;
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/mistral-run-gguf-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) throw FileError("cannot create a temporary directory under " + tmpl);
    path = buf.data();
  }
  ~ScratchDir() {
    for (const auto& f : files) ::unlink(f.c_str());
    ::rmdir(path.c_str());
  }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string p = path + "/" + name;
    files.push_back(p);
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    if (!out) throw FileError(p + ": cannot write");
    return p;
  }
};

// ---- protobuf writer (SentencePiece ModelProto) ------------------------------------------------------

void pb_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}
void pb_key(std::string& out, uint32_t field, uint32_t wire) { pb_varint(out, uint64_t(field) << 3 | wire); }
void pb_bytes(std::string& out, uint32_t field, const std::string& b) {
  pb_key(out, field, 2);
  pb_varint(out, b.size());
  out += b;
}
void pb_int(std::string& out, uint32_t field, int64_t v) {
  pb_key(out, field, 0);
  pb_varint(out, uint64_t(v));  // negative int32 values take 10 bytes, as protobuf encodes them
}
void pb_float(std::string& out, uint32_t field, float f) {
  pb_key(out, field, 5);
  char b[4];
  std::memcpy(b, &f, 4);
  out.append(b, 4);
}

const std::vector<std::string>& tokens_of(const GgufFile& f) {
  const GgufValue* v = f.find("tokenizer.ggml.tokens");
  if (!v) throw ConfigError(f.path() + ": no tokenizer.ggml.tokens metadata (the file carries no vocabulary)");
  if (v->type != GgufType::Array || v->elem != GgufType::String)
    throw ConfigError(f.path() + ": tokenizer.ggml.tokens must be an array of strings, got " + v->describe());
  if (v->strs.empty()) throw ConfigError(f.path() + ": tokenizer.ggml.tokens is empty");
  return v->strs;
}

// A per-token numeric array (scores, token_type) of the vocabulary's length, or empty when absent.
std::vector<double> per_token(const GgufFile& f, const std::string& key, size_t n) {
  const GgufValue* v = f.find(key);
  if (!v) return {};
  if (v->type != GgufType::Array || v->nums.size() != n)
    throw ConfigError(f.path() + ": " + key + " must be a numeric array of " + std::to_string(n) + " entries, got " +
                      v->describe());
  return v->nums;
}

int64_t token_id(const GgufFile& f, const std::string& key, size_t n) {
  int64_t id = -1;
  if (!f.get_int(key, &id)) return -1;
  if (id < 0 || uint64_t(id) >= n)
    throw ConfigError(f.path() + ": " + key + " " + std::to_string(id) + " is outside the vocabulary of " +
                      std::to_string(n) + " tokens");
  return id;
}

std::string sentencepiece_model(const GgufFile& f) {
  const auto& tokens = tokens_of(f);
  const size_t n = tokens.size();
  const std::vector<double> scores = per_token(f, "tokenizer.ggml.scores", n);
  const std::vector<double> types = per_token(f, "tokenizer.ggml.token_type", n);
  std::string out;
  bool byte_pieces = false;
  for (size_t k = 0; k < n; ++k) {
    int type = types.empty() ? 1 : int(types[k]);
    if (type < 1 || type > 6)
      throw ConfigError(f.path() + ": tokenizer.ggml.token_type[" + std::to_string(k) + "] = " + std::to_string(type) +
                        " is not a SentencePiece piece type (1..6)");
    byte_pieces = byte_pieces || type == 6;
    std::string piece;
    pb_bytes(piece, 1, tokens[k]);
    pb_float(piece, 2, scores.empty() ? 0.0f : float(scores[k]));
    pb_int(piece, 3, type);
    pb_bytes(out, 1, piece);
  }
  std::string trainer;
  pb_int(trainer, 3, 2);  // model_type BPE
  pb_int(trainer, 35, byte_pieces ? 1 : 0);
  pb_int(trainer, 40, token_id(f, "tokenizer.ggml.unknown_token_id", n));
  pb_int(trainer, 41, token_id(f, "tokenizer.ggml.bos_token_id", n));
  pb_int(trainer, 42, token_id(f, "tokenizer.ggml.eos_token_id", n));
  pb_bytes(out, 2, trainer);
  bool add_space = true;
  f.get_bool("tokenizer.ggml.add_space_prefix", &add_space);
  std::string norm;
  pb_bytes(norm, 1, "identity");
  pb_int(norm, 3, add_space ? 1 : 0);
  pb_int(norm, 4, 0);  // remove_extra_whitespaces: llama.cpp keeps whitespace as it is
  pb_bytes(out, 3, norm);
  return out;
}

json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json split(const char* regex) {
  return {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
}

// tokenizer.json and tokenizer_config.json texts for a GPT-2-style vocabulary.
std::pair<std::string, std::string> byte_level_json(const GgufFile& f) {
  const auto& tokens = tokens_of(f);
  const size_t n = tokens.size();
  const std::vector<double> types = per_token(f, "tokenizer.ggml.token_type", n);
  const GgufValue* merges = f.find("tokenizer.ggml.merges");
  if (!merges || merges->type != GgufType::Array || merges->elem != GgufType::String)
    throw ConfigError(f.path() + ": a gpt2 tokenizer needs tokenizer.ggml.merges (an array of strings)");
  std::string pre = "default";
  f.get_string("tokenizer.ggml.pre", &pre);
  // llama.cpp's pre-tokenizer names (llama-vocab.cpp) and the tokenizers pipelines they stand for.
  json pt;
  bool ignore_merges = false;
  if (pre == "default" || pre == "gpt2" || pre == "gpt-2") {
    pt = byte_level(true);
  } else if (pre == "smollm") {  // SmolLM/SmolLM2: digits split one by one, then GPT-2's regex
    pt = {{"type", "Sequence"},
          {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
  } else if (pre == "llama-bpe" || pre == "llama3") {
    pt = {{"type", "Sequence"}, {"pretokenizers", {split(kLlama3Regex), byte_level(false)}}};
    ignore_merges = true;
  } else if (pre == "tekken") {
    pt = {{"type", "Sequence"}, {"pretokenizers", {split(kTekkenRegex), byte_level(false)}}};
    ignore_merges = true;
  } else {
    throw ConfigError(f.path() + ": tokenizer.ggml.pre '" + pre +
                      "' is not supported (default, gpt2, smollm, llama-bpe, tekken are)");
  }
  json vocab = json::object();
  json added = json::array();
  for (size_t k = 0; k < n; ++k) {
    if (!vocab.contains(tokens[k])) vocab[tokens[k]] = k;
    const int type = types.empty() ? 1 : int(types[k]);
    if (type == 3 || type == 4)  // control / user-defined: added tokens (control ones special)
      added.push_back({{"id", k}, {"content", tokens[k]}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", type == 4}, {"special", type == 3}});
  }
  const json merge_list(merges->strs);
  bool add_bos = false;
  f.get_bool("tokenizer.ggml.add_bos_token", &add_bos);
  const int64_t bos = token_id(f, "tokenizer.ggml.bos_token_id", n);
  const int64_t eos = token_id(f, "tokenizer.ggml.eos_token_id", n);
  json post = nullptr;
  if (add_bos && bos >= 0) {
    const std::string b = tokens[size_t(bos)];
    post = {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair", {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                      {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{b, {{"id", b}, {"ids", {bos}}, {"tokens", {b}}}}}}};
  }
  json tj = {{"version", "1.0"},
             {"truncation", nullptr},
             {"padding", nullptr},
             {"added_tokens", added},
             {"normalizer", nullptr},
             {"pre_tokenizer", pt},
             {"post_processor", post},
             {"decoder", byte_level(true)},
             {"model",
              {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
               {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
               {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merge_list}}}};
  json cfg = json::object();
  if (eos >= 0) cfg["eos_token"] = tokens[size_t(eos)];
  if (bos >= 0) cfg["bos_token"] = tokens[size_t(bos)];
  return {tj.dump(-1, ' ', false, json::error_handler_t::replace), cfg.dump(-1, ' ', false, json::error_handler_t::replace)};
}

}  // namespace

std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufFile& f) {
  std::string model;
  if (!f.get_string("tokenizer.ggml.model", &model))
    throw ConfigError(f.path() + ": no tokenizer.ggml.model metadata (the file carries no tokenizer)");
  ScratchDir dir;
  const std::string source = f.path() + " (tokenizer.ggml.model " + model + ")";
  try {
    std::unique_ptr<Tokenizer> t;
    if (model == "llama") t = Tokenizer::load_sentencepiece(dir.write("tokenizer.model", sentencepiece_model(f)));
    if (model == "gpt2") {
      const auto texts = byte_level_json(f);
      dir.write("tokenizer_config.json", texts.second);
      t = Tokenizer::load_hf_json(dir.write("tokenizer.json", texts.first));
    }
    if (t) {  // the temporary files are gone once we return: name the GGUF file
      t->set_source(source);
      return t;
    }
  } catch (const FileError& e) {  // name the GGUF file, not the temporary one
    std::string m = e.what();
    if (m.compare(0, dir.path.size(), dir.path) == 0) m = m.substr(dir.path.size() + 1);
    throw FileError(f.path() + ": tokenizer metadata (" + model + "): " + m);
  }
  throw ConfigError(f.path() + ": tokenizer.ggml.model '" + model + "' is not supported (llama and gpt2 are)");
}

std::unique_ptr<Tokenizer> gguf_tokenizer(const std::string& path) {
  GgufFile f(path);
  return gguf_tokenizer(f);
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& path) {
  if (is_gguf_file(path)) return gguf_tokenizer(path);
  return Tokenizer::load_dir(path);
}

ChatTemplateInfo gguf_chat_template_info(const std::string& path) {
  GgufFile f(path);
  ChatTemplateInfo info;
  if (f.get_string("tokenizer.chat_template", &info.chat_template)) info.source = path + " (tokenizer.chat_template)";
  return info;
}

}  // namespace mistral
