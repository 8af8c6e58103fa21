// Continuous batching equals running each request alone: ids and text (greedy, and sampled with seeds)
// are identical at batch sizes 1, 3 and 8, and equal to sampling from logits brought to the host, with prompts of mixed
// lengths (some longer than the fixture's sliding window). Backend::decode_rows (a run of single-token segments) equals
// the per-row ops bit for bit, and a ragged pass mixing such runs with prompt chunks equals each sequence run alone.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "mistral/backend.h"
#include "mistral/batch.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/sampler.h"
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

// Greedy for most requests; every third samples (a nucleus, its own seed; a narrow one at a lower
// temperature for every other of those, which few candidates can settle), every fifth of those with a
// repetition penalty, so that one pass mixes greedy and sampled rows.
GenerateParams params_for(size_t i) {
  GenerateParams gp;
  gp.max_tokens = 6 + int(i % 5) * 4;  // different lengths so sequences finish at different steps
  gp.sampler.temperature = 0;
  if (i % 3 == 1) {
    gp.sampler.temperature = 0.9f;
    gp.sampler.top_p = 0.9f;
    gp.sampler.seed = 1000 + i;
    if (i % 2 == 0) gp.sampler.temperature = 0.5f, gp.sampler.top_p = 0.3f;
    if (i % 5 == 1) gp.sampler.repeat_penalty = 1.3f;
  }
  gp.ignore_eos = true;
  return gp;
}

// generate() with every row's logits brought to the host and sampled there (Generation::step): the
// reference for the draws made where the logits are (Session::feed_sample, ForwardPass::run).
GenerateResult generate_on_host(Session& s, const Tokenizer& tok, const std::vector<int32_t>& prompt,
                                const GenerateParams& gp) {
  Generation g(tok, prompt, gp);
  std::vector<float> l = s.feed(prompt);
  while (!g.step(l.data(), int64_t(l.size()))) l = s.feed({g.last_id()});
  return g.result();
}

// candidates: how many the backend finds for a sampled draw (SessionOptions::sample_candidates); 8 of
// the fixtures' 128 leaves many draws to the normaliser and to the whole row.
void check_batch_equals_solo(const std::string& fixture, int candidates = kSampleCandidates) {
  if (!testutil::exists(testutil::shared_data("models/stories260K"))) GTEST_SKIP() << "stories260K tokenizer absent";
  BatchSetup s = make_setup(fixture);
  auto be = make_cpu_backend(2);
  SessionOptions so;
  so.chunk = 7;  // prompt chunks shorter and longer than the window
  so.sample_candidates = candidates;
  std::vector<GenerateResult> solo;
  for (size_t i = 0; i < s.prompts.size(); ++i) {
    Session sess(*s.model, *be, so), host(*s.model, *be, so);
    solo.push_back(generate(sess, *s.tok, s.prompts[i], params_for(i)));
    EXPECT_EQ(solo.back().ids, generate_on_host(host, *s.tok, s.prompts[i], params_for(i)).ids) << "request " << i;
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
TEST(Batch, EqualsSoloWithFewCandidates) { check_batch_equals_solo("w8_gqa2_bf16", 8); }

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

// Backend::decode_rows's default (what the CPU runs) is, row after row, exactly the per-segment sequence
// of the forward pass for T = 1: rope_cache_write then attention (fused), or rope, attention, cache_write
// (unfused). Rows have their own caches, slot counts and positions (windowed: past the wrap; full: any
// row of the cache); q, k, out and every cache compared bit for bit.
TEST(Batch, DecodeRowsDefaultEqualsPerRowOps) {
  auto be = make_cpu_backend(2);
  std::mt19937 rng(21);
  auto fill = [&](std::vector<float>& v, size_t n) {
    std::normal_distribution<float> d(0.f, 1.f);
    v.resize(n);
    for (auto& x : v) x = d(rng);
  };
  int cases = 0;
  for (int window : {0, 8})
    for (int ratio : {1, 4})
      for (bool fused : {true, false})
        for (int n : {1, 2, 9}) {
          AttnShape s;
          s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = 16, s.window = window, s.rope_theta = 1e4f;
          s.slots = 12345;  // not used: every row has its own
          const size_t qd = size_t(s.q_dim()), kvd = size_t(s.kv_dim());
          std::vector<float> q, k, v;
          fill(q, size_t(n) * qd), fill(k, size_t(n) * kvd), fill(v, size_t(n) * kvd);
          std::vector<std::vector<float>> ck(static_cast<size_t>(n)), cv(static_cast<size_t>(n));
          std::vector<int64_t> pos(static_cast<size_t>(n)), slots(static_cast<size_t>(n));
          for (int i = 0; i < n; ++i) {
            slots[size_t(i)] = window > 0 ? window : 1 + int64_t(rng() % 40);
            pos[size_t(i)] = int64_t(rng() % uint32_t(window > 0 ? 3 * window : slots[size_t(i)]));
            fill(ck[size_t(i)], size_t(slots[size_t(i)]) * kvd), fill(cv[size_t(i)], size_t(slots[size_t(i)]) * kvd);
          }
          // decode_rows on copies.
          std::vector<float> qa = q, ka = k, out_a(size_t(n) * qd);
          std::vector<std::vector<float>> cka = ck, cva = cv;
          std::vector<DecodeRow> rows(static_cast<size_t>(n));
          for (int i = 0; i < n; ++i) {
            rows[size_t(i)].cache = KVLayer{cka[size_t(i)].data(), cva[size_t(i)].data()};
            rows[size_t(i)].pos = pos[size_t(i)];
            rows[size_t(i)].slots = slots[size_t(i)];
          }
          be->decode_rows(qa.data(), ka.data(), v.data(), rows.data(), n, s, fused, out_a.data());
          // The per-row ops, spelled out.
          std::vector<float> qb = q, kb = k, out_b(size_t(n) * qd);
          std::vector<std::vector<float>> ckb = ck, cvb = cv;
          for (int i = 0; i < n; ++i) {
            AttnShape sh = s;
            sh.slots = slots[size_t(i)];
            const KVLayer c{ckb[size_t(i)].data(), cvb[size_t(i)].data()};
            float *qi = qb.data() + size_t(i) * qd, *ki = kb.data() + size_t(i) * kvd,
                  *oi = out_b.data() + size_t(i) * qd;
            const float* vi = v.data() + size_t(i) * kvd;
            if (fused) {
              be->rope_cache_write(qi, ki, vi, c, 1, pos[size_t(i)], sh);
              be->attention(qi, ki, vi, c, 1, pos[size_t(i)], sh, oi);
            } else {
              be->rope(qi, ki, 1, pos[size_t(i)], sh);
              be->attention(qi, ki, vi, c, 1, pos[size_t(i)], sh, oi);
              be->cache_write(ki, vi, c, 1, pos[size_t(i)], sh);
            }
          }
          const std::string what = "W " + std::to_string(window) + " ratio " + std::to_string(ratio) + " fused " +
                                   std::to_string(fused) + " n " + std::to_string(n);
          auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
            return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
          };
          EXPECT_TRUE(same(qa, qb)) << "q " << what;
          EXPECT_TRUE(same(ka, kb)) << "k " << what;
          EXPECT_TRUE(same(out_a, out_b)) << "out " << what;
          for (int i = 0; i < n; ++i) {
            EXPECT_TRUE(same(cka[size_t(i)], ckb[size_t(i)])) << "cache k row " << i << " " << what;
            EXPECT_TRUE(same(cva[size_t(i)], cvb[size_t(i)])) << "cache v row " << i << " " << what;
            // The step's own K/V row was stored.
            const size_t r = size_t(pos[size_t(i)] % slots[size_t(i)]) * kvd;
            EXPECT_EQ(std::memcmp(cva[size_t(i)].data() + r, v.data() + size_t(i) * kvd, kvd * 4), 0) << what;
          }
          ++cases;
        }
  EXPECT_EQ(cases, 2 * 2 * 2 * 3);
}

// One ragged pass mixing runs of decode steps (which go through decode_rows) with prompt chunks and a
// lone decode step, on caches of different lengths (full attention: different slot counts; windowed:
// past the wrap), equals each sequence fed alone, bit for bit, over several steps.
TEST(Batch, MixedPassEqualsSolo) {
  for (const char* fixture : {"w8_gqa1_f32", "full_gqa2_tied_f32", "w8_gqa2_bf16"}) {
    auto model = Model::load(testutil::source_path(std::string("models/fixtures/") + fixture));
    auto be = make_cpu_backend(2);
    const size_t V = size_t(model->config().vocab_size);
    SessionOptions so;
    ForwardPass batched(*model, *be, so), solo(*model, *be, so);
    std::mt19937 rng(23);
    const int n = 7;
    std::vector<std::unique_ptr<KVCache>> bc, sc;
    std::vector<std::vector<int32_t>> last(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      bc.push_back(batched.new_cache(60 + 3 * i));
      sc.push_back(solo.new_cache(60 + 3 * i));
      std::vector<int32_t> prompt(size_t(1 + (i * 5) % 13));
      for (auto& x : prompt) x = int32_t(rng() % V);
      for (ForwardPass* fp : {&batched, &solo}) {
        BatchSegment seg;
        seg.cache = (fp == &batched ? bc : sc)[size_t(i)].get();
        seg.ids = prompt.data();
        seg.T = int(prompt.size());
        std::vector<float> l(V);
        fp->run({seg}, l.data());
      }
      last[size_t(i)] = {int32_t(rng() % V)};
    }
    for (int step = 0; step < 6; ++step) {
      // Sequence 2 feeds a chunk of 3 (splitting the decode rows into runs 0-1 and 3-6, or 3-4 and a lone 6
      // when sequence 5 feeds a chunk too).
      std::vector<std::vector<int32_t>> feed(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        feed[size_t(i)] = last[size_t(i)];
        if (i == 2 || (i == 5 && step % 2 == 1))
          for (int t = 0; t < 2; ++t) feed[size_t(i)].push_back(int32_t(rng() % V));
      }
      std::vector<BatchSegment> segs(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        segs[size_t(i)].cache = bc[size_t(i)].get();
        segs[size_t(i)].ids = feed[size_t(i)].data();
        segs[size_t(i)].T = int(feed[size_t(i)].size());
      }
      std::vector<float> lb(size_t(n) * V);
      ASSERT_EQ(batched.run(segs, lb.data()), size_t(n));
      for (int i = 0; i < n; ++i) {
        BatchSegment seg = segs[size_t(i)];
        seg.cache = sc[size_t(i)].get();
        std::vector<float> ls(V);
        solo.run({seg}, ls.data());
        ASSERT_EQ(std::memcmp(ls.data(), lb.data() + size_t(i) * V, V * 4), 0)
            << fixture << " step " << step << " sequence " << i;
        ASSERT_EQ(bc[size_t(i)]->n_past, sc[size_t(i)]->n_past);
        last[size_t(i)] = {argmax(ls.data(), int64_t(V))};
      }
    }
  }
}

TEST(Batch, SharedCacheIsAnError) {
  auto model = Model::load(testutil::source_path("models/fixtures/w8_gqa1_f32"));
  auto be = make_cpu_backend(1);
  ForwardPass fp(*model, *be, SessionOptions());
  auto cache = fp.new_cache();
  const int32_t ids[2] = {3, 4};
  BatchSegment a;
  a.cache = cache.get(), a.ids = ids, a.T = 1;
  BatchSegment b = a;
  b.ids = ids + 1;
  std::vector<float> l(2 * size_t(model->config().vocab_size));
  EXPECT_THROW(fp.run({a, b}, l.data()), UsageError);
  EXPECT_EQ(cache->n_past, 0);
}

}  // namespace
