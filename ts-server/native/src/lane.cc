// The fast lane of the same-host transport: steps signalled through the
// arena itself, with no RPC. A gRPC call costs framing, HTTP/2 and event-loop
// hops (measured in docs/data-path.md); a small model's step costs far less, so the
// client rings a doorbell in shared memory instead and this thread (one per
// armed arena) runs the step and answers there.
//
// Control block at arena offset 64 (x86-64, which orders plain stores; both
// sides use 32-bit aligned words and futexes on shared pages):
//   +0  u32 seq      the client increments it to ring (futex word)
//   +4  u32 ack      the lane sets it to seq when done (futex word)
//   +8  u32 armed    1 while the lane takes requests
//   +12 i32 status   0 applied, 1 not taken (use the RPC), 2 refused (use the
//                    RPC, which reports why); nothing was written unless 0
//   +16 u64 step     the step number requested (must be the last + 1)
//   +24 u32 count    how many indices follow
//   +32 u32 indices  arena tensor indices with a gradient this step
//
// The session arms the lane with every parameter's buffers and hyperparameter
// block (session/session.ts) when nothing else needs its state, and disarms
// it before any other operation on the session, reading back what the lane
// applied. While armed, the lane is the only writer of the session's state.
#include "lane.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <ctime>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernel.h"

namespace mur {
namespace {

constexpr size_t kControl = 64;
constexpr uint32_t kMaxIndices = (4096 - kControl - 32) / 4;

struct Control {
  std::atomic<uint32_t> seq;
  std::atomic<uint32_t> ack;
  std::atomic<uint32_t> armed;
  int32_t status;
  uint64_t step;
  uint32_t count;
  uint32_t pad;
  uint32_t indices[kMaxIndices];
};
static_assert(sizeof(Control) <= 4096 - kControl, "the control block fits the arena header");

long Futex(std::atomic<uint32_t>* word, int op, uint32_t val, const timespec* timeout) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, val, timeout, nullptr, 0);
}

}  // namespace

class Lane {
 public:
  explicit Lane(void* arena) : c_(reinterpret_cast<Control*>(static_cast<char*>(arena) + kControl)) {
    c_->armed.store(0, std::memory_order_release);
    seen_ = c_->seq.load(std::memory_order_acquire);
    c_->ack.store(seen_, std::memory_order_release);
    thread_ = std::thread([this] { Loop(); });
  }

  ~Lane() {
    stop_.store(true);
    c_->seq.fetch_add(1);  // wake the loop
    Futex(&c_->seq, FUTEX_WAKE, INT_MAX, nullptr);
    thread_.join();
  }

  void Arm(int opt, int rule, std::vector<Job> jobs, std::vector<double> hypers, uint64_t last_step) {
    std::lock_guard<std::mutex> lock(mu_);
    opt_ = opt;
    rule_ = rule;
    jobs_ = std::move(jobs);
    hypers_ = std::move(hypers);
    for (size_t k = 0; k < jobs_.size(); ++k) jobs_[k].h = hypers_.data() + k * kHyperBlock;
    applied_.assign(jobs_.size(), 0);
    last_step_ = last_step;
    last_indices_.clear();
    c_->armed.store(1, std::memory_order_release);
  }

  struct Report {
    std::vector<uint64_t> applied;
    uint64_t last_step;
    std::vector<uint32_t> last_indices;
  };

  /** Stops taking requests (waits for one in progress) and says what was applied. */
  Report Disarm() {
    c_->armed.store(0, std::memory_order_release);
    std::lock_guard<std::mutex> lock(mu_);
    Report r{applied_, last_step_, last_indices_};
    jobs_.clear();
    applied_.clear();
    return r;
  }

 private:
  void Loop() {
    for (;;) {
      const timespec wait{0, 200 * 1000 * 1000};
      const uint32_t seq = c_->seq.load(std::memory_order_acquire);
      if (stop_.load()) return;
      if (seq == seen_) {
        Futex(&c_->seq, FUTEX_WAIT, seen_, &wait);
        continue;
      }
      seen_ = seq;
      c_->status = Serve();
      c_->ack.store(seq, std::memory_order_release);
      Futex(&c_->ack, FUTEX_WAKE, INT_MAX, nullptr);
    }
  }

  int32_t Serve() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!c_->armed.load(std::memory_order_acquire) || jobs_.empty()) return 1;
    const uint32_t count = c_->count;
    if (count == 0 || count > jobs_.size() || count > kMaxIndices || c_->step != last_step_ + 1) return 1;
    std::vector<Job> sel;
    sel.reserve(count);
    std::vector<bool> used(jobs_.size(), false);
    for (uint32_t i = 0; i < count; ++i) {
      const uint32_t k = c_->indices[i];
      if (k >= jobs_.size() || used[k]) return 1;
      used[k] = true;
      sel.push_back(jobs_[k]);
    }
    for (const Job& j : sel) {
      uint64_t digest;
      if (Scan(j.grad, j.n, &digest) >= 0) return 2;  // the RPC refuses it with its message
    }
    if (!RunStep(opt_, rule_, sel.data(), sel.size()).empty()) return 1;
    last_indices_.assign(c_->indices, c_->indices + count);
    for (uint32_t i = 0; i < count; ++i) {
      const uint32_t k = c_->indices[i];
      hypers_[k * kHyperBlock] += 1;  // this parameter's t for its next step
      applied_[k] += 1;
    }
    last_step_ = c_->step;
    return 0;
  }

  Control* c_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  uint32_t seen_ = 0;
  std::mutex mu_;
  int opt_ = 0, rule_ = 0;
  std::vector<Job> jobs_;
  std::vector<double> hypers_;
  std::vector<uint64_t> applied_;
  uint64_t last_step_ = 0;
  std::vector<uint32_t> last_indices_;
};

Lane* LaneCreate(void* arena) { return new Lane(arena); }
void LaneDestroy(Lane* l) { delete l; }
void LaneArm(Lane* l, int opt, int rule, std::vector<Job> jobs, std::vector<double> hypers, uint64_t last_step) {
  l->Arm(opt, rule, std::move(jobs), std::move(hypers), last_step);
}
void LaneDisarm(Lane* l, std::vector<uint64_t>* applied, uint64_t* last_step, std::vector<uint32_t>* last_indices) {
  Lane::Report r = l->Disarm();
  *applied = std::move(r.applied);
  *last_step = r.last_step;
  *last_indices = std::move(r.last_indices);
}

}  // namespace mur
