// The fused kernel of every optimizer x rule, templated on how the state is
// stored (S: float, Bf16 or Q8, optimizers/common-inl.h): kernels.cc
// instantiates it for float32 state, kernels-bf16.cc for bfloat16,
// kernels-q8.cc for q8, each once per SIMD target (three translation units,
// so that the build compiles them in parallel). The step's phases are
// described in kernels.cc. q8 state runs the float32 kernel block by block
// on dequantised scratch (Q8Blocks below).
#if defined(MUR_FUSED_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_FUSED_INL_H_
#undef MUR_FUSED_INL_H_
#else
#define MUR_FUSED_INL_H_
#endif
#include <string>
#include <type_traits>
#include <vector>

#include "hwy/highway.h"
#include "kernel.h"
#include "optimizers/adadelta-inl.h"
#include "optimizers/adafactor-inl.h"
#include "optimizers/adagrad-inl.h"
#include "optimizers/adam-inl.h"
#include "optimizers/adamax-inl.h"
#include "optimizers/asgd-inl.h"
#include "optimizers/lamb-inl.h"
#include "optimizers/lars-inl.h"
#include "optimizers/lion-inl.h"
#include "optimizers/muon-inl.h"
#include "optimizers/nadam-inl.h"
#include "optimizers/radam-inl.h"
#include "optimizers/rmsprop-inl.h"
#include "optimizers/rows-inl.h"
#include "optimizers/rprop-inl.h"
#include "optimizers/schedule_free-inl.h"
#include "optimizers/sgd-inl.h"
#include "optimizers/sparse_adam-inl.h"
#include "pool.h"
#include "q8-inl.h"
#include "rules/additive-inl.h"
#include "rules/exp_sign-inl.h"
#include "rules/hybrid-inl.h"
#include "rules/multiplicative-inl.h"
#include "tasks.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/** A job's per-tensor coefficients (the same whatever the state dtype). */
template <class Opt, class Rule>
struct FusedPlan {
  typename Opt::C opt;
  typename Rule::C rule;
  float decay;
};

template <class Opt, class Rule, class S>
struct Fused {
  using Plan = FusedPlan<Opt, Rule>;

  // One element block: d from the optimizer, decay, xi from the rule, and
  // the framework's one subtraction.
  // `gshift`: how far before element i its gradient is (0 but for the rows
  // of a row-sparse gradient, whose values are packed: optimizers/rows-inl.h).
  template <bool kDecay, class D>
  static HWY_INLINE void Body(D d, const SlotJob<S>& j, const Plan& p, size_t i, size_t gshift) {
    const auto g = hn::LoadU(d, j.grad + (i - gshift));
    const auto theta = hn::LoadU(d, j.theta + i);
    const auto dir = Opt::Direction(d, p.opt, j, i, g, theta);
    if constexpr (RuleOnSlot<Opt>::value) {  // Schedule-Free: the rule moves z, theta follows (Combine)
      static_assert(((WideSlots<Opt>::value >> Opt::kRuleSlot) & 1u) != 0, "the iterate the rule acts on is float32");
      const auto z = hn::LoadU(d, j.slot[Opt::kRuleSlot] + i);
      const auto z_new = hn::Sub(z, Rule::Change(d, p.rule, j, z, dir));
      hn::StoreU(Opt::Combine(d, p.opt, j, i, theta, z, z_new), d, j.theta + i);
      return;
    }
    const auto x = kDecay ? hn::Mul(theta, hn::Set(d, p.decay)) : theta;
    const auto next = hn::Sub(x, Rule::Change(d, p.rule, j, x, dir));
    hn::StoreU(next, d, j.theta + i);
    AfterStep<Opt>(d, p.opt, j, i, next);
  }

  template <bool kDecay>
  static void Range(const Job& job, const Plan& p, size_t begin, size_t end, size_t gshift) {
    if constexpr (std::is_same_v<S, Q8> && SlotsBeforeElements<Opt>::value) {
      // Muon: its matrix pass read and wrote the q8 momentum; the element pass reads no slot.
      Fused<Opt, Rule, float>::template DenseRange<kDecay>(job, p, begin, end, gshift);
    } else if constexpr (std::is_same_v<S, Q8>) {
      // q8: each block's slots dequantised into scratch, the float32 kernel over the block, quantised back.
      Q8Blocks<WideSlots<Opt>::value>(job, begin, end, [&](const Job& block, size_t len) {
        Fused<Opt, Rule, float>::template Range<kDecay>(block, p, 0, len, 0);
      });
    } else {
      DenseRange<kDecay>(job, p, begin, end, gshift);
    }
  }

  template <bool kDecay>
  static void DenseRange(const Job& job, const Plan& p, size_t begin, size_t end, size_t gshift) {
    const SlotJob<S> j(job, begin);
    const hn::ScalableTag<float> d;
    const hn::CappedTag<float, 1> d1;
    const size_t lanes = hn::Lanes(d);
    size_t i = begin;
    // Peel single elements until theta is aligned to the vector size: a load
    // or store that straddles two cache lines costs two. Large buffers from
    // malloc share theta's misalignment (16 bytes past a page), so this aligns
    // the state slots too.
    const size_t vbytes = lanes * sizeof(float);
    const size_t mis = reinterpret_cast<uintptr_t>(j.theta + i) % vbytes;
    if (mis % sizeof(float) == 0) {
      for (size_t k = mis ? (vbytes - mis) / sizeof(float) : 0; k > 0 && i < end; --k, ++i)
        Body<kDecay>(d1, j, p, i, gshift);
    }
    for (; i + lanes <= end; i += lanes) Body<kDecay>(d, j, p, i, gshift);
    for (; i < end; ++i) Body<kDecay>(d1, j, p, i, gshift);
  }

  struct Task {
    size_t job, begin, end;
  };
  struct Ctx {
    const Job* jobs;
    const Plan* plans;
    const Task* tasks;
  };

  /**
   * Rows [begin, end) of a row-sparse gradient on q8 state: block by block
   * (kQ8Block elements of the flat tensor, the blocks of a dense step), each
   * block that a row touches dequantised whole, the float32 loop over the
   * touched elements, the block quantised back. Elements of the block that no
   * row touched keep their codes: the block keeps its old absmax unless a
   * touched element outgrows it (Q8Quantise's floor), and an absmax times a map
   * value divided by the same absmax quantises to that map value's code (the
   * thresholds are midpoints, far more than one float32 ulp from every value);
   * only when a touched element outgrows the absmax are the untouched ones
   * quantised again to the new scale (off by up to half a map step, as every
   * element of a dense step). A task's rows share no block (Run).
   */
  template <bool kDecay>
  static void Q8Rows(const Job& job, const Plan& p, size_t begin, size_t end) {
    if (job.row_len == 0) return;
    HWY_ALIGN float scratch[kMaxOptSlots][kQ8Block];
    const Q8Map* maps[kMaxOptSlots];
    for (int k = 0; k < kMaxOptSlots; ++k) maps[k] = &Q8MapOf(((job.q8_unsigned >> k) & 1u) != 0);
    size_t r = begin, pos = RowStart(job, r);
    while (r < end) {
      const size_t blk = pos / kQ8Block, b0 = blk * kQ8Block;
      const size_t len = b0 + kQ8Block < job.n ? kQ8Block : job.n - b0;
      Job block = job;
      block.theta = job.theta + b0;
      block.n = len;
      block.rows = nullptr;
      RebaseWide(job, WideSlots<Opt>::value, b0, &block);
      for (int k = 0; k < kMaxOptSlots; ++k) {
        if (job.slot8[k] == nullptr) continue;
        Q8Dequantise(job.slot8[k] + b0, job.absmax[k][blk], *maps[k], len, scratch[k]);
        block.slot[k] = scratch[k];
        block.slot8[k] = nullptr;
      }
      size_t touched = 0;
      for (;;) {  // every row segment in this block
        const size_t row_at = RowStart(job, r), row_end = row_at + job.row_len;
        const size_t seg_end = row_end < b0 + len ? row_end : b0 + len;
        block.grad = job.grad + r * job.row_len + (pos - row_at);  // the gradient of element pos
        Fused<Opt, Rule, float>::template DenseRange<kDecay>(block, p, pos - b0, seg_end - b0, pos - b0);
        touched += seg_end - pos;
        if (seg_end < row_end) {  // the row goes on in the next block
          pos = seg_end;
          break;
        }
        if (++r == end) break;
        pos = RowStart(job, r);
        if (pos >= b0 + len) break;
      }
      for (int k = 0; k < kMaxOptSlots; ++k) {
        if (job.slot8[k] == nullptr) continue;
        const float floor = touched < len ? job.absmax[k][blk] : 0.0f;
        job.absmax[k][blk] = Q8Quantise(scratch[k], len, *maps[k], job.slot8[k] + b0, floor);
      }
    }
  }

  template <bool kDecay>
  static void RunRange(const Job& j, const Plan& p, size_t begin, size_t end) {
    if (j.rows == nullptr) return Range<kDecay>(j, p, begin, end, 0);
    if constexpr (std::is_same_v<S, Q8>) return Q8Rows<kDecay>(j, p, begin, end);
    // A row-sparse job's task is rows [begin, end) of its gradient: each is
    // the dense loop over that row of theta and the slots.
    for (size_t r = begin; r < end; ++r) {
      const size_t at = RowStart(j, r);
      Range<kDecay>(j, p, at, at + j.row_len, at - r * j.row_len);
    }
  }

  static void RunTask(void* vctx, size_t k) {
    const Ctx& c = *static_cast<const Ctx*>(vctx);
    const Task& t = c.tasks[k];
    const Plan& p = c.plans[t.job];
    if (p.decay != 1.0f) {
      RunRange<true>(c.jobs[t.job], p, t.begin, t.end);
    } else {
      RunRange<false>(c.jobs[t.job], p, t.begin, t.end);
    }
  }

  static std::string Run(const Job* jobs, size_t njobs) {
    std::vector<Plan> plans(njobs);
    std::string err;
    size_t total = 0;
    for (size_t k = 0; k < njobs; ++k) {
      Factors f;
      if (!Opt::Prepare(jobs[k], &plans[k].opt, &f, &err) || !Rule::Prepare(jobs[k], f.scale, &plans[k].rule, &err)) {
        return "job " + std::to_string(k) + ": " + err;
      }
      plans[k].decay = static_cast<float>(f.decay);
      if (jobs[k].rows != nullptr && WantsNorms<Opt>::value) return "job " + std::to_string(k) + ": " + kNoRows;
      total += GradElements(jobs[k]);
    }
    for (size_t k = 0; k < njobs; ++k) Opt::Commit(jobs[k], plans[k].opt);

    // Tasks: small tensors whole, large ones in chunks.
    std::vector<Task> tasks;
    tasks.reserve(njobs + total / kChunk);
    for (size_t k = 0; k < njobs; ++k) {
      // Dense: elements; row-sparse: rows of the gradient, about kChunk elements a task.
      const size_t n = jobs[k].rows != nullptr ? jobs[k].nrows : jobs[k].n;
      const size_t step = jobs[k].rows != nullptr ? RowsPerTask(jobs[k]) : kChunk;
      for (size_t b = 0, e; b < n; b = e) {
        e = b + step < n ? b + step : n;
        // q8 rows: a task ends where the next row starts in a block of its own (Q8Rows), the same split on any thread
        // count.
        if constexpr (std::is_same_v<S, Q8>) {
          if (jobs[k].rows != nullptr)
            while (e < n && SameQ8Block(jobs[k], e - 1, e)) ++e;
        }
        tasks.push_back({k, b, e});
      }
    }
    Ctx ctx{jobs, plans.data(), tasks.data()};
    Pool& pool = Pool::Get();
    if constexpr (WantsNorms<Opt>::value) {  // LAMB, LARS: the per-tensor norms first (optimizers/norms-inl.h)
      std::vector<typename Opt::C*> opts(njobs);
      for (size_t k = 0; k < njobs; ++k) opts[k] = &plans[k].opt;
      const bool parallel = pool.threads() > 1 && total >= kParallelMinCheap;
      if constexpr (WantsPrepass<Opt>::value)
        Opt::Prepass(jobs, njobs, opts.data(), tasks, parallel);  // Adafactor's row and column means
      NormPass<Opt, S>::Run(jobs, njobs, opts.data(), tasks, parallel);
    }
    if constexpr (WantsMatrix<Opt>::value) {  // Muon: orthogonalised momentum first (optimizers/muon-inl.h)
      for (size_t k = 0; k < njobs; ++k) Opt::Matrix(jobs[k], &plans[k].opt, pool.threads() > 1);
    }
    if (pool.threads() > 1 && total >= (Rule::kTranscendental ? kParallelMinTranscendental : kParallelMinCheap)) {
      pool.Run(tasks.size(), &RunTask, &ctx);
    } else {
      for (size_t k = 0; k < tasks.size(); ++k) RunTask(&ctx, k);
    }
    return "";
  }
};

template <class Opt, class S>
std::string WithRule(int rule, const Job* jobs, size_t n) {
  if constexpr (!std::is_same_v<S, float> && KeepsFloat32<Opt>::value) {
    return WithRule<Opt, float>(rule, jobs, n);  // Adafactor: every slot float32 (Descriptor::wide_slots)
  } else if constexpr (!std::is_same_v<S, float> && !TakesCompact<Opt>::value) {
    return std::is_same_v<S, Bf16> ? "this optimizer does not take state_dtype bfloat16"
                                   : "this optimizer does not take state_dtype q8";
  } else {
    switch (rule) {
      case kAdditive:
        return Fused<Opt, Additive, S>::Run(jobs, n);
      case kMultiplicative:
        return Fused<Opt, Multiplicative, S>::Run(jobs, n);
      case kHybrid:
        return Fused<Opt, Hybrid, S>::Run(jobs, n);
      case kExpSign:
        return Fused<Opt, ExpSign, S>::Run(jobs, n);
    }
  }
  return "unknown rule id " + std::to_string(rule);
}

template <class S>
std::string RunStepT(int opt, int rule, const Job* jobs, size_t n) {
  switch (opt) {
    case kSgd:
      return WithRule<Sgd, S>(rule, jobs, n);
    case kAdam:
      return WithRule<Adam, S>(rule, jobs, n);
    case kAdamW:
      return WithRule<AdamW, S>(rule, jobs, n);
    case kAdagrad:
      return WithRule<Adagrad, S>(rule, jobs, n);
    case kRmsprop:
      return WithRule<Rmsprop, S>(rule, jobs, n);
    case kAdamax:
      return WithRule<Adamax, S>(rule, jobs, n);
    case kNadam:
      return WithRule<Nadam, S>(rule, jobs, n);
    case kRadam:
      return WithRule<Radam, S>(rule, jobs, n);
    case kAdadelta:
      return WithRule<Adadelta, S>(rule, jobs, n);
    case kLion:
      return WithRule<Lion, S>(rule, jobs, n);
    case kRprop:
      return WithRule<Rprop, S>(rule, jobs, n);
    case kAsgd:
      return WithRule<Asgd, S>(rule, jobs, n);
    case kLamb:
      return WithRule<Lamb, S>(rule, jobs, n);
    case kLars:
      return WithRule<Lars, S>(rule, jobs, n);
    case kAdafactor:
      return WithRule<Adafactor, S>(rule, jobs, n);
    case kSparseAdam:
      return WithRule<SparseAdam, S>(rule, jobs, n);
    case kMuon:
      return WithRule<Muon, S>(rule, jobs, n);
    case kScheduleFreeAdamW:
      return WithRule<ScheduleFree, S>(rule, jobs, n);
  }
  return "unknown optimizer id " + std::to_string(opt);
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
