// LAMB (optax.lamb): the norm pass updates Adam's moments and sums
// |theta|^2 and |u|^2 with u = (m / bc1) / (sqrt(v / bc2) + eps) + wd theta;
// the element pass reads the new moments and returns d = u ||theta|| / ||u||
// (1 instead when either norm is 0), scale 1.
#ifndef MUR_LAMB_DESC_
#define MUR_LAMB_DESC_
namespace mur {
namespace lamb_desc {
inline constexpr const char* kHypers[] = {"lr", "betas.0", "betas.1", "eps", "weight_decay"};
inline constexpr const char* kSlots[] = {"exp_avg", "exp_avg_sq"};
}  // namespace lamb_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_LAMB_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_LAMB_INL_H_
#undef MUR_OPTIMIZERS_LAMB_INL_H_
#else
#define MUR_OPTIMIZERS_LAMB_INL_H_
#endif
#include "optimizers/norms-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Lamb {
  static constexpr bool kNorms = true;
  struct C {
    AdamHypers a;
    float inv_bc1, inv_bc2, ratio;
  };
  static bool Prepare(const Job& j, C* c, Factors*, std::string* err) {
    const double t = StepT(j);
    c->a = AdamHypers::From(j);
    c->inv_bc1 = static_cast<float>(1 / BiasCorrection(OptH(j, 1), t));
    c->inv_bc2 = static_cast<float>(1 / BiasCorrection(OptH(j, 2), t));
    c->ratio = 1;
    return Need(j, 0, "exp_avg", err) && Need(j, 1, "exp_avg_sq", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D>
  static HWY_INLINE hn::Vec<D> Update(D d, const C& c, hn::Vec<D> m, hn::Vec<D> v, hn::Vec<D> theta) {
    const auto denom = hn::Add(hn::Sqrt(hn::Mul(v, hn::Set(d, c.inv_bc2))), hn::Set(d, c.a.eps));
    return hn::MulAdd(hn::Set(d, c.a.wd), theta, hn::Div(hn::Mul(m, hn::Set(d, c.inv_bc1)), denom));
  }
  template <class D, class J>
  static HWY_INLINE void Reduce(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta, hn::Vec<D>* a,
                                hn::Vec<D>* b) {
    hn::Vec<D> m, v;
    AdamMoments(d, j, i, g, c.a, &m, &v);
    const auto u = Update(d, c, m, v, theta);
    *a = hn::MulAdd(theta, theta, *a);
    *b = hn::MulAdd(u, u, *b);
  }
  static void Finish(C* c, double theta_sq, double u_sq) { c->ratio = TrustRatio(theta_sq, u_sq, 1, 0); }

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D>, hn::Vec<D> theta) {
    return hn::Mul(Update(d, c, LoadSlot(d, j, 0, i), LoadSlot(d, j, 1, i), theta), hn::Set(d, c.ratio));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
