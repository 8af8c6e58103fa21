// Generation state machine and the single-sequence generate() loop.
#include "mistral/generator.h"

#include <algorithm>
#include <chrono>

namespace mistral {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Generation::Generation(const Tokenizer& tok, std::vector<int32_t> prompt_ids, const GenerateParams& params,
                       TextFn on_text)
    : tok_(tok), p_(params), on_text_(std::move(on_text)), sampler_(params.sampler), dec_(tok) {
  res_.prompt_ids = std::move(prompt_ids);
  res_.finish_reason = "length";
  history_ = res_.prompt_ids;
  for (const auto& s : p_.stop) max_stop_ = std::max(max_stop_, s.size());
  if (p_.max_tokens <= 0) done_ = true;
  // The completion continues the prompt's text: prime the decoder with the last text piece so the
  // first completion piece keeps its leading space (it is not the first piece after BOS).
  for (auto it = res_.prompt_ids.rbegin(); it != res_.prompt_ids.rend(); ++it)
    if (*it >= 0 && *it < tok_.vocab_size() && !tok_.piece_bytes(*it).empty()) {
      dec_.push(*it);
      break;
    }
}

void Generation::emit_upto(size_t end) {
  if (end > emitted_) {
    if (on_text_) on_text_(text_.substr(emitted_, end - emitted_));
    emitted_ = end;
  }
}

// Returns true if a stop string matched (the text is cut there); otherwise emits what can no
// longer be the start of a stop string.
bool Generation::check_stop() {
  if (p_.stop.empty()) {
    emit_upto(text_.size());
    return false;
  }
  const size_t from = emitted_ > max_stop_ ? emitted_ - max_stop_ : 0;
  size_t best = std::string::npos;
  for (const auto& s : p_.stop) {
    if (s.empty()) continue;
    const size_t p = text_.find(s, from);
    if (p != std::string::npos) best = std::min(best, p);
  }
  if (best != std::string::npos) {
    text_.resize(best);
    emit_upto(best);
    return true;
  }
  size_t hold = 0;
  for (const auto& s : p_.stop)
    for (size_t k = std::min(s.empty() ? 0 : s.size() - 1, text_.size()); k > hold; --k)
      if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  emit_upto(text_.size() - hold);
  return false;
}

void Generation::finish(const std::string& reason) {
  if (done_ && !res_.text.empty()) return;
  if (!done_) res_.finish_reason = reason;
  done_ = true;
  if (res_.finish_reason != "stop") {
    text_ += dec_.flush();
    if (check_stop()) res_.finish_reason = "stop";
    else emit_upto(text_.size());
  }
  res_.text = text_;
}

bool Generation::step(const float* logits, int64_t V) {
  if (done_) return true;
  return step_id(sampler_.sample(logits, V, history_));
}

bool Generation::step_id(int32_t id) {
  if (done_) return true;
  res_.ids.push_back(id);
  history_.push_back(id);
  if (!p_.ignore_eos && std::find(p_.eos_ids.begin(), p_.eos_ids.end(), id) != p_.eos_ids.end()) {
    finish("eos");
    return true;
  }
  text_ += dec_.push(id);
  if (check_stop()) {
    res_.finish_reason = "stop";
    done_ = true;
    res_.text = text_;
    return true;
  }
  if (int(res_.ids.size()) >= p_.max_tokens) {
    finish("length");
    return true;
  }
  return false;
}

GenerateResult generate(Session& session, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                        const GenerateParams& gp, const Generation::TextFn& on_text,
                        const std::function<bool()>& should_stop) {
  Generation g(tok, prompt_ids, gp, on_text);
  if (g.done()) {
    g.finish("length");
    return g.result();
  }
  // The session draws each token where the logits are (only the candidates, or the argmax, leave the
  // device).
  double t0 = now_s();
  int32_t next = session.feed_sample(prompt_ids, g.sampler(), g.history());
  const double prefill_s = now_s() - t0;
  t0 = now_s();
  int64_t decoded = 0;
  while (!g.step_id(next)) {
    if (should_stop && should_stop()) {
      g.finish("interrupted");
      break;
    }
    if (session.n_past() + 1 > session.capacity()) {
      g.finish("length");  // context full
      break;
    }
    next = session.feed_sample({g.last_id()}, g.sampler(), g.history());
    ++decoded;
  }
  GenerateResult r = g.result();
  r.prefill_s = prefill_s;
  r.decode_s = now_s() - t0;
  r.decoded_tokens = decoded;
  return r;
}

}  // namespace mistral
