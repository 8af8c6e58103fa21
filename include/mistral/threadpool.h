// A fixed pool of worker threads for data-parallel loops (the CPU backend's only parallelism).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mistral {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }
  // Splits [0, n) into about size() contiguous ranges (multiples of `grain` where possible) and runs
  // fn(begin, end) on them, the calling thread included. Returns when all are done.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

 private:
  void worker(int idx);
  std::vector<std::thread> workers_;
  // A job is published by storing job_, n_ and chunk_, then bumping generation_ (release). Workers and
  // the caller spin briefly on the atomics before sleeping on the condition variables, so back-to-back
  // jobs (the many small matmuls of a decode step) do not pay a sleep and wake-up each.
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace mistral
