// Continuous batching equals running each request alone: greedy ids and text are identical at batch
// sizes 1, 3 and 8, with prompts of mixed lengths (some longer than the fixture's sliding window).
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "mistral/batch.h"
#include "mistral/error.h"
#include "test_util.h"

using namespace mistral;

namespace {

struct BatchSetup {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;  // stories260K's tokenizer: decodes every id below 128
  std::vector<std::vector<int32_t>> prompts;
};

BatchSetup make_setup(const std::string& fixture) {
  BatchSetup s;
  s.model = Model::load(testutil::source_path("models/fixtures/" + fixture));
  s.tok = Tokenizer::load_dir(testutil::shared_data("models/stories260K"));
  std::mt19937 rng(11);
  const int lens[] = {1, 2, 5, 8, 9, 17, 3, 40, 7, 12, 25, 4, 6, 33, 10, 16, 15, 2, 20, 11, 5, 29};
  for (int n : lens) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(int32_t(3 + rng() % 125));
    s.prompts.push_back(p);
  }
  return s;
}

GenerateParams params_for(size_t i) {
  GenerateParams gp;
  gp.max_tokens = 6 + int(i % 5) * 4;  // different lengths so sequences finish at different steps
  gp.sampler.temperature = 0;
  gp.ignore_eos = true;
  return gp;
}

void check_batch_equals_solo(const std::string& fixture) {
  if (!testutil::exists(testutil::shared_data("models/stories260K"))) GTEST_SKIP() << "stories260K tokenizer absent";
  BatchSetup s = make_setup(fixture);
  auto be = make_cpu_backend(2);
  SessionOptions so;
  so.chunk = 7;  // prompt chunks shorter and longer than the window
  std::vector<GenerateResult> solo;
  for (size_t i = 0; i < s.prompts.size(); ++i) {
    Session sess(*s.model, *be, so);
    solo.push_back(generate(sess, *s.tok, s.prompts[i], params_for(i)));
  }
  for (int bs : {1, 3, 8}) {
    ForwardPass fp(*s.model, *be, so);
    BatchOptions bo;
    bo.max_batch = bs;
    bo.prefill_tokens = 13;
    BatchScheduler sched(fp, *s.tok, bo);
    size_t next = 0;
    std::map<size_t, BatchResult> got;
    std::vector<size_t> order;
    sched.run(
        [&](BatchRequest* r) {
          if (next == s.prompts.size()) return false;
          r->index = next;
          r->prompt_ids = s.prompts[next];
          r->params = params_for(next);
          ++next;
          return true;
        },
        [&](BatchResult&& r) {
          order.push_back(r.index);
          got[r.index] = std::move(r);
        });
    ASSERT_EQ(got.size(), s.prompts.size());
    for (size_t i = 0; i < s.prompts.size(); ++i) {
      EXPECT_TRUE(got[i].error.empty()) << got[i].error;
      EXPECT_EQ(got[i].gen.ids, solo[i].ids) << "batch " << bs << " request " << i;
      EXPECT_EQ(got[i].gen.text, solo[i].text) << "batch " << bs << " request " << i;
      EXPECT_EQ(got[i].gen.finish_reason, solo[i].finish_reason);
    }
    EXPECT_LE(sched.stats().max_concurrent, bs);
    if (bs > 1) {
      EXPECT_EQ(sched.stats().max_concurrent, bs);
      // Continuous batching: with different lengths, completion order differs from submission order.
      EXPECT_NE(order, [&] {
        std::vector<size_t> v(order.size());
        for (size_t i = 0; i < v.size(); ++i) v[i] = i;
        return v;
      }());
    }
  }
}

TEST(Batch, EqualsSoloWithSlidingWindow) { check_batch_equals_solo("w8_gqa1_f32"); }
TEST(Batch, EqualsSoloFullAttentionGqa) { check_batch_equals_solo("full_gqa2_tied_f32"); }
TEST(Batch, EqualsSoloBf16) { check_batch_equals_solo("w8_gqa2_bf16"); }

TEST(Batch, KvBudgetLimitsConcurrency) {
  if (!testutil::exists(testutil::shared_data("models/stories260K"))) GTEST_SKIP() << "stories260K tokenizer absent";
  BatchSetup s = make_setup("full_gqa2_tied_f32");
  auto be = make_cpu_backend(1);
  SessionOptions so;
  ForwardPass fp(*s.model, *be, so);
  BatchOptions bo;
  bo.max_batch = 8;
  // Room for about two sequences of 60 positions.
  bo.kv_budget_bytes = 2 * fp.cache_bytes(60) + 16;
  BatchScheduler sched(fp, *s.tok, bo);
  size_t next = 0, n_done = 0;
  sched.run(
      [&](BatchRequest* r) {
        if (next == 10) return false;
        r->index = next++;
        r->prompt_ids = s.prompts[r->index];
        r->params = params_for(0);
        r->params.max_tokens = 60 - int(r->prompt_ids.size());
        return true;
      },
      [&](BatchResult&& r) {
        EXPECT_TRUE(r.error.empty()) << r.error;
        ++n_done;
      });
  EXPECT_EQ(n_done, 10u);
  EXPECT_LE(sched.stats().max_concurrent, 2);
}

TEST(Batch, TooLongPromptIsAnErrorNotAFailure) {
  if (!testutil::exists(testutil::shared_data("models/stories260K"))) GTEST_SKIP() << "stories260K tokenizer absent";
  BatchSetup s = make_setup("full_gqa2_tied_f32");
  auto be = make_cpu_backend(1);
  SessionOptions so;
  so.context = 16;
  ForwardPass fp(*s.model, *be, so);
  BatchScheduler sched(fp, *s.tok, BatchOptions());
  std::vector<BatchResult> out;
  size_t next = 0;
  sched.run(
      [&](BatchRequest* r) {
        if (next == 3) return false;
        r->index = next;
        r->prompt_ids = std::vector<int32_t>(next == 1 ? 40 : 4, 5);
        r->params = params_for(0);
        ++next;
        return true;
      },
      [&](BatchResult&& r) { out.push_back(std::move(r)); });
  ASSERT_EQ(out.size(), 3u);
  int errors = 0;
  for (auto& r : out) {
    if (r.index == 1) {
      EXPECT_NE(r.error.find("more than the context"), std::string::npos) << r.error;
      ++errors;
    } else {
      EXPECT_TRUE(r.error.empty());
      EXPECT_EQ(r.gen.finish_reason, "length");
      EXPECT_LE(r.gen.prompt_ids.size() + r.gen.ids.size(), 16u);
    }
  }
  EXPECT_EQ(errors, 1);
}

}  // namespace
