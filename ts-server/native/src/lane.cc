// The fast lane of the same-host transport: steps signalled through the
// arena itself, with no RPC. A gRPC call costs framing, HTTP/2 and event-loop
// hops (measured in docs/data-path.md); a small model's step costs far less, so the
// client rings a doorbell in shared memory instead and this thread (one per
// armed arena) runs the step and answers there.
//
// Control block at arena offset 64 (x86-64, which orders plain stores; both
// sides use aligned words and futexes on shared pages; it ends within the
// arena's first page, before the first tensor at 4096):
//   +0  u32 seq      the client increments it to ring for a step
//   +4  u32 ack      the lane sets it to seq when done (futex word)
//   +8  u32 armed    1 while the lane takes requests
//   +12 i32 status   0 applied, 1 not taken (use the RPC), 2 refused (use the
//                    RPC, which reports why); nothing was written unless 0
//   +16 u64 step     the step number requested (must be the last + 1)
//   +24 u32 count    how many indices follow
//   +28 u32 bell     the client increments it after every ring and every
//                    queued tensor; the lane sleeps on it (futex word)
//   +32 u32 qwrite   tensors queued so far (the client bumps it)
//   +36 u32 qread    queued tensors the lane has taken (the client reads it:
//                    at most kQueue may be waiting)
//   +40 u32 sleeping 1 while the lane waits on bell (the client wakes it then)
//   +64 u16 indices  the step's arena tensor indices (< 0x8000), each with
//                    bit 15 set when the client saw no change of that
//                    gradient since it last queued it
//   +2112 u16 queue  kQueue entries: queue[n % kQueue] is the n-th tensor
//                    index queued, "this gradient is final"
//
// The queue: while backward runs, the client queues each gradient as it is
// final (Python: a post-accumulate-grad hook) and the lane scans it for
// finiteness at once, while it is still in cache, recording per job "checked
// clean". At a step the lane first takes every queued tensor, then skips the
// scan of an index whose bit 15 is set and that it found clean since arming
// or the last step; every other index is scanned as before. The client owns
// the bit: it sets it only when the gradient cannot have changed since it was
// queued (torch's version counter of the arena view), so a gradient edited
// after backward (clipping, unscaling) is scanned again. A queue that
// overflowed (a client writing qwrite past what it may) forgets every check.
// Checks are dropped when the lane is armed or disarmed and after every step.
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
#include <cstddef>
#include <ctime>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernel.h"

namespace mur {
namespace {

constexpr size_t kControl = 64;
constexpr uint32_t kMaxIndices = 1000;
constexpr uint32_t kQueue = 512;
constexpr uint16_t kUnchanged = 0x8000;  // an index's bit 15: the client's "no change since queued"

struct Control {
  std::atomic<uint32_t> seq;
  std::atomic<uint32_t> ack;
  std::atomic<uint32_t> armed;
  int32_t status;
  uint64_t step;
  uint32_t count;
  std::atomic<uint32_t> bell;
  std::atomic<uint32_t> qwrite;
  std::atomic<uint32_t> qread;
  std::atomic<uint32_t> sleeping;
  uint32_t pad[5];
  uint16_t indices[kMaxIndices];
  uint16_t pad2[24];
  uint16_t queue[kQueue];
};
static_assert(offsetof(Control, indices) == 64, "indices at +64 (the Python Lane class reads this layout)");
static_assert(offsetof(Control, queue) == 2112, "the queue at +2112 (the Python Lane class reads this layout)");
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
    qread_ = c_->qwrite.load(std::memory_order_acquire);
    c_->qread.store(qread_, std::memory_order_release);
    thread_ = std::thread([this] { Loop(); });
  }

  ~Lane() {
    stop_.store(true);
    c_->bell.fetch_add(1);  // wake the loop
    Futex(&c_->bell, FUTEX_WAKE, INT_MAX, nullptr);
    thread_.join();
  }

  void Arm(int opt, int rule, int dtype, std::vector<Job> jobs, std::vector<double> hypers, uint64_t last_step) {
    std::lock_guard<std::mutex> lock(mu_);
    opt_ = opt;
    rule_ = rule;
    dtype_ = dtype;
    jobs_ = std::move(jobs);
    hypers_ = std::move(hypers);
    for (size_t k = 0; k < jobs_.size(); ++k) jobs_[k].h = hypers_.data() + k * kHyperBlock;
    applied_.assign(jobs_.size(), 0);
    ForgetQueue();
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
    ForgetQueue();
    return r;
  }

 private:
  void Loop() {
    for (;;) {
      const timespec wait{0, 200 * 1000 * 1000};
      c_->sleeping.store(1, std::memory_order_seq_cst);
      const uint32_t bell = c_->bell.load(std::memory_order_seq_cst);
      if (stop_.load()) return;
      const uint32_t seq = c_->seq.load(std::memory_order_acquire);
      if (seq != seen_) {
        c_->sleeping.store(0, std::memory_order_relaxed);
        seen_ = seq;
        c_->status = Serve();
        c_->ack.store(seq, std::memory_order_release);
        Futex(&c_->ack, FUTEX_WAKE, INT_MAX, nullptr);
        continue;
      }
      if (c_->qwrite.load(std::memory_order_acquire) != qread_) {
        c_->sleeping.store(0, std::memory_order_relaxed);
        std::lock_guard<std::mutex> lock(mu_);
        TakeQueue();
        continue;
      }
      Futex(&c_->bell, FUTEX_WAIT, bell, &wait);
      c_->sleeping.store(0, std::memory_order_relaxed);
    }
  }

  /** Scans every queued tensor (mu_ held), recording which are clean. */
  void TakeQueue() {
    const uint32_t w = c_->qwrite.load(std::memory_order_acquire);
    if (w - qread_ > kQueue || !c_->armed.load(std::memory_order_acquire) || jobs_.empty()) {
      ForgetQueue();  // overflowed (entries lost), or nothing to check against
      return;
    }
    while (qread_ != w) {
      const uint32_t k = c_->queue[qread_ % kQueue];
      ++qread_;
      if (k < jobs_.size()) {
        uint64_t digest;
        clean_[k] = Scan(jobs_[k].grad, jobs_[k].n, &digest) < 0;
      }
      c_->qread.store(qread_, std::memory_order_release);
    }
  }

  /** Drops every recorded check and every waiting entry (mu_ held, or in the constructor). */
  void ForgetQueue() {
    qread_ = c_->qwrite.load(std::memory_order_acquire);
    c_->qread.store(qread_, std::memory_order_release);
    clean_.assign(jobs_.size(), false);
  }

  int32_t Serve() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!c_->armed.load(std::memory_order_acquire) || jobs_.empty()) return 1;
    TakeQueue();
    const int32_t status = Apply();
    clean_.assign(jobs_.size(), false);  // checks are good for one step
    return status;
  }

  int32_t Apply() {
    const uint32_t count = c_->count;
    if (count == 0 || count > jobs_.size() || count > kMaxIndices || c_->step != last_step_ + 1) return 1;
    std::vector<Job> sel;
    std::vector<uint32_t> ks;
    sel.reserve(count);
    ks.reserve(count);
    std::vector<bool> used(jobs_.size(), false);
    for (uint32_t i = 0; i < count; ++i) {
      const uint16_t raw = c_->indices[i];
      const uint32_t k = raw & ~kUnchanged;
      if (k >= jobs_.size() || used[k]) return 1;
      used[k] = true;
      sel.push_back(jobs_[k]);
      ks.push_back(k);
    }
    for (uint32_t i = 0; i < count; ++i) {
      const uint32_t k = ks[i];
      if ((c_->indices[i] & kUnchanged) && clean_[k]) continue;  // checked while hot, not changed since
      uint64_t digest;
      if (Scan(jobs_[k].grad, jobs_[k].n, &digest) >= 0) return 2;  // the RPC refuses it with its message
    }
    if (!RunStep(opt_, rule_, dtype_, sel.data(), sel.size()).empty()) return 1;
    last_indices_ = ks;
    for (const uint32_t k : ks) {
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
  uint32_t qread_ = 0;       // the lane's copy of qread (the shared one is only reported)
  std::vector<bool> clean_;  // per job: scanned clean since it was last queued (this step)
  std::mutex mu_;
  int opt_ = 0, rule_ = 0, dtype_ = 0;
  std::vector<Job> jobs_;
  std::vector<double> hypers_;
  std::vector<uint64_t> applied_;
  uint64_t last_step_ = 0;
  std::vector<uint32_t> last_indices_;
};

Lane* LaneCreate(void* arena) { return new Lane(arena); }
void LaneDestroy(Lane* l) { delete l; }
void LaneArm(Lane* l, int opt, int rule, int dtype, std::vector<Job> jobs, std::vector<double> hypers,
             uint64_t last_step) {
  l->Arm(opt, rule, dtype, std::move(jobs), std::move(hypers), last_step);
}
void LaneDisarm(Lane* l, std::vector<uint64_t>* applied, uint64_t* last_step, std::vector<uint32_t>* last_indices) {
  Lane::Report r = l->Disarm();
  *applied = std::move(r.applied);
  *last_step = r.last_step;
  *last_indices = std::move(r.last_indices);
}

}  // namespace mur
