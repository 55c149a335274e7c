// Rprop (torch.optim.Rprop): a step size per element (slot step_size, first
// value lr), grown by eta+ while the gradient keeps its sign, shrunk by eta-
// after a flip, kept in [step_sizes.0, step_sizes.1]:
//   s = sign(g prev);  step_size = clamp(step_size * (s > 0 ? eta+ : s < 0 ? eta- : 1))
//   g' = s < 0 ? 0 : g  (stored as prev);  d = sign(g') step_size / lr  (0 at lr = 0)
// so the additive rule subtracts sign(g') step_size, torch's step.
#ifndef MUR_RPROP_DESC_
#define MUR_RPROP_DESC_
namespace mur {
namespace rprop_desc {
inline constexpr const char* kHypers[] = {"lr", "etas.0", "etas.1", "step_sizes.0", "step_sizes.1"};
inline constexpr const char* kSlots[] = {"prev", "step_size"};
}  // namespace rprop_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_RPROP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_RPROP_INL_H_
#undef MUR_OPTIMIZERS_RPROP_INL_H_
#else
#define MUR_OPTIMIZERS_RPROP_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Rprop {
  struct C {
    float eta_minus, eta_plus, lo, hi, inv_lr;
  };
  static bool Prepare(const Job& j, C* c, Factors*, std::string* err) {
    c->eta_minus = static_cast<float>(OptH(j, 1));
    c->eta_plus = static_cast<float>(OptH(j, 2));
    c->lo = static_cast<float>(OptH(j, 3));
    c->hi = static_cast<float>(OptH(j, 4));
    c->inv_lr = j.h[1] > 0 ? static_cast<float>(1 / j.h[1]) : 0.0f;
    return Need(j, 0, "prev", err) && Need(j, 1, "step_size", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D>) {
    const auto zero = hn::Zero(d);
    const auto s = hn::Mul(g, LoadSlot(d, j, 0, i));
    const auto flipped = hn::Lt(s, zero);
    const auto factor = hn::IfThenElse(hn::Gt(s, zero), hn::Set(d, c.eta_plus),
                                       hn::IfThenElse(flipped, hn::Set(d, c.eta_minus), hn::Set(d, 1.0f)));
    const auto step = hn::Min(hn::Max(hn::Mul(LoadSlot(d, j, 1, i), factor), hn::Set(d, c.lo)), hn::Set(d, c.hi));
    const auto kept = hn::IfThenZeroElse(flipped, g);
    StoreSlot(d, kept, j, 0, i);
    StoreSlot(d, step, j, 1, i);
    return hn::Mul(hn::Mul(Sign(d, kept), step), hn::Set(d, c.inv_lr));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
