// Continuous batching: many generations share each forward pass (ragged, no padding, each sequence
// with its own positions and KV cache); when one finishes, the next waiting request takes its slot.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mistral/engine.h"
#include "mistral/generator.h"
#include "mistral/tokenizer.h"

namespace mistral {

struct BatchRequest {
  size_t index = 0;                 // caller's handle (e.g. the input line)
  std::vector<int32_t> prompt_ids;
  GenerateParams params;
};

struct BatchResult {
  size_t index = 0;
  GenerateResult gen;
  std::string error;                // non-empty: the request failed (e.g. longer than the context)
};

struct BatchOptions {
  int max_batch = 8;                // concurrent sequences at most
  int64_t kv_budget_bytes = 0;      // KV-cache memory for all sequences together (0: no limit)
  int prefill_tokens = 512;         // prompt tokens per forward pass across the batch
};

struct BatchStats {
  int64_t forward_passes = 0, prompt_tokens = 0, completion_tokens = 0, max_concurrent = 0;
};

class BatchScheduler {
 public:
  BatchScheduler(ForwardPass& fp, const Tokenizer& tok, const BatchOptions& opt);
  // Pulls requests with next() (false: none left) and reports each with done() as soon as it
  // finishes, in completion order. should_stop() (optional) ends the run early; unfinished requests
  // are then not reported.
  void run(const std::function<bool(BatchRequest*)>& next, const std::function<void(BatchResult&&)>& done,
           const std::function<bool()>& should_stop = {});
  const BatchStats& stats() const { return stats_; }
  // Concurrent sequences the options and memory budget allow for requests of up to max_positions.
  int capacity_for(int64_t max_positions) const;

 private:
  ForwardPass& fp_;
  const Tokenizer& tok_;
  BatchOptions opt_;
  BatchStats stats_;
};

}  // namespace mistral
