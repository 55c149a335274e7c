// Adagrad (torch.optim.Adagrad):
//   g' = g + wd theta;  sum += g'^2;  d = g' / (sqrt(sum) + eps)
//   scale = 1 / (1 + (t - 1) lr_decay).  sum starts at initial_accumulator_value.
//   eps_in_sqrt (optax, Keras): d = g' / sqrt(sum + eps).
#ifndef MUR_ADAGRAD_DESC_
#define MUR_ADAGRAD_DESC_
namespace mur {
namespace adagrad_desc {
inline constexpr const char* kHypers[] = {"lr",  "lr_decay",   "weight_decay", "initial_accumulator_value",
                                          "eps", "eps_in_sqrt"};
inline constexpr const char* kSlots[] = {"sum"};
}  // namespace adagrad_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_ADAGRAD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_ADAGRAD_INL_H_
#undef MUR_OPTIMIZERS_ADAGRAD_INL_H_
#else
#define MUR_OPTIMIZERS_ADAGRAD_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Adagrad {
  struct C {
    float wd, eps;
    bool eps_in_sqrt;
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    c->wd = static_cast<float>(OptH(j, 2));
    c->eps = static_cast<float>(OptH(j, 4));
    c->eps_in_sqrt = OptH(j, 5) != 0;
    f->scale = 1 / (1 + (StepT(j) - 1) * OptH(j, 1));
    return Need(j, 0, "sum", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta) {
    g = CoupledDecay(d, g, theta, c.wd);
    const auto sum = hn::MulAdd(g, g, LoadSlot(d, j, 0, i));
    StoreSlot(d, sum, j, 0, i);
    const auto eps = hn::Set(d, c.eps);
    return hn::Div(g, c.eps_in_sqrt ? hn::Sqrt(hn::Add(sum, eps)) : hn::Add(hn::Sqrt(sum), eps));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
