// Pieces several optimizers share (per SIMD target): loads and stores of a
// slot, coupled weight decay, the exponential moving average, and the
// host-side bias corrections. Included by kernels.cc once per target.
#if defined(MUR_OPTIMIZERS_COMMON_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_COMMON_INL_H_
#undef MUR_OPTIMIZERS_COMMON_INL_H_
#else
#define MUR_OPTIMIZERS_COMMON_INL_H_
#endif

#include <cmath>
#include <string>
#include <type_traits>

#include "bf16-inl.h"
#include "hwy/highway.h"
#include "kernel.h"
#include "q8-inl.h"
#include "simd-inl.h"
#include "tasks.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/** What an optimizer hands the rule besides d (docs/update-rules.md, section 1). */
struct Factors {
  double scale = 1;  // multiplies eta and eta_out, never eta_in
  double decay = 1;  // decoupled decay: theta *= decay before the rule
};

/** The i-th hyperparameter of the optimizer's table. */
inline double OptH(const Job& j, int i) { return j.h[kOptHyper + i]; }
/** This parameter's step number, from 1. */
inline double StepT(const Job& j) { return j.h[0]; }

/** 1 - beta^t, the bias correction of a moment started at zero. */
inline double BiasCorrection(double beta, double t) { return 1.0 - std::pow(beta, t); }

/** Refuses a job whose slot k is missing (the binding laid it out wrongly). */
inline bool Need(const Job& j, int k, const char* what, std::string* err) {
  if (j.slot[k] != nullptr || j.slot16[k] != nullptr || j.slot8[k] != nullptr) return true;
  *err = std::string("state slot '") + what + "' is missing";
  return false;
}

/**
 * A job as its element loop sees it, typed by how its full-size slots are
 * stored: S = float (state_dtype "float32") or Bf16 ("bfloat16", bf16-inl.h).
 * Every per-element function of an optimizer takes `const J& j` and reaches
 * its slots only through LoadSlot and StoreSlot, so one source compiles to
 * both kernels; one-element slots (ASGD's eta and mu, NAdam's mu_product)
 * stay float32 in j.slot whatever the dtype. `begin` is the first element of
 * the task (the rounding stream depends on its high 32 bits).
 */
struct Bf16 {};
template <class S>
struct SlotJob;
template <>
struct SlotJob<float> : Job {
  SlotJob(const Job& j, size_t) : Job(j) {}
};
template <>
struct SlotJob<Bf16> : Job {
  uint32_t offset[kMaxOptSlots];
  SlotJob(const Job& j, size_t begin) : Job(j) {
    const uint64_t key = RoundKey(j.stream, StepT(j));
    for (int k = 0; k < kMaxOptSlots; ++k) offset[k] = SlotOffset(key, k, static_cast<uint64_t>(begin) >> 32);
  }
};

/**
 * q8 state (state_dtype "q8", q8map.h) has no SlotJob of its own: Q8Blocks
 * hands each block of a task to the float32 kernel as a Job of its own, its
 * full-size slots dequantised into float32 scratch on the stack (3 KiB) and
 * theta and grad rebased to the block, then quantises the scratch back. A
 * task starts on a block boundary (tasks are kChunk elements, a multiple of
 * kQ8Block), so every block, its absmax and its codes are the same whatever
 * the thread count. f(block, len) runs elements [0, len) of the block.
 */
struct Q8 {};
static_assert(kChunk % kQ8Block == 0, "q8: every task must start on a block boundary");

/**
 * An optimizer's slots kept float32 whatever the state dtype (bit k: slot k;
 * Descriptor::wide_slots must agree): `kWideSlots`. Its kernel reads them as
 * j.slot[k] + i; Q8Blocks rebases them with theta.
 */
template <class Opt, class = void>
struct WideSlots : std::integral_constant<uint32_t, 0> {};
template <class Opt>
struct WideSlots<Opt, std::void_t<decltype(Opt::kWideSlots)>> : std::integral_constant<uint32_t, Opt::kWideSlots> {};

/** Optimizers all of whose slots are wide (`kFloat32State = true`: Adafactor): a compact step is the float32 one. */
template <class Opt, class = void>
struct KeepsFloat32 : std::false_type {};
template <class Opt>
struct KeepsFloat32<Opt, std::void_t<decltype(Opt::kFloat32State)>> : std::bool_constant<Opt::kFloat32State> {};

/**
 * Optimizers whose element pass reads no full-size slot (`kSlotsBeforeElements = true`: Muon, whose
 * matrix pass reads and writes its momentum whole, ReadWholeSlot / WriteWholeSlot): a q8 element pass
 * then runs the float32 loop over the task, with no block dequantised.
 */
template <class Opt, class = void>
struct SlotsBeforeElements : std::false_type {};
template <class Opt>
struct SlotsBeforeElements<Opt, std::void_t<decltype(Opt::kSlotsBeforeElements)>>
    : std::bool_constant<Opt::kSlotsBeforeElements> {};

/** Rebases the wide full-size slots (bits of `wide`) of a block starting at element b. */
HWY_INLINE void RebaseWide(const Job& job, uint32_t wide, size_t b, Job* block) {
  for (int k = 0; k < kMaxOptSlots; ++k)
    if (((wide >> k) & 1u) != 0 && job.slot[k] != nullptr) block->slot[k] = job.slot[k] + b;
}

template <uint32_t kWide = 0, class F>
HWY_INLINE void Q8Blocks(const Job& job, size_t begin, size_t end, F&& f) {
  HWY_ALIGN float scratch[kMaxOptSlots][kQ8Block];
  const Q8Map* maps[kMaxOptSlots];
  for (int k = 0; k < kMaxOptSlots; ++k) maps[k] = &Q8MapOf(((job.q8_unsigned >> k) & 1u) != 0);
  for (size_t b = begin; b < end; b += kQ8Block) {
    const size_t len = b + kQ8Block < end ? kQ8Block : end - b, blk = b / kQ8Block;
    Job block = job;
    block.theta = job.theta + b;
    block.grad = job.grad + b;
    block.n = len;
    RebaseWide(job, kWide, b, &block);
    for (int k = 0; k < kMaxOptSlots; ++k) {
      if (job.slot8[k] == nullptr) continue;
      Q8Dequantise(job.slot8[k] + b, job.absmax[k][blk], *maps[k], len, scratch[k]);
      block.slot[k] = scratch[k];
      block.slot8[k] = nullptr;
    }
    f(static_cast<const Job&>(block), len);
    for (int k = 0; k < kMaxOptSlots; ++k) {
      if (job.slot8[k] != nullptr) job.absmax[k][blk] = Q8Quantise(scratch[k], len, *maps[k], job.slot8[k] + b);
    }
  }
}

/**
 * Full-size slot k of a whole job widened into out[0..n) (float32, bfloat16 or
 * q8 storage, whichever pointer the job has): for kernels that read a slot
 * before their element pass (Muon's momentum).
 */
HWY_INLINE void ReadWholeSlot(const Job& j, int k, float* out) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  if (j.slot16[k] != nullptr) {
    const size_t lanes = hn::Lanes(d);
    size_t i = 0;
    for (; i + lanes <= j.n; i += lanes) hn::StoreU(WidenBf16(d, j.slot16[k] + i), d, out + i);
    for (; i < j.n; ++i) hn::StoreU(WidenBf16(d1, j.slot16[k] + i), d1, out + i);
  } else if (j.slot8[k] != nullptr) {
    const Q8Map& m = Q8MapOf(((j.q8_unsigned >> k) & 1u) != 0);
    for (size_t b = 0; b < j.n; b += kQ8Block)
      Q8Dequantise(j.slot8[k] + b, j.absmax[k][b / kQ8Block], m, b + kQ8Block < j.n ? kQ8Block : j.n - b, out + b);
  } else {
    for (size_t i = 0; i < j.n; ++i) out[i] = j.slot[k][i];
  }
}

/**
 * in[0..n) stored into full-size slot k of a whole job: float32 as is,
 * bfloat16 rounded stochastically with the keys a dense element pass uses
 * (bf16-inl.h: the same bits as a task of elements [b, b + kChunk) storing
 * them), q8 block by block (the same blocks as Q8Blocks).
 */
HWY_INLINE void WriteWholeSlot(const Job& j, int k, const float* in) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  if (j.slot16[k] != nullptr) {
    const uint64_t key = RoundKey(j.stream, StepT(j));
    const size_t lanes = hn::Lanes(d);
    for (size_t b = 0; b < j.n; b += kChunk) {
      const uint32_t offset = SlotOffset(key, k, static_cast<uint64_t>(b) >> 32);
      const size_t end = b + kChunk < j.n ? b + kChunk : j.n;
      size_t i = b;
      for (; i + lanes <= end; i += lanes) NarrowBf16(d, hn::LoadU(d, in + i), j.slot16[k] + i, offset, i);
      for (; i < end; ++i) NarrowBf16(d1, hn::LoadU(d1, in + i), j.slot16[k] + i, offset, i);
    }
  } else if (j.slot8[k] != nullptr) {
    const Q8Map& m = Q8MapOf(((j.q8_unsigned >> k) & 1u) != 0);
    for (size_t b = 0; b < j.n; b += kQ8Block) {
      const size_t len = b + kQ8Block < j.n ? kQ8Block : j.n - b;
      j.absmax[k][b / kQ8Block] = Q8Quantise(in + b, len, m, j.slot8[k] + b);
    }
  } else {
    for (size_t i = 0; i < j.n; ++i) j.slot[k][i] = in[i];
  }
}

/**
 * Float32 slots through a plain Job: for kernels whose functions take `const Job&`
 * (Adafactor: its factored row and column slots are not per element), which
 * keep every slot float32 (kFloat32State) and so only ever run the float32 kernel.
 */
template <class D>
HWY_INLINE hn::Vec<D> LoadSlot(D d, const Job& j, int k, size_t i) {
  return hn::LoadU(d, j.slot[k] + i);
}
template <class D>
HWY_INLINE void StoreSlot(D d, hn::Vec<D> v, const Job& j, int k, size_t i) {
  hn::StoreU(v, d, j.slot[k] + i);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadSlot(D d, const SlotJob<float>& j, int k, size_t i) {
  return hn::LoadU(d, j.slot[k] + i);
}
template <class D>
HWY_INLINE void StoreSlot(D d, hn::Vec<D> v, const SlotJob<float>& j, int k, size_t i) {
  hn::StoreU(v, d, j.slot[k] + i);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadSlot(D d, const SlotJob<Bf16>& j, int k, size_t i) {
  return WidenBf16(d, j.slot16[k] + i);
}
template <class D>
HWY_INLINE void StoreSlot(D d, hn::Vec<D> v, const SlotJob<Bf16>& j, int k, size_t i) {
  NarrowBf16(d, v, j.slot16[k] + i, j.offset[k], i);
}

/**
 * Whether an optimizer's kernel takes compact state (bfloat16, q8): true
 * unless it declares `kCompact = false` (one that reads a full-size slot
 * other than through LoadSlot/StoreSlot, or other than at element i);
 * RunStep refuses such a step.
 */
template <class Opt, class = void>
struct TakesCompact : std::true_type {};
template <class Opt>
struct TakesCompact<Opt, std::void_t<decltype(Opt::kCompact)>> : std::bool_constant<Opt::kCompact> {};

/** g + wd * theta (torch's coupled L2 decay); wd = 0 leaves g unchanged. */
template <class D>
HWY_INLINE hn::Vec<D> CoupledDecay(D d, hn::Vec<D> g, hn::Vec<D> theta, float wd) {
  return hn::MulAdd(hn::Set(d, wd), theta, g);
}

/** beta * prev + (1 - beta) * x. */
template <class D>
HWY_INLINE hn::Vec<D> Ema(D d, hn::Vec<D> prev, hn::Vec<D> x, float beta, float one_minus_beta) {
  return hn::MulAdd(hn::Set(d, beta), prev, hn::Mul(hn::Set(d, one_minus_beta), x));
}

/**
 * What Adam, AdamW, Adamax, NAdam and RAdam share, at the same places of
 * their tables (lr, betas.0, betas.1, eps, weight_decay, ...).
 */
struct AdamHypers {
  float b1, omb1, b2, omb2, eps, wd;
  static AdamHypers From(const Job& j) {
    const double b1 = OptH(j, 1), b2 = OptH(j, 2);
    return {static_cast<float>(b1),     static_cast<float>(1 - b1),     static_cast<float>(b2),
            static_cast<float>(1 - b2), static_cast<float>(OptH(j, 3)), static_cast<float>(OptH(j, 4))};
  }
};

/**
 * torch's decoupled_weight_decay (NAdam, RAdam; the flag at table index
 * `at`): when on, the gradient takes no L2 term and theta is decayed by
 * 1 - lr * weight_decay before the rule instead.
 */
inline void DecoupleWeightDecay(const Job& j, int at, AdamHypers* a, Factors* f) {
  if (OptH(j, at) == 0) return;
  f->decay = 1 - j.h[1] * OptH(j, 4);
  a->wd = 0;
}

/**
 * The hook of optimizers whose state follows the new parameter (ASGD's
 * average): an optimizer with `kAfter = true` has After(d, c, j, i, theta_t),
 * which the fused loop calls once theta_t is known; for the others this is
 * nothing.
 */
template <class Opt, class = void>
struct WantsAfter : std::false_type {};
template <class Opt>
struct WantsAfter<Opt, std::void_t<decltype(Opt::kAfter)>> : std::bool_constant<Opt::kAfter> {};

template <class Opt, class D, class J>
HWY_INLINE void AfterStep(D d, const typename Opt::C& c, const J& j, size_t i, hn::Vec<D> theta) {
  if constexpr (WantsAfter<Opt>::value) Opt::After(d, c, j, i, theta);
}

/**
 * Optimizers whose rule acts on a slot instead of theta (Schedule-Free's z):
 * `kRuleSlot` names the slot, and Combine(d, c, j, i, theta, z, z_new) stores
 * z_new and returns the new theta.
 */
template <class Opt, class = void>
struct RuleOnSlot : std::false_type {};
template <class Opt>
struct RuleOnSlot<Opt, std::void_t<decltype(Opt::kRuleSlot)>> : std::true_type {};

/** Adam's moments (Adam, AdamW, NAdam, RAdam): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, stored in slots 0 and 1. */
template <class D, class J>
HWY_INLINE void AdamMoments(D d, const J& j, size_t i, hn::Vec<D> g, const AdamHypers& a, hn::Vec<D>* m,
                            hn::Vec<D>* v) {
  *m = Ema(d, LoadSlot(d, j, 0, i), g, a.b1, a.omb1);
  *v = Ema(d, LoadSlot(d, j, 1, i), hn::Mul(g, g), a.b2, a.omb2);
  StoreSlot(d, *m, j, 0, i);
  StoreSlot(d, *v, j, 1, i);
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
