// ChatSession: a conversation whose KV cache is kept between turns (only ids the cache lacks are prefilled).
#include "mistral/chat_session.h"

#include <algorithm>
#include <chrono>
#include <climits>

#include "mistral/error.h"

namespace mistral {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

ChatSession::ChatSession(ForwardPass& fp, const ChatEncoder& encoder, int64_t max_positions)
    : fp_(fp), cache_(fp.new_cache(max_positions)), enc_(encoder) {}

Conversation ChatSession::conversation() const {
  Conversation c;
  if (!system_.empty()) c.push_back({"system", system_});
  c.insert(c.end(), messages_.begin(), messages_.end());
  return c;
}

void ChatSession::set_conversation(const Conversation& conv) {
  system_.clear();
  messages_.clear();
  size_t i = 0;
  if (!conv.empty() && conv[0].role == "system") system_ = conv[i++].content;
  messages_.assign(conv.begin() + long(i), conv.end());
  // The cache is left alone: the next turn reuses whatever prefix of it the loaded conversation shares.
}

void ChatSession::clear() {
  messages_.clear();
  cache_->n_past = 0;
  held_.clear();
}

bool ChatSession::drop_oldest_turn() {
  size_t first_user = messages_.size();
  for (size_t i = 0; i < messages_.size(); ++i)
    if (messages_[i].role == "user") {
      first_user = i;
      break;
    }
  for (size_t i = first_user + 1; i < messages_.size(); ++i)
    if (messages_[i].role == "user") {
      messages_.erase(messages_.begin(), messages_.begin() + long(i));
      return true;
    }
  return false;
}

bool ChatSession::roll_back(int64_t n) {
  const int64_t past = cache_->n_past;
  if (n >= past) return true;
  // Position p lives in row p % slots. Rows of positions n .. past-1 overwrote positions p - slots; the next
  // query (position n) reads the window (n - W, n), which must not be among them.
  bool ok = true;
  if (cache_->capacity() == INT64_MAX && past > cache_->slots()) {
    const int64_t window = fp_.shape().window;
    ok = past - cache_->slots() <= std::max<int64_t>(0, n - window + 1);
  }
  if (!ok) n = 0;
  cache_->n_past = n;
  held_.resize(size_t(n));
  return ok;
}

void ChatSession::feed(const int32_t* ids, size_t n, Generation& g, int32_t* next) {
  if (cache_->n_past + int64_t(n) > cache_->capacity())
    throw UsageError("context full: " + std::to_string(cache_->n_past + int64_t(n)) + " positions needed, " +
                     std::to_string(cache_->capacity()) + " available (use --ctx, up to max_position_embeddings)");
  size_t done = 0;
  while (done < n) {
    BatchSegment s;
    s.cache = cache_.get();
    s.ids = ids + done;
    s.T = int(std::min<size_t>(size_t(fp_.chunk()), n - done));
    s.want_logits = done + size_t(s.T) == n;
    const RowSampler rs{&g.sampler(), &g.history()};
    fp_.run({s}, nullptr, s.want_logits ? next : nullptr, s.want_logits ? &rs : nullptr);
    held_.insert(held_.end(), ids + done, ids + done + s.T);
    done += size_t(s.T);
  }
}

ChatTurn ChatSession::send(const std::string& user, const GenerateParams& gp_in,
                           const std::function<void(const std::string&)>& on_text,
                           const std::function<bool()>& should_stop) {
  const Conversation saved = messages_;
  messages_.push_back({"user", user});
  ChatTurn turn;
  turn.cached_before = cache_->n_past;
  std::vector<int32_t> full;
  try {
    full = enc_.encode(conversation(), true);
    // Without a window the cache holds capacity() positions: keep room for (part of) the answer by dropping
    // the oldest turns; the last user message always stays.
    const int64_t cap = cache_->capacity();
    if (cap != INT64_MAX) {
      const int64_t reserve = std::max<int64_t>(1, std::min<int64_t>(gp_in.max_tokens, cap / 4));
      while (int64_t(full.size()) + reserve > cap && drop_oldest_turn()) {
        ++turn.dropped_turns;
        full = enc_.encode(conversation(), true);
      }
      if (int64_t(full.size()) + 1 > cap)
        throw UsageError("this message needs " + std::to_string(full.size()) + " tokens with the conversation's "
                         "format, but the context holds " + std::to_string(cap) + " (use --ctx, up to the model's "
                         "max_position_embeddings, or a shorter message)");
    }
  } catch (...) {
    messages_ = saved;
    throw;
  }
  if (turn.dropped_turns > 0 && on_notice)
    on_notice("context full (" + std::to_string(cache_->capacity()) + " positions): dropped the oldest " +
              std::to_string(turn.dropped_turns) + (turn.dropped_turns == 1 ? " turn" : " turns") +
              "; the conversation goes on without them");

  if (full.empty()) throw UsageError("the conversation encodes to no tokens");
  // Keep the longest cached prefix of the prompt, leaving at least one id to feed (its logits start the answer).
  const int64_t keep = int64_t(std::min(common_prefix(held_, full), full.size() - 1));
  if (keep < cache_->n_past) {
    turn.rolled_back = cache_->n_past - keep;
    turn.cache_rebuilt = !roll_back(keep);
  }
  turn.reused_tokens = cache_->n_past;
  turn.prompt_tokens = int64_t(full.size());
  turn.prefilled_tokens = turn.prompt_tokens - turn.reused_tokens;

  GenerateParams gp = gp_in;
  for (int32_t id : enc_.stop_ids())
    if (std::find(gp.eos_ids.begin(), gp.eos_ids.end(), id) == gp.eos_ids.end()) gp.eos_ids.push_back(id);
  for (const auto& s : enc_.stop_strings()) gp.stop.push_back(s);

  bool first_text = true;
  auto stream = [&](const std::string& s) {
    if (!on_text || s.empty()) return;
    if (first_text) {  // the answer as the conversation stores it (no dummy-prefix space)
      first_text = false;
      const std::string t = enc_.answer_content(s);
      if (!t.empty()) on_text(t);
      return;
    }
    on_text(s);
  };

  // Prefill, then decode as generate() does, on this conversation's cache.
  Generation g(enc_.tokenizer(), full, gp, stream);
  int32_t next = -1;  // drawn where the logits are (ForwardPass::run)
  double t0 = now_s();
  if (g.done()) {
    g.finish("length");
  } else {
    feed(full.data() + keep, full.size() - size_t(keep), g, &next);
    turn.prefill_s = now_s() - t0;
    t0 = now_s();
    while (!g.step_id(next)) {
      if (should_stop && should_stop()) {
        g.finish("interrupted");
        break;
      }
      if (cache_->n_past + 1 > cache_->capacity()) {
        g.finish("length");  // context full
        break;
      }
      const int32_t id = g.last_id();
      feed(&id, 1, g, &next);
      ++turn.decoded_tokens;
    }
    turn.decode_s = now_s() - t0;
  }
  const GenerateResult& r = g.result();

  // The answer: its text as stored, and the ids sampled (without the end-of-answer id) when they spell it.
  turn.answer = enc_.answer_content(r.text);
  turn.finish_reason = r.finish_reason;
  if (r.finish_reason == "length" && int(r.ids.size()) < gp.max_tokens) turn.finish_reason = "context";
  turn.generated_tokens = int64_t(r.ids.size());
  std::vector<int32_t> answer_ids = r.ids;
  if (r.finish_reason == "eos" && !answer_ids.empty()) answer_ids.pop_back();
  if (!enc_.ids_spell(answer_ids, turn.answer)) answer_ids.clear();
  if (turn.answer.empty()) messages_.pop_back();  // nothing to keep: forget the question too
  else messages_.push_back({"assistant", turn.answer, answer_ids});

  totals_.turns += 1;
  totals_.prompt_tokens += turn.prompt_tokens;
  totals_.prefilled_tokens += turn.prefilled_tokens;
  totals_.reused_tokens += turn.reused_tokens;
  totals_.generated_tokens += turn.generated_tokens;
  totals_.decoded_tokens += turn.decoded_tokens;
  totals_.rolled_back += turn.rolled_back;
  totals_.rebuilds += turn.cache_rebuilt ? 1 : 0;
  totals_.dropped_turns += turn.dropped_turns;
  totals_.prefill_s += turn.prefill_s;
  totals_.decode_s += turn.decode_s;
  last_ = turn;
  return turn;
}

}  // namespace mistral
