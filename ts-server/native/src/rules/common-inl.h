// What every rule shares (per SIMD target). A rule returns the change xi; the
// one subtraction theta = x - xi is in kernels.cc. Rates: eta = lr * scale,
// eta_out = lr_out * scale, eta_in never scaled (docs/update-rules.md).
#if defined(MUR_RULES_COMMON_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_RULES_COMMON_INL_H_
#undef MUR_RULES_COMMON_INL_H_
#else
#define MUR_RULES_COMMON_INL_H_
#endif

#include <string>

#include "hwy/highway.h"
#include "kernel.h"
#include "simd-inl.h"
#include "transcendental-inl.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/** The i-th hyperparameter of the rule's table. */
inline double RuleH(const Job& j, int i) { return j.h[kRuleHyper + i]; }
/** The additive learning rate of the optimizer's table. */
inline double Lr(const Job& j) { return j.h[1]; }

/** eta_out |x| tanh(eta_in d): the multiplicative term, shared by multiplicative and hybrid. */
template <class D>
HWY_INLINE hn::Vec<D> MultiplicativeTerm(D d, hn::Vec<D> x, hn::Vec<D> dir, float eta_in, float eta_out) {
  const auto t = FastTanh(d, hn::Mul(hn::Set(d, eta_in), dir));
  return hn::Mul(hn::Mul(hn::Abs(x), t), hn::Set(d, eta_out));
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
