// ASGD (torch.optim.ASGD): slots eta and mu (one element each) and ax.
//   g' = g + wd theta;  d = g';  scale = eta / lr (0 at lr = 0);  decay = 1 - lambd eta
//   after the rule: ax = mu == 1 ? theta_t : ax + mu (theta_t - ax)
//   Commit: eta = lr / (1 + lambd lr t)^alpha, mu = 1 / max(1, t - t0)
// eta and mu of this step are the stored ones (read in Prepare, before Commit
// writes the next ones), as torch uses the values of the previous step.
#ifndef MUR_ASGD_DESC_
#define MUR_ASGD_DESC_
namespace mur {
namespace asgd_desc {
inline constexpr const char* kHypers[] = {"lr", "lambd", "alpha", "t0", "weight_decay"};
inline constexpr const char* kSlots[] = {"eta", "mu", "ax"};
}  // namespace asgd_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_ASGD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_ASGD_INL_H_
#undef MUR_OPTIMIZERS_ASGD_INL_H_
#else
#define MUR_OPTIMIZERS_ASGD_INL_H_
#endif
#include <algorithm>

#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Asgd {
  /** The average ax follows theta_t: Fused calls After with the new theta. */
  static constexpr bool kAfter = true;
  struct C {
    float wd, mu;
    bool average;             // mu != 1: ax moves toward theta_t; else ax = theta_t
    float next_eta, next_mu;  // written by Commit
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    if (!Need(j, 0, "eta", err) || !Need(j, 1, "mu", err) || !Need(j, 2, "ax", err)) return false;
    const double t = StepT(j), lr = j.h[1], lambd = OptH(j, 1);
    const double eta = j.slot[0][0];
    c->wd = static_cast<float>(OptH(j, 4));
    c->mu = j.slot[1][0];
    c->average = c->mu != 1.0f;
    c->next_eta = static_cast<float>(lr / std::pow(1 + lambd * lr * t, OptH(j, 2)));
    c->next_mu = static_cast<float>(1 / std::max(1.0, t - OptH(j, 3)));
    f->scale = lr > 0 ? eta / lr : 0;
    f->decay = 1 - lambd * eta;
    return true;
  }
  static void Commit(const Job& j, const C& c) {
    j.slot[0][0] = c.next_eta;
    j.slot[1][0] = c.next_mu;
  }

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J&, size_t, hn::Vec<D> g, hn::Vec<D> theta) {
    return CoupledDecay(d, g, theta, c.wd);
  }
  template <class D, class J>
  static HWY_INLINE void After(D d, const C& c, const J& j, size_t i, hn::Vec<D> theta) {
    if (!c.average) {
      StoreSlot(d, theta, j, 2, i);
      return;
    }
    const auto ax = LoadSlot(d, j, 2, i);
    StoreSlot(d, hn::MulAdd(hn::Sub(theta, ax), hn::Set(d, c.mu), ax), j, 2, i);
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
