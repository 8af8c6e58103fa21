// BatchScheduler: fill free slots, one ragged forward pass per step (prompt chunks and decode tokens
// together), sample for every sequence whose logits came back, retire finished ones.
#include "mistral/batch.h"

#include <algorithm>
#include <deque>

#include "mistral/error.h"

namespace mistral {

namespace {

struct Slot {
  BatchRequest req;
  std::unique_ptr<KVCache> cache;
  std::unique_ptr<Generation> gen;
  size_t prompt_done = 0;  // prompt tokens already fed
  int32_t next_id = -1;    // token to feed in the next decode step
};

}  // namespace

BatchScheduler::BatchScheduler(ForwardPass& fp, const Tokenizer& tok, const BatchOptions& opt)
    : fp_(fp), tok_(tok), opt_(opt) {
  if (opt_.max_batch <= 0) throw UsageError("--batch-size must be positive");
  if (opt_.prefill_tokens <= 0) throw UsageError("the prefill chunk must be positive");
}

int BatchScheduler::capacity_for(int64_t max_positions) const {
  if (opt_.kv_budget_bytes <= 0) return opt_.max_batch;
  const int64_t per = std::max<int64_t>(1, fp_.cache_bytes(max_positions));
  return int(std::max<int64_t>(1, std::min<int64_t>(opt_.max_batch, opt_.kv_budget_bytes / per)));
}

void BatchScheduler::run(const std::function<bool(BatchRequest*)>& next, const std::function<void(BatchResult&&)>& done,
                         const std::function<bool()>& should_stop) {
  std::vector<std::unique_ptr<Slot>> active;
  int64_t kv_in_use = 0;
  bool exhausted = false;
  std::deque<BatchRequest> waiting;  // pulled but not yet admitted (memory budget)
  std::vector<int32_t> next_ids;
  std::vector<RowSampler> samplers;

  auto fail = [&](BatchRequest& r, const std::string& why) {
    BatchResult res;
    res.index = r.index;
    res.gen.prompt_ids = r.prompt_ids;
    res.error = why;
    done(std::move(res));
  };

  for (;;) {
    if (should_stop && should_stop()) return;
    // Admit requests while there is room.
    while (int(active.size()) < opt_.max_batch) {
      if (waiting.empty()) {
        if (exhausted) break;
        BatchRequest r;
        if (!next(&r)) {
          exhausted = true;
          break;
        }
        waiting.push_back(std::move(r));
      }
      BatchRequest& r = waiting.front();
      const int64_t need = int64_t(r.prompt_ids.size()) + std::max(0, r.params.max_tokens);
      if (r.prompt_ids.empty()) {
        fail(r, "empty prompt");
        waiting.pop_front();
        continue;
      }
      if (fp_.shape().window <= 0 && int64_t(r.prompt_ids.size()) > fp_.capacity()) {
        fail(r, "prompt has " + std::to_string(r.prompt_ids.size()) + " tokens, more than the context (" +
                    std::to_string(fp_.capacity()) + ")");
        waiting.pop_front();
        continue;
      }
      const int64_t bytes = fp_.cache_bytes(need);
      if (!active.empty() && opt_.kv_budget_bytes > 0 && kv_in_use + bytes > opt_.kv_budget_bytes) break;
      std::unique_ptr<Slot> s(new Slot());
      s->req = std::move(r);
      waiting.pop_front();
      s->cache = fp_.new_cache(need);
      kv_in_use += s->cache->bytes();
      s->gen.reset(new Generation(tok_, s->req.prompt_ids, s->req.params));
      if (s->gen->done()) {  // max_tokens == 0
        s->gen->finish("length");
        BatchResult res;
        res.index = s->req.index;
        res.gen = s->gen->result();
        kv_in_use -= s->cache->bytes();
        done(std::move(res));
        continue;
      }
      stats_.prompt_tokens += int64_t(s->req.prompt_ids.size());
      active.push_back(std::move(s));
    }
    if (active.empty()) {
      if (exhausted && waiting.empty()) return;
      continue;
    }
    stats_.max_concurrent = std::max<int64_t>(stats_.max_concurrent, int64_t(active.size()));

    // One step: decode tokens for generating sequences, prompt chunks (within the budget) for the rest.
    std::vector<BatchSegment> segs;
    std::vector<Slot*> seg_slot;
    int prefill_left = opt_.prefill_tokens;
    for (auto& s : active) {
      BatchSegment seg;
      seg.cache = s->cache.get();
      const size_t left = s->req.prompt_ids.size() - s->prompt_done;
      if (left > 0) {
        if (prefill_left <= 0) continue;
        const int T = int(std::min<size_t>(left, size_t(prefill_left)));
        seg.ids = s->req.prompt_ids.data() + s->prompt_done;
        seg.T = T;
        seg.want_logits = size_t(T) == left;
        prefill_left -= T;
      } else {
        seg.ids = &s->next_id;
        seg.T = 1;
      }
      segs.push_back(seg);
      seg_slot.push_back(s.get());
    }
    // Each row's next token is drawn where the logits are (ForwardPass::run).
    samplers.clear();
    for (size_t i = 0; i < segs.size(); ++i)
      if (segs[i].want_logits) samplers.push_back({&seg_slot[i]->gen->sampler(), &seg_slot[i]->gen->history()});
    next_ids.assign(std::max<size_t>(1, samplers.size()), -1);
    fp_.run(segs, nullptr, next_ids.data(), samplers.data());
    ++stats_.forward_passes;

    size_t r = 0;
    for (size_t i = 0; i < segs.size(); ++i) {
      Slot* s = seg_slot[i];
      if (s->prompt_done < s->req.prompt_ids.size()) s->prompt_done += size_t(segs[i].T);
      if (!segs[i].want_logits) continue;
      bool finished = s->gen->step_id(next_ids[r++]);
      if (!finished && s->cache->n_past + 1 > s->cache->capacity()) {
        s->gen->finish("length");
        finished = true;
      }
      if (!finished) s->next_id = s->gen->last_id();
    }
    // Retire finished sequences, in slot order.
    for (size_t i = 0; i < active.size();) {
      if (active[i]->gen->done()) {
        BatchResult res;
        res.index = active[i]->req.index;
        res.gen = active[i]->gen->result();
        stats_.completion_tokens += int64_t(res.gen.ids.size());
        kv_in_use -= active[i]->cache->bytes();
        active.erase(active.begin() + long(i));
        done(std::move(res));
      } else {
        ++i;
      }
    }
  }
}

}  // namespace mistral
