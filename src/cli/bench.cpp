// `mistral-run bench`: prefill and decode speed of a model (or a synthetic one of a chosen shape),
// decode as GB/s of weights read, against memory bandwidth measured in the same run: host memory for the
// CPU backend, the device's copy rate (Backend::copy_bandwidth_gbs) for a GPU backend.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "common.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/threadpool.h"

namespace mistral {
namespace cli {

namespace {

struct Bandwidth {
  double copy_gbs = 0;  // (bytes read + bytes written) / s, like STREAM copy
  double read_gbs = 0;  // bytes read / s by a reduction (host memory only)
};

Bandwidth measure_bandwidth(int threads) {
  const size_t n = size_t(256) << 20;  // 256 MiB per buffer: far beyond any cache
  std::vector<uint8_t> a(n, 1), b(n, 2);
  ThreadPool pool(threads);
  Bandwidth bw;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now_seconds();
    pool.parallel_for(int64_t(n), [&](int64_t s, int64_t e) { std::memcpy(&b[size_t(s)], &a[size_t(s)], size_t(e - s)); },
                      4096);
    double dt = now_seconds() - t0;
    bw.copy_gbs = std::max(bw.copy_gbs, 2.0 * double(n) / dt / 1e9);
    std::atomic<uint64_t> total{0};
    t0 = now_seconds();
    pool.parallel_for(int64_t(n / 8), [&](int64_t s, int64_t e) {
      const uint64_t* p = reinterpret_cast<const uint64_t*>(a.data());
      uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0;
      int64_t i = s;
      for (; i + 4 <= e; i += 4) x0 += p[i], x1 += p[i + 1], x2 += p[i + 2], x3 += p[i + 3];
      for (; i < e; ++i) x0 += p[i];
      total += x0 + x1 + x2 + x3;
    }, 512);
    dt = now_seconds() - t0;
    bw.read_gbs = std::max(bw.read_gbs, double(n) / dt / 1e9);
    if (total.load() == 12345) std::printf(" ");  // keeps the reduction alive
  }
  return bw;
}

// One model under test: its session and the best times over the repetitions.
struct Timed {
  std::unique_ptr<Model> model;
  std::unique_ptr<Session> session;
  double prefill = 1e30, decode = 1e30;
  int64_t draws = 0, row_draws = 0;  // sampled decode: draws, and those that took the whole logits row
};

// The sampler of the decode steps (--temp, --top-k, --top-p; temperature 0: greedy), with `seed`.
SamplerParams bench_sampler(const BenchArgs& a, uint64_t seed) {
  SamplerParams sp;
  sp.temperature = a.temperature, sp.top_k = a.top_k, sp.top_p = a.top_p, sp.seed = seed;
  return sp;
}

// One repetition: prefill the prompt, then decode steps: greedy (the argmax found by the backend, as
// generation does at temperature 0), or with --temp sampled as generation samples (the candidates found
// by the backend); keeps the best times.
void time_once(Timed& m, const BenchArgs& a, const std::vector<int32_t>& prompt) {
  Session& s = *m.session;
  s.reset();
  Sampler sampler(bench_sampler(a, 0));
  std::vector<int32_t> hist = prompt;
  double t0 = now_seconds();
  int32_t id = s.feed_sample(prompt, sampler, hist);
  m.prefill = std::min(m.prefill, now_seconds() - t0);
  t0 = now_seconds();
  for (int i = 0; i < a.gen_tokens; ++i) {
    hist.push_back(id);
    id = s.feed_sample({id}, sampler, hist);
  }
  m.decode = std::min(m.decode, now_seconds() - t0);
  m.draws = sampler.draws(), m.row_draws = sampler.row_draws();
}

// Bytes a decode step reads: every weight except the embedding table (one row of it).
double decode_bytes(const Model& m) {
  const ModelWeights& w = m.weights();
  double bytes = double(m.weight_bytes());
  if (w.lm_head.data != w.embed.data) bytes -= double(w.embed.nbytes());
  return bytes;
}

// Batched decode (--batch) of the model under test, then its figures: one JSON line, or text.
void report(const BenchArgs& a, Backend* be, const Bandwidth& bw, Timed& main_m, const Timed* base, const LoadOptions& lo,
            const SessionOptions& so, const std::vector<int32_t>& prompt) {
  const bool compare = base != nullptr;
  const Timed& base_m = *(compare ? base : &main_m);
  const int threads = cpu_backend_threads(*be);
  const bool on_cpu = threads > 0;
  const ModelConfig& c = main_m.model->config();
  const Model* model = main_m.model.get();
  const double best_prefill = main_m.prefill, best_decode = main_m.decode;
  // Batched decode: `batch` sequences with their own caches, one token each per forward pass.
  double batch_tps = 0;
  if (a.batch > 1) {
    ForwardPass fp(*model, *be, so);
    std::vector<std::unique_ptr<KVCache>> caches;
    std::vector<int32_t> next(size_t(a.batch)), first(size_t(a.batch));
    for (int b = 0; b < a.batch; ++b) caches.push_back(fp.new_cache(a.prompt_tokens + a.gen_tokens + 1));
    std::vector<BatchSegment> segs(size_t(a.batch));
    for (int b = 0; b < a.batch; ++b) {  // prefill every sequence (not timed)
      segs[size_t(b)].cache = caches[size_t(b)].get();
      segs[size_t(b)].ids = prompt.data();
      segs[size_t(b)].T = int(prompt.size());
    }
    // Each row's next id found by the backend: greedy, or with --temp drawn by a sampler of its own.
    std::vector<Sampler> samplers;
    std::vector<std::vector<int32_t>> hist(size_t(a.batch), prompt);
    std::vector<RowSampler> rs;
    for (int b = 0; b < a.batch; ++b) samplers.emplace_back(bench_sampler(a, uint64_t(b)));
    for (int b = 0; b < a.batch; ++b) rs.push_back({&samplers[size_t(b)], &hist[size_t(b)]});
    const RowSampler* row_samplers = a.temperature > 0 ? rs.data() : nullptr;
    fp.run(segs, nullptr, first.data(), row_samplers);
    double best = 1e30;
    for (int rep = 0; rep < std::max(1, a.reps); ++rep) {
      for (auto& cc : caches) cc->n_past = int64_t(prompt.size());
      next = first;
      for (int b = 0; b < a.batch; ++b) {
        segs[size_t(b)].ids = &next[size_t(b)];
        segs[size_t(b)].T = 1;
        hist[size_t(b)] = prompt;
      }
      const double t0 = now_seconds();
      for (int i = 0; i < a.gen_tokens; ++i) {
        for (int b = 0; b < a.batch; ++b) hist[size_t(b)].push_back(next[size_t(b)]);
        fp.run(segs, nullptr, next.data(), row_samplers);
      }
      best = std::min(best, now_seconds() - t0);
    }
    batch_tps = double(a.batch) * double(a.gen_tokens) / best;
  }
  const double bytes = decode_bytes(*model);
  const double prefill_tps = double(a.prompt_tokens) / best_prefill;
  const double decode_tps = double(a.gen_tokens) / best_decode;
  const double decode_gbs = bytes * decode_tps / 1e9;
  const double floor_tps = bw.read_gbs * 1e9 / bytes;
  // A device has no read-only measurement: its decode floor is the copy rate (as DESIGN.md reports it).
  const double dev_floor_tps = bw.copy_gbs * 1e9 / bytes;
  if (a.json) {
    nlohmann::json j = {{"backend", be->name()},
                        {"threads", threads},
                        {"weights_gb", bytes / 1e9},
                        {"dtype", dtype_name(model->matmul_dtype())},
                        {"kv_type", a.model.kv_type},
                        {"copy_gbs", bw.copy_gbs},
                        {"read_gbs", bw.read_gbs},
                        {"prefill_tokens", a.prompt_tokens},
                        {"prefill_tok_s", prefill_tps},
                        {"decode_tokens", a.gen_tokens},
                        {"decode_tok_s", decode_tps},
                        {"decode_gbs", decode_gbs},
                        {"decode_vs_read_bw", decode_gbs / bw.read_gbs},
                        {"decode_vs_copy_bw", decode_gbs / bw.copy_gbs},
                        {"batch", a.batch},
                        {"batch_decode_tok_s", batch_tps},
                        {"temperature", a.temperature},
                        {"top_k", a.top_k},
                        {"top_p", a.top_p},
                        {"draws_from_whole_row", main_m.row_draws}};
    if (!on_cpu) {
      j["read_gbs"] = nullptr;
      j["decode_vs_read_bw"] = nullptr;
      j["decode_vs_copy_bw"] = bw.copy_gbs > 0 ? nlohmann::json(decode_gbs / bw.copy_gbs) : nlohmann::json(nullptr);
      j["floor_tok_s"] = bw.copy_gbs > 0 ? nlohmann::json(dev_floor_tps) : nlohmann::json(nullptr);
    }
    if (compare) {
      j["quant"] = quant_name(lo.quant);
      j["quant_lm_head"] = lo.quant_lm_head;
      j["baseline"] = {{"dtype", dtype_name(base_m.model->matmul_dtype())},
                       {"weights_gb", decode_bytes(*base_m.model) / 1e9},
                       {"prefill_tok_s", double(a.prompt_tokens) / base_m.prefill},
                       {"decode_tok_s", double(a.gen_tokens) / base_m.decode}};
      j["prefill_speedup"] = base_m.prefill / best_prefill;
      j["decode_speedup"] = base_m.decode / best_decode;
    }
    std::printf("%s\n", j.dump().c_str());
  } else {
    if (on_cpu) std::printf("backend            cpu, %d threads\n", threads);
    else std::printf("backend            %s\n", be->name().c_str());
    std::printf("model              %s, %.1f M params, %s, %.3f GB read per decode step; kv cache %s\n",
                a.model.model_dir.empty() ? "synthetic" : a.model.model_dir.c_str(), double(c.param_count()) / 1e6,
                dtype_name(model->matmul_dtype()), bytes / 1e9, a.model.kv_type.c_str());
    if (a.skip_bandwidth) std::printf("memory bandwidth   not measured (--skip-bandwidth)\n");
    else if (on_cpu)
      std::printf("memory bandwidth   copy %.2f GB/s (read+write), read %.2f GB/s\n", bw.copy_gbs, bw.read_gbs);
    else if (bw.copy_gbs > 0)
      std::printf("device bandwidth   copy %.2f GB/s (device to device, read+write)\n", bw.copy_gbs);
    else std::printf("device bandwidth   not measured (too little free device memory, or not supported)\n");
    std::printf("prefill            %d tokens: %.2f tok/s\n", a.prompt_tokens, prefill_tps);
    std::printf("decode             %d tokens: %.2f tok/s = %.2f GB/s of weights\n", a.gen_tokens, decode_tps,
                decode_gbs);
    if (a.temperature > 0)
      std::printf("sampling           temperature %g, top-k %d, top-p %g: %lld of %lld draws took the whole row\n",
                  double(a.temperature), a.top_k, double(a.top_p), (long long)main_m.row_draws,
                  (long long)main_m.draws);
    if (!a.skip_bandwidth && on_cpu)
      std::printf("decode vs floor    %.0f%% of read bandwidth (floor %.2f tok/s), %.0f%% of copy bandwidth\n",
                  100.0 * decode_gbs / bw.read_gbs, floor_tps, 100.0 * decode_gbs / bw.copy_gbs);
    else if (!a.skip_bandwidth && bw.copy_gbs > 0)
      std::printf("decode vs floor    %.0f%% of copy bandwidth (floor %.2f tok/s)\n", 100.0 * decode_gbs / bw.copy_gbs,
                  dev_floor_tps);
    if (a.batch > 1)
      std::printf("decode batch %-5d %.2f tok/s in total = %.2fx batch 1\n", a.batch, batch_tps, batch_tps / decode_tps);
    if (compare) {
      const double bb = decode_bytes(*base_m.model);
      const double bp = double(a.prompt_tokens) / base_m.prefill, bd = double(a.gen_tokens) / base_m.decode;
      std::printf("baseline           same weights as %s, %.3f GB read per decode step (%.2fx the quantized)\n",
                  dtype_name(base_m.model->matmul_dtype()), bb / 1e9, bb / bytes);
      std::printf("baseline prefill   %.2f tok/s; %s is %.2fx\n", bp, quant_name(lo.quant), prefill_tps / bp);
      std::printf("baseline decode    %.2f tok/s = %.2f GB/s; %s is %.2fx\n", bd, bb * bd / 1e9, quant_name(lo.quant),
                  decode_tps / bd);
    }
  }
}

}  // namespace

int run_bench(const BenchArgs& a) {
  // With --quant, the quantized model is measured against the same weights unquantized (the
  // baseline), repetitions alternating between the two so that both see the same machine load.
  // --quant-list measures several quantizations in turn against one baseline, built once.
  std::vector<std::string> quants;
  if (a.quant_list.empty()) {
    quants.push_back(a.model.quant);
  } else {
    if (a.model.quant != "none") throw UsageError("give --quant or --quant-list, not both");
    if (a.batch > 1) throw UsageError("--batch takes one --quant, not --quant-list");
    std::string cur;
    for (char ch : a.quant_list + ",") {
      if (ch != ',') {
        cur += ch;
        continue;
      }
      Quant q;
      if (!parse_quant(cur, &q) || q == Quant::None)
        throw UsageError("--quant-list: '" + cur + "' is not int8, nf4 or int4 (comma-separated, no spaces)");
      quants.push_back(cur);
      cur.clear();
    }
  }
  auto options_for = [&](const std::string& q) {
    ModelArgs m = a.model;
    m.quant = q;
    return load_options(m);
  };
  const bool compare = options_for(quants[0]).quant != Quant::None;
  std::unique_ptr<Backend> be = make_backend(a.model);  // outlives the sessions (their caches)
  ModelConfig synth;
  DType dt = DType::BF16;
  if (a.model.model_dir.empty()) {
    synth.hidden_size = a.hidden;
    synth.intermediate_size = a.intermediate;
    synth.num_layers = a.layers;
    synth.num_heads = a.heads;
    synth.num_kv_heads = a.kv_heads;
    synth.head_dim = a.heads > 0 ? a.hidden / a.heads : 0;
    synth.vocab_size = a.vocab;
    synth.sliding_window = a.window;
    synth.max_position_embeddings = 32768;
    if (a.synth_dtype == "f32") dt = DType::F32;
    else if (a.synth_dtype == "f16") dt = DType::F16;
    else if (a.synth_dtype == "bf16") dt = DType::BF16;
    else throw UsageError("--synthetic-dtype must be f32, f16 or bf16");
    synth.torch_dtype = dt;
  }
  // The model under test with quantization lo (the baseline: Quant::None).
  auto build = [&](const LoadOptions& lo) {
    if (!a.model.model_dir.empty()) return Model::load(a.model.model_dir, lo);
    std::fprintf(stderr, "building a synthetic model (%.0f M params, %s%s%s)...\n", double(synth.param_count()) / 1e6,
                 a.synth_dtype.c_str(), lo.quant != Quant::None ? ", quantized to " : "",
                 lo.quant != Quant::None ? quant_name(lo.quant) : "");
    return Model::random(synth, dt, 1234, lo.quant, lo.quant_lm_head);
  };
  SessionOptions so;
  so.chunk = a.model.chunk;
  so.graphs = !a.model.no_graph;
  so.kv_dtype = kv_dtype(a.model);
  so.context = std::max<int64_t>(a.model.ctx, a.prompt_tokens + a.gen_tokens + 1);
  Timed base_m;
  if (compare) {
    LoadOptions full = options_for(quants[0]);
    full.quant = Quant::None;
    full.quant_lm_head = false;
    base_m.model = build(full);
    base_m.session.reset(new Session(*base_m.model, *be, so));
  }
  const int threads = cpu_backend_threads(*be);
  const bool on_cpu = threads > 0;  // else a device backend: its own memory is what decode reads
  Bandwidth bw;
  if (!a.skip_bandwidth) {
    if (on_cpu) {
      std::fprintf(stderr, "measuring memory bandwidth...\n");
      bw = measure_bandwidth(threads);
    } else {
      std::fprintf(stderr, "measuring device copy bandwidth...\n");
      bw.copy_gbs = be->copy_bandwidth_gbs();
    }
  }
  // Every model stays alive to the end: a device backend keys its weight copies by host address.
  std::vector<Timed> mains(quants.size());
  for (size_t qi = 0; qi < quants.size(); ++qi) {
    const LoadOptions lo = options_for(quants[qi]);
    Timed& main_m = mains[qi];
    main_m.model = build(lo);
    main_m.session.reset(new Session(*main_m.model, *be, so));
    const ModelConfig& c = main_m.model->config();
    std::mt19937 rng(7);
    std::vector<int32_t> prompt(size_t(a.prompt_tokens));
    for (auto& id : prompt) id = int32_t(rng() % uint32_t(c.vocab_size));

    base_m.prefill = base_m.decode = 1e30;  // each entry's baseline: the repetitions alternating with it
    for (int rep = 0; rep < std::max(1, a.reps); ++rep) {
      if (compare) time_once(base_m, a, prompt);
      time_once(main_m, a, prompt);
    }
    main_m.session.reset();  // its cache; the model stays (see above)
    report(a, be.get(), bw, main_m, compare ? &base_m : nullptr, lo, so, prompt);
  }
  return 0;
}

}  // namespace cli
}  // namespace mistral
