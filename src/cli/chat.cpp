// `mistral-run chat`: an interactive REPL (libedit line editing and history) over a ChatSession, or, when stdin
// is not a terminal, one message per line with only the answers printed.
#include <histedit.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <sstream>

#include "common.h"
#include "mistral/chat.h"
#include "mistral/chat_session.h"
#include "mistral/config.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/generator.h"
#include "mistral/tokenizer.h"

namespace mistral {
namespace cli {

namespace {

constexpr int64_t kChatContext = 8192;  // chat's context without --ctx (models without a window)

std::atomic<bool> g_stop{false};       // Ctrl-C during an answer
std::atomic<bool> g_cancel_line{false};  // Ctrl-C at the prompt (a key binding: the tty's ISIG is off there)
void on_sigint(int) { g_stop = true; }

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

const char* kHelp =
    "Commands:\n"
    "  /help                    this help\n"
    "  /exit, /quit             leave (Ctrl-D on an empty line too)\n"
    "  /reset                   forget the conversation (the system prompt stays)\n"
    "  /system TEXT             set the system prompt; /system alone shows it, /system - removes it\n"
    "  /save FILE               write the conversation as JSON: [{\"role\": ..., \"content\": ...}, ...]\n"
    "  /load FILE               replace the conversation with one saved by /save (a first system message\n"
    "                           becomes the system prompt)\n"
    "  /set NAME VALUE          temp, top-p, top-k, max-tokens or seed; /set alone shows them\n"
    "  /stats                   tokens, speeds and how much of the context is used\n"
    "Input:\n"
    "  Enter sends the message. End a line with \\ to go on on the next line, or put \"\"\" alone on a\n"
    "  line to start a multi-line message and again to end it. A message starting with / is a command;\n"
    "  start it with // to send a /. Up/Down browse the history.\n"
    "  Ctrl-C stops an answer (the conversation keeps what was written) and clears the line at the prompt.\n";

struct Style {
  bool on = false;
  const char* dim() const { return on ? "\033[2m" : ""; }
  const char* warn() const { return on ? "\033[33m" : ""; }
  const char* reset() const { return on ? "\033[0m" : ""; }
};

// ---- libedit ------------------------------------------------------------------------------------------

class LineEditor {
 public:
  LineEditor(const char* prog, bool color, const std::string& history_file) : history_file_(history_file) {
    el_ = el_init(prog, stdin, stdout, stderr);
    hist_ = history_init();
    HistEvent ev;
    history(hist_, &ev, H_SETSIZE, 1000);
    history(hist_, &ev, H_SETUNIQUE, 1);
    if (!history_file_.empty()) history(hist_, &ev, H_LOAD, history_file_.c_str());
    el_set(el_, EL_EDITOR, "emacs");
    el_set(el_, EL_HIST, history, hist_);
    el_set(el_, EL_CLIENTDATA, this);
    el_set(el_, EL_PROMPT_ESC, &LineEditor::prompt_fn, '\1');
    // Ctrl-C while editing: no SIGINT (the tty's isig is off in edit mode); a key binding cancels the line.
    el_set(el_, EL_SETTY, "-d", "-isig", nullptr);
    el_set(el_, EL_ADDFN, "mr-cancel", "Cancel the line", &LineEditor::cancel_fn);
    el_set(el_, EL_BIND, "^C", "mr-cancel", nullptr);
    el_source(el_, nullptr);  // ~/.editrc, as other libedit programs
    color_ = color;
  }
  ~LineEditor() {
    HistEvent ev;
    if (!history_file_.empty()) history(hist_, &ev, H_SAVE, history_file_.c_str());
    history_end(hist_);
    el_end(el_);
  }
  // One line without its newline; false at end of input. *cancelled: Ctrl-C was pressed.
  bool read_line(const std::string& prompt, std::string* line, bool* cancelled) {
    // Colour codes go between \1 markers (EL_PROMPT_ESC) so libedit does not count them; the reset comes before
    // the prompt's last character, as libedit drops a marked sequence that ends the prompt.
    if (color_ && prompt.size() > 1)
      prompt_ = "\1\033[1;32m\1" + prompt.substr(0, prompt.size() - 1) + "\1\033[0m\1" + prompt.back();
    else
      prompt_ = prompt;
    g_cancel_line = false;
    int count = 0;
    const char* s = el_gets(el_, &count);
    *cancelled = g_cancel_line.exchange(false);
    if (*cancelled) {
      std::fputs("^C\n", stdout);
      std::fflush(stdout);
      line->clear();
      return true;
    }
    if (!s || count <= 0) return false;
    *line = s;
    while (!line->empty() && (line->back() == '\n' || line->back() == '\r')) line->pop_back();
    return true;
  }
  void add_history(const std::string& entry) {
    HistEvent ev;
    if (!trim(entry).empty()) history(hist_, &ev, H_ENTER, entry.c_str());
  }

 private:
  static char* prompt_fn(EditLine* el) {
    void* self = nullptr;
    el_get(el, EL_CLIENTDATA, &self);
    return const_cast<char*>(static_cast<LineEditor*>(self)->prompt_.c_str());
  }
  static unsigned char cancel_fn(EditLine*, int) {
    g_cancel_line = true;
    return CC_NEWLINE;
  }

  EditLine* el_ = nullptr;
  History* hist_ = nullptr;
  std::string prompt_, history_file_;
  bool color_ = false;
};

// ---- the REPL ----------------------------------------------------------------------------------------

class Repl {
 public:
  Repl(ChatSession& chat, const GenerateParams& gp, uint64_t seed, bool interactive, Style style)
      : chat_(chat), gp_(gp), seed_(seed), interactive_(interactive), style_(style) {}

  // Runs one command line ("/..."); false when the REPL should end.
  bool command(const std::string& line) {
    std::string name, rest;
    {
      const size_t sp = line.find_first_of(" \t");
      name = line.substr(0, sp);
      rest = sp == std::string::npos ? "" : trim(line.substr(sp + 1));
    }
    if (name == "/exit" || name == "/quit") return false;
    if (name == "/help" || name == "/?") {
      info(kHelp);
    } else if (name == "/reset") {
      chat_.clear();
      info("conversation cleared\n");
    } else if (name == "/system") {
      if (rest.empty()) {
        info(chat_.system().empty() ? "no system prompt\n" : "system prompt: " + chat_.system() + "\n");
      } else if (rest == "-") {
        chat_.set_system("");
        info("system prompt removed\n");
      } else {
        chat_.set_system(rest);
        info("system prompt set\n");
      }
    } else if (name == "/save") {
      if (rest.empty()) throw UsageError("/save needs a file name");
      FILE* f = std::fopen(rest.c_str(), "wb");
      if (!f) throw FileError(rest + ": cannot write (" + std::strerror(errno) + ")");
      const std::string j = conversation_to_json(chat_.conversation());
      const bool ok = std::fwrite(j.data(), 1, j.size(), f) == j.size();
      if (std::fclose(f) != 0 || !ok) throw FileError(rest + ": write failed");
      info("saved " + std::to_string(chat_.conversation().size()) + " messages to " + rest + "\n");
    } else if (name == "/load") {
      if (rest.empty()) throw UsageError("/load needs a file name");
      const Conversation conv = load_conversation_file(rest);
      if (!conv.empty()) chat_.encoder().encode(conv, conv.back().role != "assistant");  // invalid: an error now
      chat_.set_conversation(conv);
      info("loaded " + std::to_string(conv.size()) + " messages from " + rest + "\n");
    } else if (name == "/set") {
      set(rest);
    } else if (name == "/stats") {
      stats();
    } else {
      throw UsageError("unknown command " + name + " (/help lists them)");
    }
    return true;
  }

  // Sends one message and streams the answer.
  void message(const std::string& text) {
    GenerateParams gp = gp_;
    gp.sampler.seed = seed_ + uint64_t(chat_.totals().turns);  // a fresh draw each turn, reproducible
    g_stop = false;
    std::string out;
    bool wrote = false;
    auto stream = [&](const std::string& s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      wrote = wrote || !s.empty();
    };
    ChatTurn t;
    try {
      t = chat_.send(text, gp, stream, [] { return g_stop.load(); });
    } catch (...) {
      if (!interactive_) std::fputs("\n", stdout);  // keep one output line per input line
      throw;
    }
    if (t.finish_reason == "interrupted") {
      if (interactive_) std::printf("%s%s[interrupted]%s", wrote ? " " : "", style_.dim(), style_.reset());
      else std::fprintf(stderr, "mistral-run: answer interrupted\n");
    } else if (t.finish_reason == "context") {
      std::fprintf(stderr, "%s\nmistral-run: the context is full (%lld positions): the answer was cut%s\n",
                   style_.warn(), (long long)chat_.capacity(), style_.reset());
    }
    std::fputs("\n", stdout);
    std::fflush(stdout);
  }

  void info(const std::string& s) {
    // Interactive: on stdout with the conversation; piped: stdout carries only answers.
    FILE* f = interactive_ ? stdout : stderr;
    std::fputs(s.c_str(), f);
    std::fflush(f);
  }

 private:
  void set(const std::string& args) {
    std::istringstream in(args);
    std::string key, value;
    in >> key >> value;
    SamplerParams& sp = gp_.sampler;
    if (key.empty()) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "temp %g, top-p %g, top-k %d, max-tokens %d, seed %llu\n", double(sp.temperature),
                    double(sp.top_p), sp.top_k, gp_.max_tokens, (unsigned long long)seed_);
      info(buf);
      return;
    }
    if (value.empty()) throw UsageError("/set " + key + " needs a value");
    auto number = [&](double lo, double hi) {
      char* end = nullptr;
      errno = 0;
      const double v = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0' || errno != 0 || !(v >= lo && v <= hi))
        throw UsageError("/set " + key + ": '" + value + "' is not a number in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]");
      return v;
    };
    if (key == "temp" || key == "temperature") sp.temperature = float(number(0, 100));
    else if (key == "top-p") sp.top_p = float(number(0, 1));
    else if (key == "top-k") sp.top_k = int(number(0, 1 << 30));
    else if (key == "max-tokens" || key == "n") gp_.max_tokens = int(number(1, 1 << 30));
    else if (key == "seed") seed_ = uint64_t(number(0, 9.0e15)) - uint64_t(chat_.totals().turns);
    else throw UsageError("/set: unknown setting '" + key + "' (temp, top-p, top-k, max-tokens, seed)");
    info(key + " = " + value + "\n");
  }

  void stats() {
    const ChatTurn& t = chat_.last_turn();
    const ChatTotals& s = chat_.totals();
    char buf[1024];
    std::string out;
    const int64_t cap = chat_.capacity();
    if (cap == INT64_MAX)
      std::snprintf(buf, sizeof buf, "context: %lld positions in the KV cache (sliding window: no limit)\n",
                    (long long)chat_.cached_tokens());
    else
      std::snprintf(buf, sizeof buf, "context: %lld of %lld positions used (%.1f%%)\n", (long long)chat_.cached_tokens(),
                    (long long)cap, 100.0 * double(chat_.cached_tokens()) / double(cap));
    out += buf;
    std::snprintf(buf, sizeof buf, "conversation: %zu messages, format %s, system prompt %s\n",
                  chat_.messages().size(), chat_format_name(chat_.encoder().format()),
                  chat_.system().empty() ? "none" : "set");
    out += buf;
    if (s.turns > 0) {
      std::snprintf(buf, sizeof buf,
                    "last turn: prompt %lld tokens, %lld reused from the cache, %lld prefilled; answer %lld tokens (%s)%s\n",
                    (long long)t.prompt_tokens, (long long)t.reused_tokens, (long long)t.prefilled_tokens,
                    (long long)t.generated_tokens, t.finish_reason.c_str(),
                    t.cache_rebuilt ? "; cache rebuilt from position 0"
                                    : (t.rolled_back > 0 ? ("; cache rolled back " + std::to_string(t.rolled_back) +
                                                            " positions").c_str()
                                                         : ""));
      out += buf;
      std::snprintf(buf, sizeof buf, "last turn speed: prefill %.1f tok/s, decode %.1f tok/s\n",
                    t.prefill_s > 0 ? double(t.prefilled_tokens) / t.prefill_s : 0.0,
                    t.decode_s > 0 && t.decoded_tokens > 0 ? double(t.decoded_tokens) / t.decode_s : 0.0);
      out += buf;
      std::snprintf(buf, sizeof buf,
                    "session: %lld turns, %lld tokens prefilled (%lld reused), %lld generated, prefill %.1f tok/s, "
                    "decode %.1f tok/s, %lld positions rolled back, %lld cache rebuilds, %lld turns dropped\n",
                    (long long)s.turns, (long long)s.prefilled_tokens, (long long)s.reused_tokens,
                    (long long)s.generated_tokens, s.prefill_s > 0 ? double(s.prefilled_tokens) / s.prefill_s : 0.0,
                    s.decode_s > 0 && s.decoded_tokens > 0 ? double(s.decoded_tokens) / s.decode_s : 0.0,
                    (long long)s.rolled_back, (long long)s.rebuilds, (long long)s.dropped_turns);
      out += buf;
    }
    info(out);
  }

  ChatSession& chat_;
  GenerateParams gp_;
  uint64_t seed_;
  bool interactive_;
  Style style_;
};

// Reads one message in the terminal: continuation lines after a trailing backslash, or a """ block.
// Returns false at end of input; an empty result means nothing to send.
bool read_message(LineEditor& ed, std::string* msg) {
  msg->clear();
  std::string line;
  bool cancelled = false;
  if (!ed.read_line(">>> ", &line, &cancelled)) return false;
  if (cancelled) return true;
  const std::string t = trim(line);
  if (t.rfind("\"\"\"", 0) == 0) {  // """ block
    std::string body = t.substr(3);
    bool first = true;
    if (body.size() >= 3 && body.compare(body.size() - 3, 3, "\"\"\"") == 0) {  // """one line"""
      *msg = body.substr(0, body.size() - 3);
      return true;
    }
    std::string acc = body;
    first = body.empty();
    for (;;) {
      if (!ed.read_line("... ", &line, &cancelled)) return false;
      if (cancelled) {
        msg->clear();
        return true;
      }
      const size_t end = line.rfind("\"\"\"");
      const bool last = end != std::string::npos && trim(line.substr(end + 3)).empty();
      const std::string part = last ? line.substr(0, end) : line;
      if (last && part.empty()) break;
      acc += (first ? "" : "\n") + part;
      first = false;
      if (last) break;
    }
    *msg = acc;
    ed.add_history("\"\"\"" + *msg + "\"\"\"");
    return true;
  }
  std::string acc;
  while (!line.empty() && line.back() == '\\') {
    line.pop_back();
    acc += line + "\n";
    if (!ed.read_line("... ", &line, &cancelled)) return false;
    if (cancelled) return true;
  }
  acc += line;
  *msg = acc;
  ed.add_history(acc);
  return true;
}

std::string history_path() {
  const char* home = std::getenv("HOME");
  if (!home || !*home) return "";
  return std::string(home) + "/.mistral-run_history";
}

}  // namespace

int run_chat(const ChatArgs& a) {
  const bool interactive = ::isatty(STDIN_FILENO) == 1;
  const char* no_color = std::getenv("NO_COLOR");
  const char* term = std::getenv("TERM");
  Style style;
  style.on = interactive && !a.no_color && ::isatty(STDOUT_FILENO) == 1 && !(no_color && *no_color) &&
             !(term && std::string(term) == "dumb");

  const double t0 = now_seconds();
  std::unique_ptr<Model> model = load_model(a.model, true);
  std::unique_ptr<Tokenizer> tok = load_model_tokenizer(a.model.model_dir);
  if (tok->vocab_size() > model->config().vocab_size)
    throw ConfigError("tokenizer has " + std::to_string(tok->vocab_size()) + " pieces but the model's vocab_size is " +
                      std::to_string(model->config().vocab_size));
  std::unique_ptr<ChatEncoder> enc = make_chat_encoder(a.model.model_dir, *tok, a.chat_format);
  std::unique_ptr<Backend> backend = make_backend(a.model);
  SessionOptions so;
  so.chunk = a.model.chunk;
  so.kv_dtype = kv_dtype(a.model);
  // Without --ctx a conversation holds at most kChatContext positions (a model without a window would
  // otherwise allocate its whole context up front: 8.6 GB of cache for Mistral-7B v0.3's 32k); when it
  // fills, the oldest turns are dropped.
  so.context = a.model.ctx > 0 ? a.model.ctx : std::min<int64_t>(model->config().max_position_embeddings, kChatContext);
  ForwardPass fp(*model, *backend, so);

  GenerateParams gp = generate_params_from_flags(*model, *tok, a);
  const uint64_t seed = a.seed >= 0 ? uint64_t(a.seed) : std::random_device{}();

  ChatSession chat(fp, *enc);
  chat.set_system(a.system);
  chat.on_notice = [&](const std::string& s) {
    std::fflush(stdout);
    std::fprintf(stderr, "%smistral-run: %s%s\n", style.warn(), s.c_str(), style.reset());
  };
  if (a.model.verbose)
    std::fprintf(stderr, "model: %s; tokenizer: %s; chat format: %s; context: %s; kv cache %.1f MiB %s; load %.2f s\n",
                 a.model.model_dir.c_str(), tok->source().c_str(), chat_format_name(enc->format()),
                 chat.capacity() == INT64_MAX ? "sliding window"
                                              : (std::to_string(chat.capacity()) + " positions (--ctx up to " +
                                                 std::to_string(model->config().max_position_embeddings) + ")")
                                                    .c_str(),
                 double(chat.cache_bytes()) / (1024.0 * 1024.0), a.model.kv_type.c_str(), now_seconds() - t0);

  Repl repl(chat, gp, seed, interactive, style);
  struct sigaction sa {}, old_sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  ::sigaction(SIGINT, &sa, &old_sa);
  auto restore = [&] { ::sigaction(SIGINT, &old_sa, nullptr); };

  auto handle = [&](const std::string& msg) -> bool {  // false: leave
    try {
      if (msg.empty()) return true;
      if (msg[0] == '/' && !(msg.size() > 1 && msg[1] == '/')) return repl.command(trim(msg));
      repl.message(msg[0] == '/' ? msg.substr(1) : msg);
    } catch (const Error& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "%smistral-run: error: %s%s\n", style.warn(), e.what(), style.reset());
    } catch (const std::exception& e) {  // e.g. an id the tokenizer cannot show: report and go on
      std::fflush(stdout);
      std::fprintf(stderr, "%smistral-run: error: %s%s\n", style.warn(), e.what(), style.reset());
    }
    return true;
  };

  if (!interactive) {
    // One message per line; only answers on stdout. Ctrl-C while waiting for input ends the program.
    std::string line;
    while (true) {
      ::sigaction(SIGINT, &old_sa, nullptr);
      if (!std::getline(std::cin, line)) break;
      ::sigaction(SIGINT, &sa, nullptr);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (trim(line).empty()) continue;
      if (!handle(line)) break;
    }
    restore();
    return 0;
  }

  std::printf("mistral-run chat: %s, format %s, %s. /help for commands, Ctrl-D to leave.\n",
              a.model.model_dir.c_str(), chat_format_name(enc->format()),
              chat.capacity() == INT64_MAX ? "sliding-window context"
                                           : (std::to_string(chat.capacity()) + "-token context").c_str());
  std::fflush(stdout);
  {
    LineEditor ed("mistral-run", style.on, a.no_history ? "" : history_path());
    std::string msg;
    while (read_message(ed, &msg)) {
      if (!handle(msg)) break;
    }
  }
  restore();
  std::printf("\n");
  return 0;
}

}  // namespace cli
}  // namespace mistral
