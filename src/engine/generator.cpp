// generate(): prefill, sample, decode, stream; stop at EOS, a stop string, max tokens or a full context.
#include "mistral/generator.h"

#include <algorithm>
#include <chrono>

namespace mistral {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

GenerateResult generate(Session& session, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                        const GenerateParams& gp, const std::function<void(const std::string&)>& on_text,
                        const std::function<bool()>& should_stop) {
  GenerateResult res;
  res.prompt_ids = prompt_ids;
  res.finish_reason = "length";
  Sampler sampler(gp.sampler);
  StreamDecoder dec(tok);
  std::vector<int32_t> history = prompt_ids;
  std::string text;    // decoded completion so far
  size_t emitted = 0;  // bytes of text already handed to on_text
  size_t max_stop = 0;
  for (const auto& s : gp.stop) max_stop = std::max(max_stop, s.size());

  auto emit_upto = [&](size_t end) {
    if (end > emitted) {
      if (on_text) on_text(text.substr(emitted, end - emitted));
      emitted = end;
    }
  };
  // Returns true if a stop string matched (text is cut there).
  auto check_stop = [&]() -> bool {
    if (gp.stop.empty()) {
      emit_upto(text.size());
      return false;
    }
    const size_t from = emitted > max_stop ? emitted - max_stop : 0;
    size_t best = std::string::npos;
    for (const auto& s : gp.stop) {
      if (s.empty()) continue;
      size_t p = text.find(s, from);
      if (p != std::string::npos) best = std::min(best, p);
    }
    if (best != std::string::npos) {
      text.resize(best);
      emit_upto(best);
      return true;
    }
    // Hold back the longest tail that is a prefix of some stop string.
    size_t hold = 0;
    for (const auto& s : gp.stop)
      for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k)
        if (text.compare(text.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    emit_upto(text.size() - hold);
    return false;
  };

  if (gp.max_tokens <= 0) return res;
  double t0 = now_s();
  std::vector<float> logits = session.feed(prompt_ids);
  res.prefill_s = now_s() - t0;
  t0 = now_s();
  const int64_t vocab = int64_t(logits.size());
  for (int step = 0; step < gp.max_tokens; ++step) {
    if (should_stop && should_stop()) break;
    const int32_t id = sampler.sample(logits.data(), vocab, history);
    res.ids.push_back(id);
    history.push_back(id);
    if (!gp.ignore_eos && std::find(gp.eos_ids.begin(), gp.eos_ids.end(), id) != gp.eos_ids.end()) {
      res.finish_reason = "eos";
      break;
    }
    text += dec.push(id);
    if (check_stop()) {
      res.finish_reason = "stop";
      break;
    }
    if (step + 1 == gp.max_tokens) break;
    if (session.n_past() + 1 > session.capacity()) break;  // context full: finish as "length"
    logits = session.feed({id});
    ++res.decoded_tokens;
  }
  res.decode_s = now_s() - t0;
  if (res.finish_reason != "stop") {
    text += dec.flush();
    if (!check_stop()) emit_upto(text.size());
    else res.finish_reason = "stop";
  }
  res.text = text;
  return res;
}

}  // namespace mistral
