// Adadelta (torch.optim.Adadelta):
//   g' = g + wd theta;  sq = rho sq + (1-rho) g'^2
//   d = sqrt(acc + eps) / sqrt(sq + eps) * g';  acc = rho acc + (1-rho) d^2
#ifndef MUR_ADADELTA_DESC_
#define MUR_ADADELTA_DESC_
namespace mur {
namespace adadelta_desc {
inline constexpr const char* kHypers[] = {"lr", "rho", "eps", "weight_decay"};
inline constexpr const char* kSlots[] = {"square_avg", "acc_delta"};
}  // namespace adadelta_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_ADADELTA_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_ADADELTA_INL_H_
#undef MUR_OPTIMIZERS_ADADELTA_INL_H_
#else
#define MUR_OPTIMIZERS_ADADELTA_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Adadelta {
  struct C {
    float rho, omr, eps, wd;
  };
  static bool Prepare(const Job& j, C* c, Factors*, std::string* err) {
    c->rho = static_cast<float>(OptH(j, 1));
    c->omr = static_cast<float>(1 - OptH(j, 1));
    c->eps = static_cast<float>(OptH(j, 2));
    c->wd = static_cast<float>(OptH(j, 3));
    return Need(j, 0, "square_avg", err) && Need(j, 1, "acc_delta", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.wd);
    const auto eps = hn::Set(d, c.eps);
    const auto sq = Ema(d, LoadSlot(d, j, 0, i), hn::Mul(g, g), c.rho, c.omr);
    const auto acc = LoadSlot(d, j, 1, i);
    const auto dir = hn::Mul(hn::Div(hn::Sqrt(hn::Add(acc, eps)), hn::Sqrt(hn::Add(sq, eps))), g);
    StoreSlot(d, sq, j, 0, i);
    StoreSlot(d, Ema(d, acc, hn::Mul(dir, dir), c.rho, c.omr), j, 1, i);
    return dir;
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
