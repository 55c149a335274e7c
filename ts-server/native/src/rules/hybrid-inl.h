// The hybrid rule: xi = gamma eta_out |x| tanh(eta_in d) + (1 - gamma) eta d.
#ifndef MUR_HYBRID_DESC_
#define MUR_HYBRID_DESC_
#include <cstddef>
namespace mur {
namespace hybrid_desc {
inline constexpr const char* kHypers[] = {"lr_in", "lr_out", "gamma"};
inline constexpr std::nullptr_t kSlots = nullptr;
}  // namespace hybrid_desc
}  // namespace mur
#endif

#if defined(MUR_RULES_HYBRID_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_RULES_HYBRID_INL_H_
#undef MUR_RULES_HYBRID_INL_H_
#else
#define MUR_RULES_HYBRID_INL_H_
#endif
#include "rules/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Hybrid {
  /** Evaluates tanh or exp per element (threads pay off on smaller tensors). */
  static constexpr bool kTranscendental = true;
  struct C {
    float eta_in, gamma_eta_out, rest_eta;
  };
  static bool Prepare(const Job& j, double scale, C* c, std::string*) {
    const double gamma = RuleH(j, 2);
    c->eta_in = static_cast<float>(RuleH(j, 0));
    c->gamma_eta_out = static_cast<float>(gamma * RuleH(j, 1) * scale);
    c->rest_eta = static_cast<float>((1 - gamma) * Lr(j) * scale);
    return true;
  }
  template <class D>
  static HWY_INLINE hn::Vec<D> Change(D d, const C& c, const Job&, hn::Vec<D> x, hn::Vec<D> dir) {
    return hn::MulAdd(hn::Set(d, c.rest_eta), dir, MultiplicativeTerm(d, x, dir, c.eta_in, c.gamma_eta_out));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
