// Conversation encoding: a list of {role, content} messages to the token ids an instruct model was trained on.
//
// Mistral formats follow mistral-common (the authority) for conversations without tools:
//   v1  (SentencePiece, "[INST]" as text):  <s> enc("[INST] " + user + " [/INST]") enc(answer) </s> ...
//       the system prompt is put before the FIRST user message, joined by "\n\n";
//   v2, v3 (control tokens [INST]/[/INST]): <s> [INST] enc(user) [/INST] enc(answer.rstrip(" ")) </s> ...
//       the system prompt is put before the LAST user message, joined by "\n\n";
//   v7  (control tokens [SYSTEM_PROMPT]/[/SYSTEM_PROMPT]): system messages stay where they are, each as
//       [SYSTEM_PROMPT] enc(system) [/SYSTEM_PROMPT]; users and answers as in v3.
// Before encoding, messages are normalised as mistral-common does: system messages are collected into one
// system prompt (joined by "\n\n"; v7 keeps them in place), runs of consecutive user (or assistant) messages
// are merged with "\n\n" (empty contents skipped), and an empty user message is inserted when the
// conversation does not start with one (v1-v3).
//
// ChatML and Zephyr (Llama-architecture fine-tunes) render their Jinja templates' text; special tokens
// (<|im_start|>, <|im_end|>, </s>) become their ids and every text run between two of them is encoded on its
// own, as Hugging Face's legacy Llama tokenizers do (each run gets SentencePiece's dummy-prefix space). A
// ChatML template with a fixed system turn for conversations without one (SmolLM2, Qwen2.5) gets it too.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mistral/tokenizer.h"

namespace mistral {

enum class ChatFormat { V1, V2, V3, V7, ChatML, Zephyr };

const char* chat_format_name(ChatFormat f);
// "v1", "v2", "v3", "v7", "chatml", "zephyr" (case-insensitive); "v11" and "v13" (tekken versions that encode
// conversations without tools as v7 does) give V7. Anything else throws UsageError naming the formats.
ChatFormat parse_chat_format(const std::string& name);
std::string chat_format_names();  // "v1, v2, v3, v7, chatml, zephyr"

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
  // An answer generated here: the ids the model sampled (without the end-of-answer id). When they spell
  // `content` exactly, the encoder uses them instead of encoding the text, so the conversation keeps the tokens
  // the KV cache already holds even where the model chose another tokenization than the encoder's. Saved with
  // the conversation ("ids"); ignored when they do not spell the content (an edited file).
  std::vector<int32_t> ids;

  ChatMessage() = default;
  ChatMessage(std::string r, std::string c, std::vector<int32_t> i = {})
      : role(std::move(r)), content(std::move(c)), ids(std::move(i)) {}
};
using Conversation = std::vector<ChatMessage>;

// A JSON list of {"role", "content"} objects (assistant messages may carry "ids"), or an object with such a
// list under "messages" (as in mistral-common's samples). Other keys are ignored ("tool_calls": null is fine);
// a role outside system/user/assistant, a missing or non-string content, or tool calls throw UsageError.
// `where` names the source in messages.
Conversation parse_conversation_json(const std::string& text, const std::string& where);
Conversation load_conversation_file(const std::string& path);  // FileError if unreadable, else as above
std::string conversation_to_json(const Conversation& conv);     // a pretty-printed JSON list, UTF-8

// What tokenizer_config.json (and friends) say about chat: the Jinja template and the special tokens added
// on top of the tokenizer's own pieces (added_tokens_decoder, tokenizer.json's added_tokens, added_tokens.json).
struct ChatTemplateInfo {
  std::string chat_template;  // "" when absent; the "default" entry when the config holds a list of templates
  std::string source;         // the file it came from ("" when absent)
  std::map<std::string, int32_t> added_tokens;  // content -> id
};
ChatTemplateInfo read_chat_template_info(const std::string& model_dir);

// The family a Jinja template belongs to: V1 or V3 for "[INST]" templates (V3 when the tokenizer has [INST]
// as a control token, V7 when it also has [SYSTEM_PROMPT]), ChatML, Zephyr. Throws ConfigError for anything
// else, suggesting --chat-format.
ChatFormat chat_format_from_template(const std::string& jinja, const Tokenizer& tok);

// Picks the format for a model directory: `requested` (a --chat-format name) when not empty, else the
// tokenizer file's version (tokenizer.model.v1/.v2/.v3/.v7, tekken.json's config.version: v3 -> V3,
// v7/v11/v13 -> V7), else the chat_template, else the tokenizer's control tokens ([INST] -> v3,
// [SYSTEM_PROMPT] -> v7). Models without any clue throw ConfigError with a hint to use --chat-format NAME.
ChatFormat choose_chat_format(const std::string& requested, const Tokenizer& tok, const ChatTemplateInfo& info);

class ChatEncoder {
 public:
  // Throws ConfigError when the tokenizer lacks what the format needs (control tokens, BOS/EOS).
  ChatEncoder(const Tokenizer& tok, ChatFormat format, const ChatTemplateInfo& info = {});

  // Encodes a conversation. for_generation: the conversation must end with a user message (or be a lone
  // system message) and the result ends where the model's answer starts. Otherwise it must end with an
  // assistant message, which is closed (as for fine-tuning). Invalid conversations throw UsageError:
  // empty, unknown role, an empty assistant message, a lone assistant message, a wrong last message.
  std::vector<int32_t> encode(const Conversation& conv, bool for_generation) const;

  ChatFormat format() const { return format_; }
  const Tokenizer& tokenizer() const { return tok_; }
  // Ids that end an answer besides the tokenizer's EOS (ChatML's <|im_end|>), and stop strings for
  // templates whose end marker is plain text.
  const std::vector<int32_t>& stop_ids() const { return stop_ids_; }
  const std::vector<std::string>& stop_strings() const { return stop_strings_; }
  // Generated answer text as the conversation stores it. Mistral formats encode an answer on its own, so with a
  // SentencePiece tokenizer (dummy-prefix space) the space of the answer's first piece is not part of the
  // content, as mistral-common's decode drops it; template formats keep the text as it is.
  std::string answer_content(const std::string& generated) const;
  bool drops_answer_space() const { return drop_answer_space_; }
  // Whether `ids` (an answer as sampled, without its end) spell `content` as answer_content() stores it.
  bool ids_spell(const std::vector<int32_t>& ids, const std::string& content) const;
  // The piece of an id, including special tokens added beyond the tokenizer's vocabulary.
  std::string piece(int32_t id) const;

 private:
  struct Norm {
    std::string role;
    std::string content;
    const std::vector<int32_t>* ids = nullptr;  // an answer's own ids, when they stand for the content
  };
  void validate(const Conversation& conv, bool for_generation) const;
  std::vector<int32_t> encode_mistral(const Conversation& conv) const;
  std::vector<int32_t> encode_template(const Conversation& conv, bool for_generation) const;
  int32_t special(const std::string& text) const;  // -1 when absent

  const Tokenizer& tok_;
  ChatFormat format_;
  std::map<std::string, int32_t> specials_;  // control pieces and added tokens by text
  std::map<int32_t, std::string> added_pieces_;
  std::vector<int32_t> stop_ids_;
  std::vector<std::string> stop_strings_;
  std::vector<std::string> markers_;  // special-token strings recognised inside template text
  std::string default_system_;        // ChatML: the system turn the template writes when there is none
  bool drop_answer_space_ = false;
  int32_t bos_ = -1, eos_ = -1, inst_ = -1, end_inst_ = -1, sys_ = -1, end_sys_ = -1;
};

// The encoder for a model directory: read_chat_template_info + choose_chat_format(requested) + ChatEncoder.
std::unique_ptr<ChatEncoder> make_chat_encoder(const std::string& model_dir, const Tokenizer& tok,
                                               const std::string& requested = "");

// Index of the first id where a and b differ (their common prefix length).
size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

}  // namespace mistral
