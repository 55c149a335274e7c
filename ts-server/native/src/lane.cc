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
//   +44 u32 staged   speculated results committed so far (the lane bumps it)
//   +48 u32 made     speculations made so far (the lane bumps it)
//   +64 u16 indices  the step's arena tensor indices (< 0x4000), each with
//                    bit 15 set when the client saw no change of that
//                    gradient since it last queued it, and bit 14 set when
//                    moreover the step uses that gradient as queued (not
//                    negated for maximize): its speculated result may stand
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
// Speculation with a commit (issue 21): when the lane has scanned a queued
// gradient clean while backward runs, it also computes that tensor's update
// out of place, with the hyperparameters and step count the lane holds (the
// ones the coming lane step uses: a step with other hypers goes by RPC, which
// disarms the lane and drops every speculation), into staging: a copy of the
// parameter and a spare of each optimizer and rule slot, run through the same
// kernel (RunStep on that one job) as the step would. Live parameters and
// state are not touched. At the step, a tensor whose index carries both bits
// and whose speculation stands (made since the last step, on a gradient
// scanned clean, on a parameter whose bytes have the digest the speculation
// read: a client edit of p.data after backward is seen) takes its staged
// result; every other tensor is stepped from the live values; the whole step
// validates first (count, step number, every scan) and the unspeculated
// tensors' kernel runs before any commit, so a refusal commits nothing.
// Commit copies the staged parameter into the arena (the client's p.data
// views it) and flips the state: the spare becomes the live slot and the old
// live one the next spare. Disarm copies flipped state back into the
// session's own buffers, which the lane used as spares meanwhile (the
// session touches no state while the lane is armed). Only float32 state of
// the optimizers whose kernel is element-wise per tensor (Speculates()) is
// speculated; bit-identical to the step computed at the step by construction:
// the same kernel on the same inputs.
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
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernel.h"
#include "spin.h"

namespace mur {
namespace {

constexpr size_t kControl = 64;
constexpr uint32_t kMaxIndices = 1000;
constexpr uint32_t kQueue = 512;
constexpr uint16_t kUnchanged = 0x8000;  // an index's bit 15: the client's "no change since queued"
constexpr uint16_t kSpeculate = 0x4000;  // bit 14: and the step uses it as queued (its staged result may stand)
constexpr uint16_t kIndexBits = 0x3FFF;

/** Whether `opt`'s kernel is element-wise per tensor (its slots per element or per tensor, no reduction
 * whose order could depend on the job set), so that one job run alone gives the bits of the whole step. */
bool Speculates(int opt) {
  switch (opt) {
    case kSgd:
    case kAdam:
    case kAdamW:
    case kAdagrad:
    case kRmsprop:
    case kAdamax:
    case kNadam:
    case kRadam:
    case kAdadelta:
    case kLion:
    case kRprop:
    case kAsgd:
      return true;
    default:
      return false;
  }
}

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
  std::atomic<uint32_t> staged;
  std::atomic<uint32_t> made;
  uint32_t pad[3];
  uint16_t indices[kMaxIndices];
  uint16_t pad2[24];
  uint16_t queue[kQueue];
};
static_assert(offsetof(Control, staged) == 44, "staged at +44 (the Python Lane class reads this layout)");
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
    GoHome();  // armed again without a disarm: the flipped state goes back first
    opt_ = opt;
    rule_ = rule;
    dtype_ = dtype;
    jobs_ = std::move(jobs);
    hypers_ = std::move(hypers);
    for (size_t k = 0; k < jobs_.size(); ++k) jobs_[k].h = hypers_.data() + k * kHyperBlock;
    home_ = jobs_;
    if (staged_.size() < jobs_.size()) staged_.resize(jobs_.size());
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

  /** Whether the lane stages updates while backward runs (the session reserved the memory: --max-bytes). */
  void SetStaging(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    stage_ = on;
    if (!on) {
      GoHome();
      if (home_.size() == jobs_.size()) jobs_ = home_;  // every slot in the session's buffers again
      staged_.clear();
      staged_.shrink_to_fit();
      if (!jobs_.empty()) staged_.resize(jobs_.size());
    }
  }

  /** Stops taking requests (waits for one in progress) and says what was applied. */
  Report Disarm() {
    c_->armed.store(0, std::memory_order_release);
    std::lock_guard<std::mutex> lock(mu_);
    Report r{applied_, last_step_, last_indices_};
    GoHome();
    jobs_.clear();
    home_.clear();
    applied_.clear();
    ForgetQueue();
    return r;
  }

 private:
  void Loop() {
    bool rung = false;  // the last wait ended with a bell
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
        rung = false;
        continue;
      }
      if (c_->qwrite.load(std::memory_order_acquire) != qread_) {
        c_->sleeping.store(0, std::memory_order_relaxed);
        std::lock_guard<std::mutex> lock(mu_);
        TakeQueue(true);
        rung = false;
        continue;
      }
      if (rung) {
        // A bell with nothing to do is the client's "a step is coming"
        // (Lane.prewake: step() began): wait for it awake, since a futex
        // wake-up costs tens of microseconds on a virtual machine.
        rung = false;
        c_->sleeping.store(0, std::memory_order_seq_cst);
        if (AwaitWork()) continue;
        c_->sleeping.store(1, std::memory_order_seq_cst);  // a bell since `bell` ends the wait below at once
      }
      rung = Futex(&c_->bell, FUTEX_WAIT, bell, &wait) == 0 || errno == EAGAIN;
      c_->sleeping.store(0, std::memory_order_relaxed);
    }
  }

  /** Polls, for up to 0.5 ms, until a step is rung, a tensor queued or the lane stopped: whether one was. */
  bool AwaitWork() {
    return SpinUntil(
        [&] {
          return c_->seq.load(std::memory_order_acquire) != seen_ ||
                 c_->qwrite.load(std::memory_order_acquire) != qread_ || stop_.load(std::memory_order_relaxed);
        },
        std::chrono::microseconds(500));
  }

  /** Scans every queued tensor (mu_ held), recording which are clean; `speculate`: and stages their update. */
  void TakeQueue(bool speculate) {
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
        staged_[k].ready = false;
        clean_[k] = Scan(jobs_[k].grad, jobs_[k].n, &digest) < 0;
        if (clean_[k] && speculate) Speculate(k);
      }
      c_->qread.store(qread_, std::memory_order_release);
    }
  }

  /** Drops every recorded check and every waiting entry (mu_ held, or in the constructor). */
  void ForgetQueue() {
    qread_ = c_->qwrite.load(std::memory_order_acquire);
    c_->qread.store(qread_, std::memory_order_release);
    clean_.assign(jobs_.size(), false);
    DropStaged();
  }

  void DropStaged() {
    for (Staged& st : staged_) st.ready = false;
  }

  /** Slot s's element count for job k (float32 state: per element, one, or the descriptor's size). */
  size_t SlotLen(const Descriptor& d, int s, const Job& j) const {
    if ((d.scalar_slots >> s) & 1u) return 1;
    return d.slot_size != nullptr ? d.slot_size(s, j.n, j.h) : j.n;
  }

  /** The buffer of job k's slot that is not live: the session's own when the lane's is live, else the lane's. */
  float* Spare(size_t k, float* live, float* home, std::vector<float>* own, size_t len) {
    if (live != home) return home;
    if (own->size() < len) own->resize(len);
    return own->data();
  }

  /** Stages job k's update (mu_ held; its gradient just scanned clean): see the header. */
  void Speculate(size_t k) {
    const Job& live = jobs_[k];
    Staged& st = staged_[k];
    if (!stage_ || dtype_ != kStateFloat32 || !Speculates(opt_) || live.rows != nullptr || live.fresh != 0 ||
        live.n == 0)
      return;
    uint64_t digest;
    if (Scan(live.theta, live.n, &digest) >= 0) return;  // a non-finite parameter: the step computes it
    if (st.theta.size() < live.n) st.theta.resize(live.n);
    std::memcpy(st.theta.data(), live.theta, live.n * sizeof(float));
    Job j = live;
    j.theta = st.theta.data();
    const Descriptor& od = OptimizerDescriptor(opt_);
    for (int s = 0; s < kMaxOptSlots; ++s) {
      if (live.slot[s] == nullptr) continue;
      if (s >= od.n_slots) return;
      const size_t len = SlotLen(od, s, live);
      j.slot[s] = Spare(k, live.slot[s], home_[k].slot[s], &st.slot[s], len);
      std::memcpy(j.slot[s], live.slot[s], len * sizeof(float));
    }
    for (int s = 0; s < kMaxRuleSlots; ++s) {
      if (live.rule_slot[s] == nullptr) continue;
      j.rule_slot[s] = Spare(k, live.rule_slot[s], home_[k].rule_slot[s], &st.rule_slot[s], 1);
      *j.rule_slot[s] = *live.rule_slot[s];  // every rule slot is one element (kernel.h)
    }
    if (!RunStep(opt_, rule_, dtype_, &j, 1).empty()) return;
    st.digest = digest;
    for (int s = 0; s < kMaxOptSlots; ++s) st.next[s] = j.slot[s];
    for (int s = 0; s < kMaxRuleSlots; ++s) st.next_rule[s] = j.rule_slot[s];
    st.ready = true;
    c_->made.fetch_add(1, std::memory_order_relaxed);
  }

  /** Whether job k's staged result stands: made this step, on the parameter as it is now. */
  bool Stands(size_t k) {
    const Staged& st = staged_[k];
    if (!st.ready || !clean_[k]) return false;
    uint64_t digest;
    return Scan(jobs_[k].theta, jobs_[k].n, &digest) < 0 && digest == st.digest;
  }

  /** Makes job k's staged result live: the parameter copied into the arena, the state flipped. */
  void Commit(size_t k) {
    Job& live = jobs_[k];
    Staged& st = staged_[k];
    std::memcpy(live.theta, st.theta.data(), live.n * sizeof(float));
    for (int s = 0; s < kMaxOptSlots; ++s) {
      if (live.slot[s] != nullptr) live.slot[s] = st.next[s];
    }
    for (int s = 0; s < kMaxRuleSlots; ++s) {
      if (live.rule_slot[s] != nullptr) live.rule_slot[s] = st.next_rule[s];
    }
    st.ready = false;
    c_->staged.fetch_add(1, std::memory_order_relaxed);
  }

  /** Copies every flipped slot back into the session's own buffer (mu_ held; before the lane lets go). */
  void GoHome() {
    if (home_.size() != jobs_.size()) return;
    const Descriptor& od = OptimizerDescriptor(opt_);
    for (size_t k = 0; k < jobs_.size(); ++k) {
      for (int s = 0; s < kMaxOptSlots; ++s) {
        if (jobs_[k].slot[s] != home_[k].slot[s])
          std::memcpy(home_[k].slot[s], jobs_[k].slot[s], SlotLen(od, s, jobs_[k]) * sizeof(float));
      }
      for (int s = 0; s < kMaxRuleSlots; ++s) {
        if (jobs_[k].rule_slot[s] != home_[k].rule_slot[s]) *home_[k].rule_slot[s] = *jobs_[k].rule_slot[s];
      }
    }
  }

  int32_t Serve() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!c_->armed.load(std::memory_order_acquire) || jobs_.empty()) return 1;
    TakeQueue(false);  // the step is here: nothing to gain from staging now
    const int32_t status = Apply();
    clean_.assign(jobs_.size(), false);  // checks and speculations are good for one step
    DropStaged();
    return status;
  }

  int32_t Apply() {
    const uint32_t count = c_->count;
    if (count == 0 || count > jobs_.size() || count > kMaxIndices || c_->step != last_step_ + 1) return 1;
    std::vector<uint32_t> ks;
    ks.reserve(count);
    std::vector<bool> used(jobs_.size(), false);
    for (uint32_t i = 0; i < count; ++i) {
      const uint16_t raw = c_->indices[i];
      const uint32_t k = raw & kIndexBits;
      if (k >= jobs_.size() || used[k]) return 1;
      used[k] = true;
      ks.push_back(k);
    }
    for (uint32_t i = 0; i < count; ++i) {
      const uint32_t k = ks[i];
      if ((c_->indices[i] & kUnchanged) && clean_[k]) continue;  // checked while hot, not changed since
      uint64_t digest;
      if (Scan(jobs_[k].grad, jobs_[k].n, &digest) >= 0) return 2;  // the RPC refuses it with its message
    }
    // Every check passed. The tensors whose staged result stands are committed
    // after the others' kernel ran: a refused kernel commits nothing.
    std::vector<uint32_t> commit;
    std::vector<Job> rest;
    rest.reserve(count);
    for (uint32_t i = 0; i < count; ++i) {
      const uint32_t k = ks[i];
      const uint16_t both = kUnchanged | kSpeculate;
      if ((c_->indices[i] & both) == both && Stands(k)) {
        commit.push_back(k);
      } else {
        rest.push_back(jobs_[k]);
      }
    }
    if (!rest.empty() && !RunStep(opt_, rule_, dtype_, rest.data(), rest.size()).empty()) return 1;
    for (const uint32_t k : commit) Commit(k);
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
  // Speculation (see the header): per job, its staging and the armed buffers (home_: the session's own).
  struct Staged {
    std::vector<float> theta;                     // the staged new parameter
    std::vector<float> slot[kMaxOptSlots];        // the lane's spare of each slot
    std::vector<float> rule_slot[kMaxRuleSlots];  // ditto, rule slots
    float* next[kMaxOptSlots] = {};               // where the staged slots are (become live on commit)
    float* next_rule[kMaxRuleSlots] = {};
    uint64_t digest = 0;  // the live parameter's digest the speculation read
    bool ready = false;
  };
  std::vector<Staged> staged_;
  std::vector<Job> home_;
  bool stage_ = false;  // until the session reserved the staging (laneStaging)
};

Lane* LaneCreate(void* arena) { return new Lane(arena); }
void LaneDestroy(Lane* l) { delete l; }
void LaneArm(Lane* l, int opt, int rule, int dtype, std::vector<Job> jobs, std::vector<double> hypers,
             uint64_t last_step) {
  l->Arm(opt, rule, dtype, std::move(jobs), std::move(hypers), last_step);
}
void LaneSetStaging(Lane* l, bool on) { l->SetStaging(on); }
void LaneDisarm(Lane* l, std::vector<uint64_t>* applied, uint64_t* last_step, std::vector<uint32_t>* last_indices) {
  Lane::Report r = l->Disarm();
  *applied = std::move(r.applied);
  *last_step = r.last_step;
  *last_indices = std::move(r.last_indices);
}

}  // namespace mur
