// A conversation held in one KV cache across turns. Every turn encodes the whole conversation (ChatEncoder;
// answers generated here keep the ids the model sampled) and feeds only the ids beyond the longest prefix the
// cache already holds. Where the new encoding departs from the cache (a changed system prompt, v2/v3 moving the
// system prompt to the last user message, a loaded or edited conversation), the cache is rolled back to the
// common prefix when it still holds those positions (always without a sliding window; with one, until the
// window has wrapped), else rebuilt from position 0. A model without a sliding window that runs out of
// positions drops the oldest turns (with a notice).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mistral/chat.h"
#include "mistral/engine.h"
#include "mistral/generator.h"
#include "mistral/tokenizer.h"

namespace mistral {

struct ChatTurn {
  std::string answer;
  std::string finish_reason;     // "eos" | "length" | "stop" | "interrupted" | "context" (positions ran out)
  int64_t prompt_tokens = 0;     // the whole encoded conversation up to the answer
  int64_t cached_before = 0;     // positions the KV cache held when the turn began
  int64_t reused_tokens = 0;     // of the prompt, already in the KV cache
  int64_t prefilled_tokens = 0;  // fed before the first answer token: prompt_tokens - reused_tokens
  int64_t generated_tokens = 0;  // answer tokens sampled (the end-of-answer token included)
  int64_t rolled_back = 0;       // cached positions given up because the prompt departs from them there
  bool cache_rebuilt = false;    // the cache could not be rolled back (its window had wrapped): refilled from 0
  int dropped_turns = 0;         // oldest turns removed to fit the context
  double prefill_s = 0, decode_s = 0;
  int64_t decoded_tokens = 0;    // tokens that went through a decode step
};

struct ChatTotals {
  int64_t turns = 0, prompt_tokens = 0, prefilled_tokens = 0, reused_tokens = 0, generated_tokens = 0,
          decoded_tokens = 0, rolled_back = 0, rebuilds = 0, dropped_turns = 0;
  double prefill_s = 0, decode_s = 0;
};

class ChatSession {
 public:
  // The conversation gets its own cache from `fp` (max_positions: as ForwardPass::new_cache).
  ChatSession(ForwardPass& fp, const ChatEncoder& encoder, int64_t max_positions = 0);

  // The system prompt ("" = none); it is placed where the format puts it (see chat.h).
  void set_system(const std::string& text) { system_ = text; }
  const std::string& system() const { return system_; }
  // User and assistant messages (and system messages that were not first in a loaded conversation).
  const Conversation& messages() const { return messages_; }
  // The system prompt (as a first system message) and the messages: what /save writes.
  Conversation conversation() const;
  // Replaces the conversation: a first system message becomes the system prompt, the rest is kept as is.
  void set_conversation(const Conversation& conv);
  // Forgets the messages (keeps the system prompt) and empties the KV cache.
  void clear();

  // Adds a user message and generates the answer, streaming its text through on_text. The answer joins the
  // conversation (an empty one is dropped with its question). gp.eos_ids and gp.stop are extended with the
  // format's own end markers. Throws UsageError when the conversation is invalid or the message alone does
  // not fit the context; the conversation is then left as it was.
  ChatTurn send(const std::string& user, const GenerateParams& gp,
                const std::function<void(const std::string&)>& on_text = {},
                const std::function<bool()>& should_stop = {});

  // Notices for the user (the context ran out and turns were dropped); nothing when unset.
  std::function<void(const std::string&)> on_notice;

  int64_t cached_tokens() const { return cache_->n_past; }  // positions in the KV cache
  int64_t capacity() const { return cache_->capacity(); }   // INT64_MAX with a sliding window (rolling)
  int64_t cache_bytes() const { return cache_->bytes(); }
  const std::vector<int32_t>& cached_ids() const { return held_; }  // the ids at those positions
  const ChatTotals& totals() const { return totals_; }
  const ChatTurn& last_turn() const { return last_; }
  const ChatEncoder& encoder() const { return enc_; }

 private:
  bool drop_oldest_turn();
  // Keeps the first n cached positions if the cache still holds them; false when it must restart from 0.
  bool roll_back(int64_t n);
  // Feeds ids at the cache's next positions in chunks; g's sampler draws the next token from the last
  // one's logits into *next.
  void feed(const int32_t* ids, size_t n, Generation& g, int32_t* next);

  ForwardPass& fp_;
  std::unique_ptr<KVCache> cache_;
  const ChatEncoder& enc_;
  std::string system_;
  Conversation messages_;
  std::vector<int32_t> held_;  // the ids at positions 0 .. n_past-1 of the cache
  ChatTotals totals_;
  ChatTurn last_;
};

}  // namespace mistral
