// exp and tanh for the rule kernels (per SIMD target), written for speed
// inside a fused pass: no tables, no branches, one division (tanh) or none
// (exp). The vector body and the one-lane tail call the same code, so every
// element gets the same bits whatever the alignment or thread count.
//
// exp reduces y = k ln2 + r with k = round(y / ln2), |r| <= ln2/2 (ln2 split
// Cody-Waite style into a 9-bit head, exact in k * head for |k| < 2^15, and a
// tail), and evaluates expm1(r) by its Taylor series to r^7 / 7!: the first
// term left out, r^8 / 8!, is below 0.35 ulp of expm1(r) on that interval.
//   exp(y)  = 2^k (1 + expm1(r)), 2^k applied in two halves so that results
//             down to the smallest subnormal are formed; y is clamped to
//             [-104, 89], outside which exp rounds to 0 or overflows to inf.
// tanh is a rational function, odd by construction: tanh(x) = x P(x^2) / Q(x^2)
//   with P of degree 6 and Q of degree 3 (tanh-coefficients.h, fitted by
//   scripts/fit-tanh.py to 7e-9 relative), x clamped to [-9, 9] (1 - tanh(9)
//   is half a float32 ulp) and the quotient to [-1, 1]: 10 FMAs and one
//   division, half the time of 2^k expm1(-2|x|) / (2 + ...), which it replaced.
//   Its error is the float32 evaluation's (the Horner sums and the quotient
//   near 1), not the fit's.
// NaN propagates (the clamps keep a NaN operand: x86 min/max return their
// second operand when one is NaN, other targets return NaN).
//
// Error bounds, checked against float64 over every 256th float32 bit pattern
// and the special values by test/native-math.test.ts: exp within 2 ulp,
// tanh within 6 ulp (of the float32 nearest the exact value; over every
// other bit pattern 5.54 near |x| = 7.3, 3.7 for |x| < 2), subnormal results
// within one unit of the smallest subnormal.
#if defined(MUR_TRANSCENDENTAL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_TRANSCENDENTAL_INL_H_
#undef MUR_TRANSCENDENTAL_INL_H_
#else
#define MUR_TRANSCENDENTAL_INL_H_
#endif
#include "hwy/highway.h"
#include "tanh-coefficients.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/** expm1(r) for |r| <= ln2/2 (a little more is fine): r + r^2 (1/2! + r/3! + ... + r^5/7!). */
template <class D>
HWY_INLINE hn::Vec<D> Expm1Reduced(D d, hn::Vec<D> r) {
  auto p = hn::Set(d, 1.0f / 5040);
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 720));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 120));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 24));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 6));
  p = hn::MulAdd(p, r, hn::Set(d, 0.5f));
  return hn::MulAdd(hn::Mul(r, r), p, r);
}

/** y = k ln2 + r: returns r and sets *k (an integral float). */
template <class D>
HWY_INLINE hn::Vec<D> ReduceLn2(D d, hn::Vec<D> y, hn::Vec<D>* k) {
  *k = hn::Round(hn::Mul(y, hn::Set(d, 1.44269504088896341f)));
  const auto r = hn::NegMulAdd(*k, hn::Set(d, 0.693359375f), y);  // exact: 9-bit head
  return hn::NegMulAdd(*k, hn::Set(d, -2.12194440e-4f), r);       // ln2 - head
}

/** 2^k for an integral float k in [-126, 127]. */
template <class D>
HWY_INLINE hn::Vec<D> Pow2(D d, hn::Vec<D> k) {
  const hn::RebindToSigned<D> di;
  return hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, k), hn::Set(di, 127))));
}

template <class D>
HWY_INLINE hn::Vec<D> FastExp(D d, hn::Vec<D> y) {
  const auto yc = hn::Min(hn::Set(d, 89.0f), hn::Max(hn::Set(d, -104.0f), y));
  hn::Vec<D> k;
  const auto p = Expm1Reduced(d, ReduceLn2(d, yc, &k));
  // k in [-150, 129]: two factors 2^(k/2), each a normal float.
  const auto k1 = hn::Floor(hn::Mul(k, hn::Set(d, 0.5f)));
  const auto s1 = Pow2(d, k1), s2 = Pow2(d, hn::Sub(k, k1));
  return hn::Mul(hn::MulAdd(p, s1, s1), s2);
}

/**
 * exp(y) for |y| <= kExpBoundedMax: FastExp's bits there (its two halves of 2^k
 * multiply exactly while every partial result is normal, and 2^k with k in
 * [-124, 124] and 1 + expm1(r) in [0.7, 1.42] keep it so) in 17 operations
 * instead of 24. The exp-sign rule, whose argument a tensor's hyperparameters
 * bound, takes it when they bound it by kExpBoundedMax.
 */
inline constexpr float kExpBoundedMax = 86.0f;
template <class D>
HWY_INLINE hn::Vec<D> FastExpBounded(D d, hn::Vec<D> y) {
  hn::Vec<D> k;
  const auto p = Expm1Reduced(d, ReduceLn2(d, y, &k));
  const auto s = Pow2(d, k);
  return hn::MulAdd(p, s, s);
}

template <class D>
HWY_INLINE hn::Vec<D> FastTanh(D d, hn::Vec<D> x) {
  const auto c = hn::Set(d, kTanhClamp);
  const auto xc = hn::Min(c, hn::Max(hn::Neg(c), x));
  const auto s = hn::Mul(xc, xc);
  auto p = hn::Set(d, kTanhP[6]);
  for (int i = 5; i >= 0; --i) p = hn::MulAdd(p, s, hn::Set(d, kTanhP[i]));
  auto q = hn::Set(d, kTanhQ[3]);
  for (int i = 2; i >= 0; --i) q = hn::MulAdd(q, s, hn::Set(d, kTanhQ[i]));
  // Rounding carries x P / Q up to 2 ulp past 1 near the clamp (1.00000024 at 8.63):
  // |tanh| <= 1 bounds the rule's step.
  const auto one = hn::Set(d, 1.0f);
  return hn::Min(one, hn::Max(hn::Neg(one), hn::Div(hn::Mul(xc, p), q)));
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
