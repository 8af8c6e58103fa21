// The rolling KV cache keeps memory constant: a 20,000-token generation with a windowed fixture has
// the same peak RSS as a 2,000-token one (measured on the real binary).
#include <gtest/gtest.h>

#include "test_util.h"

TEST(Memory, RollingCacheRunsInConstantMemory) {
  const std::string dir = testutil::source_path("models/fixtures/w8_gqa1_f32");
  auto run = [&](int n) {
    auto r = testutil::run_cli({"bench", "-m", dir, "--prompt-tokens", "8", "--gen-tokens", std::to_string(n), "-t",
                                "1", "--skip-bandwidth", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.max_rss_kb;
  };
  const long short_rss = run(2000), long_rss = run(20000);
  RecordProperty("rss_2k_kb", std::to_string(short_rss));
  RecordProperty("rss_20k_kb", std::to_string(long_rss));
  // 18,000 more positions in a full fp32 cache would add 2 layers x 2 x 64 x 4 B x 18000 = 18 MiB.
  EXPECT_LT(long_rss - short_rss, 1024) << "2k tokens: " << short_rss << " KB, 20k tokens: " << long_rss << " KB";
}
