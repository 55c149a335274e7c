// SparseAdam (torch.optim.SparseAdam, torch/optim/_functional.py's
// sparse_adam), on the rows a row-sparse gradient touches:
//   m += (1-b1) (g - m);  v += (1-b2) (g^2 - v)     (torch's order of operations)
//   d = m / (sqrt(v) + eps);  scale = sqrt(bc2) / bc1  (eps is not bias-corrected)
// with bc = 1 - beta^t and t this parameter's step count. No weight decay;
// maximize is the client's (it sends -g). The session gives it only
// row-sparse gradients, as torch refuses dense ones.
#ifndef MUR_SPARSE_ADAM_DESC_
#define MUR_SPARSE_ADAM_DESC_
namespace mur {
namespace sparse_adam_desc {
inline constexpr const char* kHypers[] = {"lr", "betas.0", "betas.1", "eps"};
inline constexpr const char* kSlots[] = {"exp_avg", "exp_avg_sq"};
}  // namespace sparse_adam_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_SPARSE_ADAM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_SPARSE_ADAM_INL_H_
#undef MUR_OPTIMIZERS_SPARSE_ADAM_INL_H_
#else
#define MUR_OPTIMIZERS_SPARSE_ADAM_INL_H_
#endif
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct SparseAdam {
  struct C {
    float omb1, omb2, eps;
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    const double t = StepT(j), b1 = OptH(j, 1), b2 = OptH(j, 2);
    c->omb1 = static_cast<float>(1 - b1);
    c->omb2 = static_cast<float>(1 - b2);
    c->eps = static_cast<float>(OptH(j, 3));
    f->scale = std::sqrt(BiasCorrection(b2, t)) / BiasCorrection(b1, t);
    return Need(j, 0, "exp_avg", err) && Need(j, 1, "exp_avg_sq", err);
  }
  static void Commit(const Job&, const C&) {}

  // Compact state (bfloat16, q8): per element through LoadSlot/StoreSlot; a q8 row step dequantises and
  // quantises whole blocks (fused-inl.h Q8Rows), bfloat16 rounds each touched element with the dense keys.
  template <class D, class J>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const J& j, size_t i, hn::Vec<D> g, hn::Vec<D>) {
    const auto m_old = LoadSlot(d, j, 0, i);
    const auto v_old = LoadSlot(d, j, 1, i);
    const auto m = hn::Add(hn::Mul(hn::Sub(g, m_old), hn::Set(d, c.omb1)), m_old);
    const auto v = hn::Add(hn::Mul(hn::Sub(hn::Mul(g, g), v_old), hn::Set(d, c.omb2)), v_old);
    StoreSlot(d, m, j, 0, i);
    StoreSlot(d, v, j, 1, i);
    return hn::Div(m, hn::Add(hn::Sqrt(v), hn::Set(d, c.eps)));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
