// The fused kernels: every optimizer x rule composed into one pass over
// memory, compiled once per SIMD target (SSE4, AVX2, AVX-512, ...) with
// Highway's foreach_target and chosen at run time by HWY_DYNAMIC_DISPATCH.
//
// One step (RunStep) is:
//   1. Prepare every job: the optimizer's and the rule's per-tensor
//      coefficients from the hyperparameter block (host maths in double).
//      A job that cannot run is refused here, before anything is written.
//   2. Commit the per-tensor scalars (NAdam's mu_product).
//   2b. For LAMB, LARS and Adafactor, the per-tensor norms (optimizers/norms-inl.h),
//       Adafactor's row and column means before them (optimizers/adafactor-inl.h).
//       For Muon, the matrix pass: momentum and Newton-Schulz per matrix,
//       one matrix after another, each product on the pool (newton_schulz.h).
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

#include "hwy/cache_control.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

// After foreach_target.h, which includes this file again once per target.
#include "fused-inl.h"
#include "kernel.h"
#include "pool.h"
#include "prefetch.h"
#include "tasks.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

std::string RunStepImpl(int opt, int rule, const Job* jobs, size_t n) { return RunStepT<float>(opt, rule, jobs, n); }

bool TakesCompactImpl(int opt) {
  switch (opt) {
    case kSgd:
      return TakesCompact<Sgd>::value;
    case kAdam:
      return TakesCompact<Adam>::value;
    case kAdamW:
      return TakesCompact<AdamW>::value;
    case kAdagrad:
      return TakesCompact<Adagrad>::value;
    case kRmsprop:
      return TakesCompact<Rmsprop>::value;
    case kAdamax:
      return TakesCompact<Adamax>::value;
    case kNadam:
      return TakesCompact<Nadam>::value;
    case kRadam:
      return TakesCompact<Radam>::value;
    case kAdadelta:
      return TakesCompact<Adadelta>::value;
    case kLion:
      return TakesCompact<Lion>::value;
    case kRprop:
      return TakesCompact<Rprop>::value;
    case kAsgd:
      return TakesCompact<Asgd>::value;
    case kLamb:
      return TakesCompact<Lamb>::value;
    case kLars:
      return TakesCompact<Lars>::value;
    case kAdafactor:
      return TakesCompact<Adafactor>::value;
    case kSparseAdam:
      return TakesCompact<SparseAdam>::value;
    case kMuon:
      return TakesCompact<Muon>::value;
    case kScheduleFreeAdamW:
      return TakesCompact<ScheduleFree>::value;
  }
  return false;
}

constexpr size_t kScanAhead = 1024;  // floats: how far ahead ScanRange prefetches

// x - x is 0 for every finite x and NaN for NaN and +-infinity: ScanRange
// tests four vectors at once that way.
// One pass over a chunk: the first NaN or infinity (-1 if none) and, when
// there is none, a 64-bit digest of the chunk's bytes. The digest runs in the
// same vector loop as the finiteness test (multiply-xor on 32-bit lanes, four
// independent accumulators, folded with the length at the end), so the scan
// stays at memory speed. Not cryptographic: it tells a retried request from a
// different one. kPrefetch asks for the line kScanAhead floats ahead (4 KiB)
// on every iteration: it helps on some CPUs and hurts on others (prefetch.h),
// and it changes no result.
template <bool kPrefetch>
int64_t ScanRangeT(const float* x, size_t begin, size_t end, uint64_t* digest) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const size_t lanes = hn::Lanes(df);
  const auto k = hn::Set(du, 0x9E3779B1u);  // odd: multiplication is a bijection
  auto a0 = hn::Set(du, 0x85EBCA77u), a1 = hn::Set(du, 0xC2B2AE3Du), a2 = hn::Set(du, 0x27D4EB2Fu),
       a3 = hn::Set(du, 0x165667B1u);
  const auto zero = hn::Zero(df);
  size_t i = begin;
  for (; i + 4 * lanes <= end; i += 4 * lanes) {
    if (kPrefetch) hwy::Prefetch(i + kScanAhead < end ? x + i + kScanAhead : x + i);
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

int64_t ScanRange(const float* x, size_t begin, size_t end, uint64_t* digest) {
  return ScanPrefetches() ? ScanRangeT<true>(x, begin, end, digest) : ScanRangeT<false>(x, begin, end, digest);
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
HWY_EXPORT(TakesCompactImpl);
HWY_EXPORT(FirstNonFiniteImpl);
HWY_EXPORT(ScanImpl);
HWY_EXPORT(SumSquaresImpl);
HWY_EXPORT(TargetNameImpl);

template <size_t N>
constexpr int Count(const char* const (&)[N]) {
  return static_cast<int>(N);
}
constexpr int Count(std::nullptr_t) { return 0; }

// scalar: bit k, slot k holds one element; unsigned: bit k, slot k is never
// negative (the unsigned q8 map, q8map.h); wide: bit k, slot k is float32
// whatever the state dtype (Descriptor::wide_slots).
#define MUR_DESC(ns, name, scalar, unsigned_) \
  Descriptor { name, ns::kHypers, Count(ns::kHypers), ns::kSlots, Count(ns::kSlots), scalar, unsigned_ }
#define MUR_DESC_WIDE(ns, name, scalar, unsigned_, wide) \
  Descriptor { name, ns::kHypers, Count(ns::kHypers), ns::kSlots, Count(ns::kSlots), scalar, unsigned_, wide }
#define MUR_DESC_SIZED(ns, name, scalar, unsigned_, wide)                                                        \
  Descriptor {                                                                                                   \
    name, ns::kHypers, Count(ns::kHypers), ns::kSlots, Count(ns::kSlots), scalar, unsigned_, wide, &ns::SlotSize \
  }

static const Descriptor kOptimizerTable[kNumOptimizers] = {
    MUR_DESC(sgd_desc, "sgd", 0, 0),
    MUR_DESC(adam_desc, "adam", 0, 0b110),         // exp_avg_sq, max_exp_avg_sq
    MUR_DESC(adam_desc, "adamw", 0, 0b110),        // the same
    MUR_DESC(adagrad_desc, "adagrad", 0, 0b1),     // sum
    MUR_DESC(rmsprop_desc, "rmsprop", 0, 0b1),     // square_avg
    MUR_DESC(adamax_desc, "adamax", 0, 0b10),      // exp_inf
    MUR_DESC(nadam_desc, "nadam", 1u << 2, 0b10),  // mu_product; exp_avg_sq
    MUR_DESC(radam_desc, "radam", 0, 0b10),        // exp_avg_sq
    MUR_DESC(adadelta_desc, "adadelta", 0, 0b11),  // square_avg, acc_delta
    MUR_DESC(lion_desc, "lion", 0, 0),
    MUR_DESC(rprop_desc, "rprop", 0, 0b10),                 // step_size
    MUR_DESC(asgd_desc, "asgd", (1u << 0) | (1u << 1), 0),  // eta, mu
    MUR_DESC(lamb_desc, "lamb", 0, 0b10),                   // exp_avg_sq
    MUR_DESC(lars_desc, "lars", 0, 0),
    MUR_DESC_SIZED(adafactor_desc, "adafactor", 0, 0b111, 0b111),  // row_var, col_var: by rows and columns; float32
    MUR_DESC(sparse_adam_desc, "sparseadam", 0, 0b10),             // exp_avg_sq
    MUR_DESC(muon_desc, "muon", 0, 0),
    // weight_sum, max_lr; exp_avg_sq; z (the iterate) float32
    MUR_DESC_WIDE(schedule_free_desc, "schedule_free_adamw", (1u << 2) | (1u << 3), 0b10, 0b1),
};
static const Descriptor kRuleTable[kNumRules] = {
    MUR_DESC(additive_desc, "additive", 0, 0), MUR_DESC(multiplicative_desc, "multiplicative", 0, 0),
    MUR_DESC(hybrid_desc, "hybrid", 0, 0), MUR_DESC(exp_sign_desc, "exp_sign", 1u << 0, 0),  // max
};

const Descriptor& OptimizerDescriptor(int id) { return kOptimizerTable[id]; }
const Descriptor& RuleDescriptor(int id) { return kRuleTable[id]; }

std::string RunStepFloat32(int opt, int rule, const Job* jobs, size_t njobs) {
  return HWY_DYNAMIC_DISPATCH(RunStepImpl)(opt, rule, jobs, njobs);
}
bool OptimizerTakesCompact(int opt) { return HWY_DYNAMIC_DISPATCH(TakesCompactImpl)(opt); }
std::string RunStep(int opt, int rule, int dtype, const Job* jobs, size_t njobs) {
  switch (dtype) {
    case kStateFloat32:
      return RunStepFloat32(opt, rule, jobs, njobs);
    case kStateBfloat16:
      return RunStepBfloat16(opt, rule, jobs, njobs);
    case kStateQ8:
      return RunStepQ8(opt, rule, jobs, njobs);
  }
  return "unknown state dtype id " + std::to_string(dtype);
}
int64_t FirstNonFinite(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(FirstNonFiniteImpl)(x, n); }
int64_t Scan(const float* x, size_t n, uint64_t* digest) { return HWY_DYNAMIC_DISPATCH(ScanImpl)(x, n, digest); }
double SumSquares(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(SumSquaresImpl)(x, n); }
const char* TargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

}  // namespace mur
#endif
