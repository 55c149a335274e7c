// The fused kernels: every optimizer x rule composed into one pass over
// memory, compiled once per SIMD target (SSE4, AVX2, AVX-512, ...) with
// Highway's foreach_target and chosen at run time by HWY_DYNAMIC_DISPATCH.
//
// One step (RunStep) is:
//   1. Prepare every job: the optimizer's and the rule's per-tensor
//      coefficients from the hyperparameter block (host maths in double).
//      A job that cannot run is refused here, before anything is written.
//   2. Commit the per-tensor scalars (NAdam's mu_product).
//   3. The element loop over every job, split into tasks of kChunk elements
//      that the thread pool runs on both cores when the step is large
//      enough. A vector body and a one-lane tail run the same code.
// After step 1 nothing can fail, so a step is applied whole or not at all.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "hwy/highway.h"
#include "kernel.h"
#include "optimizers/adadelta-inl.h"
#include "optimizers/adagrad-inl.h"
#include "optimizers/adam-inl.h"
#include "optimizers/adamax-inl.h"
#include "optimizers/lion-inl.h"
#include "optimizers/nadam-inl.h"
#include "optimizers/radam-inl.h"
#include "optimizers/rmsprop-inl.h"
#include "optimizers/sgd-inl.h"
#include "pool.h"
#include "rules/additive-inl.h"
#include "rules/exp_sign-inl.h"
#include "rules/hybrid-inl.h"
#include "rules/multiplicative-inl.h"

#ifndef MUR_KERNELS_CONSTANTS_
#define MUR_KERNELS_CONSTANTS_
namespace mur {
// Elements per task: 32Ki floats is 128 KiB per stream, large enough that a
// task's overhead vanishes, small enough to balance two cores.
constexpr size_t kChunk = size_t{1} << 15;
// Below this many elements in a step one thread is faster than waking the
// pool (~30 us here): ~384Ki for memory-bound kernels (the additive rule, the
// finiteness scan), ~96Ki for kernels that evaluate tanh or exp per element.
// Measured with `node dist/bench/threshold.js` (ts-server).
constexpr size_t kParallelMinCheap = size_t{3} << 17;
constexpr size_t kParallelMinTranscendental = size_t{3} << 15;
}  // namespace mur
#endif

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
    hn::StoreU(hn::Sub(x, Rule::Change(d, p.rule, j, x, dir)), d, j.theta + i);
  }

  template <bool kDecay>
  static void Range(const Job& j, const Plan& p, size_t begin, size_t end) {
    const hn::ScalableTag<float> d;
    const size_t lanes = hn::Lanes(d);
    size_t i = begin;
    for (; i + lanes <= end; i += lanes) Body<kDecay>(d, j, p, i);
    const hn::CappedTag<float, 1> d1;
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
    case kAdditive: return Fused<Opt, Additive>::Run(jobs, n);
    case kMultiplicative: return Fused<Opt, Multiplicative>::Run(jobs, n);
    case kHybrid: return Fused<Opt, Hybrid>::Run(jobs, n);
    case kExpSign: return Fused<Opt, ExpSign>::Run(jobs, n);
  }
  return "unknown rule id " + std::to_string(rule);
}

std::string RunStepImpl(int opt, int rule, const Job* jobs, size_t n) {
  switch (opt) {
    case kSgd: return WithRule<Sgd>(rule, jobs, n);
    case kAdam: return WithRule<Adam>(rule, jobs, n);
    case kAdamW: return WithRule<AdamW>(rule, jobs, n);
    case kAdagrad: return WithRule<Adagrad>(rule, jobs, n);
    case kRmsprop: return WithRule<Rmsprop>(rule, jobs, n);
    case kAdamax: return WithRule<Adamax>(rule, jobs, n);
    case kNadam: return WithRule<Nadam>(rule, jobs, n);
    case kRadam: return WithRule<Radam>(rule, jobs, n);
    case kAdadelta: return WithRule<Adadelta>(rule, jobs, n);
    case kLion: return WithRule<Lion>(rule, jobs, n);
  }
  return "unknown optimizer id " + std::to_string(opt);
}

// x - x is 0 for every finite x and NaN for NaN and +-infinity.
template <class D>
HWY_INLINE bool AllFinite(D d, const float* x, size_t i) {
  const auto v = hn::LoadU(d, x + i);
  return hn::AllTrue(d, hn::Eq(hn::Sub(v, v), hn::Zero(d)));
}

int64_t FirstNonFiniteRange(const float* x, size_t begin, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t lanes = hn::Lanes(d);
  size_t i = begin;
  // Four vectors per test keep the loop at memory speed.
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    const auto a = hn::LoadU(d, x + i), b = hn::LoadU(d, x + i + lanes);
    const auto c = hn::LoadU(d, x + i + 2 * lanes), e = hn::LoadU(d, x + i + 3 * lanes);
    const auto s = hn::Add(hn::Add(hn::Sub(a, a), hn::Sub(b, b)), hn::Add(hn::Sub(c, c), hn::Sub(e, e)));
    if (!hn::AllTrue(d, hn::Eq(s, hn::Zero(d)))) break;
  }
  for (; i < n; ++i) {
    if (!std::isfinite(x[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

// A 64-bit digest of a chunk's bytes: eight independent multiply-xor lanes
// over 64-bit words (so it runs near memory speed), folded with the length.
// Not cryptographic: it tells a retried request from a different one.
uint64_t HashRange(const float* x, size_t begin, size_t end) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const unsigned char* p = reinterpret_cast<const unsigned char*>(x + begin);
  const size_t bytes = 4 * (end - begin);
  size_t i = 0;
  for (; i + 64 <= bytes; i += 64) {
    for (int k = 0; k < 8; ++k) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * k, 8);
      a[k] = (a[k] ^ w) * kMul;
    }
  }
  for (; i + 4 <= bytes; i += 4) {
    uint32_t w;
    std::memcpy(&w, p + i, 4);
    a[0] = (a[0] ^ w) * kMul;
  }
  uint64_t h = bytes;
  for (int k = 0; k < 8; ++k) h = (h ^ (a[k] >> 29) ^ a[k]) * kMul;
  return h ^ (h >> 32);
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
    cx.found[k] = FirstNonFiniteRange(cx.x, b, e);
    cx.hash[k] = HashRange(cx.x, b, e);
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
};
static const Descriptor kRuleTable[kNumRules] = {
    MUR_DESC(additive_desc, "additive", 0),
    MUR_DESC(multiplicative_desc, "multiplicative", 0),
    MUR_DESC(hybrid_desc, "hybrid", 0),
    MUR_DESC(exp_sign_desc, "exp_sign", 1u << 0),  // max
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
