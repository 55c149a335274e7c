// The fused kernels: every optimizer x rule composed into one pass over
// memory, compiled once per SIMD target (SSE4, AVX2, AVX-512, ...) with
// Highway's foreach_target and chosen at run time by HWY_DYNAMIC_DISPATCH.
//
// One step (RunStep) is:
//   1. Prepare every job: the optimizer's and the rule's per-tensor
//      coefficients from the hyperparameter block (host maths in double).
//      A job that cannot run is refused here, before anything is written.
//   2. Commit the per-tensor scalars (NAdam's mu_product).
//   2b. For LAMB and LARS, the per-tensor norms (optimizers/norms-inl.h).
//   3. The element loop over every job, split into tasks of kChunk elements
//      that the thread pool runs on both cores when the step is large
//      enough. A vector body and a one-lane tail run the same code.
// After step 1 nothing can fail, so a step is applied whole or not at all.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels.cc"
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernel.h"
#include "optimizers/adadelta-inl.h"
#include "optimizers/adagrad-inl.h"
#include "optimizers/adam-inl.h"
#include "optimizers/adamax-inl.h"
#include "optimizers/asgd-inl.h"
#include "optimizers/lamb-inl.h"
#include "optimizers/lars-inl.h"
#include "optimizers/lion-inl.h"
#include "optimizers/nadam-inl.h"
#include "optimizers/radam-inl.h"
#include "optimizers/rmsprop-inl.h"
#include "optimizers/rprop-inl.h"
#include "optimizers/sgd-inl.h"
#include "pool.h"
#include "rules/additive-inl.h"
#include "rules/exp_sign-inl.h"
#include "rules/hybrid-inl.h"
#include "rules/multiplicative-inl.h"
#include "tasks.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class Opt, class Rule>
struct Fused {
  struct Plan {
    typename Opt::C opt;
    typename Rule::C rule;
    float decay;
  };

  // One element block: d from the optimizer, decay, xi from the rule, and
  // the framework's one subtraction.
  template <bool kDecay, class D>
  static HWY_INLINE void Body(D d, const Job& j, const Plan& p, size_t i) {
    const auto g = hn::LoadU(d, j.grad + i);
    const auto theta = hn::LoadU(d, j.theta + i);
    const auto dir = Opt::Direction(d, p.opt, j, i, g, theta);
    const auto x = kDecay ? hn::Mul(theta, hn::Set(d, p.decay)) : theta;
    const auto next = hn::Sub(x, Rule::Change(d, p.rule, j, x, dir));
    hn::StoreU(next, d, j.theta + i);
    AfterStep<Opt>(d, p.opt, j, i, next);
  }

  template <bool kDecay>
  static void Range(const Job& j, const Plan& p, size_t begin, size_t end) {
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
      for (size_t k = mis ? (vbytes - mis) / sizeof(float) : 0; k > 0 && i < end; --k, ++i) Body<kDecay>(d1, j, p, i);
    }
    for (; i + lanes <= end; i += lanes) Body<kDecay>(d, j, p, i);
    for (; i < end; ++i) Body<kDecay>(d1, j, p, i);
  }

  struct Task {
    size_t job, begin, end;
  };
  struct Ctx {
    const Job* jobs;
    const Plan* plans;
    const Task* tasks;
  };

  static void RunTask(void* vctx, size_t k) {
    const Ctx& c = *static_cast<const Ctx*>(vctx);
    const Task& t = c.tasks[k];
    const Plan& p = c.plans[t.job];
    if (p.decay != 1.0f) {
      Range<true>(c.jobs[t.job], p, t.begin, t.end);
    } else {
      Range<false>(c.jobs[t.job], p, t.begin, t.end);
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
      total += jobs[k].n;
    }
    for (size_t k = 0; k < njobs; ++k) Opt::Commit(jobs[k], plans[k].opt);

    // Tasks: small tensors whole, large ones in chunks.
    std::vector<Task> tasks;
    tasks.reserve(njobs + total / kChunk);
    for (size_t k = 0; k < njobs; ++k) {
      for (size_t b = 0; b < jobs[k].n; b += kChunk) {
        tasks.push_back({k, b, b + kChunk < jobs[k].n ? b + kChunk : jobs[k].n});
      }
    }
    Ctx ctx{jobs, plans.data(), tasks.data()};
    Pool& pool = Pool::Get();
    if constexpr (WantsNorms<Opt>::value) {  // LAMB, LARS: the per-tensor norms first (optimizers/norms-inl.h)
      std::vector<typename Opt::C*> opts(njobs);
      for (size_t k = 0; k < njobs; ++k) opts[k] = &plans[k].opt;
      NormPass<Opt>::Run(jobs, njobs, opts.data(), tasks, pool.threads() > 1 && total >= kParallelMinCheap);
    }
    if (pool.threads() > 1 && total >= (Rule::kTranscendental ? kParallelMinTranscendental : kParallelMinCheap)) {
      pool.Run(tasks.size(), &RunTask, &ctx);
    } else {
      for (size_t k = 0; k < tasks.size(); ++k) RunTask(&ctx, k);
    }
    return "";
  }
};

template <class Opt>
std::string WithRule(int rule, const Job* jobs, size_t n) {
  switch (rule) {
    case kAdditive:
      return Fused<Opt, Additive>::Run(jobs, n);
    case kMultiplicative:
      return Fused<Opt, Multiplicative>::Run(jobs, n);
    case kHybrid:
      return Fused<Opt, Hybrid>::Run(jobs, n);
    case kExpSign:
      return Fused<Opt, ExpSign>::Run(jobs, n);
  }
  return "unknown rule id " + std::to_string(rule);
}

std::string RunStepImpl(int opt, int rule, const Job* jobs, size_t n) {
  switch (opt) {
    case kSgd:
      return WithRule<Sgd>(rule, jobs, n);
    case kAdam:
      return WithRule<Adam>(rule, jobs, n);
    case kAdamW:
      return WithRule<AdamW>(rule, jobs, n);
    case kAdagrad:
      return WithRule<Adagrad>(rule, jobs, n);
    case kRmsprop:
      return WithRule<Rmsprop>(rule, jobs, n);
    case kAdamax:
      return WithRule<Adamax>(rule, jobs, n);
    case kNadam:
      return WithRule<Nadam>(rule, jobs, n);
    case kRadam:
      return WithRule<Radam>(rule, jobs, n);
    case kAdadelta:
      return WithRule<Adadelta>(rule, jobs, n);
    case kLion:
      return WithRule<Lion>(rule, jobs, n);
    case kRprop:
      return WithRule<Rprop>(rule, jobs, n);
    case kAsgd:
      return WithRule<Asgd>(rule, jobs, n);
    case kLamb:
      return WithRule<Lamb>(rule, jobs, n);
    case kLars:
      return WithRule<Lars>(rule, jobs, n);
  }
  return "unknown optimizer id " + std::to_string(opt);
}

// x - x is 0 for every finite x and NaN for NaN and +-infinity: ScanRange
// tests four vectors at once that way.
// One pass over a chunk: the first NaN or infinity (-1 if none) and, when
// there is none, a 64-bit digest of the chunk's bytes. The digest runs in the
// same vector loop as the finiteness test (multiply-xor on 32-bit lanes, four
// independent accumulators, folded with the length at the end), so the scan
// stays at memory speed. Not cryptographic: it tells a retried request from a
// different one.
int64_t ScanRange(const float* x, size_t begin, size_t end, uint64_t* digest) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const size_t lanes = hn::Lanes(df);
  const auto k = hn::Set(du, 0x9E3779B1u);  // odd: multiplication is a bijection
  auto a0 = hn::Set(du, 0x85EBCA77u), a1 = hn::Set(du, 0xC2B2AE3Du), a2 = hn::Set(du, 0x27D4EB2Fu),
       a3 = hn::Set(du, 0x165667B1u);
  const auto zero = hn::Zero(df);
  size_t i = begin;
  for (; i + 4 * lanes <= end; i += 4 * lanes) {
    const auto v0 = hn::LoadU(df, x + i), v1 = hn::LoadU(df, x + i + lanes);
    const auto v2 = hn::LoadU(df, x + i + 2 * lanes), v3 = hn::LoadU(df, x + i + 3 * lanes);
    const auto s = hn::Add(hn::Add(hn::Sub(v0, v0), hn::Sub(v1, v1)), hn::Add(hn::Sub(v2, v2), hn::Sub(v3, v3)));
    if (!hn::AllTrue(df, hn::Eq(s, zero))) break;  // the scalar loop below finds it
    a0 = hn::Mul(hn::Xor(a0, hn::BitCast(du, v0)), k);
    a1 = hn::Mul(hn::Xor(a1, hn::BitCast(du, v1)), k);
    a2 = hn::Mul(hn::Xor(a2, hn::BitCast(du, v2)), k);
    a3 = hn::Mul(hn::Xor(a3, hn::BitCast(du, v3)), k);
  }
  uint64_t h = 0x243F6A8885A308D3ull ^ (end - begin);
  for (; i < end; ++i) {
    if (!std::isfinite(x[i])) return static_cast<int64_t>(i);
    uint32_t w;
    std::memcpy(&w, x + i, 4);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
  }
  HWY_ALIGN uint32_t acc[4 * HWY_MAX_BYTES / 4];
  hn::Store(a0, du, acc);
  hn::Store(a1, du, acc + lanes);
  hn::Store(a2, du, acc + 2 * lanes);
  hn::Store(a3, du, acc + 3 * lanes);
  for (size_t q = 0; q < 4 * lanes; ++q) h = (h ^ acc[q]) * 0x9E3779B97F4A7C15ull;
  *digest = h ^ (h >> 31);
  return -1;
}

// Large arrays are scanned in kChunk pieces on the pool; the first non-finite
// element is the smallest index any piece found, the digest folds the
// pieces' digests in order (so it does not depend on the thread count).
int64_t ScanImpl(const float* x, size_t n, uint64_t* digest) {
  struct Ctx {
    const float* x;
    size_t n;
    std::vector<int64_t> found;
    std::vector<uint64_t> hash;
  };
  const size_t pieces = n == 0 ? 1 : (n + kChunk - 1) / kChunk;
  Ctx ctx{x, n, std::vector<int64_t>(pieces, -1), std::vector<uint64_t>(pieces, 0)};
  auto task = [](void* c, size_t k) {
    Ctx& cx = *static_cast<Ctx*>(c);
    const size_t b = k * kChunk, e = b + kChunk < cx.n ? b + kChunk : cx.n;
    cx.found[k] = ScanRange(cx.x, b, e, &cx.hash[k]);
  };
  Pool& pool = Pool::Get();
  if (pool.threads() > 1 && n >= kParallelMinCheap) {
    pool.Run(pieces, task, &ctx);
  } else {
    for (size_t k = 0; k < pieces; ++k) task(&ctx, k);
  }
  uint64_t h = 0x243F6A8885A308D3ull ^ n;
  for (uint64_t p : ctx.hash) h = (h ^ p) * 0x9E3779B97F4A7C15ull;
  *digest = h ^ (h >> 29);
  for (int64_t f : ctx.found) {
    if (f >= 0) return f;
  }
  return -1;
}

int64_t FirstNonFiniteImpl(const float* x, size_t n) {
  uint64_t ignored;
  return ScanImpl(x, n, &ignored);
}

double SumSquaresImpl(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace mur {

HWY_EXPORT(RunStepImpl);
HWY_EXPORT(FirstNonFiniteImpl);
HWY_EXPORT(ScanImpl);
HWY_EXPORT(SumSquaresImpl);
HWY_EXPORT(TargetNameImpl);

template <size_t N>
constexpr int Count(const char* const (&)[N]) {
  return static_cast<int>(N);
}
constexpr int Count(std::nullptr_t) { return 0; }

#define MUR_DESC(ns, name, scalar) \
  Descriptor { name, ns::kHypers, Count(ns::kHypers), ns::kSlots, Count(ns::kSlots), scalar }

static const Descriptor kOptimizerTable[kNumOptimizers] = {
    MUR_DESC(sgd_desc, "sgd", 0),
    MUR_DESC(adam_desc, "adam", 0),
    MUR_DESC(adam_desc, "adamw", 0),
    MUR_DESC(adagrad_desc, "adagrad", 0),
    MUR_DESC(rmsprop_desc, "rmsprop", 0),
    MUR_DESC(adamax_desc, "adamax", 0),
    MUR_DESC(nadam_desc, "nadam", 1u << 2),  // mu_product
    MUR_DESC(radam_desc, "radam", 0),
    MUR_DESC(adadelta_desc, "adadelta", 0),
    MUR_DESC(lion_desc, "lion", 0),
    MUR_DESC(rprop_desc, "rprop", 0),
    MUR_DESC(asgd_desc, "asgd", (1u << 0) | (1u << 1)),  // eta, mu
    MUR_DESC(lamb_desc, "lamb", 0),
    MUR_DESC(lars_desc, "lars", 0),
};
static const Descriptor kRuleTable[kNumRules] = {
    MUR_DESC(additive_desc, "additive", 0), MUR_DESC(multiplicative_desc, "multiplicative", 0),
    MUR_DESC(hybrid_desc, "hybrid", 0), MUR_DESC(exp_sign_desc, "exp_sign", 1u << 0),  // max
};

const Descriptor& OptimizerDescriptor(int id) { return kOptimizerTable[id]; }
const Descriptor& RuleDescriptor(int id) { return kRuleTable[id]; }

std::string RunStep(int opt, int rule, const Job* jobs, size_t njobs) {
  return HWY_DYNAMIC_DISPATCH(RunStepImpl)(opt, rule, jobs, njobs);
}
int64_t FirstNonFinite(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(FirstNonFiniteImpl)(x, n); }
int64_t Scan(const float* x, size_t n, uint64_t* digest) { return HWY_DYNAMIC_DISPATCH(ScanImpl)(x, n, digest); }
double SumSquares(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(SumSquaresImpl)(x, n); }
const char* TargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

}  // namespace mur
#endif
