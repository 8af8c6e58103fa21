// GPT-2-style byte-level BPE tokenizer.json: small tokenizers trained with Hugging Face tokenizers by
// tools/gen_bytelevel_fixtures.py (GPT-2 regex with and without add_prefix_space, SmolLM's Digits +
// ByteLevel, Llama-3's Split + ignore_merges, Mistral-Nemo's tekken Split, vocabularies lacking some
// byte tokens with and without <unk>), and the ids tokenizers produced for a shared corpus
// (tests/data/bytelevel/).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "mistral/error.h"
#include "mistral/tokenizer.h"
#include "test_util.h"

using namespace mistral;
using json = nlohmann::json;

namespace {

std::string data_dir() { return testutil::source_path("tests/data/bytelevel"); }

const json& cases() {
  static const json j = json::parse(testutil::read_file(data_dir() + "/cases.json"));
  return j;
}

std::string printable(const std::string& s) { return json(s).dump(-1, ' ', true, json::error_handler_t::replace); }

class TokenizerByteLevel : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerByteLevel, MatchesHuggingFaceTokenizers) {
  const std::string name = GetParam();
  auto tok = Tokenizer::load_hf_json(data_dir() + "/" + name + ".json");
  EXPECT_EQ(tok->kind(), TokenizerKind::ByteLevel);
  const json& info = cases()["tokenizers"][name];
  EXPECT_EQ(tok->vocab_size(), info["vocab_size"].get<int>());
  EXPECT_EQ(tok->bos_id(), info["bos_id"].get<int>());
  EXPECT_EQ(tok->eos_id(), info["eos_id"].get<int>());
  const json& texts = cases()["texts"];
  const json& ids = cases()["ids"][name];
  ASSERT_EQ(texts.size(), ids.size());
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    const auto want = ids[i].get<std::vector<int32_t>>();
    const auto got = tok->encode(text, false);
    if (got != want && mismatches++ < 10) ADD_FAILURE() << name << ": encode differs for " << printable(text);
    // Byte-level BPE is lossless (add_prefix_space adds its space).
    const bool prefixed = name == "gpt2_prefix_space" && !text.empty() && text[0] != ' ';
    if (name.compare(0, 13, "missing_bytes") != 0) EXPECT_EQ(tok->decode(got), prefixed ? " " + text : text);
  }
  EXPECT_EQ(mismatches, 0) << "of " << texts.size();
  const json& with_bos = cases()["ids_with_bos"][name];
  for (size_t i = 0; i < with_bos.size(); ++i)
    EXPECT_EQ(tok->encode(texts[i].get<std::string>(), true), with_bos[i].get<std::vector<int32_t>>())
        << printable(texts[i].get<std::string>());
  for (const json& c : cases()["decode"][name]) {
    const auto seq = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(seq), c["text"].get<std::string>()) << json(seq).dump();
    StreamDecoder d(*tok);
    std::string s;
    for (int32_t id : seq) {
      const std::string part = d.push(id);
      EXPECT_EQ(utf8_sanitize(part), part);
      s += part;
    }
    EXPECT_EQ(s + d.flush(), c["text"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(TokenizerTrained, TokenizerByteLevel,
                         ::testing::Values("gpt2", "gpt2_prefix_space", "smollm", "llama3", "nemo", "missing_bytes",
                                           "missing_bytes_unk"));

TEST(TokenizerByteLevelFiles, LoadDirAndTokenizerConfig) {
  testutil::TempDir td;
  testutil::write_file(td.file("tokenizer.json"), testutil::read_file(data_dir() + "/smollm.json"));
  testutil::write_file(td.file("tokenizer_config.json"), R"({"eos_token": {"content": "<|im_end|>"}})");
  auto tok = Tokenizer::load_dir(td.path());
  EXPECT_EQ(tok->kind(), TokenizerKind::ByteLevel);
  EXPECT_EQ(tok->eos_id(), 2);  // <|im_end|> is the third special token
  EXPECT_EQ(tok->type(0), PieceType::Control);
  EXPECT_EQ(tok->piece(0), "<|endoftext|>");
  // Special-token text is never a special id.
  for (int32_t id : tok->encode("<|im_start|>user<|im_end|>", true)) EXPECT_GE(id, 3);
}

TEST(TokenizerByteLevelFiles, UnsupportedOrCorrupt) {
  testutil::TempDir td;
  const json good = json::parse(testutil::read_file(data_dir() + "/llama3.json"));
  auto expect_error = [&](const json& j, const std::string& what) {
    testutil::write_file(td.file("t.json"), j.dump());
    EXPECT_THROW(Tokenizer::load_hf_json(td.file("t.json")), FileError) << what;
  };
  json j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  expect_error(j, "unknown regex");
  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  expect_error(j, "Split behaviour");
  j = good;
  j["normalizer"] = {{"type", "NFC"}};
  expect_error(j, "normalizer");
  j = good;
  j["model"]["merges"][0] = json::array({"nope", "nothere"});
  expect_error(j, "merge outside the vocabulary");
  j = good;
  j["model"]["dropout"] = 0.1;
  expect_error(j, "dropout");
  j = good;
  j["model"]["vocab"]["x"] = -4;
  expect_error(j, "negative id");
  j = good;
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  j["decoder"] = {{"type", "ByteLevel"}};
  expect_error(j, "unsupported pre-tokenizer");
  j = good;
  j["model"].erase("merges");
  expect_error(j, "no merges");
}

}  // namespace
