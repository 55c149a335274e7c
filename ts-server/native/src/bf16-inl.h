// bfloat16 state (state_dtype "bfloat16"): a slot element is stored as the
// high 16 bits of its float32 and computed in float32. A load widens
// (bits << 16, exact); a store narrows with stochastic rounding:
//
//   stored = (bits(x) + r) >> 16,   r uniform in [0, 2^16)
//
// so x rounds up to the next bfloat16 (in magnitude) with probability
// (bits(x) mod 2^16) / 2^16: E[stored] = x exactly for every finite x below
// the largest bfloat16 (unbiased), and the variance is u^2 p (1 - p) <= u^2 / 4,
// u the bfloat16 spacing at x (2^(e-7) for |x| in [2^e, 2^(e+1))): a relative
// standard deviation of at most 2^-8. The derivation is in docs/engine.md.
//
// r comes from a counter: a store's rounding depends only on (seed,
// parameter, step, slot, element index), never on the thread that runs it,
// the task split or the alignment:
//
//   key   = sm(sm(sm(sm(seed) ^ param) ^ t) ^ (slot + 256 * (i >> 32)))    (64 bits)
//   r(i)  = (K (lo32(i) + hi32(key)) mod 2^32) >> 16,   K = 0x9E3779B1
//
// sm is SplitMix64's step (z + 0x9E3779B97F4A7C15, then its finaliser). Per
// store, the key is the randomness: hi32(key) uniform makes K (i + o) uniform
// mod 2^32 (K is odd), so r(i) is uniform and E[stored] = x holds exactly for
// every element. Within one store the r(i) of successive elements form a Weyl
// sequence (steps of K / 2^16, the golden ratio): equidistributed, so the
// rounding errors of a tensor cancel in sums at least as well as independent
// ones would. One multiply per vector: a full per-element hash (MurmurHash3's
// fmix32, two multiplies and three xor-shifts) made the bfloat16 Adam kernel
// compute-bound at 2.1x the float32 kernel's time in cache (1M elements, one
// thread). The float64 references (ts-server/test/reference/bf16.ts, python
// mur.reference) compute the same bits. Narrowing without a stream (a
// checkpoint imported into a bfloat16 session, a slot's first fill) rounds to
// nearest even instead (host code: engine/bf16.ts).
#ifndef MUR_BF16_KEY_
#define MUR_BF16_KEY_
#include <cstdint>
namespace mur {
/** SplitMix64's step: a bijection of 64-bit words with full avalanche. */
inline uint64_t SplitMix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
/** The stream of one tensor's step: seed and parameter (Job::stream), step t. */
inline uint64_t RoundKey(uint64_t stream, double t) {
  const uint32_t seed = static_cast<uint32_t>(stream >> 32), param = static_cast<uint32_t>(stream);
  return SplitMix(SplitMix(SplitMix(seed) ^ param) ^ static_cast<uint64_t>(t));
}
/** The 32-bit offset r's hash adds for slot k and elements [hi * 2^32, (hi + 1) * 2^32). */
inline uint32_t SlotOffset(uint64_t key, int slot, uint64_t hi) {
  return static_cast<uint32_t>(SplitMix(key ^ (static_cast<uint64_t>(slot) + 256 * hi)) >> 32);
}
}  // namespace mur
#endif

#if defined(MUR_BF16_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_BF16_INL_H_
#undef MUR_BF16_INL_H_
#else
#define MUR_BF16_INL_H_
#endif
#include "hwy/highway.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/** bfloat16 bits at p[0..Lanes(d)) as float32 lanes (exact). */
template <class D>
HWY_INLINE hn::Vec<D> WidenBf16(D d, const uint16_t* p) {
  const hn::RebindToUnsigned<D> du;
  const hn::Rebind<uint16_t, D> d16;
  return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, p))));
}

/** K of r(i): odd, the 32-bit golden ratio. */
constexpr uint32_t kWeyl = 0x9E3779B1u;

/** v narrowed to bfloat16 into p[0..Lanes(d)), stochastically: lane q of element i = i0 + q uses r(i). */
template <class D>
HWY_INLINE void NarrowBf16(D d, hn::Vec<D> v, uint16_t* p, uint32_t offset, size_t i0) {
  const hn::RebindToUnsigned<D> du;
  const hn::Rebind<uint16_t, D> d16;
  // K (i0 + q + o) = K (i0 + o) + K q (mod 2^32): one broadcast and one add per vector (K q is a constant).
  const auto steps = hn::Mul(hn::Iota(du, 0), hn::Set(du, kWeyl));
  const auto r = hn::ShiftRight<16>(hn::Add(hn::Set(du, kWeyl * (static_cast<uint32_t>(i0) + offset)), steps));
  const auto bits = hn::ShiftRight<16>(hn::Add(hn::BitCast(du, v), r));
  hn::StoreU(hn::TruncateTo(d16, bits), d16, p);
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
