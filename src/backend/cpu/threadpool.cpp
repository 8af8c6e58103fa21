// ThreadPool: one job at a time, static partition, the caller takes the first range. Waiting spins for
// a short while (kSpin) before it sleeps on a condition variable.
#include "mistral/threadpool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MISTRAL_PAUSE() _mm_pause()
#else
#define MISTRAL_PAUSE() std::this_thread::yield()
#endif

namespace mistral {

namespace {

constexpr auto kSpin = std::chrono::microseconds(200);

// Spins until ready() or kSpin has passed; returns ready(). After a few pauses it yields, so that when
// there are more runnable threads than cores (other processes, or more threads than cores) the thread
// that would make ready() true gets the core.
template <class Ready>
bool spin_until(Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (ready()) return true;
    if (i < 64) {
      MISTRAL_PAUSE();
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) return ready();
    std::this_thread::yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int n) {
  if (n <= 0) n = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < n; ++i) workers_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int idx) {
  uint64_t seen = 0;
  for (;;) {
    auto ready = [&] { return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen; };
    if (!spin_until(ready)) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_start_.wait(lk, ready);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = generation_.load(std::memory_order_acquire);
    const std::function<void(int64_t, int64_t)>* job = job_;
    const int64_t n = n_, chunk = chunk_;
    const int64_t b = std::min(n, idx * chunk), e = std::min(n, b + chunk);
    if (b < e) (*job)(b, e);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mu_);  // the caller may be about to sleep: wake it under the lock
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  const int64_t parts = size();
  if (parts == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  grain = std::max<int64_t>(1, grain);
  int64_t chunk = (n + parts - 1) / parts;
  chunk = (chunk + grain - 1) / grain * grain;
  {
    // Workers only read these after seeing the new generation, and the previous job has finished
    // (pending_ reached 0), so no worker is reading them now.
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    n_ = n;
    chunk_ = chunk;
    pending_.store(int(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_start_.notify_all();
  fn(0, std::min(n, chunk));
  auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done)) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, done);
  }
}

}  // namespace mistral
