// Schedule-Free AdamW (Defazio et al. 2024; optax.contrib.schedule_free_adamw).
// The parameter theta is y, where the gradient is taken. Slots: z (the base
// iterate, first theta), exp_avg_sq v, and the one-element weight_sum and max_lr.
//   v = b2 v + (1-b2) g^2;  d = g / (sqrt(v / bc2) + eps) + wd y
//   z_new = z - xi(z, d)             (the rule acts on z; scale = warmup(t-1))
//   max_lr = max(max_lr, lr warmup(t));  w = max_lr^p;  c = w / (weight_sum + w)
//   x = (y - (1-b1) z) / b1;  x_new = (1-c) x + c z_new;  y_new = b1 x_new + (1-b1) z_new
// with warmup(k) = min(k, W) / W (1 for W = 0): optax's base update takes the
// schedule at count t-1, its averaging weight at t. x is not stored: optax
// derives it from y and z in the same float32 operations, so deriving it
// here keeps optax's bits (and one slot fewer); an x slot would drift from
// (y - (1-b1) z) / b1 by rounding and follow a different trajectory.
#ifndef MUR_SCHEDULE_FREE_DESC_
#define MUR_SCHEDULE_FREE_DESC_
namespace mur {
namespace schedule_free_desc {
inline constexpr const char* kHypers[] = {"lr",           "betas.0",      "betas.1",        "eps",
                                          "weight_decay", "warmup_steps", "weight_lr_power"};
inline constexpr const char* kSlots[] = {"z", "exp_avg_sq", "weight_sum", "max_lr"};
}  // namespace schedule_free_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_SCHEDULE_FREE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_SCHEDULE_FREE_INL_H_
#undef MUR_OPTIMIZERS_SCHEDULE_FREE_INL_H_
#else
#define MUR_OPTIMIZERS_SCHEDULE_FREE_INL_H_
#endif
#include <algorithm>
#include <cmath>

#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

/** optax's warmup_constant_schedule factor at count k: min(k, W) / W, 1 without warmup. */
inline double WarmupFactor(double k, double warmup) { return warmup > 0 ? std::min(k, warmup) / warmup : 1.0; }

struct ScheduleFree {
  /** The rule acts on slot kRuleSlot (z), and Combine gives the new theta (fused-inl.h). */
  static constexpr int kRuleSlot = 0;
  /**
   * z is the iterate the rule acts on, not a moment: float32 whatever the state dtype (bfloat16
   * would round the iterate itself); exp_avg_sq takes the state dtype.
   */
  static constexpr uint32_t kWideSlots = 1u << 0;
  struct C {
    float b1, omb1, b2, omb2, eps, wd, inv_bc2, ck;
    float next_weight_sum, next_max_lr;  // written by Commit
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    if (!Need(j, 0, "z", err) || !Need(j, 1, "exp_avg_sq", err) || !Need(j, 2, "weight_sum", err) ||
        !Need(j, 3, "max_lr", err))
      return false;
    const double t = StepT(j), lr = j.h[1], b1 = OptH(j, 1), b2 = OptH(j, 2), warmup = OptH(j, 5);
    c->b1 = static_cast<float>(b1);
    c->omb1 = static_cast<float>(1 - b1);
    c->b2 = static_cast<float>(b2);
    c->omb2 = static_cast<float>(1 - b2);
    c->eps = static_cast<float>(OptH(j, 3));
    c->wd = static_cast<float>(OptH(j, 4));
    c->inv_bc2 = static_cast<float>(1 / BiasCorrection(b2, t));
    const double max_lr = std::max(static_cast<double>(j.slot[3][0]), lr * WarmupFactor(t, warmup));
    const double weight = std::pow(max_lr, OptH(j, 6));
    const double total = static_cast<double>(j.slot[2][0]) + weight;
    c->ck = total > 0 ? static_cast<float>(weight / total) : 0.0f;  // optax: nan_to_num(0 / 0) = 0
    c->next_weight_sum = static_cast<float>(total);
    c->next_max_lr = static_cast<float>(max_lr);
    f->scale = WarmupFactor(t - 1, warmup);
    return true;
  }
  static void Commit(const Job& j, const C& c) {
    j.slot[2][0] = c.next_weight_sum;
    j.slot[3][0] = c.next_max_lr;
  }

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> y) {
    const auto v = Ema(d, LoadSlot(d, j, 1, i), hn::Mul(g, g), c.b2, c.omb2);
    StoreSlot(d, v, j, 1, i);
    const auto denom = hn::Add(hn::Sqrt(hn::Mul(v, hn::Set(d, c.inv_bc2))), hn::Set(d, c.eps));
    return hn::MulAdd(hn::Set(d, c.wd), y, hn::Div(g, denom));
  }
  /** The new y from y, z before and z after the rule; stores z_new. */
  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Combine(D d, const C& c, const J& j, size_t i, hn::Vec<D> y, hn::Vec<D> z,
                                       hn::Vec<D> z_new) {
    hn::StoreU(z_new, d, j.slot[0] + i);  // float32 (kWideSlots)
    const auto x = hn::Div(hn::Sub(y, hn::Mul(hn::Set(d, c.omb1), z)), hn::Set(d, c.b1));
    const auto x_new = hn::Add(hn::Mul(hn::Set(d, 1.0f - c.ck), x), hn::Mul(hn::Set(d, c.ck), z_new));
    return hn::Add(hn::Mul(hn::Set(d, c.b1), x_new), hn::Mul(hn::Set(d, c.omb1), z_new));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
