// Lion (Chen et al. 2023; torch.optim has none, the paper is the reference):
//   d = sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g;  theta *= 1 - lr wd (decoupled)
#ifndef MUR_LION_DESC_
#define MUR_LION_DESC_
namespace mur {
namespace lion_desc {
inline constexpr const char* kHypers[] = {"lr", "betas.0", "betas.1", "weight_decay"};
inline constexpr const char* kSlots[] = {"exp_avg"};
}  // namespace lion_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_LION_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_LION_INL_H_
#undef MUR_OPTIMIZERS_LION_INL_H_
#else
#define MUR_OPTIMIZERS_LION_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Lion {
  struct C {
    float b1, omb1, b2, omb2;
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    c->b1 = static_cast<float>(OptH(j, 1));
    c->omb1 = static_cast<float>(1 - OptH(j, 1));
    c->b2 = static_cast<float>(OptH(j, 2));
    c->omb2 = static_cast<float>(1 - OptH(j, 2));
    f->decay = 1 - j.h[1] * OptH(j, 3);
    return Need(j, 0, "exp_avg", err);
  }
  static void Commit(const Job&, const C&) {}

  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D>) {
    const auto m = LoadSlot(d, j, 0, i);
    const auto dir = Sign(d, Ema(d, m, g, c.b1, c.omb1));
    StoreSlot(d, Ema(d, m, g, c.b2, c.omb2), j, 0, i);
    return dir;
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
