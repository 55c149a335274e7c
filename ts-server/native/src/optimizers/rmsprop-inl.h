// RMSprop (torch.optim.RMSprop), optionally centered, with momentum:
//   g' = g + wd theta;  sq = a sq + (1-a) g'^2;  ga = a ga + (1-a) g' (centered)
//   avg = sqrt(sq - ga^2) + eps (centered) | sqrt(sq) + eps
//   d = buf = mu buf + g'/avg (momentum > 0) | g'/avg
// eps_in_sqrt (optax, Keras): avg = sqrt(sq - ga^2 + eps) | sqrt(sq + eps).
// lr_in_momentum (Keras): buf = mu buf + lr g'/avg, d = buf / lr (0 at lr = 0:
// the rule's eta is then 0 anyway; see optimizers/common.ts, perLr).
#ifndef MUR_RMSPROP_DESC_
#define MUR_RMSPROP_DESC_
namespace mur {
namespace rmsprop_desc {
inline constexpr const char* kHypers[] = {"lr",       "alpha",    "eps",         "weight_decay",
                                          "momentum", "centered", "eps_in_sqrt", "lr_in_momentum"};
inline constexpr const char* kSlots[] = {"square_avg", "grad_avg", "momentum_buffer"};
}  // namespace rmsprop_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_RMSPROP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_RMSPROP_INL_H_
#undef MUR_OPTIMIZERS_RMSPROP_INL_H_
#else
#define MUR_OPTIMIZERS_RMSPROP_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Rmsprop {
  struct C {
    float alpha, oma, eps, wd, mu;
    float lr, inv_lr;  // lr_in_momentum: the buffer's input factor and d's (0 at lr = 0)
    bool centered, momentum, eps_in_sqrt, lr_in_momentum;
  };
  static bool Prepare(const Job& j, C* c, Factors*, std::string* err) {
    c->alpha = static_cast<float>(OptH(j, 1));
    c->oma = static_cast<float>(1 - OptH(j, 1));
    c->eps = static_cast<float>(OptH(j, 2));
    c->wd = static_cast<float>(OptH(j, 3));
    c->mu = static_cast<float>(OptH(j, 4));
    c->momentum = OptH(j, 4) > 0;
    c->centered = OptH(j, 5) != 0;
    c->eps_in_sqrt = OptH(j, 6) != 0;
    c->lr_in_momentum = OptH(j, 7) != 0;
    c->lr = static_cast<float>(j.h[1]);
    c->inv_lr = j.h[1] > 0 ? static_cast<float>(1 / j.h[1]) : 0.0f;
    return Need(j, 0, "square_avg", err) && (!c->centered || Need(j, 1, "grad_avg", err)) &&
           (!c->momentum || Need(j, 2, "momentum_buffer", err));
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.wd);
    const auto sq = Ema(d, LoadSlot(d, j, 0, i), hn::Mul(g, g), c.alpha, c.oma);
    StoreSlot(d, sq, j, 0, i);
    auto var = sq;
    if (c.centered) {
      const auto ga = Ema(d, LoadSlot(d, j, 1, i), g, c.alpha, c.oma);
      StoreSlot(d, ga, j, 1, i);
      var = hn::NegMulAdd(ga, ga, sq);
    }
    const auto eps = hn::Set(d, c.eps);
    const auto step = hn::Div(g, c.eps_in_sqrt ? hn::Sqrt(hn::Add(var, eps)) : hn::Add(hn::Sqrt(var), eps));
    if (!c.momentum) return step;
    if (c.lr_in_momentum) {
      const auto buf = hn::MulAdd(hn::Set(d, c.mu), LoadSlot(d, j, 2, i), hn::Mul(hn::Set(d, c.lr), step));
      StoreSlot(d, buf, j, 2, i);
      return hn::Mul(buf, hn::Set(d, c.inv_lr));
    }
    const auto buf = hn::MulAdd(hn::Set(d, c.mu), LoadSlot(d, j, 2, i), step);
    StoreSlot(d, buf, j, 2, i);
    return buf;
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
