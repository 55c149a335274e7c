#include "pool.h"

#include <algorithm>
#include <chrono>

#include "spin.h"

namespace mur {

Pool& Pool::Get() {
  static Pool pool;
  return pool;
}

Pool::Pool() { SetThreads(0); }

void Pool::SetThreads(int n) {
  std::lock_guard<std::mutex> owner(run_mu_);  // never while a batch runs
  int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int want = n <= 0 ? hw : std::min(n, hw);
  if (want == threads_ && static_cast<int>(workers_.size()) == want - 1) return;
  StopWorkers();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = false;
  }
  threads_ = want;
  // Each worker starts having "seen" the current batch: it joins only the
  // batches after it exists (no batch runs now: run_mu_ is held). Reading the
  // generation inside the new thread instead would race a Run() that starts
  // before the thread does, and that batch would wait for it forever.
  uint64_t start;
  {
    std::lock_guard<std::mutex> lock(mu_);
    start = generation_;
  }
  for (int i = 0; i < want - 1; ++i) workers_.emplace_back([this, start] { WorkerLoop(start); });
}

void Pool::Stop() {
  std::lock_guard<std::mutex> owner(run_mu_);
  StopWorkers();
}

void Pool::StopWorkers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
  threads_ = 1;
}

// Pulls tasks of the current batch until none is left.
void Pool::Drain() {
  for (;;) {
    size_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= ntasks_) return;
    fn_(ctx_, i);
  }
}

// How long a worker polls for the next batch before it sleeps. A step is two
// batches back to back (the finiteness scan, then the kernel), and a training
// loop steps again within milliseconds: a worker that is still polling starts
// at once, while waking a sleeping one costs a futex wake and a reschedule
// (tens of microseconds, more on a loaded machine).
constexpr auto kSpin = std::chrono::microseconds(100);

void Pool::WorkerLoop(uint64_t seen) {
  for (;;) {
    SpinUntil(
        [&] {
          return generation_.load(std::memory_order_acquire) != seen || stopping_.load(std::memory_order_relaxed);
        },
        kSpin);
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    Drain();
    finished_workers_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void Pool::Run(size_t ntasks, Fn fn, void* ctx) {
  if (ntasks == 0) return;
  std::unique_lock<std::mutex> owner(run_mu_, std::try_to_lock);
  if (!owner.owns_lock() || workers_.empty() || ntasks == 1) {
    for (size_t i = 0; i < ntasks; ++i) fn(ctx, i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = fn;
    ctx_ = ctx;
    ntasks_ = ntasks;
    next_.store(0, std::memory_order_relaxed);
    finished_workers_.store(0, std::memory_order_relaxed);
    ++generation_;
  }
  wake_.notify_all();
  Drain();
  // Every task was handed out; wait until every worker has left Drain().
  const int n = static_cast<int>(workers_.size());
  while (finished_workers_.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace mur
