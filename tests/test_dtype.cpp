// fp16 / bf16 conversions against the CPU's own F16C instructions and exhaustive round trips.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "mistral/dtype.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

using namespace mistral;

TEST(DType, Bf16RoundTripIsExactForEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h) << h;
  }
}

TEST(DType, Bf16RoundsToNearestEven) {
  std::mt19937 rng(3);
  for (int i = 0; i < 100000; ++i) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    if (!std::isfinite(f)) continue;
    const uint16_t b = f32_to_bf16(f);
    // The two bf16 neighbours of f; the result must be the nearer (ties: even mantissa).
    const float lo = bf16_to_f32(uint16_t(u >> 16)), hi = bf16_to_f32(uint16_t((u >> 16) + 1));
    const double dl = std::fabs(double(f) - lo), dh = std::fabs(double(hi) - f);
    const uint16_t want = dl < dh ? uint16_t(u >> 16) : dh < dl ? uint16_t((u >> 16) + 1)
                                                          : ((u >> 16) & 1 ? uint16_t((u >> 16) + 1) : uint16_t(u >> 16));
    if (std::isinf(bf16_to_f32(want)) && std::isfinite(hi)) continue;
    EXPECT_EQ(b, want) << f;
  }
}

#if defined(__F16C__)
TEST(DType, F16MatchesHardwareConversion) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = _cvtsh_ss(uint16_t(h));
    const float got = f16_to_f32(uint16_t(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got));
      continue;
    }
    EXPECT_EQ(std::memcmp(&want, &got, 4), 0) << h;
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = rng();
    if (i % 2) u = (u & 0x8fffffffu) | 0x30000000u;  // bias towards fp16's range
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)) << f;
  }
}
#endif

TEST(DType, ToF32ConvertsEachDtype) {
  const float src[3] = {1.5f, -2.25f, 65504.f};
  float out[3];
  to_f32(DType::F32, src, out, 3);
  EXPECT_EQ(out[2], 65504.f);
  uint16_t h[3], b[3];
  for (int i = 0; i < 3; ++i) h[i] = f32_to_f16(src[i]), b[i] = f32_to_bf16(src[i]);
  to_f32(DType::F16, h, out, 3);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.25f);
  EXPECT_EQ(out[2], 65504.f);
  to_f32(DType::BF16, b, out, 3);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.25f);
}
