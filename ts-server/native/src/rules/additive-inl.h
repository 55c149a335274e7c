// The additive rule: xi = eta d (with it every optimizer is torch.optim's).
#ifndef MUR_ADDITIVE_DESC_
#define MUR_ADDITIVE_DESC_
#include <cstddef>
namespace mur {
namespace additive_desc {
inline constexpr std::nullptr_t kHypers = nullptr;
inline constexpr std::nullptr_t kSlots = nullptr;
}  // namespace additive_desc
}  // namespace mur
#endif

#if defined(MUR_RULES_ADDITIVE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_RULES_ADDITIVE_INL_H_
#undef MUR_RULES_ADDITIVE_INL_H_
#else
#define MUR_RULES_ADDITIVE_INL_H_
#endif
#include "rules/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Additive {
  /** Evaluates tanh or exp per element (threads pay off on smaller tensors). */
  static constexpr bool kTranscendental = false;
  struct C {
    float eta;
  };
  static bool Prepare(const Job& j, double scale, C* c, std::string*) {
    c->eta = static_cast<float>(Lr(j) * scale);
    return true;
  }
  template <class D>
  static HWY_INLINE hn::Vec<D> Change(D d, const C& c, const Job&, hn::Vec<D>, hn::Vec<D> dir) {
    return hn::Mul(hn::Set(d, c.eta), dir);
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
