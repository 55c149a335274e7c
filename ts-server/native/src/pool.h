// A small persistent thread pool: the calling thread and (threads - 1)
// workers pull task indices from one atomic counter. Run() returns when every
// task has finished. Steps run on libuv's threads (several sessions at once):
// the pool takes one batch at a time, and a caller that finds it busy runs its
// own tasks on its own thread instead of waiting.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace mur {

class Pool {
 public:
  using Fn = void (*)(void* ctx, size_t task);
  static Pool& Get();

  /** 1 .. hardware threads; 0 means all hardware threads. */
  void SetThreads(int n);
  int threads() const { return threads_.load(std::memory_order_relaxed); }
  /** Runs fn(ctx, i) for i in [0, ntasks) on up to threads() threads. */
  void Run(size_t ntasks, Fn fn, void* ctx);
  /** Joins the workers (at process exit; Run still works, on one thread). */
  void Stop();
  ~Pool() { Stop(); }

 private:
  Pool();
  void WorkerLoop(uint64_t seen);
  void StopWorkers();  // run_mu_ held
  void Drain();

  std::atomic<int> threads_{1};
  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // held by the caller whose batch the workers serve
  std::mutex mu_;
  std::condition_variable wake_;
  // Written under mu_; read without it by workers spinning between batches.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
  // The current batch.
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  size_t ntasks_ = 0;
  std::atomic<size_t> next_{0};
  // Workers that finished the current batch; Run waits for all of them, so
  // no worker can still be reading a batch when the next one is set up.
  std::atomic<int> finished_workers_{0};
};

}  // namespace mur
