// Runs the batched decode step of the CUDA backend (Backend::decode_rows) on the CPU, no GPU needed: the
// host-side split plan and work items are the real functions of kernels/attention_decode.cu, and so are
// the key ranges and partial offsets the kernels compute (split_keys, partial_offset, row_partials); the
// kernels' per-block, per-warp and per-lane loops are emulated block after block, every buffer read and
// written through bounds-checked accessors (each row's cache its own exact-size buffer). Checks: the
// splits of each row cover its keys exactly once; every partial is written exactly once before the
// combine reads it; nothing is read or written out of bounds; and q, k, the caches (bit for bit) and the
// outputs (relative error) equal the CPU backend's default decode_rows. Randomized: 1 .. 70 rows, each
// with its own cache length (windowed past the wrap, full caches of up to 5000 slots), GQA 1/2/4/8,
// head_dim 12/64/128, device sizes of 1, 8 and 132 SMs (different plans).
// Build (after building mistral_core in build-gpu) and run:
//   nvcc -std=c++17 -O1 -g -arch=sm_90 -Ikernels -Iinclude -Xcompiler -fsanitize=address \
//     -Xcompiler -fsanitize=undefined -c tools/decode_rows_host_check.cu -o /tmp/drhc.o &&
//   g++ -fsanitize=address,undefined /tmp/drhc.o build-gpu/libmistral_core.a -L"$(dirname "$(which nvcc)")/../lib64" \
//     -lcudart_static -ldl -lrt -lpthread -o /tmp/drhc && /tmp/drhc
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernels/attention_decode.cu"
#include "mistral/backend.h"

using namespace mistral;
using namespace mistral::cuda;

namespace {

int g_failures = 0;

void fail(const std::string& what) {
  if (g_failures++ < 20) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
}

// A buffer that checks every index (the emulation's stand-in for device memory).
struct Buf {
  std::vector<float> v;
  const char* name;
  Buf(std::vector<float> x, const char* n) : v(std::move(x)), name(n) {}
  float& at(size_t i) {
    if (i >= v.size())
      throw std::out_of_range(std::string(name) + ": index " + std::to_string(i) + " of " + std::to_string(v.size()));
    return v[i];
  }
};

struct Case {
  AttnShape s;
  int n = 0;
  std::vector<int64_t> pos, slots;
  std::vector<std::vector<float>> ck, cv;  // per row [slots, kvd]
  std::vector<float> q, k, v;              // [n, dims]
};

// rope_cache_write_rows_kernel, block t after block t: the pair loop of rope_store_token (the rotation
// itself computed as the CPU does, so that the caches can be compared bit for bit), then the V row.
void emulate_rope_rows(Case& c, const std::vector<DecodeRowArgs>& rows, Buf& q, Buf& k, Buf& v, std::vector<Buf>& ck,
                       std::vector<Buf>& cv) {
  const int hd = c.s.head_dim, half = hd / 2, n_heads = c.s.n_heads, n_kv_heads = c.s.n_kv_heads;
  const int kvd = n_kv_heads * hd;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) inv[size_t(i)] = 1.0f / std::pow(c.s.rope_theta, float(2 * i) / float(hd));
  for (int t = 0; t < c.n; ++t) {
    const DecodeRowArgs r = rows.at(size_t(t));
    const size_t row = size_t(r.pos % r.slots) * size_t(kvd);
    const size_t qt = size_t(t) * n_heads * hd, kt = size_t(t) * kvd, vt = size_t(t) * kvd;
    const float pos = float(r.pos);
    const int pairs_q = n_heads * half, pairs = (n_heads + n_kv_heads) * half;
    for (int p = 0; p < pairs; ++p) {  // every thread's pairs, in any order (each element has one owner)
      const bool is_q = p < pairs_q;
      const int pp = is_q ? p : p - pairs_q;
      const int h = pp / half, i = pp % half;
      Buf& x = is_q ? q : k;
      const size_t xo = (is_q ? qt : kt) + size_t(h) * hd;
      const float a = pos * inv[size_t(i)];
      const float cs = float(std::cos(double(a))), sn = float(std::sin(double(a)));
      const float x0 = x.at(xo + size_t(i)), x1 = x.at(xo + size_t(i + half));
      const float y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
      x.at(xo + size_t(i)) = y0;
      x.at(xo + size_t(i + half)) = y1;
      if (!is_q) {
        ck[size_t(t)].at(row + size_t(h) * hd + size_t(i)) = y0;
        ck[size_t(t)].at(row + size_t(h) * hd + size_t(i + half)) = y1;
      }
    }
    for (int i = 0; i < kvd; ++i) cv[size_t(t)].at(row + size_t(i)) = v.at(vt + size_t(i));
  }
}

// decode_rows_partial_kernel over its grid (work item, KV head) and decode_rows_combine_kernel over
// (row, query head), with decode_partial_block's warp and lane loops.
void emulate_attention_rows(const Case& c, const std::vector<DecodeRowArgs>& rows, const std::vector<DecodeWork>& work,
                            Buf& q, Buf& k, Buf& v, std::vector<Buf>& ck, std::vector<Buf>& cv, Buf& part, Buf& out) {
  const int hd = c.s.head_dim, n_heads = c.s.n_heads, n_kv_heads = c.s.n_kv_heads;
  const int G = n_heads / n_kv_heads, kvd = n_kv_heads * hd;
  const size_t qd = size_t(n_heads) * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<int> written(part.v.size(), 0);
  std::vector<std::vector<int>> covered(static_cast<size_t>(c.n));  // per row: times each key was taken
  for (int i = 0; i < c.n; ++i) covered[size_t(i)].assign(size_t(c.pos[size_t(i)] + 1), 0);
  for (size_t b = 0; b < work.size(); ++b)
    for (int kvh = 0; kvh < n_kv_heads; ++kvh) {
      const DecodeWork w = work.at(b);
      const DecodeRowArgs r = rows.at(size_t(w.row));
      int64_t kb, ke;
      split_keys(r.pos, c.s.window, r.splits, w.split, &kb, &ke);
      if (kvh == 0)
        for (int64_t j = kb; j < ke; ++j) covered[size_t(w.row)].at(size_t(j)) += 1;
      std::vector<float> qs(size_t(G) * hd);
      for (int i = 0; i < G * hd; ++i) {
        const int g = i / hd, d = i % hd;
        qs[size_t(i)] = q.at(size_t(w.row) * qd + size_t(kvh * G + g) * hd + size_t(d)) * scale;
      }
      float M[kWarps][kMaxG], L[kWarps][kMaxG];
      std::vector<float> A(size_t(kWarps) * kMaxG * hd, 0.f);
      for (int warp = 0; warp < kWarps; ++warp) {
        for (int g = 0; g < kMaxG; ++g) M[warp][g] = -INFINITY, L[warp][g] = 0.f;
        for (int64_t j = kb + warp; j < ke; j += kWarps) {
          // The kernel's row pointers: the cache row j % slots before pos, the step's own row at pos.
          const bool cached = j < r.pos;
          Buf& kb_ = cached ? ck[size_t(w.row)] : k;
          Buf& vb_ = cached ? cv[size_t(w.row)] : v;
          const size_t ro = (cached ? size_t(j % r.slots) * kvd : size_t(w.row) * kvd) + size_t(kvh) * hd;
          for (int g = 0; g < G; ++g) {
            float s = 0.f;
            for (int lane = 0; lane < 32; ++lane)
              for (int rr = 0; rr < kMaxDPerLane; ++rr) {
                const int d = lane + 32 * rr;
                if (d < hd) s += qs[size_t(g) * hd + size_t(d)] * kb_.at(ro + size_t(d));
              }
            const float nm = std::max(M[warp][g], s);
            const float corr = std::exp(M[warp][g] - nm), pj = std::exp(s - nm);
            L[warp][g] = L[warp][g] * corr + pj;
            for (int d = 0; d < hd; ++d) {
              float& a = A[(size_t(warp) * kMaxG + size_t(g)) * hd + size_t(d)];
              a = a * corr + pj * vb_.at(ro + size_t(d));
            }
            M[warp][g] = nm;
          }
        }
      }
      for (int i = 0; i < G * hd; ++i) {
        const int g = i / hd, d = i % hd;
        float Mx = -INFINITY;
        for (int wp = 0; wp < kWarps; ++wp) Mx = std::max(Mx, M[wp][g]);
        float Ls = 0.f, As = 0.f;
        for (int wp = 0; wp < kWarps; ++wp) {
          const float cc = M[wp][g] == -INFINITY ? 0.f : std::exp(M[wp][g] - Mx);
          Ls += L[wp][g] * cc;
          As += A[(size_t(wp) * kMaxG + size_t(g)) * hd + size_t(d)] * cc;
        }
        const size_t o = row_partials(r.split0, n_heads, hd) + partial_offset(kvh * G + g, r.splits, w.split, hd);
        if (d == 0) part.at(o) = Mx, part.at(o + 1) = Ls, written.at(o) += 1, written.at(o + 1) += 1;
        part.at(o + 2 + size_t(d)) = As;
        written.at(o + 2 + size_t(d)) += 1;
      }
    }
  for (int i = 0; i < c.n; ++i) {
    const int64_t j0 = c.s.window > 0 ? std::max<int64_t>(0, c.pos[size_t(i)] - c.s.window + 1) : 0;
    for (int64_t j = 0; j <= c.pos[size_t(i)]; ++j)
      if (covered[size_t(i)][size_t(j)] != (j >= j0 ? 1 : 0))
        fail("row " + std::to_string(i) + " key " + std::to_string(j) + " taken " +
             std::to_string(covered[size_t(i)][size_t(j)]) + " times");
  }
  for (size_t i = 0; i < written.size(); ++i)
    if (written[i] != 1) {
      fail("partial element " + std::to_string(i) + " written " + std::to_string(written[i]) + " times");
      break;
    }
  const size_t stride = size_t(hd) + 2;
  for (int row = 0; row < c.n; ++row)
    for (int h = 0; h < n_heads; ++h) {
      const DecodeRowArgs r = rows.at(size_t(row));
      const size_t ph = row_partials(r.split0, n_heads, hd) + partial_offset(h, r.splits, 0, hd);
      float Mx = -INFINITY;
      for (int s = 0; s < r.splits; ++s) Mx = std::max(Mx, part.at(ph + s * stride));
      for (int d = 0; d < hd; ++d) {
        float Ls = 0.f, As = 0.f;
        for (int s = 0; s < r.splits; ++s) {
          const float ms = part.at(ph + s * stride);
          const float cc = ms == -INFINITY ? 0.f : std::exp(ms - Mx);
          Ls += part.at(ph + s * stride + 1) * cc;
          As += part.at(ph + s * stride + 2 + size_t(d)) * cc;
        }
        out.at((size_t(row) * size_t(n_heads) + size_t(h)) * size_t(hd) + size_t(d)) = As / Ls;
      }
    }
}

std::vector<float> randn(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

void run_case(std::mt19937& rng, int n, int hd, int ratio, int window, int n_sms) {
  Case c;
  c.s.n_kv_heads = 2, c.s.n_heads = 2 * ratio, c.s.head_dim = hd, c.s.window = window, c.s.rope_theta = 1e4f;
  c.n = n;
  const size_t qd = size_t(c.s.q_dim()), kvd = size_t(c.s.kv_dim());
  for (int i = 0; i < n; ++i) {
    const int64_t slots = window > 0 ? window : 1 + int64_t(rng() % (i % 4 == 0 ? 5000 : 300));
    c.slots.push_back(slots);
    c.pos.push_back(int64_t(rng() % uint32_t(window > 0 ? 3 * window : slots)));
    c.ck.push_back(randn(size_t(slots) * kvd, rng));
    c.cv.push_back(randn(size_t(slots) * kvd, rng));
  }
  c.q = randn(size_t(n) * qd, rng), c.k = randn(size_t(n) * kvd, rng), c.v = randn(size_t(n) * kvd, rng);
  const std::string what = "n " + std::to_string(n) + " hd " + std::to_string(hd) + " ratio " + std::to_string(ratio) +
                           " W " + std::to_string(window) + " sms " + std::to_string(n_sms);

  // Reference: the CPU backend's default decode_rows.
  static std::unique_ptr<Backend> cpu = make_cpu_backend(1);
  std::vector<float> rq = c.q, rk = c.k, rout(size_t(n) * qd);
  std::vector<std::vector<float>> rck = c.ck, rcv = c.cv;
  std::vector<DecodeRow> dr(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    dr[size_t(i)] =
        DecodeRow{KVLayer{rck[size_t(i)].data(), rcv[size_t(i)].data()}, c.pos[size_t(i)], c.slots[size_t(i)]};
  cpu->decode_rows(rq.data(), rk.data(), c.v.data(), dr.data(), n, c.s, true, rout.data());

  // The CUDA backend's host side: plan, work items, scratch size.
  std::vector<DecodeRowArgs> rows(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) rows[size_t(i)].pos = c.pos[size_t(i)], rows[size_t(i)].slots = c.slots[size_t(i)];
  const int64_t total = decode_attention_rows_plan(rows.data(), n, window, c.s.n_kv_heads, n_sms);
  if (total < n) return fail("plan returned " + std::to_string(total) + ": " + what);
  int64_t sum = 0;
  for (int i = 0; i < n; ++i) {
    if (rows[size_t(i)].split0 != sum || rows[size_t(i)].splits < 1)
      fail("plan row " + std::to_string(i) + ": " + what);
    sum += rows[size_t(i)].splits;
  }
  if (sum != total) fail("plan total: " + what);
  std::vector<DecodeWork> work(static_cast<size_t>(total));
  decode_attention_rows_work(rows.data(), n, work.data());
  AttnParams p;
  p.n_heads = c.s.n_heads, p.n_kv_heads = c.s.n_kv_heads, p.head_dim = hd, p.window = window, p.slots = 0;
  if (!decode_attention_supported(p)) return fail("not supported: " + what);

  Buf q(c.q, "q"), k(c.k, "k"), v(c.v, "v"), out(std::vector<float>(size_t(n) * qd, NAN), "out");
  Buf part(std::vector<float>(decode_attention_rows_scratch_floats(p, total), NAN), "partials");
  std::vector<Buf> ck, cv;
  for (int i = 0; i < n; ++i) ck.emplace_back(c.ck[size_t(i)], "cache k"), cv.emplace_back(c.cv[size_t(i)], "cache v");
  try {
    emulate_rope_rows(c, rows, q, k, v, ck, cv);
    emulate_attention_rows(c, rows, work, q, k, v, ck, cv, part, out);
  } catch (const std::exception& e) {
    return fail(std::string(e.what()) + ": " + what);
  }
  if (!same_bits(q.v, rq)) fail("q: " + what);
  if (!same_bits(k.v, rk)) fail("k: " + what);
  for (int i = 0; i < n; ++i)
    if (!same_bits(ck[size_t(i)].v, rck[size_t(i)]) || !same_bits(cv[size_t(i)].v, rcv[size_t(i)]))
      fail("cache of row " + std::to_string(i) + ": " + what);
  double num = 0, den = 0;
  for (size_t i = 0; i < rout.size(); ++i) {
    if (!std::isfinite(out.v[i])) return fail("out[" + std::to_string(i) + "] not finite: " + what);
    num += double(out.v[i] - rout[i]) * (out.v[i] - rout[i]);
    den += double(rout[i]) * rout[i];
  }
  if (std::sqrt(num / den) > 1e-5) fail("out relative error " + std::to_string(std::sqrt(num / den)) + ": " + what);
}

}  // namespace

int main() {
  std::mt19937 rng(31);
  int cases = 0;
  const int ns[] = {1, 2, 70, 5, 33, 64, 17, 3, 9};
  for (int n_sms : {1, 8, 132})
    for (int hd : {12, 64, 128})
      for (int ratio : {1, 2, 4, 8})
        for (int window : {0, 16, 200}) {
          run_case(rng, ns[cases % 9], hd, ratio, window, n_sms);
          ++cases;
        }
  std::printf("%d cases, %d failures\n", cases, g_failures);
  return g_failures ? 1 : 0;
}
