// Tokenizer parity: the shared test vectors (SentencePiece oracle and published ids), a corpus of 10,000
// strings (scripts, random code points, controls, whitespace runs, invalid UTF-8) and a 1 MB string
// without spaces against Debian's libsentencepiece for v1 and v3, round trips, streaming decode, and
// corrupt files.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "mistral/error.h"
#include "mistral/tokenizer.h"
#include "test_util.h"

#ifdef MISTRAL_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

using namespace mistral;
using json = nlohmann::json;

namespace {

std::string v1_dir() { return testutil::shared_data("tokenizers/mistral-v0.1"); }

#define REQUIRE_SHARED(path) \
  if (!testutil::exists(path)) GTEST_SKIP() << path << " is not present"

void check_vectors(const Tokenizer& tok) {
  json v = json::parse(testutil::read_file(v1_dir() + "/test_vectors.json"));
  int n = 0;
  for (const json& c : v["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = tok.encode(text, c["add_bos"].get<bool>());
    EXPECT_EQ(got, want) << "text: " << text << " (" << c["source"].get<std::string>() << ")";
    if (c.contains("decoded_pieces")) {
      std::vector<std::string> pieces;
      for (int32_t id : got) pieces.push_back(tok.piece(id));
      EXPECT_EQ(pieces, c["decoded_pieces"].get<std::vector<std::string>>()) << "text: " << text;
    }
    ++n;
  }
  EXPECT_EQ(n, 121);
}

TEST(Tokenizer, VectorsFromSentencePieceModel) {
  REQUIRE_SHARED(v1_dir());
  auto tok = Tokenizer::load_sentencepiece(v1_dir() + "/tokenizer.model");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  check_vectors(*tok);
}

TEST(Tokenizer, VectorsFromTokenizerJson) {
  REQUIRE_SHARED(v1_dir());
  auto tok = Tokenizer::load_hf_json(v1_dir() + "/tokenizer.json");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  check_vectors(*tok);
}

TEST(Tokenizer, StreamingNeverSplitsACharacter) {
  REQUIRE_SHARED(v1_dir());
  auto tok = Tokenizer::load_sentencepiece(v1_dir() + "/tokenizer.model");
  const std::vector<int32_t> ids = {393, 28714, 2786, 28747, 28705, 243, 162, 169, 156};
  StreamDecoder d(*tok);
  std::string all;
  std::vector<std::string> parts;
  for (int32_t id : ids) {
    parts.push_back(d.push(id));
    all += parts.back();
  }
  all += d.flush();
  EXPECT_EQ(all, "Llama: \xf0\x9f\xa6\x99");
  for (const auto& p : parts) EXPECT_EQ(p.find("\xef\xbf\xbd"), std::string::npos) << "U+FFFD emitted mid-stream";
  EXPECT_EQ(all, tok->decode(ids));
}

TEST(Tokenizer, StreamingEqualsOneShotOnAllVectors) {
  REQUIRE_SHARED(v1_dir());
  auto tok = Tokenizer::load_sentencepiece(v1_dir() + "/tokenizer.model");
  json v = json::parse(testutil::read_file(v1_dir() + "/test_vectors.json"));
  for (const json& c : v["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    StreamDecoder d(*tok);
    std::string s;
    for (int32_t id : ids) {
      std::string part = d.push(id);
      // Every emitted part is complete UTF-8 on its own.
      EXPECT_EQ(utf8_sanitize(part), part);
      s += part;
    }
    s += d.flush();
    EXPECT_EQ(s, tok->decode(ids));
  }
}

TEST(Tokenizer, StoriesTokenizerJson) {
  const std::string dir = testutil::shared_data("models/stories260K");
  REQUIRE_SHARED(dir);
  auto tok = Tokenizer::load_dir(dir);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->encode("Once upon a time", true), (std::vector<int32_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->decode({1, 403, 407, 261, 378}), "Once upon a time");
}

TEST(Tokenizer, CorruptFilesGiveErrors) {
  testutil::TempDir td;
  testutil::write_file(td.file("empty.model"), "");
  EXPECT_THROW(Tokenizer::load_sentencepiece(td.file("empty.model")), FileError);
  testutil::write_file(td.file("junk.model"), std::string("\x0a\xff\xff\xff\xff\x0f", 6));
  EXPECT_THROW(Tokenizer::load_sentencepiece(td.file("junk.model")), FileError);
  testutil::write_file(td.file("bad.json"), "{not json");
  EXPECT_THROW(Tokenizer::load_hf_json(td.file("bad.json")), FileError);
  testutil::write_file(td.file("nomodel.json"), "{}");
  EXPECT_THROW(Tokenizer::load_hf_json(td.file("nomodel.json")), FileError);
  EXPECT_THROW(Tokenizer::load_dir(td.path()), FileError);
  EXPECT_THROW(Tokenizer::load_sentencepiece(td.file("absent.model")), FileError);
  if (testutil::exists(v1_dir())) {
    // Every truncation of a real model either loads or throws FileError; none crashes.
    const std::string real = testutil::read_file(v1_dir() + "/tokenizer.model");
    for (size_t cut : {size_t(1), size_t(7), size_t(100), real.size() / 3, real.size() - 1}) {
      testutil::write_file(td.file("cut.model"), real.substr(0, cut));
      try {
        Tokenizer::load_sentencepiece(td.file("cut.model"));
      } catch (const FileError&) {
      }
    }
  }
}

// Inputs the fuzzers (fuzz/) found, and values of unexpected JSON types: a FileError, never a crash.
TEST(Tokenizer, FuzzRegressions) {
  // A SentencePiece model whose <unk> piece has type CONTROL: SentencePiece refuses it; so do we
  // (encoding used to emit the control id for unknown characters).
  EXPECT_THROW(Tokenizer::load_sentencepiece(testutil::source_path("tests/data/fuzz_regressions/sp_model_unk_is_control.model")),
               FileError);
  testutil::TempDir td;
  const std::string stories = testutil::shared_data("models/stories260K/tokenizer.json");
  if (testutil::exists(stories)) {
    const json good = json::parse(testutil::read_file(stories));
    auto expect_error = [&](const json& j, const char* what) {
      testutil::write_file(td.file("t.json"), j.dump());
      EXPECT_THROW(Tokenizer::load_hf_json(td.file("t.json")), FileError) << what;
    };
    json j = good;
    j["added_tokens"][0]["content"] = 5;
    expect_error(j, "non-string added token");
    j = good;
    j["model"]["byte_fallback"] = "yes";
    expect_error(j, "non-boolean byte_fallback");
    j = good;
    j["model"]["merges"][3] = json::array({1, 2});
    expect_error(j, "non-string merge");
    j = good;
    j["model"]["vocab"]["zzz"] = 1 << 30;
    expect_error(j, "huge id");
  }
}

TEST(Tokenizer, OutOfRangeIdIsAnError) {
  REQUIRE_SHARED(v1_dir());
  auto tok = Tokenizer::load_sentencepiece(v1_dir() + "/tokenizer.model");
  EXPECT_THROW(tok->decode({1, 32000}), UsageError);
  EXPECT_THROW(tok->decode({-1}), UsageError);
}

#ifdef MISTRAL_HAVE_SENTENCEPIECE
void append_cp(std::string& s, uint32_t cp) {
  if (cp < 0x80) s.push_back(char(cp));
  else if (cp < 0x800) s += {char(0xc0 | (cp >> 6)), char(0x80 | (cp & 0x3f))};
  else if (cp < 0x10000) s += {char(0xe0 | (cp >> 12)), char(0x80 | ((cp >> 6) & 0x3f)), char(0x80 | (cp & 0x3f))};
  else
    s += {char(0xf0 | (cp >> 18)), char(0x80 | ((cp >> 12) & 0x3f)), char(0x80 | ((cp >> 6) & 0x3f)),
          char(0x80 | (cp & 0x3f))};
}

// Random strings from a mix of scripts, emoji, controls, whitespace runs, random code points (astral
// planes included) and invalid UTF-8.
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> atoms = {
      " ", "  ", "\n", "\t", "\r\n", "a", "e", "the", " the", "ing", "Hello", "world", ",", ".", "!", "?", "'",
      "\"", "0", "42", "3.14", "é", "ü", "ß", "ñ", "Ω", "д", "привет", "日本", "語", "中文", "한국어", "ع", "שלום",
      "हिन्दी", "ไทย", "😀", "🦙", "👩‍👩‍👧", "\xc2\xa0", "\xef\xbb\xbf", "e\xcc\x81", "\x01", "\x7f", "<s>", "[INST]",
      "    ", "def f(x):", "{}", "\xe2\x96\x81", "𝕏", "\xf0\x90\x8d\x88", "ქართული", "Հայերեն", "አማርኛ", "தமிழ்",
      "বাংলা", "ខ្មែរ", "བོད་", "ᠮᠣᠩᠭᠣᠯ", "ᏣᎳᎩ", "ελληνικά", "Ελλάδα", "اردو", "فارسی", "ייִדיש", "ᚠᚢᚦ",
      "ꦗꦮ", "ひらがな", "カタカナ", "한글", "𠜎𠜱", "🇫🇷", "👍🏽", "❤️", "🏳️‍🌈", "١٢٣", "१२३", "１２３", "Ⅻ", "½",
      "ǅ", "ﬁ", "ſ", "\xe2\x80\x8b", "\xe2\x80\x8d", "\xe2\x80\xa8", "\xe3\x80\x80", "\xc2\x85",
      std::string("\0", 1), "\x1b[0m",
      "\x0b", "\x0c", "\r", "</s>", "<unk>", "[/INST]", "https://example.com/a?b=c", "#include <x>", "a->b", "i++"};
  std::string s;
  const int n = int(rng() % 24);
  for (int i = 0; i < n; ++i) {
    const uint32_t r = rng() % 100;
    if (r < 75) {
      s += atoms[rng() % atoms.size()];
    } else if (r < 85) {  // a random valid code point, astral planes included
      uint32_t cp = rng() % 0x10ffff + 1;
      if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x41;
      append_cp(s, cp);
    } else if (r < 89) {  // a control character (C0, DEL, C1)
      const uint32_t c = rng() % 66;
      append_cp(s, c < 32 ? c : c == 32 ? 0x7f : 0x80 + (c - 33));
    } else if (r < 93) {  // a run of spaces, newlines or both
      const int len = 1 + int(rng() % 40);
      const char* pool[] = {" ", "\n", " \n", "\t ", "\r\n"};
      const char* unit = pool[rng() % 5];
      for (int k = 0; k < len; ++k) s += unit;
    } else if (r < 97) {  // an invalid byte
      s.push_back(char(0x80 + rng() % 0x80));
    } else {  // an ill-formed sequence: truncated, overlong, surrogate, out of range
      static const std::vector<std::string> bad = {"\xf0\x9f\xa6", "\xe2\x96", "\xc3", "\xc0\xaf", "\xe0\x80\xaf",
                                                   "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80",
                                                   "\xfe", "\xff", "\xf0\x80\x80\x80"};
      s += bad[rng() % bad.size()];
    }
  }
  return s;
}

// The corpus: structured cases, then random strings; n in all.
std::vector<std::string> corpus(size_t n, uint32_t seed) {
  std::vector<std::string> out = {"", " ", "\n", "a", "\x00", std::string(1, '\0') + "x"};
  for (int len : {2, 3, 8, 16, 17, 64, 100, 1000, 5000}) {
    out.push_back(std::string(size_t(len), ' '));
    out.push_back(std::string(size_t(len), '\n'));
    out.push_back("x" + std::string(size_t(len), ' ') + "y");
    out.push_back(std::string(size_t(len), ' ') + "end");
    out.push_back("start" + std::string(size_t(len), ' '));
    std::string mixed;
    for (int k = 0; k < len; ++k) mixed += k % 3 ? " " : "\n";
    out.push_back(mixed);
  }
  for (uint32_t c = 0; c < 0x20; ++c) out.push_back("a" + std::string(1, char(c)) + "b" + std::string(3, char(c)));
  for (uint32_t b = 0x80; b < 0x100; ++b) out.push_back("x" + std::string(1, char(b)) + " y" + std::string(2, char(b)));
  std::mt19937 rng(seed);
  while (out.size() < n) out.push_back(random_text(rng));
  return out;
}

// A 1 MB string without spaces: words of several scripts glued together, digits, punctuation, emoji.
std::string big_no_space(size_t bytes) {
  static const std::vector<std::string> parts = {"the", "tokenizer", "Mistral", "日本語", "привет", "👍", "42", ".",
                                                 "é", "ß", "-", "ইংরেজি", "\n", "(x)", "abc", "Z"};
  std::mt19937 rng(5);
  std::string s;
  while (s.size() < bytes) s += parts[rng() % parts.size()];
  return s;
}

void compare_with_sentencepiece(const std::string& model_path, const std::vector<std::string>& texts) {
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(model_path).ok());
  auto tok = Tokenizer::load_sentencepiece(model_path);
  ASSERT_EQ(tok->vocab_size(), sp.GetPieceSize());
  int mismatches = 0, decode_mismatches = 0;
  for (const std::string& text : texts) {
    std::vector<int> want;
    ASSERT_TRUE(sp.Encode(text, &want).ok());
    const auto got = tok->encode(text, false);
    if (std::vector<int>(got.begin(), got.end()) != want && mismatches++ < 5)
      ADD_FAILURE() << "encode differs for " << json(text).dump(-1, ' ', true, json::error_handler_t::replace);
    std::string sp_text;
    ASSERT_TRUE(sp.Decode(want, &sp_text).ok());
    if (tok->decode(got) != sp_text && decode_mismatches++ < 5)
      ADD_FAILURE() << "decode differs for " << json(text).dump(-1, ' ', true, json::error_handler_t::replace);
  }
  EXPECT_EQ(mismatches, 0) << "of " << texts.size();
  EXPECT_EQ(decode_mismatches, 0) << "of " << texts.size();
}

constexpr size_t kCorpusSize = 10000;

TEST(TokenizerOracle, CorpusV1) {
  REQUIRE_SHARED(v1_dir());
  compare_with_sentencepiece(v1_dir() + "/tokenizer.model", corpus(kCorpusSize, 1234));
}

TEST(TokenizerOracle, CorpusV3) {
  const std::string p = testutil::shared_data("tokenizers/mistral-v0.3/tokenizer.model.v3");
  REQUIRE_SHARED(p);
  compare_with_sentencepiece(p, corpus(kCorpusSize, 4321));
}

TEST(TokenizerOracle, OneMegabyteWithoutSpaces) {
  REQUIRE_SHARED(v1_dir());
  const std::string big = big_no_space(1 << 20);
  ASSERT_EQ(big.find(' '), std::string::npos);
  compare_with_sentencepiece(v1_dir() + "/tokenizer.model", {big});
  const std::string p = testutil::shared_data("tokenizers/mistral-v0.3/tokenizer.model.v3");
  if (testutil::exists(p)) compare_with_sentencepiece(p, {big});
}

TEST(TokenizerOracle, RoundTripValidUtf8) {
  REQUIRE_SHARED(v1_dir());
  const std::string p3 = testutil::shared_data("tokenizers/mistral-v0.3/tokenizer.model.v3");
  std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(Tokenizer::load_sentencepiece(v1_dir() + "/tokenizer.model"));
  if (testutil::exists(p3)) toks.push_back(Tokenizer::load_sentencepiece(p3));
  std::vector<std::string> texts = corpus(kCorpusSize, 99);
  texts.push_back(big_no_space(1 << 20));
  size_t checked = 0;
  for (const auto& tok : toks) {
    int failures = 0;
    for (const std::string& raw : texts) {
      const std::string text = utf8_sanitize(raw);
      // U+2581 in the input decodes as a space (as in SentencePiece), so it cannot round-trip.
      if (text.find("\xe2\x96\x81") != std::string::npos) continue;
      ++checked;
      if (tok->decode(tok->encode(text, true)) != text && failures++ < 5)
        ADD_FAILURE() << "round trip fails for " << json(text).dump(-1, ' ', true, json::error_handler_t::replace);
    }
    EXPECT_EQ(failures, 0);
  }
  EXPECT_GT(checked, toks.size() * kCorpusSize * 9 / 10);
}
#endif

}  // namespace
