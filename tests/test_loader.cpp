// Loader robustness: every bad model directory, config or safetensors file gives a typed mistral::Error whose
// message names the problem; valid fixtures (HF single file, HF sharded, Mistral native) load correctly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "mistral/config.h"
#include "mistral/error.h"
#include "mistral/model.h"
#include "mistral/safetensors.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using mistral::ConfigError;
using mistral::FileError;
using mistral::WeightError;

const char* kHf = "w8_gqa1_f32";             // config.json + model.safetensors, 2 layers, D 64, 4/4 heads, hd 16
const char* kNative = "native_w8_gqa2_f32";  // params.json + consolidated.safetensors, 4/2 heads

std::string fixture(const std::string& name) { return testutil::source_path("models/fixtures/" + name); }

// Copies the files of a fixture into dst (which exists), optionally only those named in `only`.
void copy_fixture(const std::string& name, const std::string& dst, const std::vector<std::string>& only = {}) {
  for (const auto& e : fs::directory_iterator(fixture(name))) {
    const std::string fn = e.path().filename().string();
    if (!only.empty() && std::find(only.begin(), only.end(), fn) == only.end()) continue;
    fs::copy_file(e.path(), dst + "/" + fn, fs::copy_options::overwrite_existing);
  }
}

// Runs f, which must throw E (a mistral::Error); returns its message. Any other outcome is a test failure.
template <class E>
std::string error_of(const std::function<void()>& f) {
  static_assert(std::is_base_of<mistral::Error, E>::value, "typed errors derive from mistral::Error");
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const mistral::Error& e) {
    ADD_FAILURE() << "threw a different mistral::Error subtype: " << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw an untyped std::exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no exception was thrown";
  return "";
}

void expect_contains(const std::string& msg, std::initializer_list<std::string> needles) {
  for (const auto& n : needles)
    EXPECT_NE(msg.find(n), std::string::npos) << "error message: " << msg << "\n  does not contain: " << n;
}

template <class E>
void expect_load_error(const std::string& dir, std::initializer_list<std::string> needles) {
  const std::string msg = error_of<E>([&] { mistral::Model::load(dir); });
  expect_contains(msg, needles);
}

// --- raw safetensors surgery -------------------------------------------------------------------------------

struct RawSafetensors {
  json header;       // the parsed header object
  std::string data;  // the bytes after the header
};

RawSafetensors read_raw(const std::string& path) {
  const std::string b = testutil::read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(b[size_t(i)]);
  RawSafetensors r;
  r.header = json::parse(b.substr(8, size_t(n)));
  r.data = b.substr(8 + size_t(n));
  return r;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// Writes a file with the given header text verbatim (its length as the 8-byte prefix) followed by data.
void write_raw(const std::string& path, const std::string& header_text, const std::string& data) {
  testutil::write_file(path, le64(header_text.size()) + header_text + data);
}
void write_raw(const std::string& path, const RawSafetensors& r) { write_raw(path, r.header.dump(), r.data); }

std::vector<mistral::TensorToWrite> read_tensors(const std::string& path) {
  mistral::SafeTensorsFile f(path);
  std::vector<mistral::TensorToWrite> out;
  for (const auto& kv : f.tensors()) {
    const uint8_t* p = static_cast<const uint8_t*>(kv.second.data);
    out.push_back({kv.first, kv.second.dtype, kv.second.shape, std::vector<uint8_t>(p, p + kv.second.nbytes)});
  }
  return out;
}

// A copy of the HF fixture in a temp dir, with helpers to mutate its config and weights.
class HfCopy {
 public:
  HfCopy() { copy_fixture(kHf, td_.path()); }
  const std::string& dir() const { return td_.path(); }
  std::string config_path() const { return td_.file("config.json"); }
  std::string st_path() const { return td_.file("model.safetensors"); }

  json config() const { return json::parse(testutil::read_file(config_path())); }
  void set_config(const json& j) const { testutil::write_file(config_path(), j.dump(2)); }
  void mutate_config(const std::function<void(json&)>& f) const {
    json j = config();
    f(j);
    set_config(j);
  }
  void mutate_header(const std::function<void(json&)>& f) const {
    RawSafetensors r = read_raw(st_path());
    f(r.header);
    write_raw(st_path(), r);
  }
  void mutate_tensors(const std::function<void(std::vector<mistral::TensorToWrite>&)>& f) const {
    auto ts = read_tensors(st_path());
    f(ts);
    mistral::write_safetensors(st_path(), ts);
  }

 private:
  testutil::TempDir td_;
};

std::vector<uint8_t> weight_bytes(const mistral::Weight& w) {
  const uint8_t* p = static_cast<const uint8_t*>(w.data);
  return std::vector<uint8_t>(p, p + w.nbytes());
}

// --- missing / malformed directories and configs -------------------------------------------------------------

TEST(Loader, MissingDirectory) {
  testutil::TempDir td;
  expect_load_error<FileError>(td.file("no-such-model"), {"no-such-model", "no such model directory"});
}

TEST(Loader, PathIsAFileNotADirectory) {
  HfCopy m;
  expect_load_error<FileError>(m.config_path(), {"no such model directory"});
}

TEST(Loader, DirectoryWithoutConfig) {
  testutil::TempDir td;
  copy_fixture(kHf, td.path(), {"model.safetensors"});
  expect_load_error<FileError>(td.path(), {"no config.json", "params.json"});
}

TEST(Loader, DirectoryWithoutWeights) {
  testutil::TempDir td;
  copy_fixture(kHf, td.path(), {"config.json"});
  expect_load_error<FileError>(td.path(), {"no model.safetensors"});
}

TEST(Loader, ConfigNotJson) {
  HfCopy m;
  testutil::write_file(m.config_path(), "{ \"hidden_size\": 64,\n  this is not json");
  expect_load_error<ConfigError>(m.dir(), {"config.json", "not valid JSON"});
}

TEST(Loader, ConfigEmptyFile) {
  HfCopy m;
  testutil::write_file(m.config_path(), "");
  expect_load_error<ConfigError>(m.dir(), {"config.json", "not valid JSON"});
}

TEST(Loader, ConfigJsonButNotObject) {
  HfCopy m;
  testutil::write_file(m.config_path(), "[64, 4, 4]");
  expect_load_error<ConfigError>(m.dir(), {"config.json", "expected a JSON object"});
}

TEST(Loader, ConfigMissingRequiredKey) {
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"}) {
    SCOPED_TRACE(key);
    HfCopy m;
    m.mutate_config([&](json& j) { j.erase(key); });
    expect_load_error<ConfigError>(m.dir(), {"config.json", std::string("required key '") + key + "' is missing"});
  }
}

TEST(Loader, ConfigValueOfWrongType) {
  HfCopy m;
  m.mutate_config([](json& j) { j["hidden_size"] = "64"; });
  expect_load_error<ConfigError>(m.dir(), {"'hidden_size' must be an integer"});
  m.mutate_config([](json& j) { j["hidden_size"] = 64.5; });
  expect_load_error<ConfigError>(m.dir(), {"'hidden_size' must be an integer"});
  m.mutate_config([](json& j) { j["hidden_size"] = 1e300; });  // far outside int64
  expect_load_error<ConfigError>(m.dir(), {"'hidden_size' must be an integer"});
}

TEST(Loader, ConfigNegativeSize) {
  HfCopy m;
  m.mutate_config([](json& j) { j["intermediate_size"] = -96; });
  expect_load_error<ConfigError>(m.dir(), {"'intermediate_size' must be positive, got -96"});
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                          "head_dim", "vocab_size"}) {
    SCOPED_TRACE(key);
    HfCopy m2;
    m2.mutate_config([&](json& j) { j[key] = -4; });
    expect_load_error<ConfigError>(m2.dir(), {key, "must be positive"});
  }
}

TEST(Loader, ConfigZeroSize) {
  HfCopy m;
  m.mutate_config([](json& j) { j["num_hidden_layers"] = 0; });
  expect_load_error<ConfigError>(m.dir(), {"'num_hidden_layers' must be positive, got 0"});
}

TEST(Loader, ConfigHeadsNotMultipleOfKvHeads) {
  HfCopy m;
  m.mutate_config([](json& j) { j["num_key_value_heads"] = 3; });
  expect_load_error<ConfigError>(m.dir(), {"num_attention_heads (4) is not a multiple of num_key_value_heads (3)"});
}

TEST(Loader, ConfigOddHeadDim) {
  HfCopy m;
  m.mutate_config([](json& j) { j["head_dim"] = 15; });
  expect_load_error<ConfigError>(m.dir(), {"head_dim must be even", "15"});
}

TEST(Loader, ConfigHiddenNotMultipleOfHeadsWithoutHeadDim) {
  HfCopy m;
  m.mutate_config([](json& j) {
    j.erase("head_dim");
    j["num_attention_heads"] = 6;
    j["num_key_value_heads"] = 6;
  });
  expect_load_error<ConfigError>(m.dir(), {"hidden_size is not a multiple of num_attention_heads"});
}

TEST(Loader, ConfigImplausiblyLargeSizes) {
  // Products of these overflow int64; they must be rejected, not wrap around.
  HfCopy m;
  m.mutate_config([](json& j) {
    j["hidden_size"] = int64_t(1) << 40;
    j["intermediate_size"] = int64_t(1) << 40;
    j["vocab_size"] = 1;
  });
  expect_load_error<ConfigError>(m.dir(), {"implausibly large"});
  HfCopy m2;
  m2.mutate_config([](json& j) { j["head_dim"] = int64_t(1) << 61; });
  expect_load_error<ConfigError>(m2.dir(), {"implausibly large"});
}

TEST(Loader, ConfigUnsupportedModelType) {
  HfCopy m;
  m.mutate_config([](json& j) { j["model_type"] = "gpt2"; });
  expect_load_error<ConfigError>(m.dir(), {"model_type 'gpt2' is not supported"});
}

// --- malformed safetensors files ---------------------------------------------------------------------------

TEST(Loader, SafetensorsShorterThan8Bytes) {
  HfCopy m;
  testutil::write_file(m.st_path(), std::string("\x10\x00\x00", 3));
  expect_load_error<FileError>(m.dir(), {"model.safetensors", "truncated", "3 bytes"});
  testutil::write_file(m.st_path(), "");
  expect_load_error<FileError>(m.dir(), {"model.safetensors", "truncated", "0 bytes"});
}

TEST(Loader, SafetensorsDataCutOff) {
  HfCopy m;
  std::string b = testutil::read_file(m.st_path());
  b.resize(b.size() - 100);  // the tensor stored last (model.norm.weight) now runs past the end
  testutil::write_file(m.st_path(), b);
  expect_load_error<FileError>(m.dir(), {"model.safetensors", "'model.norm.weight'", "out of range"});
}

TEST(Loader, SafetensorsCutInsideHeader) {
  HfCopy m;
  std::string b = testutil::read_file(m.st_path());
  b.resize(100);
  testutil::write_file(m.st_path(), b);
  expect_load_error<FileError>(m.dir(), {"header length", "runs past the end of the file (100 bytes)"});
}

TEST(Loader, HeaderLengthPastEndOfFile) {
  HfCopy m;
  std::string b = testutil::read_file(m.st_path());
  std::memcpy(&b[0], le64(b.size()).data(), 8);
  testutil::write_file(m.st_path(), b);
  expect_load_error<FileError>(m.dir(), {"header length " + std::to_string(b.size()), "runs past the end"});
  // The largest possible length must not wrap around in the bounds arithmetic.
  std::memcpy(&b[0], le64(UINT64_MAX).data(), 8);
  testutil::write_file(m.st_path(), b);
  expect_load_error<FileError>(m.dir(), {"header length " + std::to_string(UINT64_MAX), "runs past the end"});
}

TEST(Loader, HeaderNotJson) {
  HfCopy m;
  write_raw(m.st_path(), "{\"model.norm.weight\": {\"dtype\": \"F32\", oops", std::string(256, '\0'));
  expect_load_error<FileError>(m.dir(), {"model.safetensors", "header is not valid JSON"});
}

TEST(Loader, HeaderJsonButNotObject) {
  HfCopy m;
  write_raw(m.st_path(), "[1, 2, 3]", std::string(256, '\0'));
  expect_load_error<FileError>(m.dir(), {"model.safetensors", "header is not a JSON object"});
  write_raw(m.st_path(), "\"model.norm.weight\"", "");
  expect_load_error<FileError>(m.dir(), {"header is not a JSON object"});
}

TEST(Loader, HeaderDeeplyNestedJson) {
  // A hostile header nesting a million arrays must give an error, not overflow the stack.
  HfCopy m;
  const size_t depth = 1000000;
  write_raw(m.st_path(), std::string(depth, '[') + std::string(depth, ']'), "");
  expect_load_error<FileError>(m.dir(), {"header is not a JSON object"});
}

TEST(Loader, HeaderEntryMissingFields) {
  HfCopy m;
  m.mutate_header([](json& h) { h["model.norm.weight"].erase("data_offsets"); });
  expect_load_error<FileError>(m.dir(), {"'model.norm.weight'", "needs dtype, shape and data_offsets"});
}

TEST(Loader, TensorOffsetsOutOfRange) {
  HfCopy m;
  const size_t data_size = read_raw(m.st_path()).data.size();
  m.mutate_header([&](json& h) {
    h["model.layers.0.self_attn.q_proj.weight"]["data_offsets"] = {data_size - 100, data_size - 100 + 64 * 64 * 4};
  });
  expect_load_error<FileError>(m.dir(), {"'model.layers.0.self_attn.q_proj.weight'", "data_offsets", "out of range",
                                         "data region is " + std::to_string(data_size) + " bytes"});
}

TEST(Loader, TensorOffsetsNegativeOrReversed) {
  HfCopy m;
  m.mutate_header([](json& h) { h["model.norm.weight"]["data_offsets"] = {-256, 0}; });
  expect_load_error<FileError>(m.dir(), {"'model.norm.weight'", "data_offsets must be two non-negative integers"});
  HfCopy m2;
  m2.mutate_header([](json& h) { h["model.norm.weight"]["data_offsets"] = {256, 0}; });
  expect_load_error<FileError>(m2.dir(), {"'model.norm.weight'", "begin > end"});
}

TEST(Loader, OverlappingTensors) {
  HfCopy m;
  m.mutate_header([](json& h) {
    // q_proj made to share k_proj's bytes: same length, so only the overlap check can catch it.
    h["model.layers.0.self_attn.q_proj.weight"]["data_offsets"] = h["model.layers.0.self_attn.k_proj.weight"]["data_offsets"];
  });
  expect_load_error<FileError>(
      m.dir(), {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "overlap"});
  HfCopy m2;
  m2.mutate_header([](json& h) {  // partial overlap: starts 4 bytes before the previous tensor ends
    auto& off = h["model.norm.weight"]["data_offsets"];
    off = {off[0].get<uint64_t>() - 4, off[1].get<uint64_t>() - 4};
  });
  expect_load_error<FileError>(m2.dir(), {"model.norm.weight", "model.layers.1.self_attn.v_proj.weight", "overlap"});
}

TEST(Loader, ByteLengthNotMatchingShape) {
  HfCopy m;
  m.mutate_header([](json& h) { h["model.norm.weight"]["shape"] = {65}; });
  expect_load_error<FileError>(m.dir(), {"'model.norm.weight'", "byte length 256 does not match shape [65]"});
}

TEST(Loader, NegativeOrHugeShapeDimension) {
  HfCopy m;
  m.mutate_header([](json& h) { h["model.norm.weight"]["shape"] = {-64}; });
  expect_load_error<FileError>(m.dir(), {"'model.norm.weight'", "negative or non-integer dimension"});
  HfCopy m2;
  m2.mutate_header([](json& h) { h["model.norm.weight"]["shape"] = {int64_t(1) << 40, int64_t(1) << 40}; });
  expect_load_error<FileError>(m2.dir(), {"'model.norm.weight'", "too large"});
}

TEST(Loader, UnknownDtypeI64) {
  HfCopy m;
  m.mutate_header([](json& h) { h["lm_head.weight"]["dtype"] = "I64"; });
  expect_load_error<FileError>(m.dir(), {"'lm_head.weight'", "unsupported dtype I64"});
}

TEST(Loader, UnknownDtypeF8) {
  HfCopy m;
  m.mutate_header([](json& h) { h["model.layers.1.mlp.up_proj.weight"]["dtype"] = "F8_E4M3"; });
  expect_load_error<FileError>(m.dir(), {"'model.layers.1.mlp.up_proj.weight'", "unsupported dtype F8_E4M3"});
}

TEST(Loader, DtypeNotAString) {
  HfCopy m;
  m.mutate_header([](json& h) { h["model.norm.weight"]["dtype"] = 4; });
  expect_load_error<FileError>(m.dir(), {"'model.norm.weight'", "dtype is not a string"});
}

// --- tensors that do not match the config ------------------------------------------------------------------

TEST(Loader, WrongShapeForTensor) {
  HfCopy m;
  m.mutate_tensors([](std::vector<mistral::TensorToWrite>& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.1.self_attn.k_proj.weight") {
        t.shape = {32, 64};
        t.bytes.resize(32 * 64 * 4);
      }
  });
  expect_load_error<WeightError>(
      m.dir(), {"'model.layers.1.self_attn.k_proj.weight'", "expected shape [64, 64]", "got [32, 64]"});
}

TEST(Loader, TransposedTensor) {
  // Same byte count, wrong orientation: only the shape check can tell.
  HfCopy m;
  m.mutate_tensors([](std::vector<mistral::TensorToWrite>& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.mlp.down_proj.weight") t.shape = {96, 64};
  });
  expect_load_error<WeightError>(
      m.dir(), {"'model.layers.0.mlp.down_proj.weight'", "expected shape [64, 96]", "got [96, 64]"});
}

TEST(Loader, MissingTensor) {
  HfCopy m;
  m.mutate_tensors([](std::vector<mistral::TensorToWrite>& ts) {
    ts.erase(std::remove_if(ts.begin(), ts.end(),
                            [](const mistral::TensorToWrite& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; }),
             ts.end());
  });
  expect_load_error<WeightError>(m.dir(), {"missing tensor 'model.layers.1.mlp.up_proj.weight'", "[96, 64]"});
}

TEST(Loader, MissingLmHeadWhenNotTied) {
  HfCopy m;
  m.mutate_tensors([](std::vector<mistral::TensorToWrite>& ts) {
    ts.erase(std::remove_if(ts.begin(), ts.end(), [](const mistral::TensorToWrite& t) { return t.name == "lm_head.weight"; }),
             ts.end());
  });
  expect_load_error<WeightError>(m.dir(), {"missing tensor 'lm_head.weight'"});
}

TEST(Loader, UnexpectedExtraTensor) {
  HfCopy m;
  m.mutate_tensors([](std::vector<mistral::TensorToWrite>& ts) {
    mistral::TensorToWrite t = ts.back();
    t.name = "model.layers.2.mlp.up_proj.weight";  // a third layer in a 2-layer model
    ts.push_back(t);
  });
  expect_load_error<WeightError>(m.dir(), {"unexpected tensor 'model.layers.2.mlp.up_proj.weight'", "2-layer model"});
}

TEST(Loader, TooFewLayersForConfig) {
  HfCopy m;
  m.mutate_config([](json& j) { j["num_hidden_layers"] = 3; });
  expect_load_error<WeightError>(m.dir(), {"missing tensor 'model.layers.2."});
}

// --- sharded checkpoints -------------------------------------------------------------------------------------

// Splits the HF fixture's weights into two shards plus an index in dir; removes model.safetensors.
void write_sharded(const std::string& dir, bool write_second_shard = true) {
  auto ts = read_tensors(dir + "/model.safetensors");
  std::vector<mistral::TensorToWrite> a, b;
  for (size_t i = 0; i < ts.size(); ++i) (i < ts.size() / 2 ? a : b).push_back(ts[i]);
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  json idx;
  size_t total = 0;
  for (const auto& t : a) idx["weight_map"][t.name] = s1, total += t.bytes.size();
  for (const auto& t : b) idx["weight_map"][t.name] = s2, total += t.bytes.size();
  idx["metadata"]["total_size"] = total;
  mistral::write_safetensors(dir + "/" + s1, a, {{"format", "pt"}});
  if (write_second_shard) mistral::write_safetensors(dir + "/" + s2, b, {{"format", "pt"}});
  testutil::write_file(dir + "/model.safetensors.index.json", idx.dump(2));
  fs::remove(dir + "/model.safetensors");
}

TEST(Loader, ShardedCheckpointLoadsSameWeights) {
  HfCopy m;
  write_sharded(m.dir());
  ASSERT_FALSE(testutil::exists(m.st_path()));
  auto sharded = mistral::Model::load(m.dir());
  auto single = mistral::Model::load(fixture(kHf));
  const auto &ws = sharded->weights(), &w1 = single->weights();
  EXPECT_EQ(sharded->config().hidden_size, 64);
  EXPECT_EQ(sharded->weight_bytes(), single->weight_bytes());
  EXPECT_EQ(weight_bytes(ws.embed), weight_bytes(w1.embed));
  EXPECT_EQ(weight_bytes(ws.lm_head), weight_bytes(w1.lm_head));
  EXPECT_EQ(weight_bytes(ws.norm), weight_bytes(w1.norm));
  ASSERT_EQ(ws.layers.size(), w1.layers.size());
  for (size_t l = 0; l < ws.layers.size(); ++l) {
    SCOPED_TRACE(l);
    EXPECT_EQ(weight_bytes(ws.layers[l].wq), weight_bytes(w1.layers[l].wq));
    EXPECT_EQ(weight_bytes(ws.layers[l].wk), weight_bytes(w1.layers[l].wk));
    EXPECT_EQ(weight_bytes(ws.layers[l].wo), weight_bytes(w1.layers[l].wo));
    EXPECT_EQ(weight_bytes(ws.layers[l].w_down), weight_bytes(w1.layers[l].w_down));
    EXPECT_EQ(weight_bytes(ws.layers[l].attn_norm), weight_bytes(w1.layers[l].attn_norm));
  }
}

TEST(Loader, ShardListedInIndexButMissing) {
  HfCopy m;
  write_sharded(m.dir(), /*write_second_shard=*/false);
  expect_load_error<FileError>(m.dir(), {"model.safetensors.index.json", "shard 'model-00002-of-00002.safetensors'",
                                         "missing"});
}

TEST(Loader, IndexNotJson) {
  HfCopy m;
  write_sharded(m.dir());
  testutil::write_file(m.dir() + "/model.safetensors.index.json", "{\"weight_map\": {\"lm_head.weight\": ");
  expect_load_error<FileError>(m.dir(), {"model.safetensors.index.json", "not valid JSON"});
}

TEST(Loader, IndexWithoutWeightMap) {
  HfCopy m;
  write_sharded(m.dir());
  testutil::write_file(m.dir() + "/model.safetensors.index.json", "{\"metadata\": {}}");
  expect_load_error<FileError>(m.dir(), {"model.safetensors.index.json", "no weight_map object"});
}

TEST(Loader, IndexShardNameOutsideDirectory) {
  HfCopy m;
  write_sharded(m.dir());
  json idx = json::parse(testutil::read_file(m.dir() + "/model.safetensors.index.json"));
  idx["weight_map"]["model.norm.weight"] = "../model-00002-of-00002.safetensors";
  testutil::write_file(m.dir() + "/model.safetensors.index.json", idx.dump());
  expect_load_error<FileError>(m.dir(), {"bad shard name '../model-00002-of-00002.safetensors'"});
}

TEST(Loader, IndexNamesTensorNotInAnyShard) {
  HfCopy m;
  write_sharded(m.dir());
  json idx = json::parse(testutil::read_file(m.dir() + "/model.safetensors.index.json"));
  idx["weight_map"]["model.layers.7.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors";
  testutil::write_file(m.dir() + "/model.safetensors.index.json", idx.dump());
  expect_load_error<WeightError>(m.dir(), {"'model.layers.7.mlp.up_proj.weight'", "listed in the index", "not found"});
}

TEST(Loader, TensorInTwoShards) {
  HfCopy m;
  write_sharded(m.dir());
  const std::string s1 = m.dir() + "/model-00001-of-00002.safetensors";
  auto ts = read_tensors(s1);
  for (const auto& t : read_tensors(m.dir() + "/model-00002-of-00002.safetensors"))
    if (t.name == "model.norm.weight") ts.push_back(t);
  mistral::write_safetensors(s1, ts);
  expect_load_error<WeightError>(m.dir(), {"'model.norm.weight'", "appears in both"});
}

TEST(Loader, CorruptShardNamesTheShard) {
  HfCopy m;
  write_sharded(m.dir());
  testutil::write_file(m.dir() + "/model-00002-of-00002.safetensors", "abc");
  expect_load_error<FileError>(m.dir(), {"model-00002-of-00002.safetensors", "truncated"});
}

// --- Mistral native layout -----------------------------------------------------------------------------------

TEST(Loader, NativeParamsMissingRequiredKey) {
  for (const char* key : {"dim", "n_layers", "n_heads", "hidden_dim", "vocab_size"}) {
    SCOPED_TRACE(key);
    testutil::TempDir td;
    copy_fixture(kNative, td.path());
    json j = json::parse(testutil::read_file(td.file("params.json")));
    j.erase(key);
    testutil::write_file(td.file("params.json"), j.dump());
    expect_load_error<ConfigError>(td.path(), {"params.json", std::string("required key '") + key + "' is missing"});
  }
}

TEST(Loader, NativeParamsNotJson) {
  testutil::TempDir td;
  copy_fixture(kNative, td.path());
  testutil::write_file(td.file("params.json"), "dim = 64");
  expect_load_error<ConfigError>(td.path(), {"params.json", "not valid JSON"});
}

TEST(Loader, NativeConsolidatedMissing) {
  testutil::TempDir td;
  copy_fixture(kNative, td.path(), {"params.json"});
  expect_load_error<FileError>(td.path(), {"params.json found but consolidated.safetensors is missing"});
}

TEST(Loader, NativeWrongShapeNamesNativeTensor) {
  testutil::TempDir td;
  copy_fixture(kNative, td.path());
  const std::string p = td.file("consolidated.safetensors");
  auto ts = read_tensors(p);
  for (auto& t : ts)
    if (t.name == "layers.1.attention.wk.weight") t.shape = {64, 32};
  mistral::write_safetensors(p, ts);
  expect_load_error<WeightError>(td.path(), {"'layers.1.attention.wk.weight'", "expected shape [32, 64]", "got [64, 32]"});
}

// --- valid inputs ---------------------------------------------------------------------------------------------

TEST(Loader, HfFixtureLoadsAndConfigParses) {
  auto m = mistral::Model::load(fixture(kHf));
  const mistral::ModelConfig& c = m->config();
  EXPECT_EQ(c.layout, mistral::Layout::HF);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 96);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 128);
  EXPECT_EQ(c.sliding_window, 8);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, mistral::DType::F32);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});

  const auto& w = m->weights();
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.embed.rows, 128);
  EXPECT_EQ(w.embed.cols, 64);
  EXPECT_NE(w.lm_head.data, w.embed.data);
  EXPECT_EQ(w.norm.rows, 1);
  EXPECT_EQ(w.norm.cols, 64);
  EXPECT_EQ(w.layers[1].wq.rows, 64);
  EXPECT_EQ(w.layers[1].wq.cols, 64);
  EXPECT_EQ(w.layers[1].w_down.rows, 64);
  EXPECT_EQ(w.layers[1].w_down.cols, 96);
  EXPECT_EQ(w.layers[1].w_gate.rows, 96);
  EXPECT_EQ(w.layers[0].wq.dtype, mistral::DType::F32);

  // HF weights are used as stored (already in rotate-half order).
  mistral::SafeTensorsFile f(fixture(kHf) + "/model.safetensors");
  const auto& q = f.tensors().at("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(0, std::memcmp(q.data, w.layers[1].wq.data, q.nbytes));
}

TEST(Loader, HfRopeThetaFromRopeParameters) {
  HfCopy m;
  json j = m.config();
  j["rope_parameters"]["rope_theta"] = 500000.0;
  j.erase("rope_theta");
  EXPECT_DOUBLE_EQ(mistral::parse_hf_config(j.dump(), "config.json").rope_theta, 500000.0);
  j.erase("rope_parameters");  // neither spelling: the default
  EXPECT_DOUBLE_EQ(mistral::parse_hf_config(j.dump(), "config.json").rope_theta, 10000.0);
  j["rope_theta"] = 1e6;  // transformers < 5 spelling
  EXPECT_DOUBLE_EQ(mistral::parse_hf_config(j.dump(), "config.json").rope_theta, 1e6);
}

TEST(Loader, SlidingWindowNullMeansFullAttention) {
  HfCopy m;
  m.mutate_config([](json& j) { j["sliding_window"] = nullptr; });
  auto model = mistral::Model::load(m.dir());
  EXPECT_EQ(model->config().sliding_window, 0);
}

TEST(Loader, SlidingWindowAbsentMeansFullAttention) {
  HfCopy m;
  m.mutate_config([](json& j) { j.erase("sliding_window"); });
  auto model = mistral::Model::load(m.dir());
  EXPECT_EQ(model->config().sliding_window, 0);
}

TEST(Loader, HeadDimAbsentIsDerived) {
  HfCopy m;
  m.mutate_config([](json& j) { j.erase("head_dim"); });
  auto model = mistral::Model::load(m.dir());
  EXPECT_EQ(model->config().head_dim, 16);  // 64 / 4
  json j = m.config();
  j["num_attention_heads"] = 8;
  j["num_key_value_heads"] = 2;
  mistral::ModelConfig c = mistral::parse_hf_config(j.dump(), "config.json");
  EXPECT_EQ(c.head_dim, 8);  // 64 / 8
  j["head_dim"] = nullptr;   // null is the same as absent
  EXPECT_EQ(mistral::parse_hf_config(j.dump(), "config.json").head_dim, 8);
  j["head_dim"] = 32;        // explicit head_dim wins over hidden / heads
  EXPECT_EQ(mistral::parse_hf_config(j.dump(), "config.json").head_dim, 32);
}

TEST(Loader, PermuteInterleavedToHalfSmallExample) {
  // One head, head_dim 4, two columns: rows [r0, r1, r2, r3] interleaved become [r0, r2, r1, r3].
  const std::vector<float> src = {0, 1, 10, 11, 20, 21, 30, 31};
  std::vector<float> dst(src.size(), -1);
  mistral::permute_interleaved_to_half(reinterpret_cast<const uint8_t*>(src.data()), reinterpret_cast<uint8_t*>(dst.data()),
                                       1, 4, 2, sizeof(float));
  EXPECT_EQ(dst, (std::vector<float>{0, 1, 20, 21, 10, 11, 30, 31}));

  // Two heads, head_dim 6, one column: per head [r0..r5] -> [r0, r2, r4, r1, r3, r5].
  const std::vector<uint16_t> s2 = {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15};
  std::vector<uint16_t> d2(s2.size(), 0);
  mistral::permute_interleaved_to_half(reinterpret_cast<const uint8_t*>(s2.data()), reinterpret_cast<uint8_t*>(d2.data()),
                                       2, 6, 1, sizeof(uint16_t));
  EXPECT_EQ(d2, (std::vector<uint16_t>{0, 2, 4, 1, 3, 5, 10, 12, 14, 11, 13, 15}));
}

TEST(Loader, NativeFixtureLoadsWithPermutedQk) {
  auto m = mistral::Model::load(fixture(kNative));
  const mistral::ModelConfig& c = m->config();
  EXPECT_EQ(c.layout, mistral::Layout::Native);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.sliding_window, 8);

  mistral::SafeTensorsFile f(fixture(kNative) + "/consolidated.safetensors");
  const int64_t hd = c.head_dim, D = c.hidden_size;
  const size_t row = size_t(D) * sizeof(float);
  // HF-style permutation, computed by hand: rotate-half row h*hd + j*hd/2 + i is interleaved row h*hd + 2i + j.
  auto check = [&](const std::string& name, const mistral::Weight& w, int64_t heads) {
    SCOPED_TRACE(name);
    const auto& tv = f.tensors().at(name);
    ASSERT_EQ(w.rows, heads * hd);
    ASSERT_EQ(w.cols, D);
    const uint8_t* raw = static_cast<const uint8_t*>(tv.data);
    const uint8_t* got = static_cast<const uint8_t*>(w.data);
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t i = 0; i < hd / 2; ++i)
          EXPECT_EQ(0, std::memcmp(got + size_t(h * hd + j * (hd / 2) + i) * row, raw + size_t(h * hd + 2 * i + j) * row, row))
              << "head " << h << " half " << j << " pair " << i;
  };
  for (int l = 0; l < 2; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".attention.";
    check(p + "wq.weight", m->weights().layers[size_t(l)].wq, c.num_heads);
    check(p + "wk.weight", m->weights().layers[size_t(l)].wk, c.num_kv_heads);
    // wv and wo are not rotated, so they are used as stored.
    const auto& wv = f.tensors().at(p + "wv.weight");
    EXPECT_EQ(0, std::memcmp(wv.data, m->weights().layers[size_t(l)].wv.data, wv.nbytes));
  }
  // The permutation really moves rows (the check above is not vacuous).
  const auto& wq = f.tensors().at("layers.0.attention.wq.weight");
  EXPECT_NE(0, std::memcmp(wq.data, m->weights().layers[0].wq.data, wq.nbytes));
}

TEST(Loader, CastOnLoadKeepsValues) {
  mistral::LoadOptions o;
  o.cast = mistral::LoadOptions::Cast::BF16;
  auto m = mistral::Model::load(fixture(kHf), o);
  auto ref = mistral::Model::load(fixture(kHf));
  EXPECT_EQ(m->weights().layers[0].wq.dtype, mistral::DType::BF16);
  std::vector<float> a(64 * 64), b(64 * 64);
  mistral::to_f32(mistral::DType::BF16, m->weights().layers[0].wq.data, a.data(), a.size());
  mistral::to_f32(mistral::DType::F32, ref->weights().layers[0].wq.data, b.data(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], std::abs(b[i]) / 128 + 1e-30) << i;
}

}  // namespace
