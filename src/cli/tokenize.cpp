// `mistral-run tokenize` and `detokenize`.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common.h"
#include "mistral/chat.h"
#include "mistral/error.h"
#include "mistral/gguf.h"
#include "mistral/tokenizer.h"

namespace mistral {
namespace cli {

namespace {

// tokenize --messages: the conversation's ids as the chat format encodes them.
int tokenize_messages(const TokenizeArgs& a) {
  const Conversation conv = load_conversation_file(a.messages_file);
  std::unique_ptr<Tokenizer> tok = load_model_tokenizer(a.model_dir);
  const std::unique_ptr<ChatEncoder> enc = make_chat_encoder(a.model_dir, *tok, a.chat_format);
  const bool for_generation = conv.empty() || conv.back().role != "assistant";
  const std::vector<int32_t> ids = enc->encode(conv, for_generation);
  nlohmann::json j;
  j["ids"] = ids;
  j["pieces"] = nlohmann::json::array();
  for (int32_t id : ids) j["pieces"].push_back(enc->piece(id));
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}

}  // namespace

int run_tokenize(const TokenizeArgs& a) {
  if (!a.messages_file.empty()) return tokenize_messages(a);
  if (!a.chat_format.empty()) throw UsageError("--chat-format goes with --messages");
  if (a.prompt_set == a.prompt_file_set) throw UsageError("give exactly one of -p/--prompt, -f/--file and --messages");
  const std::string text = a.prompt_set ? a.prompt : read_prompt_file(a.prompt_file);
  std::unique_ptr<Tokenizer> tok = load_model_tokenizer(a.model_dir);
  const std::vector<int32_t> ids = tok->encode(text, !a.no_bos);
  nlohmann::json j;
  j["ids"] = ids;
  j["pieces"] = nlohmann::json::array();
  for (int32_t id : ids) j["pieces"].push_back(tok->piece(id));
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}

int run_detokenize(const DetokenizeArgs& a) {
  std::unique_ptr<Tokenizer> tok = load_model_tokenizer(a.model_dir);
  std::vector<int32_t> ids;
  std::stringstream ss(a.ids);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t pos = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &pos);
    } catch (...) {
      pos = 0;
    }
    if (pos == 0 || pos != item.size()) throw UsageError("--ids: '" + item + "' is not an integer");
    if (v < 0 || v >= tok->vocab_size())
      throw UsageError("--ids: token id " + item + " is out of range (vocab " + std::to_string(tok->vocab_size()) + ")");
    ids.push_back(int32_t(v));
  }
  const std::string s = tok->decode(ids);
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::printf("\n");
  return 0;
}

}  // namespace cli
}  // namespace mistral
