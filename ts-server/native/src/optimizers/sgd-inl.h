// SGD (torch.optim.SGD): coupled weight decay, momentum with dampening and
// Nesterov. The momentum buffer starts as a copy of the first gradient that
// uses it.
//   g' = g + wd theta;  buf = g' (first) | mu buf + (1 - tau) g'
//   d = g' + mu buf (nesterov) | buf | g' (no momentum)
// lr_in_momentum (Keras): the buffer accumulates lr g' (first: lr g', then
// mu buf + (1 - tau) lr g'); d = (lr g' + mu buf) / lr (nesterov) | buf / lr,
// 0 at lr = 0 (optimizers/common.ts, perLr).
#ifndef MUR_SGD_DESC_
#define MUR_SGD_DESC_
namespace mur {
namespace sgd_desc {
inline constexpr const char* kHypers[] = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "lr_in_momentum"};
inline constexpr const char* kSlots[] = {"momentum_buffer"};
}  // namespace sgd_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_SGD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_SGD_INL_H_
#undef MUR_OPTIMIZERS_SGD_INL_H_
#else
#define MUR_OPTIMIZERS_SGD_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Sgd {
  struct C {
    float mu, one_minus_tau, wd;
    float lr, inv_lr;  // lr_in_momentum: the gradient's factor and d's (0 at lr = 0)
    bool momentum, nesterov, first, lr_in_momentum;
  };
  static bool Prepare(const Job& j, C* c, Factors*, std::string* err) {
    c->mu = static_cast<float>(OptH(j, 1));
    c->one_minus_tau = static_cast<float>(1.0 - OptH(j, 2));
    c->wd = static_cast<float>(OptH(j, 3));
    c->nesterov = OptH(j, 4) != 0;
    c->momentum = OptH(j, 1) != 0;
    c->first = (j.fresh & 1u) != 0;
    c->lr_in_momentum = OptH(j, 5) != 0;
    c->lr = static_cast<float>(j.h[1]);
    c->inv_lr = j.h[1] > 0 ? static_cast<float>(1 / j.h[1]) : 0.0f;
    return !c->momentum || Need(j, 0, "momentum_buffer", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.wd);
    if (!c.momentum) return g;
    const auto mu = hn::Set(d, c.mu);
    if (c.lr_in_momentum) {
      const auto gl = hn::Mul(hn::Set(d, c.lr), g);
      const auto buf = c.first ? gl : hn::MulAdd(mu, LoadSlot(d, j, 0, i), hn::Mul(hn::Set(d, c.one_minus_tau), gl));
      StoreSlot(d, buf, j, 0, i);
      return hn::Mul(c.nesterov ? hn::MulAdd(mu, buf, gl) : buf, hn::Set(d, c.inv_lr));
    }
    const auto buf = c.first ? g : hn::MulAdd(mu, LoadSlot(d, j, 0, i), hn::Mul(hn::Set(d, c.one_minus_tau), g));
    StoreSlot(d, buf, j, 0, i);
    return c.nesterov ? hn::MulAdd(mu, buf, g) : buf;
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
