// Element helpers both optimizers and rules use (per SIMD target).
#if defined(MUR_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_SIMD_INL_H_
#undef MUR_SIMD_INL_H_
#else
#define MUR_SIMD_INL_H_
#endif
#include "hwy/highway.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/** -1, 0 or +1 per lane (0 stays 0, as Math.sign and torch.sign). */
template <class D>
HWY_INLINE hn::Vec<D> Sign(D d, hn::Vec<D> x) {
  const auto zero = hn::Zero(d);
  const auto one = hn::Set(d, 1.0f);
  return hn::Sub(hn::IfThenElseZero(hn::Gt(x, zero), one), hn::IfThenElseZero(hn::Lt(x, zero), one));
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
