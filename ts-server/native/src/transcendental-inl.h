// exp and tanh for the rule kernels (per SIMD target), written for speed
// inside a fused pass: no tables, no branches, one division (tanh) or none
// (exp). The vector body and the one-lane tail call the same code, so every
// element gets the same bits whatever the alignment or thread count.
//
// Both reduce y = k ln2 + r with k = round(y / ln2), |r| <= ln2/2 (ln2 split
// Cody-Waite style into a 9-bit head, exact in k * head for |k| < 2^15, and a
// tail), and evaluate expm1(r) by its Taylor series to r^7 / 7!: the first
// term left out, r^8 / 8!, is below 0.35 ulp of expm1(r) on that interval.
//   exp(y)  = 2^k (1 + expm1(r)), 2^k applied in two halves so that results
//             down to the smallest subnormal are formed; y is clamped to
//             [-104, 89], outside which exp rounds to 0 or overflows to inf.
//   tanh(x) = sign(x) (-e) / (2 + e), e = expm1(-2|x|) = 2^k expm1(r) + 2^k - 1;
//             |x| is clamped to 9, where tanh rounds to 1 in float32.
// NaN propagates (the clamps keep a NaN operand: x86 min/max return their
// second operand when one is NaN, other targets return NaN).
//
// Error bounds, checked against float64 over every 256th float32 bit pattern
// and the special values by test/native-math.test.ts: exp within 2 ulp,
// tanh within 3 ulp (of the float32 nearest the exact value), subnormal
// results within one unit of the smallest subnormal.
#if defined(MUR_TRANSCENDENTAL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_TRANSCENDENTAL_INL_H_
#undef MUR_TRANSCENDENTAL_INL_H_
#else
#define MUR_TRANSCENDENTAL_INL_H_
#endif
#include "hwy/highway.h"
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

template <class D>
HWY_INLINE hn::Vec<D> FastTanh(D d, hn::Vec<D> x) {
  const auto y = hn::Mul(hn::Min(hn::Set(d, 9.0f), hn::Abs(x)), hn::Set(d, -2.0f));
  hn::Vec<D> k;
  const auto p = Expm1Reduced(d, ReduceLn2(d, y, &k));  // k in [-26, 0]
  const auto s = Pow2(d, k);
  const auto e = hn::MulAdd(p, s, hn::Sub(s, hn::Set(d, 1.0f)));
  return hn::CopySignToAbs(hn::Div(hn::Neg(e), hn::Add(e, hn::Set(d, 2.0f))), x);
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
