// The multiplicative rule (Kirtas et al. 2024): xi = eta_out |x| tanh(eta_in d).
#ifndef MUR_MULTIPLICATIVE_DESC_
#define MUR_MULTIPLICATIVE_DESC_
#include <cstddef>
namespace mur {
namespace multiplicative_desc {
inline constexpr const char* kHypers[] = {"lr_in", "lr_out"};
inline constexpr std::nullptr_t kSlots = nullptr;
}  // namespace multiplicative_desc
}  // namespace mur
#endif

#if defined(MUR_RULES_MULTIPLICATIVE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_RULES_MULTIPLICATIVE_INL_H_
#undef MUR_RULES_MULTIPLICATIVE_INL_H_
#else
#define MUR_RULES_MULTIPLICATIVE_INL_H_
#endif
#include "rules/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Multiplicative {
  /** Evaluates tanh or exp per element (threads pay off on smaller tensors). */
  static constexpr bool kTranscendental = true;
  struct C {
    float eta_in, eta_out;
  };
  static bool Prepare(const Job& j, double scale, C* c, std::string*) {
    c->eta_in = static_cast<float>(RuleH(j, 0));
    c->eta_out = static_cast<float>(RuleH(j, 1) * scale);
    return true;
  }
  template <class D>
  static HWY_INLINE hn::Vec<D> Change(D d, const C& c, const Job&, hn::Vec<D> x, hn::Vec<D> dir) {
    return MultiplicativeTerm(d, x, dir, c.eta_in, c.eta_out);
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
