// Adam and AdamW (torch.optim.Adam / AdamW), with AMSGrad:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  vmax = max(vmax, v)
//   d = m / (sqrt(v or vmax) / sqrt(bc2) + eps);  scale = 1 / bc1
// Adam adds wd * theta to g (coupled); AdamW multiplies theta by 1 - lr wd
// before the rule (decoupled).
// eps_before_correction (Keras): d = m sqrt(bc2) / (sqrt(v or vmax) + eps).
#ifndef MUR_ADAM_DESC_
#define MUR_ADAM_DESC_
namespace mur {
namespace adam_desc {
inline constexpr const char* kHypers[] = {
    "lr", "betas.0", "betas.1", "eps", "weight_decay", "amsgrad", "eps_before_correction"};
inline constexpr const char* kSlots[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
}  // namespace adam_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_ADAM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_ADAM_INL_H_
#undef MUR_OPTIMIZERS_ADAM_INL_H_
#else
#define MUR_OPTIMIZERS_ADAM_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

/** The moments and direction both variants share; kDecoupled picks AdamW. */
template <bool kDecoupled>
struct AdamT {
  struct C {
    AdamHypers a;  // a.wd is 0 for AdamW: its decay is decoupled
    float inv_sqrt_bc2, sqrt_bc2;
    bool amsgrad, eps_first;
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    const double t = StepT(j), b1 = OptH(j, 1), b2 = OptH(j, 2), wd = OptH(j, 4);
    c->a = AdamHypers::From(j);
    if (kDecoupled) c->a.wd = 0.0f;
    c->inv_sqrt_bc2 = static_cast<float>(1 / std::sqrt(BiasCorrection(b2, t)));
    c->sqrt_bc2 = static_cast<float>(std::sqrt(BiasCorrection(b2, t)));
    c->amsgrad = OptH(j, 5) != 0;
    c->eps_first = OptH(j, 6) != 0;
    f->scale = 1 / BiasCorrection(b1, t);
    if (kDecoupled) f->decay = 1 - j.h[1] * wd;
    return Need(j, 0, "exp_avg", err) && Need(j, 1, "exp_avg_sq", err) &&
           (!c->amsgrad || Need(j, 2, "max_exp_avg_sq", err));
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    if (!kDecoupled) g = CoupledDecay(d, g, theta, c.a.wd);
    hn::Vec<D> m, v;
    AdamMoments(d, j, i, g, c.a, &m, &v);
    if (c.amsgrad) {
      v = hn::Max(LoadSlot(d, j, 2, i), v);
      StoreSlot(d, v, j, 2, i);
    }
    if (c.eps_first) return hn::Div(hn::Mul(m, hn::Set(d, c.sqrt_bc2)), hn::Add(hn::Sqrt(v), hn::Set(d, c.a.eps)));
    const auto denom = hn::MulAdd(hn::Sqrt(v), hn::Set(d, c.inv_sqrt_bc2), hn::Set(d, c.a.eps));
    return hn::Div(m, denom);
  }
};
using Adam = AdamT<false>;
using AdamW = AdamT<true>;

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
