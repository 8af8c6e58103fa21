// `mistral-run batch` end to end: batched output equals one-shot runs at batch sizes 1, 3 and 8
// (on stories260K with a sliding window of 16 added, so some prompts exceed the window), bad lines
// become error lines, and a run killed with SIGKILL then resumed ends with one line per id.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "test_util.h"

using json = nlohmann::json;

namespace {

std::string stories() { return testutil::shared_data("models/stories260K"); }

// stories260K with sliding_window 16: the same weights, so every prompt also runs one-shot.
std::string windowed_model(const testutil::TempDir& td) {
  const std::string dir = td.file("model");
  ::mkdir(dir.c_str(), 0755);
  json cfg = json::parse(testutil::read_file(stories() + "/config.json"));
  cfg["sliding_window"] = 16;
  testutil::write_file(dir + "/config.json", cfg.dump());
  for (const char* f : {"model.safetensors", "tokenizer.json"})
    if (::symlink((stories() + "/" + f).c_str(), (dir + "/" + f).c_str()) != 0) ADD_FAILURE() << "symlink " << f;
  return dir;
}

// 22 prompts of mixed lengths, one per line (also read by tools/batch_equivalence.py for the GPU check).
std::vector<std::string> prompts() {
  std::vector<std::string> p;
  std::istringstream in(testutil::read_file(testutil::source_path("tests/data/batch/stories_prompts.txt")));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) p.push_back(line);
  return p;
}

std::map<std::string, json> read_results(const std::string& path) {
  std::map<std::string, json> m;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    const std::string id = j["id"].dump();
    EXPECT_EQ(m.count(id), 0u) << "duplicate id " << id;
    m[id] = j;
  }
  return m;
}

TEST(BatchCli, EqualsOneShotAtBatchSizes1_3_8) {
  if (!testutil::exists(stories())) GTEST_SKIP() << "stories260K is not present";
  testutil::TempDir td;
  const std::string model = windowed_model(td);
  const std::vector<std::string> kPrompts = prompts();
  ASSERT_EQ(kPrompts.size(), 22u);
  testutil::write_file(td.file("in.txt"), testutil::read_file(testutil::source_path("tests/data/batch/stories_prompts.txt")));
  // Reference: each prompt alone through the one-shot path.
  std::vector<json> solo;
  for (const auto& p : kPrompts) {
    auto r = testutil::run_cli({"-m", model, "-p", p, "-n", "40", "--temp", "0", "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    solo.push_back(json::parse(r.out));
  }
  bool longer_than_window = false;
  for (const auto& s : solo) longer_than_window |= s["prompt_ids"].size() + s["ids"].size() > 16;
  EXPECT_TRUE(longer_than_window);
  for (const char* bs : {"1", "3", "8"}) {
    const std::string out = td.file(std::string("out") + bs + ".jsonl");
    auto r = testutil::run_cli({"batch", "-m", model, "-i", td.file("in.txt"), "-o", out, "-n", "40", "--temp", "0",
                                "--batch-size", bs, "--chunk", "5"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("requests done"), std::string::npos) << "no summary line: " << r.err;
    auto res = read_results(out);
    ASSERT_EQ(res.size(), kPrompts.size());
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      const json& got = res[std::to_string(i + 1)];
      EXPECT_EQ(got["text"], solo[i]["text"]) << "batch " << bs << " prompt " << i;
      EXPECT_EQ(got["completion_tokens"], solo[i]["ids"].size());
      EXPECT_EQ(got["prompt_tokens"], solo[i]["prompt_ids"].size());
      EXPECT_EQ(got["finish_reason"], solo[i]["finish_reason"]);
    }
  }
}

TEST(BatchCli, BadLinesBecomeErrorLines) {
  if (!testutil::exists(stories())) GTEST_SKIP() << "stories260K is not present";
  testutil::TempDir td;
  testutil::write_file(td.file("in.jsonl"),
                       "{\"id\": \"ok\", \"prompt\": \"The cat\", \"max_tokens\": 4}\n"
                       "this is not json\n"
                       "{\"id\": \"nofield\"}\n"
                       "{\"id\": \"badtemp\", \"prompt\": \"x\", \"temperature\": \"hot\"}\n"
                       "{\"custom_id\": \"oa\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
                       "\"body\": {\"prompt\": \"A dog\", \"max_tokens\": 3}}\n"
                       "{\"id\": \"long\", \"prompt\": \"" + std::string(3000, 'a') + "\"}\n");
  auto r = testutil::run_cli({"batch", "-m", stories(), "-i", td.file("in.jsonl"), "-o", td.file("out.jsonl"), "--temp",
                              "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto res = read_results(td.file("out.jsonl"));
  ASSERT_EQ(res.size(), 6u);
  EXPECT_EQ(res["\"ok\""]["completion_tokens"], 4);
  EXPECT_TRUE(res["2"].contains("error"));
  EXPECT_TRUE(res["\"nofield\""].contains("error"));
  EXPECT_TRUE(res["\"badtemp\""].contains("error"));
  EXPECT_EQ(res["\"oa\""]["completion_tokens"], 3);
  EXPECT_TRUE(res["\"long\""].contains("error")) << res["\"long\""].dump();
}

TEST(BatchCli, ResumeAfterSigkillGivesOneLinePerId) {
  if (!testutil::exists(stories())) GTEST_SKIP() << "stories260K is not present";
  testutil::TempDir td;
  const std::vector<std::string> kPrompts = prompts();
  std::string txt;
  const int n = 60;
  for (int i = 0; i < n; ++i) txt += kPrompts[size_t(i) % kPrompts.size()] + " " + std::to_string(i) + "\n";
  testutil::write_file(td.file("in.txt"), txt);
  const std::vector<std::string> common = {"batch", "-m", stories(), "-i", td.file("in.txt"), "-n", "300",
                                           "--temp", "0.8", "--seed", "7", "--ignore-eos", "--batch-size", "2",
                                           "-t", "1", "--ctx", "512"};
  // Uninterrupted reference.
  std::vector<std::string> full = common;
  full.insert(full.end(), {"-o", td.file("full.jsonl")});
  auto r = testutil::run_cli(full);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto want = read_results(td.file("full.jsonl"));
  ASSERT_EQ(want.size(), size_t(n));

  // Killed halfway with SIGKILL.
  const std::string out = td.file("out.jsonl");
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<std::string> args = common;
    args.insert(args.end(), {"-o", out});
    std::vector<char*> argv;
    std::string bin = MISTRAL_RUN_BIN;
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 2);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  size_t lines = 0;
  for (int i = 0; i < 6000 && lines < size_t(n) / 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::ifstream f(out);
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    lines = size_t(std::count(s.begin(), s.end(), '\n'));
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed; make it longer";
  // Simulate a torn write too: a half line at the end.
  {
    std::ofstream f(out, std::ios::app);
    f << "{\"id\": 999, \"text\": \"half";
  }
  std::vector<std::string> resume = common;
  resume.insert(resume.end(), {"-o", out, "--resume"});
  r = testutil::run_cli(resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("skipped"), std::string::npos);
  const auto got = read_results(out);
  EXPECT_EQ(got.size(), size_t(n));
  for (const auto& kv : want) {
    ASSERT_TRUE(got.count(kv.first)) << "missing id " << kv.first;
    EXPECT_EQ(got.at(kv.first), kv.second) << "id " << kv.first;
  }
}

}  // namespace

namespace {

TEST(BatchCli, MessagesUseTheChatEncoding) {
  if (!testutil::exists(stories())) GTEST_SKIP() << "stories260K is not present";
  testutil::TempDir td;
  const json conv = json::array({{{"role", "system"}, {"content", "Be kind"}},
                                 {{"role", "user"}, {"content", "Tell me a story"}}});
  testutil::write_file(td.file("conv.json"), conv.dump());
  testutil::write_file(td.file("in.jsonl"),
                       json({{"id", "c"}, {"messages", conv}, {"max_tokens", 6}}).dump() + "\n" +
                           json({{"id", "bad"}, {"messages", {{{"role", "robot"}, {"content", "x"}}}}}).dump() + "\n");
  auto tk = testutil::run_cli({"tokenize", "-m", stories(), "--messages", td.file("conv.json"), "--chat-format", "v1"});
  ASSERT_EQ(tk.exit_code, 0) << tk.err;
  const size_t n_ids = json::parse(tk.out)["ids"].size();
  auto r = testutil::run_cli({"batch", "-m", stories(), "-i", td.file("in.jsonl"), "-o", td.file("out.jsonl"), "--temp",
                              "0", "--chat-format", "v1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto res = read_results(td.file("out.jsonl"));
  EXPECT_EQ(res["\"c\""]["prompt_tokens"], n_ids);
  EXPECT_EQ(res["\"c\""]["completion_tokens"], 6);
  EXPECT_NE(res["\"bad\""]["error"].get<std::string>().find("robot"), std::string::npos);
  // Without a format the model cannot be chatted with: an error line per request, not a crash.
  r = testutil::run_cli({"batch", "-m", stories(), "-i", td.file("in.jsonl"), "-o", td.file("out2.jsonl")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_results(td.file("out2.jsonl"))["\"c\""].contains("error"));
}

}  // namespace
