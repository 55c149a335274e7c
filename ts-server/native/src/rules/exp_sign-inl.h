// Madam's exp-sign rule (Bernstein et al. 2020):
//   next = x exp(-eta sign(x) clamp(d, -g_bound, g_bound)), clamped to [-B, B]
//   xi = x - next.  B = p_scale rms(theta_0) is the one-element rule slot "max",
//   filled by the engine binding when the slot is created.
#ifndef MUR_EXP_SIGN_DESC_
#define MUR_EXP_SIGN_DESC_
namespace mur {
namespace exp_sign_desc {
inline constexpr const char* kHypers[] = {"g_bound", "p_scale"};
inline constexpr const char* kSlots[] = {"max"};
}  // namespace exp_sign_desc
}  // namespace mur
#endif

#if defined(MUR_RULES_EXP_SIGN_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_RULES_EXP_SIGN_INL_H_
#undef MUR_RULES_EXP_SIGN_INL_H_
#else
#define MUR_RULES_EXP_SIGN_INL_H_
#endif
#include <cmath>

#include "rules/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct ExpSign {
  /** Evaluates tanh or exp per element (threads pay off on smaller tensors). */
  static constexpr bool kTranscendental = true;
  struct C {
    float eta, g_bound, bound;
    bool bounded;  // |eta| g_bound <= kExpBoundedMax: exp's argument needs no subnormal or overflow handling
  };
  static bool Prepare(const Job& j, double scale, C* c, std::string* err) {
    if (j.rule_slot[0] == nullptr) {
      *err = "rule slot 'max' is missing";
      return false;
    }
    c->eta = static_cast<float>(Lr(j) * scale);
    c->g_bound = static_cast<float>(RuleH(j, 0));
    c->bound = j.rule_slot[0][0];
    c->bounded = std::fabs(c->eta) * std::fabs(c->g_bound) <= kExpBoundedMax;  // NaN: false
    return true;
  }
  template <class D>
  static HWY_INLINE hn::Vec<D> Change(D d, const C& c, const Job&, hn::Vec<D> x, hn::Vec<D> dir) {
    const auto gb = hn::Set(d, c.g_bound);
    const auto clamped_d = hn::Min(hn::Max(dir, hn::Neg(gb)), gb);
    // -eta sign(x) clamp(d): sign(x) in {-1, 0, 1}; for x = 0 the product x * exp(...) is 0 anyway.
    const auto arg = hn::Mul(hn::Set(d, -c.eta), hn::Mul(Sign(d, x), clamped_d));
    const auto e = c.bounded ? FastExpBounded(d, arg) : FastExp(d, arg);  // the same bits where both apply
    const auto b = hn::Set(d, c.bound);
    const auto next = hn::Min(hn::Max(hn::Mul(x, e), hn::Neg(b)), b);
    return hn::Sub(x, next);
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
