// Tekken (tekken.json) parity with mistral-common: the ids and decodes recorded by
// tools/gen_tekken_fixtures.py in tests/data/tekken_cases.json, using the real tekken files shipped in
// the installed mistral-common package; streaming; corrupt files.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "mistral/error.h"
#include "mistral/tokenizer.h"
#include "test_util.h"

using namespace mistral;
using json = nlohmann::json;

namespace {

// mistral-common's data directory: $MISTRAL_COMMON_DATA, else asked from python3. "" if not installed.
std::string mistral_common_data() {
  static const std::string dir = [] {
    if (const char* e = std::getenv("MISTRAL_COMMON_DATA")) return std::string(e);
    std::string out;
    FILE* p = ::popen("python3 -c 'import mistral_common, os; print(os.path.dirname(mistral_common.__file__))' "
                      "2>/dev/null",
                      "r");
    if (!p) return out;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    ::pclose(p);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out.empty() ? out : out + "/data";
  }();
  return dir;
}

#define REQUIRE_MISTRAL_COMMON(file)                                                                     \
  const std::string tekken_path = mistral_common_data() + "/" + (file);                                 \
  if (mistral_common_data().empty() || !testutil::exists(tekken_path))                                  \
  GTEST_SKIP() << "mistral-common is not installed (python3 -m pip install mistral-common), so " << (file) \
               << " is not available"

const json& fixtures() {
  static const json j = json::parse(testutil::read_file(testutil::source_path("tests/data/tekken_cases.json")));
  return j;
}

const json& fixture_for(const std::string& file) {
  for (const json& t : fixtures()["tokenizers"])
    if (t["file"] == file) return t;
  throw std::runtime_error("no fixtures for " + file);
}

std::string printable(const std::string& s) { return json(s).dump(-1, ' ', true, json::error_handler_t::replace); }

std::string from_hex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(char(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

// Streaming decode equals one-shot decode and never emits part of a character.
void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids, const std::string& want) {
  StreamDecoder d(tok);
  std::string s;
  for (int32_t id : ids) {
    const std::string part = d.push(id);
    EXPECT_EQ(utf8_sanitize(part), part) << "partial UTF-8 emitted";
    s += part;
  }
  s += d.flush();
  EXPECT_EQ(s, want);
}

void check_file(const std::string& file) {
  REQUIRE_MISTRAL_COMMON(file);
  const json& fx = fixture_for(file);
  auto tok = Tokenizer::load_tekken(tekken_path);
  EXPECT_EQ(tok->kind(), TokenizerKind::Tekken);
  EXPECT_EQ(tok->vocab_size(), fx["vocab_size"].get<int>());
  EXPECT_EQ(tok->bos_id(), fx["bos_id"].get<int>());
  EXPECT_EQ(tok->eos_id(), fx["eos_id"].get<int>());
  int mismatches = 0, n = 0;
  for (const json& c : fx["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = tok->encode(text, false);
    if (got != want && mismatches++ < 10) ADD_FAILURE() << "encode differs for " << printable(text);
    const std::string dec = c.contains("decoded") ? c["decoded"].get<std::string>() : text;
    EXPECT_EQ(tok->decode(want), dec) << printable(text);
    check_stream(*tok, want, dec);
    // add_bos prepends <s>
    auto with_bos = tok->encode(text, true);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos[0], tok->bos_id());
    ++n;
  }
  EXPECT_EQ(mismatches, 0) << "of " << n;
  EXPECT_GE(n, file == "tekken_240911.json" ? 1000 : 100);
  for (const json& c : fx["invalid_utf8"]) {
    const std::string bytes = from_hex(c["hex"].get<std::string>());
    EXPECT_EQ(tok->encode(bytes, false), c["ids"].get<std::vector<int32_t>>()) << c["hex"];
  }
  for (const json& c : fx["decode"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids), c["text"].get<std::string>()) << json(ids).dump();
    check_stream(*tok, ids, c["text"].get<std::string>());
  }
}

TEST(TokenizerTekken, MatchesMistralCommon240911) { check_file("tekken_240911.json"); }
TEST(TokenizerTekken, MatchesMistralCommon240718) { check_file("tekken_240718.json"); }

TEST(TokenizerTekken, SpecialTokensAndPieces) {
  REQUIRE_MISTRAL_COMMON("tekken_240911.json");
  auto tok = Tokenizer::load_tekken(tekken_path);
  EXPECT_EQ(tok->piece(3), "[INST]");
  EXPECT_EQ(tok->type(3), PieceType::Control);
  EXPECT_EQ(tok->piece(999), "<SPECIAL_999>");
  EXPECT_EQ(tok->piece(1000 + 'A'), "A");  // rank 65 is the byte 'A'
  EXPECT_EQ(tok->unk_id(), 0);
  // A typed "[INST]" is text.
  for (int32_t id : tok->encode("[INST] hi [/INST]</s>", true)) EXPECT_TRUE(id == 1 || id >= 1000) << id;
  // Special tokens vanish in decode; each run between them is decoded on its own (as mistral-common).
  EXPECT_EQ(tok->decode({1, 22177, 3, 4304, 2}), "Hello world");
  // f0 9f: one truncated sequence, one U+FFFD; a6, 99: two stray continuation bytes.
  EXPECT_EQ(tok->decode({1000 + 0xf0, 1000 + 0x9f, 3, 1000 + 0xa6, 1000 + 0x99}),
            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(tok->decode({1000 + 0xf0, 1000 + 0x9f, 1000 + 0xa6, 1000 + 0x99}), "\xf0\x9f\xa6\x99");
  EXPECT_THROW(tok->decode({131072}), UsageError);
  EXPECT_THROW(tok->decode({-1}), UsageError);
}

TEST(TokenizerTekken, LoadDirPrefersTekkenJson) {
  REQUIRE_MISTRAL_COMMON("tekken_240911.json");
  testutil::TempDir td;
  testutil::write_file(td.file("tekken.json"), testutil::read_file(tekken_path));
  const std::string v1 = testutil::shared_data("tokenizers/mistral-v0.1/tokenizer.model");
  if (testutil::exists(v1)) testutil::write_file(td.file("tokenizer.model"), testutil::read_file(v1));
  auto tok = Tokenizer::load_dir(td.path());
  EXPECT_EQ(tok->kind(), TokenizerKind::Tekken);
  EXPECT_EQ(tok->source(), td.file("tekken.json"));
}

TEST(TokenizerTekken, CorruptFilesGiveErrors) {
  testutil::TempDir td;
  auto expect_error = [&](const std::string& text, const std::string& what) {
    testutil::write_file(td.file("t.json"), text);
    try {
      Tokenizer::load_tekken(td.file("t.json"));
      ADD_FAILURE() << "loaded: " << what;
    } catch (const FileError& e) {
      EXPECT_NE(std::string(e.what()).find(td.file("t.json")), std::string::npos) << e.what();
    }
  };
  // A tiny valid file: 256 byte tokens plus "ab", 3 special tokens.
  json vocab = json::array();
  const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  auto enc = [&](const std::string& s) {
    std::string o;
    size_t i = 0;
    for (; i + 2 < s.size(); i += 3) {
      const uint32_t v = uint32_t(uint8_t(s[i])) << 16 | uint32_t(uint8_t(s[i + 1])) << 8 | uint8_t(s[i + 2]);
      o += {b64[v >> 18], b64[(v >> 12) & 63], b64[(v >> 6) & 63], b64[v & 63]};
    }
    if (s.size() - i == 1) {
      const uint32_t v = uint32_t(uint8_t(s[i])) << 16;
      o += {b64[v >> 18], b64[(v >> 12) & 63], '=', '='};
    } else if (s.size() - i == 2) {
      const uint32_t v = uint32_t(uint8_t(s[i])) << 16 | uint32_t(uint8_t(s[i + 1])) << 8;
      o += {b64[v >> 18], b64[(v >> 12) & 63], b64[(v >> 6) & 63], '='};
    }
    return o;
  };
  for (int i = 0; i < 256; ++i) vocab.push_back({{"rank", i}, {"token_bytes", enc(std::string(1, char(i)))}, {"token_str", nullptr}});
  vocab.push_back({{"rank", 256}, {"token_bytes", enc("ab")}, {"token_str", "ab"}});
  const std::string pattern =
      R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json good = {{"config",
                {{"pattern", pattern}, {"default_vocab_size", 260}, {"default_num_special_tokens", 3}, {"version", "v13"},
                 {"num_vocab_tokens", 257}}},
               {"vocab", vocab},
               {"special_tokens",
                {{{"rank", 0}, {"token_str", "<unk>"}, {"is_control", true}},
                 {{"rank", 1}, {"token_str", "<s>"}, {"is_control", true}},
                 {{"rank", 2}, {"token_str", "</s>"}, {"is_control", true}}}}};
  testutil::write_file(td.file("good.json"), good.dump());
  auto tok = Tokenizer::load_tekken(td.file("good.json"));
  EXPECT_EQ(tok->vocab_size(), 260);
  EXPECT_EQ(tok->encode("abab", true), (std::vector<int32_t>{1, 259, 259}));  // one chunk: ab + ab

  expect_error("", "empty");
  expect_error("{not json", "bad JSON");
  expect_error("[]", "not an object");
  expect_error("{}", "no config");
  json j = good;
  j["config"]["pattern"] = "\\s+";
  expect_error(j.dump(), "unknown pattern");
  j = good;
  j["config"].erase("default_vocab_size");
  expect_error(j.dump(), "no vocab size");
  j = good;
  j["config"]["default_vocab_size"] = 1000;
  expect_error(j.dump(), "vocab shorter than vocab size");
  j = good;
  j["config"]["default_num_special_tokens"] = -1;
  expect_error(j.dump(), "negative specials");
  j = good;
  j["config"]["default_num_special_tokens"] = 2;
  expect_error(j.dump(), "more special tokens than the count");
  j = good;
  j["vocab"][5]["token_bytes"] = "!!";
  expect_error(j.dump(), "bad base64");
  j = good;
  j["vocab"][5]["token_bytes"] = enc("x");
  expect_error(j.dump(), "byte token with the wrong byte");
  j = good;
  j["vocab"][256]["token_bytes"] = enc("a");
  expect_error(j.dump(), "duplicate bytes");
  j = good;
  j["vocab"][256]["rank"] = 7;
  expect_error(j.dump(), "rank out of order");
  j = good;
  j["special_tokens"][1]["token_str"] = "<unk>";
  expect_error(j.dump(), "duplicate special");
  j = good;
  j.erase("special_tokens");
  expect_error(j.dump(), "v13 without special tokens");
  j["config"]["version"] = "v3";  // older files use mistral-common's built-in list (20 tokens)
  j["config"]["default_num_special_tokens"] = 20;
  j["config"]["default_vocab_size"] = 277;
  testutil::write_file(td.file("old.json"), j.dump());
  EXPECT_EQ(Tokenizer::load_tekken(td.file("old.json"))->piece(3), "[INST]");
  j["config"]["version"] = 3;
  expect_error(j.dump(), "version not a string");
  EXPECT_THROW(Tokenizer::load_tekken(td.file("absent.json")), FileError);
}

}  // namespace
