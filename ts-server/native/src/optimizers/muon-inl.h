// Muon (torch.optim.Muon, torch >= 2.9), for 2-D parameters only. The matrix
// pass (before the element pass) runs torch's momentum as its lerps,
//   buf = lerp(buf, g, 1 - mu);  u = nesterov ? lerp(g, buf, mu) : buf
// and orthogonalises u by Newton-Schulz (newton_schulz.h: matrix products
// through OpenBLAS); the element pass returns d = NS(u) with
//   scale = the lr adjustment for a rows x cols (A x B) matrix:
//     original sqrt(max(1, A / B)), match_rms_adamw 0.2 sqrt(max(A, B)),
//     spectral_unclamped sqrt(A / B)
//   decay = 1 - lr wd (decoupled)
// so the additive rule is torch's theta (1 - lr wd) - adjusted_lr NS(u).
#ifndef MUR_MUON_DESC_
#define MUR_MUON_DESC_
namespace mur {
namespace muon_desc {
inline constexpr const char* kHypers[] = {
    "lr",  "weight_decay", "momentum",    "nesterov", "ns_coefficients.0", "ns_coefficients.1", "ns_coefficients.2",
    "eps", "ns_steps",     "adjust_lr_fn"};  // adjust_lr_fn by its index in muon.ts's list
inline constexpr const char* kSlots[] = {"momentum_buffer"};
}  // namespace muon_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_MUON_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_MUON_INL_H_
#undef MUR_OPTIMIZERS_MUON_INL_H_
#else
#define MUR_OPTIMIZERS_MUON_INL_H_
#endif
#include <cmath>
#include <type_traits>
#include <vector>

#include "newton_schulz.h"
#include "optimizers/common-inl.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

/** An optimizer with `kMatrix = true` has Matrix(j, c, parallel), run on every job before the element pass. */
template <class Opt, class = void>
struct WantsMatrix : std::false_type {};
template <class Opt>
struct WantsMatrix<Opt, std::void_t<decltype(Opt::kMatrix)>> : std::bool_constant<Opt::kMatrix> {};

struct Muon {
  static constexpr bool kMatrix = true;
  // The matrix pass widens the momentum (bfloat16, q8) to float32, lerps it, stores it back (bfloat16:
  // stochastically with the dense keys; q8: per block) and takes u from the float32 values; the element
  // pass reads no slot.
  static constexpr bool kSlotsBeforeElements = true;
  enum AdjustLr { kOriginal, kMatchRmsAdamW, kSpectralUnclamped };
  struct C {
    float mu, omm;
    bool nesterov;
    size_t rows, cols;
    NewtonSchulzParams ns;
    std::vector<float> store;  // NS(u), filled by Matrix
    const float* o;
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    if (j.rows != nullptr) {
      *err = "muon takes dense gradients only (a row-sparse one needs an elementwise optimizer)";
      return false;
    }
    const double rows = j.h[kRowsHyper];
    if (!(rows >= 1) || j.n == 0 || j.n % static_cast<size_t>(rows) != 0) {
      *err = "muon takes 2-D parameters only (rows " + std::to_string(rows) + ", " + std::to_string(j.n) + " elements)";
      return false;
    }
    c->rows = static_cast<size_t>(rows);
    c->cols = j.n / c->rows;
    c->mu = static_cast<float>(OptH(j, 2));
    c->omm = static_cast<float>(1 - OptH(j, 2));
    c->nesterov = OptH(j, 3) != 0;
    c->ns = {static_cast<float>(OptH(j, 4)), static_cast<float>(OptH(j, 5)), static_cast<float>(OptH(j, 6)), OptH(j, 7),
             static_cast<int>(OptH(j, 8))};
    const double a = static_cast<double>(c->rows), b = static_cast<double>(c->cols);
    switch (static_cast<int>(OptH(j, 9))) {
      case kMatchRmsAdamW:
        f->scale = 0.2 * std::sqrt(a > b ? a : b);
        break;
      case kSpectralUnclamped:
        f->scale = std::sqrt(a / b);
        break;
      default:
        f->scale = std::sqrt(a > b ? a / b : 1.0);
    }
    f->decay = 1 - j.h[1] * OptH(j, 1);
    c->o = nullptr;
    return Need(j, 0, "momentum_buffer", err);
  }
  static void Commit(const Job&, const C&) {}

  /** torch's lerp: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w). */
  static float Lerp(float a, float b, float w, float omw) { return w < 0.5f ? a + w * (b - a) : b - (b - a) * omw; }

  static void Matrix(const Job& j, C* c, bool parallel) {
    std::vector<float> u(j.n), wide;
    float* buf = j.slot[0];
    if (buf == nullptr) {  // bfloat16 or q8 momentum
      wide.resize(j.n);
      ReadWholeSlot(j, 0, wide.data());
      buf = wide.data();
    }
    for (size_t i = 0; i < j.n; ++i) {
      buf[i] = Lerp(buf[i], j.grad[i], c->omm, c->mu);
      u[i] = c->nesterov ? Lerp(j.grad[i], buf[i], c->mu, c->omm) : buf[i];
    }
    if (buf != j.slot[0]) WriteWholeSlot(j, 0, buf);
    c->store.resize(j.n);
    NewtonSchulz(u.data(), c->rows, c->cols, c->ns, c->store.data(), parallel);
    c->o = c->store.data();
  }

  template <class D>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const Job&, size_t i, hn::Vec<D>, hn::Vec<D>) {
    return hn::LoadU(d, c.o + i);
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
