// `mistral-run chat` end to end: the REPL driven through a pseudo-terminal (two turns, /reset, /save then /load
// giving the same next answer under greedy decoding, Ctrl-C stopping an answer, multi-line input), the piped mode
// (answers only), one-shot -p --chat, and tokenize --messages. Answers are checked against ChatSession run in
// this process on the same model, so the CLI shows exactly what the library computes.
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
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
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace mistral;

std::string stories() { return testutil::shared_data("models/stories260K"); }
#define REQUIRE_STORIES()                                                                                   \
  do {                                                                                                      \
    if (!testutil::exists(stories() + "/model.safetensors")) GTEST_SKIP() << stories() << " is not present"; \
  } while (0)

std::string strip_cr(const std::string& s) {
  std::string o;
  for (char c : s)
    if (c != '\r') o += c;
  return o;
}

// mistral-run in a pseudo-terminal: a session leader whose controlling terminal is the pty, so Ctrl-C typed
// there (\x03) reaches it as SIGINT when the terminal is in its normal mode.
class Pty {
 public:
  Pty(const std::vector<std::string>& args, const std::string& home) {
    struct winsize ws {};
    ws.ws_row = 50;
    ws.ws_col = 250;
    // Under LeakSanitizer: libedit keeps the wide-string copies of the names given to EL_ADDFN until exit.
    const std::string supp = home + "/lsan.supp";
    testutil::write_file(supp, "leak:wcsdup\n");
    pid_ = ::forkpty(&fd_, nullptr, nullptr, &ws);
    if (pid_ == 0) {
      if (!std::getenv("LSAN_OPTIONS")) ::setenv("LSAN_OPTIONS", ("suppressions=" + supp).c_str(), 1);
      ::setenv("HOME", home.c_str(), 1);
      ::setenv("TERM", "xterm", 1);
      ::unsetenv("NO_COLOR");
      std::vector<char*> argv;
      std::string bin = MISTRAL_RUN_BIN;
      argv.push_back(const_cast<char*>(bin.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
  }
  ~Pty() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  bool started() const { return pid_ > 0; }
  void send(const std::string& s) {
    size_t done = 0;
    while (done < s.size()) {
      const ssize_t n = ::write(fd_, s.data() + done, s.size() - done);
      if (n <= 0) return;
      done += size_t(n);
    }
  }
  // Reads until `what` appears at or after `from` in the output; false after `timeout_s`.
  bool wait_for(const std::string& what, size_t from, double timeout_s = 20) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (out_.find(what, from) == std::string::npos) {
      if (std::chrono::steady_clock::now() > end) return false;
      if (!read_some(50)) return out_.find(what, from) != std::string::npos;
    }
    return true;
  }
  // Waits until the line editor has the terminal (canonical mode off): keys typed earlier would reach the
  // terminal's own line discipline, where Ctrl-C is a signal and Ctrl-D an end of file.
  bool wait_editing(double timeout_s = 20) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      struct termios t {};
      if (::tcgetattr(fd_, &t) == 0 && !(t.c_lflag & ICANON)) return true;
      read_some(5);
    }
    return false;
  }
  // Waits for the process to end (reading its output); its exit status, or -1 on timeout.
  int wait_exit(double timeout_s = 20) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      read_some(20);
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        exited_ = true;
        while (read_some(20)) {
        }
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
    }
    return -1;
  }
  const std::string& out() const { return out_; }
  size_t size() const { return out_.size(); }

 private:
  bool read_some(int ms) {  // false at end of output
    struct pollfd p {};
    p.fd = fd_;
    p.events = POLLIN;
    if (::poll(&p, 1, ms) <= 0) return true;
    char buf[65536];
    const ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) return false;  // EIO once the child has gone
    out_.append(buf, size_t(n));
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false;
  std::string out_;
};

const char* kPrompt = ">>> ";

// Sends a line and returns what the program printed in answer: the text between the echoed line and the next
// prompt, without carriage returns and without the final newline.
std::string turn(Pty& p, const std::string& line) {
  EXPECT_TRUE(p.wait_editing());
  const size_t from = p.size();
  p.send(line + "\r");
  EXPECT_TRUE(p.wait_for(kPrompt, from)) << "no prompt after '" << line << "'; output:\n" << p.out().substr(from);
  std::string seg = strip_cr(p.out().substr(from));
  const size_t echo = seg.find(line + "\n");
  if (echo != std::string::npos) seg = seg.substr(echo + line.size() + 1);
  const size_t prompt = seg.rfind(std::string("\n") + kPrompt);
  if (prompt != std::string::npos) seg = seg.substr(0, prompt);
  return seg;
}

// The same conversation through the library: the answers the CLI must print.
class Reference {
 public:
  explicit Reference(const std::string& dir) {
    model_ = Model::load(dir, LoadOptions{});
    tok_ = Tokenizer::load_dir(dir);
    be_ = make_cpu_backend(1);
    fp_.reset(new ForwardPass(*model_, *be_, SessionOptions{}));
    enc_.reset(new ChatEncoder(*tok_, ChatFormat::V1));
    chat_.reset(new ChatSession(*fp_, *enc_));
  }
  std::string send(const std::string& msg, int max_tokens) {
    GenerateParams gp;
    gp.max_tokens = max_tokens;
    gp.sampler.temperature = 0;
    gp.eos_ids = {tok_->eos_id()};
    return chat_->send(msg, gp).answer;
  }
  ChatSession& chat() { return *chat_; }

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<ForwardPass> fp_;
  std::unique_ptr<ChatEncoder> enc_;
  std::unique_ptr<ChatSession> chat_;
};

std::vector<std::string> chat_args(const std::string& model, int n) {
  return {"chat", "-m", model, "--chat-format", "v1", "--temp", "0", "-n", std::to_string(n), "--no-color", "-t", "1"};
}

TEST(ChatRepl, TwoTurnsResetSaveLoad) {
  REQUIRE_STORIES();
  testutil::TempDir home;
  Reference ref(stories());
  const std::string a1 = ref.send("Once upon a time", 24);
  const std::string a2 = ref.send("What happened next?", 24);
  const std::string a3 = ref.send("And then?", 24);
  ASSERT_FALSE(a1.empty());
  ASSERT_FALSE(a3.empty());

  Pty p(chat_args(stories(), 24), home.path());
  ASSERT_TRUE(p.started());
  ASSERT_TRUE(p.wait_for(kPrompt, 0)) << p.out();
  EXPECT_NE(p.out().find("/help"), std::string::npos) << p.out();
  EXPECT_EQ(turn(p, "Once upon a time"), a1);
  EXPECT_EQ(turn(p, "What happened next?"), a2);
  const std::string file = home.file("conv.json");
  EXPECT_NE(turn(p, "/save " + file).find("saved 4 messages"), std::string::npos);
  EXPECT_EQ(turn(p, "And then?"), a3);
  EXPECT_NE(turn(p, "/load " + file).find("loaded 4 messages"), std::string::npos);
  EXPECT_EQ(turn(p, "And then?"), a3) << "the loaded conversation must give the same next answer";
  const std::string stats = turn(p, "/stats");
  EXPECT_NE(stats.find("last turn: prompt"), std::string::npos) << stats;
  EXPECT_NE(stats.find("of 512 positions used"), std::string::npos) << stats;
  EXPECT_NE(turn(p, "/reset").find("conversation cleared"), std::string::npos);
  EXPECT_EQ(turn(p, "Once upon a time"), a1) << "after /reset the conversation starts over";
  const json saved = json::parse(testutil::read_file(file));
  ASSERT_EQ(saved.size(), 4u);
  EXPECT_EQ(saved[0]["role"], "user");
  EXPECT_EQ(saved[1]["content"], a1);
  ASSERT_TRUE(p.wait_editing());
  const size_t from = p.size();
  p.send("/exit\r");
  EXPECT_EQ(p.wait_exit(), 0) << p.out().substr(from);
  EXPECT_TRUE(testutil::exists(home.file(".mistral-run_history")));
}

TEST(ChatRepl, CtrlCStopsAnAnswerAndTheReplGoesOn) {
  REQUIRE_STORIES();
  // A copy of stories260K with a sliding window: its context never fills, so only Ctrl-C ends the answer.
  testutil::TempDir home;
  const std::string dir = home.file("win");
  fs::create_directory(dir);
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(stories() + "/" + f, dir + "/" + f);
  json cfg = json::parse(testutil::read_file(stories() + "/config.json"));
  cfg["sliding_window"] = 64;
  cfg["max_position_embeddings"] = 1 << 20;
  testutil::write_file(dir + "/config.json", cfg.dump());

  std::vector<std::string> args = chat_args(dir, 100000000);
  args.push_back("--ignore-eos");
  Pty p(args, home.path());
  ASSERT_TRUE(p.wait_for(kPrompt, 0)) << p.out();
  // Ctrl-C at the prompt drops the line being typed.
  ASSERT_TRUE(p.wait_editing());
  size_t from = p.size();
  p.send("never sent\x03");
  ASSERT_TRUE(p.wait_for(kPrompt, from)) << p.out().substr(from);
  EXPECT_NE(p.out().find("^C", from), std::string::npos);

  ASSERT_TRUE(p.wait_editing());
  from = p.size();
  p.send("Tell me a very long story\r");
  ASSERT_TRUE(p.wait_for("Tell me a very long story\r\n", from));
  const size_t answer_start = p.out().find("Tell me a very long story\r\n", from) + 27;
  // Wait for a good part of an answer, then interrupt it.
  ASSERT_TRUE(p.wait_for(" ", answer_start + 300, 60)) << "no long answer: " << p.out().substr(from);
  const auto t0 = std::chrono::steady_clock::now();
  const size_t before_ctrl_c = p.size();
  p.send("\x03");
  ASSERT_TRUE(p.wait_for("[interrupted]", before_ctrl_c, 10)) << p.out().substr(before_ctrl_c);
  ASSERT_TRUE(p.wait_for(kPrompt, before_ctrl_c, 10));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);

  // Still answering afterwards, and the interrupted answer is part of the conversation.
  EXPECT_NE(turn(p, "/set max-tokens 12").find("max-tokens = 12"), std::string::npos);
  const std::string next = turn(p, "Go on.");
  EXPECT_FALSE(next.empty());
  EXPECT_EQ(next.find("[interrupted]"), std::string::npos);
  const std::string stats = turn(p, "/stats");
  EXPECT_NE(stats.find("conversation: 4 messages"), std::string::npos) << stats;
  EXPECT_NE(stats.find("sliding window"), std::string::npos) << stats;
  ASSERT_TRUE(p.wait_editing());
  from = p.size();
  p.send("\x04");  // Ctrl-D on an empty line leaves
  EXPECT_EQ(p.wait_exit(), 0) << p.out().substr(from);
}

TEST(ChatRepl, MultiLineInput) {
  REQUIRE_STORIES();
  testutil::TempDir home;
  Pty p(chat_args(stories(), 4), home.path());
  ASSERT_TRUE(p.wait_for(kPrompt, 0)) << p.out();
  // A trailing backslash continues the message; a """ block spans lines.
  ASSERT_TRUE(p.wait_editing());
  size_t from = p.size();
  p.send("first line \\\r");
  ASSERT_TRUE(p.wait_for("... ", from));
  turn(p, "second line");
  ASSERT_TRUE(p.wait_editing());
  from = p.size();
  p.send("\"\"\"\r");
  ASSERT_TRUE(p.wait_for("... ", from));
  ASSERT_TRUE(p.wait_editing());
  from = p.size();
  p.send("block one\r");
  ASSERT_TRUE(p.wait_for("... ", from));
  ASSERT_TRUE(p.wait_editing());
  p.send("block two\r");
  turn(p, "\"\"\"");
  const std::string file = home.file("ml.json");
  turn(p, "/save " + file);
  const json saved = json::parse(testutil::read_file(file));
  ASSERT_GE(saved.size(), 3u) << saved.dump();
  EXPECT_EQ(saved[0]["content"], "first line \nsecond line");
  EXPECT_EQ(saved[2]["content"], "block one\nblock two");
  EXPECT_NE(turn(p, "/help").find("\"\"\""), std::string::npos);
  ASSERT_TRUE(p.wait_editing());
  from = p.size();
  p.send("/quit\r");
  EXPECT_EQ(p.wait_exit(), 0) << p.out().substr(from);
}

TEST(ChatPiped, AnswersOnlyOnStdout) {
  REQUIRE_STORIES();
  Reference ref(stories());
  const std::string a1 = ref.send("Once upon a time", 24);
  const std::string a2 = ref.send("What happened next?", 24);
  testutil::TempDir home;
  const testutil::RunResult r =
      testutil::run_cli(chat_args(stories(), 24), "Once upon a time\n/stats\n\nWhat happened next?\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, a1 + "\n" + a2 + "\n") << "stdout must hold the answers only";
  EXPECT_EQ(r.out.find("\033["), std::string::npos);
  EXPECT_EQ(r.out.find(kPrompt), std::string::npos);
  EXPECT_NE(r.err.find("last turn: prompt"), std::string::npos) << r.err;  // /stats goes to stderr
}

TEST(ChatPiped, FullContextDropsOldTurnsWithANotice) {
  REQUIRE_STORIES();
  std::string in;
  for (int i = 0; i < 14; ++i) in += "Tell me more about the dog number " + std::to_string(i) + "\n";
  std::vector<std::string> args = chat_args(stories(), 60);
  args.push_back("--ignore-eos");
  const testutil::RunResult r = testutil::run_cli(args, in);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("dropped the oldest"), std::string::npos) << r.err;
}

TEST(ChatPiped, ErrorsDoNotEndTheChat) {
  REQUIRE_STORIES();
  const testutil::RunResult r =
      testutil::run_cli(chat_args(stories(), 4), "/load /nonexistent.json\n/frobnicate\nOnce upon a time\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("/nonexistent.json"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("unknown command /frobnicate"), std::string::npos) << r.err;
  EXPECT_FALSE(r.out.empty());
}

TEST(ChatOneShot, PromptAsOneUserTurn) {
  REQUIRE_STORIES();
  Reference ref(stories());
  ref.chat().set_system("Be kind.");
  const std::string a1 = ref.send("Once upon a time", 24);
  const testutil::RunResult r = testutil::run_cli({"-m", stories(), "-p", "Once upon a time", "--chat", "--system",
                                                   "Be kind.", "--chat-format", "v1", "--temp", "0", "-n", "24"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, a1 + "\n");
  // Without a chat template or --chat-format, stories260K's format is unknown: a clear error.
  const testutil::RunResult e = testutil::run_cli({"-m", stories(), "-p", "hi", "--chat"});
  EXPECT_NE(e.exit_code, 0);
  EXPECT_NE(e.err.find("--chat-format"), std::string::npos) << e.err;
  const testutil::RunResult s = testutil::run_cli({"-m", stories(), "-p", "hi", "--system", "x"});
  EXPECT_NE(s.exit_code, 0);
  EXPECT_NE(s.err.find("--chat"), std::string::npos) << s.err;
}

TEST(TokenizeMessages, EqualsMistralCommonVectors) {
  const std::string dir = testutil::shared_data("tokenizers/mistral-v0.3");
  const std::string sample = testutil::shared_data("chat/no_tools/sample.json");
  if (!testutil::exists(dir + "/tokenizer.model.v3") || !testutil::exists(sample)) GTEST_SKIP();
  const testutil::RunResult r = testutil::run_cli({"tokenize", "-m", dir, "--messages", sample});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json out = json::parse(r.out);
  const json want = json::parse(testutil::read_file(testutil::shared_data("chat/no_tools/tokens_v3.json")));
  EXPECT_EQ(out["ids"], want["tokens"]);
  ASSERT_EQ(out["pieces"].size(), out["ids"].size());
  EXPECT_EQ(out["pieces"][1], "[INST]");
  // v1 with the v0.1 tokenizer needs --chat-format (a base tokenizer has no template); bad input is one line.
  const std::string v1 = testutil::shared_data("tokenizers/mistral-v0.1");
  const testutil::RunResult r1 = testutil::run_cli({"tokenize", "-m", v1, "--messages", sample, "--chat-format", "v1"});
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  EXPECT_EQ(json::parse(r1.out)["ids"],
            json::parse(testutil::read_file(testutil::shared_data("chat/no_tools/tokens_v1.json")))["tokens"]);
  const testutil::RunResult e = testutil::run_cli({"tokenize", "-m", v1, "--messages", sample});
  EXPECT_NE(e.exit_code, 0);
  EXPECT_NE(e.err.find("--chat-format"), std::string::npos) << e.err;
  testutil::TempDir td;
  testutil::write_file(td.file("bad.json"), R"([{"role": "robot", "content": "hi"}])");
  const testutil::RunResult b = testutil::run_cli({"tokenize", "-m", dir, "--messages", td.file("bad.json")});
  EXPECT_NE(b.exit_code, 0);
  EXPECT_NE(b.err.find("unknown role 'robot'"), std::string::npos) << b.err;
  EXPECT_EQ(b.out, "");
}

}  // namespace

namespace {

// stories260K with a longer declared context (the weights and tokenizer linked), as a model without a
// window whose max_position_embeddings exceeds chat's default context.
std::string long_context_copy(const testutil::TempDir& dir, int64_t max_positions) {
  json c = json::parse(testutil::read_file(stories() + "/config.json"));
  c["max_position_embeddings"] = max_positions;
  testutil::write_file(dir.file("config.json"), c.dump());
  for (const char* f : {"model.safetensors", "tokenizer.json"}) fs::create_symlink(stories() + "/" + f, dir.file(f));
  return dir.path();
}

}  // namespace

// Chat without --ctx holds at most 8192 positions of a model without a window (not its whole declared
// context, allocated up front); --ctx chooses, up to the model's.
TEST(ChatPiped, DefaultContextIsAtMost8192) {
  REQUIRE_STORIES();
  testutil::TempDir dir;
  const std::string model = long_context_copy(dir, 20000);
  std::vector<std::string> args = chat_args(model, 4);
  args.push_back("-v");
  const testutil::RunResult r = testutil::run_cli(args, "Once upon a time\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("context: 8192 positions (--ctx up to 20000)"), std::string::npos) << r.err;
  args.insert(args.end(), {"--ctx", "12000"});
  const testutil::RunResult c = testutil::run_cli(args, "Once upon a time\n");
  EXPECT_NE(c.err.find("context: 12000 positions"), std::string::npos) << c.err;
  EXPECT_EQ(c.out, r.out);
}
