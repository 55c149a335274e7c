// Adamax (torch.optim.Adamax):
//   g' = g + wd theta;  m = b1 m + (1-b1) g';  u = max(b2 u, |g'| + eps)
//   d = m / u;  scale = 1 / bc1
#ifndef MUR_ADAMAX_DESC_
#define MUR_ADAMAX_DESC_
namespace mur {
namespace adamax_desc {
inline constexpr const char* kHypers[] = {"lr", "betas.0", "betas.1", "eps", "weight_decay"};
inline constexpr const char* kSlots[] = {"exp_avg", "exp_inf"};
}  // namespace adamax_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_ADAMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_ADAMAX_INL_H_
#undef MUR_OPTIMIZERS_ADAMAX_INL_H_
#else
#define MUR_OPTIMIZERS_ADAMAX_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Adamax {
  struct C {
    AdamHypers a;
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    c->a = AdamHypers::From(j);
    f->scale = 1 / BiasCorrection(OptH(j, 1), StepT(j));
    return Need(j, 0, "exp_avg", err) && Need(j, 1, "exp_inf", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.a.wd);
    const auto m = Ema(d, LoadSlot(d, j, 0, i), g, c.a.b1, c.a.omb1);
    const auto u = hn::Max(hn::Mul(hn::Set(d, c.a.b2), LoadSlot(d, j, 1, i)), hn::Add(hn::Abs(g), hn::Set(d, c.a.eps)));
    StoreSlot(d, m, j, 0, i);
    StoreSlot(d, u, j, 1, i);
    return hn::Div(m, u);
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
