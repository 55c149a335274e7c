// LARS (optax.lars): the norm pass sums |theta|^2 and |u|^2 with
// u = g + wd theta; the element pass scales u by the trust ratio
// tc ||theta|| / (||u|| + eps) (1 when either norm is 0) and runs optax's
// trace on the lr-scaled step:
//   buf = mu buf + lr w;  step = nesterov ? lr w + mu buf : buf;  d = step / lr (0 at lr = 0)
#ifndef MUR_LARS_DESC_
#define MUR_LARS_DESC_
namespace mur {
namespace lars_desc {
inline constexpr const char* kHypers[] = {"lr", "weight_decay", "trust_coefficient", "eps", "momentum", "nesterov"};
inline constexpr const char* kSlots[] = {"momentum_buffer"};
}  // namespace lars_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_LARS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_LARS_INL_H_
#undef MUR_OPTIMIZERS_LARS_INL_H_
#else
#define MUR_OPTIMIZERS_LARS_INL_H_
#endif
#include "optimizers/norms-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Lars {
  static constexpr bool kNorms = true;
  struct C {
    float wd, mu, lr, inv_lr, ratio;
    double coefficient, eps;
    bool nesterov;
  };
  static bool Prepare(const Job& j, C* c, Factors*, std::string* err) {
    c->wd = static_cast<float>(OptH(j, 1));
    c->coefficient = OptH(j, 2);
    c->eps = OptH(j, 3);
    c->mu = static_cast<float>(OptH(j, 4));
    c->nesterov = OptH(j, 5) != 0;
    c->lr = static_cast<float>(j.h[1]);
    c->inv_lr = j.h[1] > 0 ? static_cast<float>(1 / j.h[1]) : 0.0f;
    c->ratio = 1;
    return Need(j, 0, "momentum_buffer", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE void Reduce(D d, const C& c, const J&, size_t, hn::Vec<D> g, hn::Vec<D> theta, hn::Vec<D>* a,
                                hn::Vec<D>* b) {
    const auto u = CoupledDecay(d, g, theta, c.wd);
    *a = hn::MulAdd(theta, theta, *a);
    *b = hn::MulAdd(u, u, *b);
  }
  static void Finish(C* c, double theta_sq, double u_sq) {
    c->ratio = TrustRatio(theta_sq, u_sq, c->coefficient, c->eps);
  }

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    const auto lw = hn::Mul(hn::Mul(CoupledDecay(d, g, theta, c.wd), hn::Set(d, c.ratio)), hn::Set(d, c.lr));
    const auto mu = hn::Set(d, c.mu);
    const auto buf = hn::MulAdd(mu, LoadSlot(d, j, 0, i), lw);
    StoreSlot(d, buf, j, 0, i);
    return hn::Mul(c.nesterov ? hn::MulAdd(mu, buf, lw) : buf, hn::Set(d, c.inv_lr));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
