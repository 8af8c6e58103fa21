// mistral-run end to end: bad input gives a non-zero exit (never a signal), one line on stderr and nothing on
// stdout; good input on stories260K reproduces the reference greedy run and honours the sampling flags.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testutil::run_cli;
using testutil::RunResult;

std::string stories() { return testutil::shared_data("models/stories260K"); }
bool have_stories() { return testutil::exists(stories() + "/model.safetensors"); }
#define REQUIRE_STORIES()                                                                     \
  do {                                                                                        \
    if (!have_stories()) GTEST_SKIP() << "reference model missing: " << stories(); \
  } while (0)

std::string fixture(const std::string& name) { return testutil::source_path("models/fixtures/" + name); }

void copy_fixture(const std::string& name, const std::string& dst) {
  for (const auto& e : fs::directory_iterator(fixture(name)))
    fs::copy_file(e.path(), dst + "/" + e.path().filename().string(), fs::copy_options::overwrite_existing);
}

size_t count_lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

std::string describe(const RunResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\n--- stdout ---\n" + r.out + "\n--- stderr ---\n" + r.err;
}

// One of our own errors: exit 1..127, stdout empty, exactly one stderr line "mistral-run: error: ..." naming `what`.
void expect_error(const RunResult& r, const std::vector<std::string>& what) {
  EXPECT_NE(r.exit_code, 0) << describe(r);
  EXPECT_LT(r.exit_code, 128) << "killed by a signal?\n" << describe(r);
  EXPECT_EQ(r.out, "") << describe(r);
  EXPECT_EQ(count_lines(r.err), 1u) << describe(r);
  EXPECT_FALSE(r.err.empty() || r.err.back() != '\n') << "stderr must end with a newline\n" << describe(r);
  EXPECT_EQ(r.err.rfind("mistral-run: error: ", 0), 0u) << describe(r);
  for (const auto& w : what) EXPECT_NE(r.err.find(w), std::string::npos) << "missing '" << w << "'\n" << describe(r);
}

// A CLI11 parse error: the message plus "Run with --help for more information.", non-zero exit, empty stdout.
void expect_parse_error(const RunResult& r, const std::vector<std::string>& what) {
  EXPECT_NE(r.exit_code, 0) << describe(r);
  EXPECT_LT(r.exit_code, 128) << describe(r);
  EXPECT_EQ(r.out, "") << describe(r);
  EXPECT_FALSE(r.err.empty()) << describe(r);
  EXPECT_LE(count_lines(r.err), 2u) << describe(r);
  EXPECT_NE(r.err.find("Run with --help for more information."), std::string::npos) << describe(r);
  for (const auto& w : what) EXPECT_NE(r.err.find(w), std::string::npos) << "missing '" << w << "'\n" << describe(r);
}

json parse_stdout_json(const RunResult& r) {
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(count_lines(r.out), 1u) << describe(r);
  try {
    return json::parse(r.out);
  } catch (const json::exception& e) {
    ADD_FAILURE() << "stdout is not JSON: " << e.what() << "\n" << describe(r);
    return json::object();
  }
}

json reference() { return json::parse(testutil::read_file(stories() + "/reference/greedy_prompt_64.json")); }

const char* kPrompt = "Once upon a time";

// --- bad input ---------------------------------------------------------------------------------------------

TEST(Cli, MissingModelDirectory) {
  testutil::TempDir td;
  expect_error(run_cli({"-m", td.file("no-such-model"), "-p", "hi"}), {"no-such-model", "no such model directory"});
}

TEST(Cli, InfoMissingModelDirectory) {
  testutil::TempDir td;
  expect_error(run_cli({"info", "-m", td.file("nope")}), {"no such model directory"});
}

TEST(Cli, ModelFlagMissing) { expect_error(run_cli({"-p", "hi"}), {"-m/--model is required"}); }

TEST(Cli, ConfigNotJson) {
  testutil::TempDir td;
  copy_fixture("w8_gqa1_f32", td.path());
  testutil::write_file(td.file("config.json"), "{\n  \"hidden_size\": 64,\n  oops\n");
  expect_error(run_cli({"-m", td.path(), "-p", "hi"}), {"config.json", "not valid JSON"});
  expect_error(run_cli({"info", "-m", td.path()}), {"config.json", "not valid JSON"});
}

TEST(Cli, TruncatedSafetensors) {
  testutil::TempDir td;
  copy_fixture("w8_gqa1_f32", td.path());
  std::string b = testutil::read_file(td.file("model.safetensors"));
  b.resize(b.size() / 2);
  testutil::write_file(td.file("model.safetensors"), b);
  expect_error(run_cli({"-m", td.path(), "-p", "hi"}), {"model.safetensors", "out of range"});
  testutil::write_file(td.file("model.safetensors"), "abc");
  expect_error(run_cli({"-m", td.path(), "-p", "hi"}), {"model.safetensors", "truncated"});
}

TEST(Cli, MissingTensor) {
  testutil::TempDir td;
  copy_fixture("w8_gqa1_f32", td.path());
  // Rename the tensor in the header (same length, so offsets stay valid): the loader then misses the original.
  const std::string p = td.file("model.safetensors");
  std::string b = testutil::read_file(p);
  const std::string from = "model.layers.1.mlp.up_proj.weight", to = "model.layers.1.mlp.up_proj.wXXXXX";
  const size_t pos = b.find(from);
  ASSERT_NE(pos, std::string::npos);
  b.replace(pos, from.size(), to);
  testutil::write_file(p, b);
  expect_error(run_cli({"-m", td.path(), "-p", "hi"}), {"missing tensor 'model.layers.1.mlp.up_proj.weight'"});
}

TEST(Cli, ControlCharactersInFileStayOnOneLine) {
  // A hostile header whose dtype holds newlines must still give one line on stderr.
  testutil::TempDir td;
  copy_fixture("w8_gqa1_f32", td.path());
  const std::string p = td.file("model.safetensors");
  std::string b = testutil::read_file(p);
  const std::string from = "\"dtype\":\"F32\"", to = "\"dtype\":\"\\nX\"";
  ASSERT_EQ(from.size(), to.size());
  const size_t pos = b.find(from);
  ASSERT_NE(pos, std::string::npos);
  b.replace(pos, from.size(), to);
  testutil::write_file(p, b);
  expect_error(run_cli({"-m", td.path(), "-p", "hi"}), {"unsupported dtype"});
}

TEST(Cli, PromptAndFileBothMissing) {
  expect_error(run_cli({"-m", fixture("w8_gqa1_f32")}), {"give exactly one of -p/--prompt and -f/--file"});
}

TEST(Cli, PromptAndFileBothGiven) {
  expect_parse_error(run_cli({"-m", fixture("w8_gqa1_f32"), "-p", "hi", "-f", "x.txt"}), {"excludes"});
}

TEST(Cli, PromptFileMissing) {
  testutil::TempDir td;
  expect_error(run_cli({"-m", fixture("w8_gqa1_f32"), "-f", td.file("prompt.txt")}), {"prompt.txt", "cannot open"});
}

TEST(Cli, UnknownFlag) { expect_parse_error(run_cli({"-m", fixture("w8_gqa1_f32"), "--bogus"}), {"--bogus"}); }

TEST(Cli, NegativeTemperature) {
  expect_parse_error(run_cli({"-m", fixture("w8_gqa1_f32"), "-p", "hi", "--temp", "-1"}), {"--temp"});
}

TEST(Cli, NonNumericMaxTokens) {
  expect_parse_error(run_cli({"-m", fixture("w8_gqa1_f32"), "-p", "hi", "-n", "many"}), {"many"});
}

TEST(Cli, DetokenizeNonIntegerId) {
  REQUIRE_STORIES();
  expect_error(run_cli({"detokenize", "-m", stories(), "--ids", "1,abc"}), {"--ids", "'abc' is not an integer"});
}

TEST(Cli, DetokenizeIdOutOfRange) {
  REQUIRE_STORIES();
  expect_error(run_cli({"detokenize", "-m", stories(), "--ids", "999999"}), {"999999", "out of range", "512"});
  expect_error(run_cli({"detokenize", "-m", stories(), "--ids", "-1"}), {"out of range"});
}

// --- good input (stories260K) --------------------------------------------------------------------------------

TEST(Cli, GreedyJsonMatchesReference) {
  REQUIRE_STORIES();
  const json ref = reference();
  const RunResult r = run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--temp", "0", "--json"});
  EXPECT_EQ(r.err, "");
  const json j = parse_stdout_json(r);
  const std::vector<int> ref_ids = ref["ids"].get<std::vector<int>>();
  ASSERT_EQ(ref_ids.size(), 65u);
  EXPECT_EQ(j["prompt_ids"], ref["prompt_ids"]);
  EXPECT_EQ(j["ids"].get<std::vector<int>>(), std::vector<int>(ref_ids.begin() + 5, ref_ids.end()));
  // The reference text is prompt + completion; the CLI's text is the completion alone.
  const std::string ref_text = ref["text"].get<std::string>();
  ASSERT_EQ(ref_text.rfind(kPrompt, 0), 0u);
  EXPECT_EQ(j["text"].get<std::string>(), ref_text.substr(std::string(kPrompt).size()));
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["timings"]["completion_tokens"], 60);
  EXPECT_EQ(j["timings"]["prompt_tokens"], 5);
}

TEST(Cli, GreedyStreamingPrintsTextAndNewline) {
  REQUIRE_STORIES();
  const std::string ref_text = reference()["text"].get<std::string>();
  const RunResult r = run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--temp", "0"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, ref_text.substr(std::string(kPrompt).size()) + "\n");
}

TEST(Cli, SeedMakesSamplingReproducible) {
  REQUIRE_STORIES();
  auto ids = [](const char* seed) {
    const json j = parse_stdout_json(run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--seed", seed, "--temp", "1",
                                              "--json"}));
    return j["ids"].get<std::vector<int>>();
  };
  const auto a = ids("5"), b = ids("5"), c = ids("6");
  EXPECT_EQ(a.size(), 60u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Cli, StopStringEndsGeneration) {
  REQUIRE_STORIES();
  const std::string full = reference()["text"].get<std::string>().substr(std::string(kPrompt).size());
  const json j = parse_stdout_json(run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--temp", "0", "--stop", "Lily",
                                            "--json"}));
  EXPECT_EQ(j["finish_reason"], "stop");
  const std::string text = j["text"].get<std::string>();
  EXPECT_EQ(text.find("Lily"), std::string::npos) << text;
  EXPECT_EQ(text, full.substr(0, full.find("Lily")));
  EXPECT_LT(j["ids"].size(), 60u);
}

TEST(Cli, MaxTokensLimitsLength) {
  REQUIRE_STORIES();
  const json j = parse_stdout_json(run_cli({"-m", stories(), "-p", kPrompt, "-n", "5", "--temp", "0", "--json"}));
  EXPECT_EQ(j["ids"].size(), 5u);
  EXPECT_EQ(j["finish_reason"], "length");
}

// One-shot generation sizes its cache by what it can reach (prompt + max tokens), not by the model's
// context (stories260K: 512 positions), and still produces the reference's greedy text; a context
// smaller than that bound caps it and ends the generation at the context.
TEST(Cli, OneShotCacheHoldsPromptAndMaxTokens) {
  REQUIRE_STORIES();
  const RunResult r = run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--temp", "0", "-v"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.err.find("(65 positions)"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, reference()["text"].get<std::string>().substr(std::string(kPrompt).size()) + "\n");
  const RunResult c =
      run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--temp", "0", "-v", "--ctx", "20", "--json"});
  EXPECT_NE(c.err.find("(20 positions)"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("the context is full after 16 of 60 tokens"), std::string::npos) << c.err;
  EXPECT_EQ(r.err.find("context is full"), std::string::npos) << r.err;
  const json j = parse_stdout_json(c);
  EXPECT_EQ(j["ids"].size(), 16u);  // 20 positions: 5 prompt ids, 15 fed, the 16th sampled and not fed
  EXPECT_EQ(j["finish_reason"], "length");
}

// --kv-type f16: the cache holds fp16 (the verbose line says so, at half the size), and greedy decoding
// still gives the llama2.c reference text; an unknown type is a one-line usage error.
TEST(Cli, HalfKvCacheFlag) {
  REQUIRE_STORIES();
  auto cache_size = [](const std::string& err) {
    const size_t at = err.find("kv cache ");
    return at == std::string::npos ? std::string() : err.substr(at + 9, err.find(' ', at + 9) - at - 9);
  };
  const RunResult f = run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--temp", "0", "-v"});
  const RunResult h = run_cli({"-m", stories(), "-p", kPrompt, "-n", "60", "--temp", "0", "-v", "--kv-type", "f16"});
  EXPECT_EQ(h.exit_code, 0) << describe(h);
  EXPECT_NE(f.err.find(" f32 (65 positions)"), std::string::npos) << f.err;
  EXPECT_NE(h.err.find(" f16 (65 positions)"), std::string::npos) << h.err;
  const double fk = std::atof(cache_size(f.err).c_str()), hk = std::atof(cache_size(h.err).c_str());
  EXPECT_GT(hk, 0.0) << h.err;
  EXPECT_NEAR(fk, 2 * hk, 0.1) << f.err << h.err;
  EXPECT_EQ(h.out, reference()["text"].get<std::string>().substr(std::string(kPrompt).size()) + "\n");
  const RunResult bad = run_cli({"-m", stories(), "-p", kPrompt, "--kv-type", "q8"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(bad.out.empty());
  EXPECT_NE(bad.err.find("--kv-type"), std::string::npos) << bad.err;
}

TEST(Cli, InfoPrintsConfig) {
  REQUIRE_STORIES();
  const RunResult r = run_cli({"info", "-m", stories()});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.out.find("vocab_size"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("512"), std::string::npos) << r.out;
}

TEST(Cli, HelpListsSubcommands) {
  const RunResult r = run_cli({"--help"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  for (const char* w : {"info", "tokenize", "bench"}) EXPECT_NE(r.out.find(w), std::string::npos) << w << "\n" << r.out;
}

}  // namespace

namespace {

// bench --quant-list: one JSON line per quantization in the order given, each against the same
// full-precision baseline, each quantized model the size that --quant alone reports; bad lists are
// one-line errors before anything is built.
TEST(Cli, BenchQuantListSharesOneBaseline) {
  const std::string dir = fixture("w8_gqa1_f32");
  const std::vector<std::string> common = {"bench", "-m", dir, "--prompt-tokens", "4", "--gen-tokens", "2",
                                           "-t",    "1",  "--skip-bandwidth", "--json"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = common;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
  };
  const RunResult r = with({"--quant-list", "int8,nf4,int4"});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  std::vector<json> lines;
  size_t at = 0;
  while (at < r.out.size()) {
    const size_t nl = r.out.find('\n', at);
    ASSERT_NE(nl, std::string::npos) << describe(r);
    lines.push_back(json::parse(r.out.substr(at, nl - at)));
    at = nl + 1;
  }
  ASSERT_EQ(lines.size(), 3u) << describe(r);
  const char* names[] = {"int8", "nf4", "int4"};
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["quant"], names[i]);
    EXPECT_EQ(lines[i]["baseline"]["weights_gb"], lines[0]["baseline"]["weights_gb"]);
    EXPECT_LT(lines[i]["weights_gb"].get<double>(), lines[i]["baseline"]["weights_gb"].get<double>());
    const json alone = parse_stdout_json(with({"--quant", names[i]}));
    EXPECT_EQ(alone["weights_gb"], lines[i]["weights_gb"]) << names[i];
    EXPECT_EQ(alone["baseline"]["weights_gb"], lines[i]["baseline"]["weights_gb"]) << names[i];
  }
  expect_error(with({"--quant-list", "int8,none"}), {"--quant-list", "none"});
  expect_error(with({"--quant-list", "int8", "--quant", "nf4"}), {"--quant-list"});
  expect_error(with({"--quant-list", "int8,int4", "--batch", "2"}), {"--batch"});
}

}  // namespace
