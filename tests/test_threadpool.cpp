// ThreadPool: every index of every job is run exactly once, by back-to-back jobs (workers still
// spinning), after pauses longer than the spin (workers asleep), and with uneven sizes and grains.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "mistral/threadpool.h"

using namespace mistral;

namespace {

void run_jobs(ThreadPool& pool, int jobs, std::chrono::microseconds pause) {
  std::vector<std::atomic<int>> hits(4099);
  for (int j = 0; j < jobs; ++j) {
    const int64_t n = 1 + (j * 37) % 4099, grain = 1 + j % 17;
    for (int64_t i = 0; i < n; ++i) hits[size_t(i)].store(0, std::memory_order_relaxed);
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
      ASSERT_LE(0, b);
      ASSERT_LE(b, e);
      ASSERT_LE(e, n);
      for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1, std::memory_order_relaxed);
    }, grain);
    // parallel_for returned: every range has been run, and its writes are visible here.
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(std::memory_order_relaxed), 1) << "job " << j << " i " << i;
    if (pause.count() > 0) std::this_thread::sleep_for(pause);
  }
}

TEST(ThreadPool, BackToBackJobsRunEveryIndexOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    run_jobs(pool, 3000, std::chrono::microseconds(0));
  }
}

TEST(ThreadPool, JobsAfterWorkersSleep) {
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    run_jobs(pool, 20, std::chrono::microseconds(2000));  // longer than the spin: workers go to sleep
  }
}

TEST(ThreadPool, PoolsComeAndGo) {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(3);
    if (i % 2) run_jobs(pool, 3, std::chrono::microseconds(0));
  }
}

}  // namespace
