// RAdam (torch.optim.RAdam): Adam's moments, rectified once rho_t > 5:
//   rho_inf = 2/(1-b2) - 1;  rho_t = rho_inf - 2 t b2^t / bc2
//   d = m r_t sqrt(bc2) / (sqrt(v) + eps) when rho_t > 5, else d = m;  scale = 1 / bc1
//   g' = g + wd theta, or with decoupled_weight_decay g' = g and decay = 1 - lr wd
#ifndef MUR_RADAM_DESC_
#define MUR_RADAM_DESC_
namespace mur {
namespace radam_desc {
inline constexpr const char* kHypers[] = {"lr", "betas.0", "betas.1", "eps", "weight_decay", "decoupled_weight_decay"};
inline constexpr const char* kSlots[] = {"exp_avg", "exp_avg_sq"};
}  // namespace radam_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_RADAM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_RADAM_INL_H_
#undef MUR_OPTIMIZERS_RADAM_INL_H_
#else
#define MUR_OPTIMIZERS_RADAM_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Radam {
  struct C {
    AdamHypers a;
    float rect;
    bool rectified;
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    const double t = StepT(j), b1 = OptH(j, 1), b2 = OptH(j, 2);
    const double bc2 = BiasCorrection(b2, t);
    const double rho_inf = 2 / (1 - b2) - 1;
    const double rho = rho_inf - 2 * t * std::pow(b2, t) / bc2;
    c->a = AdamHypers::From(j);
    DecoupleWeightDecay(j, 5, &c->a, f);
    c->rectified = rho > 5;
    c->rect =
        c->rectified
            ? static_cast<float>(std::sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) *
                                 std::sqrt(bc2))
            : 0.0f;
    f->scale = 1 / BiasCorrection(b1, t);
    return Need(j, 0, "exp_avg", err) && Need(j, 1, "exp_avg_sq", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.a.wd);
    hn::Vec<D> m, v;
    AdamMoments(d, j, i, g, c.a, &m, &v);
    if (!c.rectified) return m;
    return hn::Div(hn::Mul(m, hn::Set(d, c.rect)), hn::Add(hn::Sqrt(v), hn::Set(d, c.a.eps)));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
