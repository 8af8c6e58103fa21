// Chat encoding: our ids equal mistral-common's (../shared/data/chat vectors and tests/data/chat_cases_v*.json made
// by tools/gen_chat_fixtures.py), ChatML/Zephyr equal Hugging Face's template rendering, invalid conversations are
// rejected, and the format is chosen from the tokenizer and the chat_template.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mistral/backend.h"
#include "mistral/chat.h"
#include "mistral/chat_session.h"
#include "mistral/engine.h"
#include "mistral/model.h"
#include "mistral/error.h"
#include "mistral/tokenizer.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace mistral;

std::string v1_model() { return testutil::shared_data("tokenizers/mistral-v0.1/tokenizer.model"); }
std::string v3_model() { return testutil::shared_data("tokenizers/mistral-v0.3/tokenizer.model.v3"); }

#define REQUIRE_FILE(path)                                                 \
  do {                                                                     \
    if (!testutil::exists(path)) GTEST_SKIP() << (path) << " is not present"; \
  } while (0)

// mistral-common's bundled tokenizer files (its wheel's data directory): $MISTRAL_COMMON_DATA, else asked from
// python3; "" when mistral-common is not installed (tools/install-deps.sh installs it).
std::string mistral_common_data() {
  static const std::string dir = [] {
    if (const char* e = std::getenv("MISTRAL_COMMON_DATA")) return std::string(e);
    std::string out;
    if (FILE* p = ::popen("python3 -c 'import mistral_common, os; print(os.path.dirname(mistral_common.__file__))' "
                          "2>/dev/null", "r")) {
      char buf[4096];
      while (std::fgets(buf, sizeof buf, p)) out += buf;
      ::pclose(p);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out.empty() ? out : out + "/data";
  }();
  return dir;
}

// The tokenizer file mistral-common uses for each instruct version, among what ../shared/data holds. v2 has no
// file there: mistral-common's v2 file differs from the v3 file only in the names of 24 unused control tokens, so
// the v3 file gives the same ids for conversations without tools (tokens_v2.json == tokens_v3.json for no_tools).
// v7 and tekken come from mistral-common's wheel.
std::string tokenizer_for(const std::string& version) {
  if (version == "v1") return v1_model();
  if (version == "v2" || version == "v3") return v3_model();
  const std::string mc = mistral_common_data();
  if (mc.empty()) return "";
  if (version == "v7") return mc + "/mistral_instruct_tokenizer_241114.model.v7";
  if (version == "tekken_v3" || version == "tekken_v7") return mc + "/tekken_240718.json";
  return "";
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) return Tokenizer::load_tekken(path);
  return Tokenizer::load_sentencepiece(path);
}

Conversation to_conv(const json& msgs) {
  Conversation c;
  for (const auto& m : msgs) c.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  return c;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

std::string show(const Conversation& c) { return conversation_to_json(c); }

// ---- mistral-common's own vectors ------------------------------------------------------------------

TEST(ChatVectors, SharedDataFolders) {
  const std::string root = testutil::shared_data("chat");
  if (!testutil::exists(root)) GTEST_SKIP() << root << " is not present";
  int checked = 0, skipped_tools = 0;
  for (const auto& dir : fs::directory_iterator(root)) {
    if (!dir.is_directory()) continue;
    const json sample = json::parse(testutil::read_file(dir.path().string() + "/sample.json"));
    bool tools = sample.contains("tools") && !sample["tools"].empty();
    for (const auto& m : sample["messages"])
      if (m["role"] == "tool" || (m.contains("tool_calls") && !m["tool_calls"].is_null())) tools = true;
    if (tools) {  // function calling is outside this encoder
      ++skipped_tools;
      continue;
    }
    const Conversation conv = to_conv(sample["messages"]);
    for (const char* v : {"v1", "v2", "v3", "v7", "v11", "v13"}) {
      const std::string tok_path = dir.path().string() + "/tokens_" + v + ".json";
      if (!testutil::exists(tok_path)) continue;
      const std::string tfile = tokenizer_for(v);
      ASSERT_FALSE(tfile.empty()) << dir.path() << " has " << v << " vectors but no tokenizer file is known for it";
      auto tok = Tokenizer::load_sentencepiece(tfile);
      ChatEncoder enc(*tok, parse_chat_format(v));
      const std::vector<int32_t> want = json::parse(testutil::read_file(tok_path))["tokens"].get<std::vector<int32_t>>();
      const std::vector<int32_t> got = enc.encode(conv, conv.back().role == "user");
      EXPECT_EQ(got, want) << dir.path() << " " << v;
      // text_vN.txt is mistral-common's decode with special tokens kept: the pieces joined.
      const std::string text_path = dir.path().string() + "/text_" + v + ".txt";
      if (testutil::exists(text_path)) {
        std::string joined;
        for (int32_t id : got) joined += enc.piece(id);
        EXPECT_EQ(joined, testutil::read_file(text_path)) << dir.path() << " " << v;
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, 3) << "expected no_tools with v1, v2 and v3";
  RecordProperty("checked", checked);
  RecordProperty("skipped_with_tools", skipped_tools);
}

// ---- generated conversations (tools/gen_chat_fixtures.py) ------------------------------------------

struct CaseStats {
  int encoded = 0, rejected = 0;
};

CaseStats run_cases(const std::string& fixture, const ChatEncoder& enc) {
  const json doc = json::parse(testutil::read_file(testutil::source_path("tests/data/" + fixture)));
  CaseStats st;
  int idx = 0;
  for (const auto& c : doc["cases"]) {
    const Conversation conv = to_conv(c["messages"]);
    const bool gen = c["generation"].get<bool>();
    if (c.contains("ids")) {
      std::vector<int32_t> got;
      try {
        got = enc.encode(conv, gen);
      } catch (const std::exception& e) {
        ADD_FAILURE() << fixture << " case " << idx << ": unexpected error " << e.what() << "\n" << show(conv);
        ++idx;
        continue;
      }
      const std::vector<int32_t> want = c["ids"].get<std::vector<int32_t>>();
      EXPECT_EQ(got, want) << fixture << " case " << idx << " (generation " << gen << ")\n"
                           << show(conv) << "\n got: " << show(got) << "\nwant: " << show(want);
      ++st.encoded;
    } else {
      EXPECT_THROW(enc.encode(conv, gen), UsageError)
          << fixture << " case " << idx << ": the reference rejects it (" << c["error"].get<std::string>() << ")\n"
          << show(conv);
      ++st.rejected;
    }
    ++idx;
  }
  return st;
}

class MistralCommonCases : public ::testing::TestWithParam<std::string> {};

TEST_P(MistralCommonCases, EqualMistralCommon) {
  const std::string v = GetParam();
  const std::string tfile = tokenizer_for(v);
  if (tfile.empty())
    GTEST_SKIP() << v << ": mistral-common is not installed (python3 -m pip install mistral-common), so its "
                 << "tokenizer files are not available";
  REQUIRE_FILE(tfile);
  auto tok = load_tokenizer(tfile);
  ChatEncoder enc(*tok, parse_chat_format(v.substr(v.rfind('_') + 1)));
  const bool full = v == "v1" || v == "v3" || v == "tekken_v3";
  const CaseStats st = run_cases("chat_cases_" + v + ".json", enc);
  EXPECT_GE(st.encoded + st.rejected, full ? 240 : 120);
  EXPECT_GE(st.encoded, full ? 200 : 100);
  RecordProperty("encoded", st.encoded);
  RecordProperty("rejected", st.rejected);
}

INSTANTIATE_TEST_SUITE_P(Versions, MistralCommonCases, ::testing::Values("v1", "v2", "v3", "v7", "tekken_v3", "tekken_v7"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// A model directory with the v0.1 tokenizer.json and a tokenizer_config.json holding `template` (and ChatML's
// added tokens), as OpenHermes-2.5-Mistral-7B and zephyr-7b-beta ship them.
void make_template_dir(const testutil::TempDir& td, const json& meta) {
  fs::copy_file(testutil::shared_data("tokenizers/mistral-v0.1/tokenizer.json"), td.file("tokenizer.json"));
  json cfg = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"chat_template", meta["chat_template"]}};
  if (meta.contains("added_tokens"))
    for (auto it = meta["added_tokens"].begin(); it != meta["added_tokens"].end(); ++it)
      cfg["added_tokens_decoder"][std::to_string(it.value().get<int>())] = {{"content", it.key()}, {"special", true}};
  testutil::write_file(td.file("tokenizer_config.json"), cfg.dump(2));
}

class TemplateCases : public ::testing::TestWithParam<std::string> {};

TEST_P(TemplateCases, EqualHuggingFaceRendering) {
  REQUIRE_FILE(testutil::shared_data("tokenizers/mistral-v0.1/tokenizer.json"));
  const std::string fmt = GetParam();
  const std::string fixture = "chat_cases_" + fmt + ".json";
  const json doc = json::parse(testutil::read_file(testutil::source_path("tests/data/" + fixture)));
  testutil::TempDir td;
  make_template_dir(td, doc["meta"]);
  auto tok = Tokenizer::load_dir(td.path());
  const ChatTemplateInfo info = read_chat_template_info(td.path());
  const ChatFormat f = choose_chat_format("", *tok, info);
  EXPECT_EQ(chat_format_name(f), fmt);
  ChatEncoder enc(*tok, f, info);
  if (fmt == "chatml") {
    EXPECT_EQ(enc.stop_ids(), std::vector<int32_t>{32000});
    EXPECT_EQ(enc.piece(32001), "<|im_start|>");
  }
  const CaseStats st = run_cases(fixture, enc);
  EXPECT_GE(st.encoded, 90);
}

// SmolLM2's template writes its own system turn when the conversation has none (Qwen2.5's does the same).
TEST(TemplateDefaults, ChatMLDefaultSystemTurn) {
  REQUIRE_FILE(testutil::shared_data("tokenizers/mistral-v0.1/tokenizer.json"));
  const std::string smollm =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
      "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
      "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\n' }}{% endif %}";
  testutil::TempDir td;
  make_template_dir(td, {{"chat_template", smollm}, {"added_tokens", {{"<|im_end|>", 32000}, {"<|im_start|>", 32001}}}});
  auto tok = Tokenizer::load_dir(td.path());
  const ChatTemplateInfo info = read_chat_template_info(td.path());
  ChatEncoder with_default(*tok, choose_chat_format("", *tok, info), info);
  ChatTemplateInfo plain = info;
  plain.chat_template = "<|im_start|><|im_end|>";
  ChatEncoder without(*tok, ChatFormat::ChatML, plain);
  const std::string sys = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
  EXPECT_EQ(with_default.encode({{"user", "Hi"}}, true), without.encode({{"system", sys}, {"user", "Hi"}}, true));
  // A system message of the conversation replaces it.
  EXPECT_EQ(with_default.encode({{"system", "S"}, {"user", "Hi"}}, true),
            without.encode({{"system", "S"}, {"user", "Hi"}}, true));
  // The same template with the escape written in the Jinja source (\\n) gives the same turn.
  std::string escaped = smollm;
  escaped.replace(escaped.find("system\nYou"), 7, "system\\n");
  ChatTemplateInfo esc = info;
  esc.chat_template = escaped;
  EXPECT_EQ(ChatEncoder(*tok, ChatFormat::ChatML, esc).encode({{"user", "Hi"}}, true),
            with_default.encode({{"user", "Hi"}}, true));
}

INSTANTIATE_TEST_SUITE_P(Formats, TemplateCases, ::testing::Values("chatml", "zephyr"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// ---- rules, spelled out --------------------------------------------------------------------------------

class ChatRules : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_FILE(v1_model());
    REQUIRE_FILE(v3_model());
    v1 = Tokenizer::load_sentencepiece(v1_model());
    v3 = Tokenizer::load_sentencepiece(v3_model());
  }
  std::vector<int32_t> enc(const Tokenizer& t, const std::string& s) const { return t.encode(s, false); }
  static std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
  std::unique_ptr<Tokenizer> v1, v3;
};

TEST_F(ChatRules, V1SystemPromptJoinsTheFirstUserMessage) {
  ChatEncoder e(*v1, ChatFormat::V1);
  const Conversation c = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};
  EXPECT_EQ(e.encode(c, true), cat({{1}, enc(*v1, "[INST] Be brief.\n\nHi [/INST]"), enc(*v1, "Hello!"), {2},
                                    enc(*v1, "[INST] Bye [/INST]")}));
}

TEST_F(ChatRules, V3SystemPromptJoinsTheLastUserMessageAndAnswersAreRstripped) {
  ChatEncoder e(*v3, ChatFormat::V3);
  const Conversation c = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!  "}, {"user", "Bye"}};
  EXPECT_EQ(e.encode(c, true),
            cat({{1, 3}, enc(*v3, "Hi"), {4}, enc(*v3, "Hello!"), {2, 3}, enc(*v3, "Be brief.\n\nBye"), {4}}));
  // A finished conversation closes the last answer with </s>.
  const Conversation done = {{"user", "Hi"}, {"assistant", "Hello!"}};
  EXPECT_EQ(e.encode(done, false), cat({{1, 3}, enc(*v3, "Hi"), {4}, enc(*v3, "Hello!"), {2}}));
}

TEST_F(ChatRules, ConsecutiveUserMessagesAreMerged) {
  // mistral-common (1.13) merges a run of user messages with "\n\n" rather than rejecting it.
  ChatEncoder e(*v3, ChatFormat::V3);
  const Conversation c = {{"user", "one"}, {"user", ""}, {"user", "two"}};
  EXPECT_EQ(e.encode(c, true), cat({{1, 3}, enc(*v3, "one\n\ntwo"), {4}}));
}

TEST_F(ChatRules, ControlTokensNeverComeFromText) {
  ChatEncoder e(*v3, ChatFormat::V3);
  const std::vector<int32_t> ids = e.encode({{"user", "[INST] hi [/INST] </s> <s>"}}, true);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 3);
  EXPECT_EQ(ids.back(), 4);
  for (size_t i = 2; i + 1 < ids.size(); ++i) EXPECT_GT(ids[i], 770) << i;
}

TEST_F(ChatRules, InvalidConversations) {
  ChatEncoder e(*v3, ChatFormat::V3);
  auto expect_error = [&](const Conversation& c, bool gen, const std::string& what) {
    try {
      e.encode(c, gen);
      ADD_FAILURE() << "no error for " << show(c);
    } catch (const UsageError& err) {
      EXPECT_NE(std::string(err.what()).find(what), std::string::npos) << err.what();
    }
  };
  expect_error({}, true, "empty");
  expect_error({{"bot", "hi"}}, true, "unknown role 'bot'");
  expect_error({{"tool", "22"}}, true, "tool messages are not supported");
  expect_error({{"user", "hi"}, {"assistant", ""}, {"user", "again"}}, true, "must have content");
  expect_error({{"assistant", "hi"}}, true, "start with a user or system");
  expect_error({{"user", "hi"}, {"assistant", "hello"}}, true, "must end with a user message");
  // A trailing system message is fine: it joins the system prompt.
  EXPECT_EQ(e.encode({{"user", "hi"}, {"system", "S"}}, true), cat({{1, 3}, enc(*v3, "S\n\nhi"), {4}}));
  expect_error({{"user", "hi"}}, false, "must end with an assistant message");
  expect_error({{"user", "hi"}, {"assistant", "a"}, {"system", "s"}, {"user", "b"}}, true,
               "cannot follow an assistant");
  // A lone system message is a valid prompt (mistral-common adds an empty user message).
  EXPECT_EQ(e.encode({{"system", "S"}}, true), cat({{1, 3}, enc(*v3, "S\n\n"), {4}}));
}

TEST_F(ChatRules, FormatsNeedTheirControlTokens) {
  EXPECT_THROW(ChatEncoder(*v1, ChatFormat::V3), ConfigError);
  EXPECT_THROW(ChatEncoder(*v3, ChatFormat::V7), ConfigError);  // v0.3 has no [SYSTEM_PROMPT]
  EXPECT_NO_THROW(ChatEncoder(*v3, ChatFormat::V1));              // v1 only needs text
}

TEST_F(ChatRules, FormatFromTemplateAndTokenizer) {
  // Mistral-7B-Instruct's templates: [INST] as text with the 32000-piece tokenizer, control tokens with v0.3's.
  const std::string mistral_tmpl =
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
      "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
      "{% endif %}{% endfor %}";
  EXPECT_EQ(chat_format_from_template(mistral_tmpl, *v1), ChatFormat::V1);
  EXPECT_EQ(chat_format_from_template(mistral_tmpl, *v3), ChatFormat::V3);
  EXPECT_EQ(chat_format_from_template("{{'<|im_start|>' + m + '<|im_end|>'}}", *v1), ChatFormat::ChatML);
  EXPECT_EQ(chat_format_from_template("{{ '<|user|>\n' }}{{ '<|assistant|>' }}", *v1), ChatFormat::Zephyr);
  try {
    chat_format_from_template("{% for m in messages %}<start_of_turn>{{ m.content }}{% endfor %}", *v1);
    ADD_FAILURE() << "no error for an unknown template";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--chat-format"), std::string::npos) << e.what();
  }
  // The file name of a mistral-common tokenizer wins; a plain tokenizer.model with [INST] controls is v3.
  EXPECT_EQ(choose_chat_format("", *v3, {}), ChatFormat::V3);
  EXPECT_EQ(choose_chat_format("zephyr", *v3, {}), ChatFormat::Zephyr);
  EXPECT_THROW(choose_chat_format("", *v1, {}), ConfigError);  // base model: no template, no controls
  EXPECT_THROW(parse_chat_format("llama3"), UsageError);
  EXPECT_THROW(parse_chat_format("tekken"), UsageError);
}

TEST(ChatFormatChoice, TekkenVersionFromTheFile) {
  const std::string mc = mistral_common_data();
  if (mc.empty()) GTEST_SKIP() << "mistral-common is not installed";
  REQUIRE_FILE(mc + "/tekken_240718.json");
  auto tok = Tokenizer::load_tekken(mc + "/tekken_240718.json");
  EXPECT_EQ(choose_chat_format("", *tok, {}), ChatFormat::V3);  // Mistral-Nemo: version v3
  ChatEncoder e(*tok, ChatFormat::V3);
  EXPECT_FALSE(e.drops_answer_space());  // tekken adds no dummy-prefix space
  EXPECT_EQ(e.encode({{"user", "Hi"}}, true), (std::vector<int32_t>{1, 3, 37133, 4}));
}

TEST(ChatFormatChoice, StoriesNeedsAnExplicitFormat) {
  const std::string dir = testutil::shared_data("models/stories260K");
  REQUIRE_FILE(dir + "/tokenizer.json");
  auto tok = Tokenizer::load_dir(dir);
  const ChatTemplateInfo info = read_chat_template_info(dir);
  EXPECT_EQ(info.chat_template, "");
  try {
    choose_chat_format("", *tok, info);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--chat-format"), std::string::npos) << e.what();
  }
  ChatEncoder e(*tok, choose_chat_format("v1", *tok, info), info);
  const std::vector<int32_t> ids = e.encode({{"user", "Once upon a time"}}, true);
  EXPECT_EQ(ids, [&] {
    std::vector<int32_t> v{1};
    const auto t = tok->encode("[INST] Once upon a time [/INST]", false);
    v.insert(v.end(), t.begin(), t.end());
    return v;
  }());
}

TEST(ChatTemplateInfo, ListOfTemplatesAndAddedTokens) {
  testutil::TempDir td;
  json cfg = {{"chat_template", json::array({{{"name", "tool_use"}, {"template", "x"}},
                                             {{"name", "default"}, {"template", "<|im_start|><|im_end|>"}}})},
              {"added_tokens_decoder", {{"32000", {{"content", "<|im_end|>"}}}}}};
  testutil::write_file(td.file("tokenizer_config.json"), cfg.dump());
  testutil::write_file(td.file("added_tokens.json"), R"({"<|im_start|>": 32001})");
  const ChatTemplateInfo info = read_chat_template_info(td.path());
  EXPECT_EQ(info.chat_template, "<|im_start|><|im_end|>");
  EXPECT_EQ(info.added_tokens.at("<|im_end|>"), 32000);
  EXPECT_EQ(info.added_tokens.at("<|im_start|>"), 32001);
  testutil::write_file(td.file("tokenizer_config.json"), "{not json");
  EXPECT_THROW(read_chat_template_info(td.path()), FileError);
}

// ---- conversation JSON ---------------------------------------------------------------------------------

TEST(ConversationJson, RoundTripAndErrors) {
  const Conversation c = {{"system", "S"}, {"user", "héllo \"q\"\n😀"}, {"assistant", "a"}};
  EXPECT_EQ(show(parse_conversation_json(conversation_to_json(c), "x")), show(c));
  // mistral-common's sample layout: {"messages": [...], "tools": []} with "tool_calls": null.
  const Conversation s = parse_conversation_json(
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "tool_calls": null}],
          "tools": []})",
      "sample");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[1].content, "a");
  auto expect_error = [](const std::string& text, const std::string& what) {
    try {
      parse_conversation_json(text, "conv.json");
      ADD_FAILURE() << "no error for " << text;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("conv.json"), std::string::npos) << e.what();
    }
  };
  expect_error("[{", "invalid JSON");
  expect_error(R"({"role": "user"})", "JSON list");
  expect_error(R"([{"role": "robot", "content": "x"}])", "unknown role 'robot'");
  expect_error(R"([{"role": "tool", "content": "x"}])", "tool messages");
  expect_error(R"([{"role": "user", "content": 3}])", "content");
  expect_error(R"([{"role": "user"}])", "content");
  expect_error(R"([{"content": "x"}])", "role");
  expect_error(R"([{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}])", "tool calls");
  EXPECT_THROW(load_conversation_file("/nonexistent/conv.json"), FileError);
}

// ---- ChatSession: the KV cache across turns -------------------------------------------------------------

std::string stories_dir() { return testutil::shared_data("models/stories260K"); }

// stories260K (no sliding window, 512 positions) or a copy of it with a 64-token sliding window.
struct ChatRig {
  explicit ChatRig(const std::string& dir, ChatFormat f = ChatFormat::V1) {
    model = Model::load(dir, LoadOptions{});
    tok = Tokenizer::load_dir(dir);
    backend = make_cpu_backend(1);
    fp.reset(new ForwardPass(*model, *backend, SessionOptions{}));
    enc.reset(new ChatEncoder(*tok, f));
  }
  std::unique_ptr<ChatSession> session() const { return std::unique_ptr<ChatSession>(new ChatSession(*fp, *enc)); }
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ForwardPass> fp;
  std::unique_ptr<ChatEncoder> enc;
};

GenerateParams greedy(int max_tokens) {
  GenerateParams gp;
  gp.max_tokens = max_tokens;
  gp.sampler.temperature = 0.0f;
  return gp;
}

const std::vector<std::string> kMessages = {
    "Tell me a story.", "What happened next?", "Who is Lily?", "Where is the dog?", "Why?",
    "Was she happy?", "Once upon a time", "The end.", "Say hi to Tom", "Bye"};

#define REQUIRE_STORIES() REQUIRE_FILE(stories_dir() + "/model.safetensors")

// The measurement the issue asks for: over 10 turns each turn prefills only the tokens the cache lacks, which
// are that turn's new tokens (the user turn) plus what the previous turn sampled last and never fed (its final
// token or end-of-answer id). Measured on the cache itself: positions before and after each turn.
TEST(ChatSession, TenTurnsPrefillOnlyTheirNewTokens) {
  REQUIRE_STORIES();
  ChatRig rig(stories_dir());
  auto chat = rig.session();
  int64_t prev_prompt = 0, prev_generated = 0;
  for (size_t t = 0; t < kMessages.size(); ++t) {
    const Conversation before = chat->conversation();
    const std::vector<int32_t> cached = chat->cached_ids();
    const int64_t cached_before = chat->cached_tokens();
    // This turn's new tokens: what the user message adds to the conversation's encoding.
    int64_t new_tokens = 0, done = 0;
    {
      Conversation with_user = before;
      with_user.push_back({"user", kMessages[t]});
      const std::vector<int32_t> prompt = rig.enc->encode(with_user, true);
      done = before.empty() ? 0 : int64_t(rig.enc->encode(before, false).size());
      new_tokens = int64_t(prompt.size()) - done;
      ASSERT_LE(cached.size(), prompt.size());
      EXPECT_TRUE(std::equal(cached.begin(), cached.end(), prompt.begin())) << "turn " << t << ": cache is not a prefix";
    }
    const ChatTurn turn = chat->send(kMessages[t], greedy(16 + int(t)));
    SCOPED_TRACE("turn " + std::to_string(t) + ": " + turn.finish_reason);
    EXPECT_EQ(turn.cached_before, cached_before);
    EXPECT_EQ(turn.reused_tokens, cached_before);
    EXPECT_EQ(turn.rolled_back, 0);
    EXPECT_FALSE(turn.cache_rebuilt);
    EXPECT_EQ(turn.dropped_turns, 0);
    EXPECT_EQ(turn.prefilled_tokens, turn.prompt_tokens - cached_before);
    // Besides the new tokens, only what the finished previous turn has that the cache lacks: its end-of-answer
    // id (sampled, never fed), and for an answer cut by max_tokens its last token too.
    EXPECT_EQ(turn.prefilled_tokens, new_tokens + (done - cached_before));
    if (t > 0) {
      EXPECT_EQ(cached_before, prev_prompt + prev_generated - 1);  // everything but the last sampled id
      EXPECT_GE(done - cached_before, 1);
      EXPECT_LE(done - cached_before, 2);
    } else {
      EXPECT_EQ(turn.prefilled_tokens, new_tokens);
    }
    // The cache advanced by exactly the prefilled and decoded tokens.
    EXPECT_EQ(chat->cached_tokens() - cached_before, turn.prefilled_tokens + turn.decoded_tokens);
    prev_prompt = turn.prompt_tokens;
    prev_generated = turn.generated_tokens;
    RecordProperty("turn" + std::to_string(t), std::to_string(turn.prefilled_tokens) + " prefilled of " +
                                                   std::to_string(turn.prompt_tokens) + ", new " + std::to_string(new_tokens));
  }
  EXPECT_EQ(chat->totals().turns, 10);
  EXPECT_EQ(chat->totals().rebuilds, 0);
}

// Greedy answers do not depend on how the cache was filled: a conversation continued in place equals the same
// conversation (through its JSON) loaded into a fresh session, and into a session whose cache must roll back.
TEST(ChatSession, SavedAndLoadedConversationGivesTheSameNextAnswer) {
  REQUIRE_STORIES();
  ChatRig rig(stories_dir());
  auto a = rig.session();
  a->set_system("You tell stories.");
  for (int t = 0; t < 3; ++t) a->send(kMessages[size_t(t)], greedy(20));
  const std::string saved = conversation_to_json(a->conversation());
  const std::string next_a = a->send("And then?", greedy(20)).answer;

  auto b = rig.session();
  b->set_conversation(parse_conversation_json(saved, "saved"));
  const ChatTurn tb = b->send("And then?", greedy(20));
  EXPECT_EQ(tb.answer, next_a);
  EXPECT_EQ(tb.reused_tokens, 0);

  // The same session, loaded back: its cache holds the "And then?" turn, which the loaded conversation lacks.
  a->set_conversation(parse_conversation_json(saved, "saved"));
  const ChatTurn ta = a->send("And then?", greedy(20));
  EXPECT_EQ(ta.answer, next_a);
  EXPECT_GT(ta.rolled_back, 0);
  EXPECT_FALSE(ta.cache_rebuilt);
  EXPECT_GT(ta.reused_tokens, 0);
}

// A system prompt set mid-conversation changes the encoding near its start (v1 puts it in the first user
// message): the cache rolls back to the common prefix, and the answer equals a fresh session's.
TEST(ChatSession, RollBackGivesTheSameAnswerAsAFreshCache) {
  REQUIRE_STORIES();
  ChatRig rig(stories_dir());
  auto a = rig.session();
  for (int t = 0; t < 3; ++t) a->send(kMessages[size_t(t)], greedy(12));
  a->set_system("Be kind.");
  const ChatTurn ta = a->send("Go on.", greedy(12));
  EXPECT_GT(ta.rolled_back, 0);
  EXPECT_FALSE(ta.cache_rebuilt);
  EXPECT_GT(ta.reused_tokens, 0);
  EXPECT_LT(ta.reused_tokens, 12);  // just BOS and the start of "[INST] "
  Conversation conv = a->conversation();
  conv.pop_back();  // the new answer
  conv.pop_back();  // the new question
  auto b = rig.session();
  b->set_conversation(conv);
  EXPECT_EQ(b->send("Go on.", greedy(12)).answer, ta.answer);
}

// With a sliding window the cache rolls and the conversation goes on past any length; once the window has
// wrapped, a rollback is impossible and the cache is rebuilt, with the same answer as a fresh cache.
TEST(ChatSession, SlidingWindowGoesOnAndRebuildsWhenItCannotRollBack) {
  REQUIRE_STORIES();
  testutil::TempDir td;
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(stories_dir() + "/" + f, td.file(f));
  json cfg = json::parse(testutil::read_file(stories_dir() + "/config.json"));
  cfg["sliding_window"] = 64;
  cfg["max_position_embeddings"] = 1 << 20;
  testutil::write_file(td.file("config.json"), cfg.dump());
  ChatRig rig(td.path());
  auto a = rig.session();
  EXPECT_EQ(a->capacity(), INT64_MAX);
  int64_t total = 0;
  for (size_t t = 0; t < kMessages.size(); ++t) {
    const ChatTurn turn = a->send(kMessages[t], greedy(60));
    EXPECT_EQ(turn.reused_tokens, turn.cached_before) << t;
    EXPECT_EQ(turn.dropped_turns, 0);
    total = turn.prompt_tokens;
  }
  EXPECT_GT(total, 600);  // past the stories model's 512 positions
  a->set_system("Be kind.");
  const ChatTurn ta = a->send("Go on.", greedy(12));
  EXPECT_TRUE(ta.cache_rebuilt);
  EXPECT_EQ(ta.reused_tokens, 0);
  Conversation conv = a->conversation();
  conv.pop_back();
  conv.pop_back();
  auto b = rig.session();
  b->set_conversation(conv);
  EXPECT_EQ(b->send("Go on.", greedy(12)).answer, ta.answer);
}

// Without a window the context fills up: the oldest turns are dropped with a notice and the chat goes on.
TEST(ChatSession, FullContextDropsTheOldestTurns) {
  REQUIRE_STORIES();
  ChatRig rig(stories_dir());
  auto a = rig.session();
  std::vector<std::string> notices;
  a->on_notice = [&](const std::string& s) { notices.push_back(s); };
  int dropped = 0;
  for (int t = 0; t < 16; ++t) {
    GenerateParams gp = greedy(60);
    gp.ignore_eos = true;
    const ChatTurn turn = a->send(kMessages[size_t(t) % kMessages.size()], gp);
    dropped += turn.dropped_turns;
    EXPECT_LE(turn.prompt_tokens + 1, 512);
    EXPECT_FALSE(turn.answer.empty());
  }
  EXPECT_GT(dropped, 0);
  ASSERT_FALSE(notices.empty());
  EXPECT_NE(notices[0].find("dropped the oldest"), std::string::npos) << notices[0];
  // A message that cannot fit at all is an error, and the conversation stays as it was.
  const size_t n = a->messages().size();
  EXPECT_THROW(a->send(std::string(3000, 'x'), greedy(8)), UsageError);
  EXPECT_EQ(a->messages().size(), n);
}

// Ctrl-C: an interrupted answer keeps what was written; the next turn works.
TEST(ChatSession, InterruptedAnswerIsKept) {
  REQUIRE_STORIES();
  ChatRig rig(stories_dir());
  auto a = rig.session();
  int calls = 0;
  GenerateParams gp = greedy(400);
  gp.ignore_eos = true;
  std::string streamed;
  const ChatTurn t = a->send("Tell me a long story.", gp, [&](const std::string& s) { streamed += s; },
                             [&] { return ++calls > 10; });
  EXPECT_EQ(t.finish_reason, "interrupted");
  EXPECT_EQ(t.generated_tokens, 11);
  EXPECT_EQ(streamed, t.answer);
  ASSERT_EQ(a->messages().size(), 2u);
  EXPECT_EQ(a->messages()[1].content, t.answer);
  const ChatTurn t2 = a->send("Go on.", greedy(8));
  EXPECT_EQ(t2.reused_tokens, t2.cached_before);
  EXPECT_FALSE(t2.answer.empty());
}

// An answer's own ids stand in for its text only when they spell it: an edited answer is encoded as text.
TEST(ChatSession, AnswerIdsAreUsedOnlyWhenTheySpellTheContent) {
  REQUIRE_STORIES();
  ChatRig rig(stories_dir());
  auto a = rig.session();
  a->send("Tell me a story.", greedy(10));
  Conversation conv = a->conversation();
  ASSERT_EQ(conv.size(), 2u);
  ASSERT_FALSE(conv[1].ids.empty());
  EXPECT_TRUE(rig.enc->ids_spell(conv[1].ids, conv[1].content));
  conv.push_back({"user", "More"});
  const std::vector<int32_t> with_ids = rig.enc->encode(conv, true);
  conv[1].content += " (edited)";
  const std::vector<int32_t> edited = rig.enc->encode(conv, true);
  Conversation plain = conv;
  plain[1].ids.clear();
  EXPECT_EQ(edited, rig.enc->encode(plain, true));
  EXPECT_NE(with_ids, edited);
}

}  // namespace
