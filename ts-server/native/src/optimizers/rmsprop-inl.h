// RMSprop (torch.optim.RMSprop), optionally centered, with momentum:
//   g' = g + wd theta;  sq = a sq + (1-a) g'^2;  ga = a ga + (1-a) g' (centered)
//   avg = sqrt(sq - ga^2) + eps (centered) | sqrt(sq) + eps
//   d = buf = mu buf + g'/avg (momentum > 0) | g'/avg
#ifndef MUR_RMSPROP_DESC_
#define MUR_RMSPROP_DESC_
namespace mur {
namespace rmsprop_desc {
inline constexpr const char* kHypers[] = {"lr", "alpha", "eps", "weight_decay", "momentum", "centered"};
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
    bool centered, momentum;
  };
  static bool Prepare(const Job& j, C* c, Factors*, std::string* err) {
    c->alpha = static_cast<float>(OptH(j, 1));
    c->oma = static_cast<float>(1 - OptH(j, 1));
    c->eps = static_cast<float>(OptH(j, 2));
    c->wd = static_cast<float>(OptH(j, 3));
    c->mu = static_cast<float>(OptH(j, 4));
    c->momentum = OptH(j, 4) > 0;
    c->centered = OptH(j, 5) != 0;
    return Need(j, 0, "square_avg", err) && (!c->centered || Need(j, 1, "grad_avg", err)) &&
           (!c->momentum || Need(j, 2, "momentum_buffer", err));
  }
  static void Commit(const Job&, const C&) {}

  template <class D>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const Job& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.wd);
    const auto sq = Ema(d, LoadSlot(d, j, 0, i), hn::Mul(g, g), c.alpha, c.oma);
    StoreSlot(d, sq, j, 0, i);
    auto var = sq;
    if (c.centered) {
      const auto ga = Ema(d, LoadSlot(d, j, 1, i), g, c.alpha, c.oma);
      StoreSlot(d, ga, j, 1, i);
      var = hn::NegMulAdd(ga, ga, sq);
    }
    const auto step = hn::Div(g, hn::Add(hn::Sqrt(var), hn::Set(d, c.eps)));
    if (!c.momentum) return step;
    const auto buf = hn::MulAdd(hn::Set(d, c.mu), LoadSlot(d, j, 2, i), step);
    StoreSlot(d, buf, j, 2, i);
    return buf;
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
