// NAdam (torch.optim.NAdam), momentum decay psi:
//   mu_t = b1 (1 - 0.5 * 0.96^(t psi));  P_t = P_{t-1} mu_t (one-element slot mu_product)
//   denom = sqrt(v / bc2) + eps
//   d = (1 - mu_t)/(1 - P_t) g'/denom + mu_{t+1}/(1 - P_t mu_{t+1}) m/denom
//   g' = g + wd theta, or with decoupled_weight_decay g' = g and decay = 1 - lr wd
#ifndef MUR_NADAM_DESC_
#define MUR_NADAM_DESC_
namespace mur {
namespace nadam_desc {
inline constexpr const char* kHypers[] = {
    "lr", "betas.0", "betas.1", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay"};
inline constexpr const char* kSlots[] = {"exp_avg", "exp_avg_sq", "mu_product"};
}  // namespace nadam_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_NADAM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_NADAM_INL_H_
#undef MUR_OPTIMIZERS_NADAM_INL_H_
#else
#define MUR_OPTIMIZERS_NADAM_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Nadam {
  struct C {
    AdamHypers a;
    float inv_bc2, cg, cm;
    float product;  // P_t, written to mu_product by Commit
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    if (!Need(j, 0, "exp_avg", err) || !Need(j, 1, "exp_avg_sq", err) || !Need(j, 2, "mu_product", err)) return false;
    const double t = StepT(j), b1 = OptH(j, 1), b2 = OptH(j, 2), psi = OptH(j, 5);
    const double mu = b1 * (1 - 0.5 * std::pow(0.96, t * psi));
    const double mu_next = b1 * (1 - 0.5 * std::pow(0.96, (t + 1) * psi));
    // The product is kept in float32 like every slot; the coefficients use it as stored.
    const float product = static_cast<float>(static_cast<double>(j.slot[2][0]) * mu);
    c->a = AdamHypers::From(j);
    DecoupleWeightDecay(j, 6, &c->a, f);
    c->inv_bc2 = static_cast<float>(1 / BiasCorrection(b2, t));
    c->cg = static_cast<float>((1 - mu) / (1 - product));
    c->cm = static_cast<float>(mu_next / (1 - product * mu_next));
    c->product = product;
    return true;
  }
  static void Commit(const Job& j, const C& c) { j.slot[2][0] = c.product; }

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.a.wd);
    hn::Vec<D> m, v;
    AdamMoments(d, j, i, g, c.a, &m, &v);
    const auto denom = hn::Add(hn::Sqrt(hn::Mul(v, hn::Set(d, c.inv_bc2))), hn::Set(d, c.a.eps));
    return hn::Div(hn::MulAdd(hn::Set(d, c.cg), g, hn::Mul(hn::Set(d, c.cm), m)), denom);
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
