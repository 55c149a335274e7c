// Adafactor (torch.optim.Adafactor; maths in src/optimizers/adafactor.ts and
// docs/update-rules.md). Three passes over a step's tensors:
//   1. Prepass, for tensors of >= 2 dims ([B, R, C] with C contiguous): the
//      row means of g^2 (tasks of whole rows) and the column means (tasks of
//      kColBlock columns of one matrix, over all its rows), each lerped into
//      row_var / col_var; then per matrix max(eps1, mean(row_var)) on the host.
//   2. The norm pass (norms-inl.h): sums of theta^2 and u^2, where
//      u = g / sqrt(max(v, eps1^2)), v = row_var col_var / rowmean (or the
//      vector's variance, lerped and stored here); Finish makes
//      k = max(eps2, rms(theta)) / max(1, rms(u) / d).
//   3. The element pass: d = k u (u recomputed), scale rho / lr, decay 1 - lr wd.
// Every sum is over a fixed range in a fixed order (rows, column blocks and
// the norm pass's tasks do not depend on the thread count), and an element's
// u is the same float operations wherever its vector starts, so the results
// are the same bits on any thread count and alignment.
#ifndef MUR_ADAFACTOR_DESC_
#define MUR_ADAFACTOR_DESC_
#include <cstddef>

#include "kernel.h"
namespace mur {
namespace adafactor_desc {
// "#factored", "#rows", "#cols": from the parameter's shape (engine/native.ts, shapeValue).
inline constexpr const char* kHypers[] = {"lr",           "beta2_decay", "eps.0", "eps.1", "d",
                                          "weight_decay", "#factored",   "#rows", "#cols"};
inline constexpr const char* kSlots[] = {"row_var", "col_var", "variance"};
/** row_var: one per row (n / C), col_var: one per column of each matrix (n / R), variance: n. */
inline size_t SlotSize(int k, size_t n, const double* h) {
  const auto rows = static_cast<size_t>(h[kOptHyper + 7]), cols = static_cast<size_t>(h[kOptHyper + 8]);
  if (k == 0) return cols > 0 ? n / cols : 0;
  if (k == 1) return rows > 0 ? n / rows : 0;
  return n;
}
}  // namespace adafactor_desc
}  // namespace mur
#endif

#if defined(MUR_OPTIMIZERS_ADAFACTOR_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_ADAFACTOR_INL_H_
#undef MUR_OPTIMIZERS_ADAFACTOR_INL_H_
#else
#define MUR_OPTIMIZERS_ADAFACTOR_INL_H_
#endif
#include <cfloat>
#include <cmath>
#include <vector>

#include "optimizers/norms-inl.h"
#include "pool.h"
#include "tasks.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct Adafactor {
  static constexpr bool kNorms = true;
  static constexpr bool kPrepass = true;
  /**
   * Its factored row and column statistics are O(rows + cols) (a 4096 x 4096 matrix: 32 KiB of
   * float32 beside 64 MiB of theta), the unfactored variance only exists for vectors: every slot
   * stays float32 whatever the state dtype (Descriptor::wide_slots), so a compact step is the float32 one.
   */
  static constexpr bool kFloat32State = true;
  static constexpr size_t kColBlock = 256;  // columns per task of the column sweep (a multiple of every lane count)
  static constexpr size_t kRowBlock = 64;   // rows summed in float before joining the column's double

  struct C {
    float w, eps1, eps1_sq, k;
    double eps2, d, n;
    bool factored;
    size_t rows, cols, batches;
    std::vector<float> row_mean;  // per matrix: max(eps1, mean of its row_var)
  };
  static bool Prepare(const Job& j, C* c, Factors* f, std::string* err) {
    const double t = StepT(j), lr = j.h[1];
    const double e1 = OptH(j, 2);
    c->w = static_cast<float>(std::pow(t, OptH(j, 1)));
    c->eps1 = std::isnan(e1) ? FLT_EPSILON : static_cast<float>(e1);  // null: torch's finfo(float32).eps
    c->eps1_sq = c->eps1 * c->eps1;
    c->eps2 = OptH(j, 3);
    c->d = OptH(j, 4);
    c->factored = OptH(j, 6) != 0;
    c->rows = static_cast<size_t>(OptH(j, 7));
    c->cols = static_cast<size_t>(OptH(j, 8));
    c->n = static_cast<double>(j.n);
    c->batches = c->factored && c->rows * c->cols > 0 ? j.n / (c->rows * c->cols) : 0;
    c->k = 0;
    const double rho = std::fmin(lr, 1 / std::sqrt(t));
    f->scale = lr > 0 ? rho / lr : 0;
    f->decay = 1 - lr * OptH(j, 5);
    if (j.n == 0) return true;
    if (c->factored) {
      if (c->batches * c->rows * c->cols != j.n) {
        *err = "adafactor: #rows x #cols does not divide the tensor";
        return false;
      }
      return Need(j, 0, "row_var", err) && Need(j, 1, "col_var", err);
    }
    return Need(j, 2, "variance", err);
  }
  static void Commit(const Job&, const C&) {}

  /** torch's lerp: a + w (b - a) for w < 0.5, else b - (b - a)(1 - w) (exact at w = 1). */
  template <class D>
  static HWY_INLINE hn::Vec<D> Lerp(D d, hn::Vec<D> a, hn::Vec<D> b, float w) {
    const auto diff = hn::Sub(b, a);
    return w < 0.5f ? hn::MulAdd(hn::Set(d, w), diff, a) : hn::NegMulAdd(diff, hn::Set(d, 1.0f - w), b);
  }

  // -- 1. the row and column means ------------------------------------------------
  struct SweepTask {
    size_t job, begin, end;  // rows [begin, end) of the job, or (column sweep) a matrix and a column block
    bool columns;
  };
  struct SweepCtx {
    const Job* jobs;
    C* const* plans;
    const SweepTask* tasks;
  };

  static void RowTask(const Job& j, const C& c, size_t begin, size_t end) {
    const hn::ScalableTag<float> d;
    const hn::CappedTag<float, 1> d1;
    const size_t lanes = hn::Lanes(d);
    for (size_t q = begin; q < end; ++q) {
      const float* g = j.grad + q * c.cols;
      double s = 0;
      for (size_t b0 = 0; b0 < c.cols; b0 += NormPass<Adafactor, float>::kBlock) {
        const size_t b1 =
            b0 + NormPass<Adafactor, float>::kBlock < c.cols ? b0 + NormPass<Adafactor, float>::kBlock : c.cols;
        auto acc = hn::Zero(d);
        size_t i = b0;
        for (; i + lanes <= b1; i += lanes) {
          const auto v = hn::LoadU(d, g + i);
          acc = hn::MulAdd(v, v, acc);
        }
        float tail = 0;
        for (; i < b1; ++i) tail += g[i] * g[i];
        s += static_cast<double>(hn::GetLane(hn::SumOfLanes(d, acc))) + tail;
      }
      const auto mean = hn::Set(d1, static_cast<float>(s / static_cast<double>(c.cols)));
      StoreSlot(d1, Lerp(d1, LoadSlot(d1, j, 0, q), mean, c.w), j, 0, q);
    }
  }

  static void ColumnTask(const Job& j, const C& c, size_t matrix, size_t c0) {
    const hn::ScalableTag<float> d;
    const hn::CappedTag<float, 1> d1;
    const size_t lanes = hn::Lanes(d);
    const size_t width = c0 + kColBlock < c.cols ? kColBlock : c.cols - c0;
    HWY_ALIGN float part[kColBlock];
    double sum[kColBlock] = {};
    const float* base = j.grad + matrix * c.rows * c.cols + c0;
    for (size_t r0 = 0; r0 < c.rows; r0 += kRowBlock) {
      const size_t r1 = r0 + kRowBlock < c.rows ? r0 + kRowBlock : c.rows;
      for (size_t i = 0; i < width; ++i) part[i] = 0;
      for (size_t r = r0; r < r1; ++r) {
        const float* g = base + r * c.cols;
        size_t i = 0;
        for (; i + lanes <= width; i += lanes) {
          const auto v = hn::LoadU(d, g + i);
          hn::Store(hn::MulAdd(v, v, hn::Load(d, part + i)), d, part + i);
        }
        for (; i < width; ++i) part[i] += g[i] * g[i];
      }
      for (size_t i = 0; i < width; ++i) sum[i] += part[i];
    }
    const size_t at = matrix * c.cols + c0;
    for (size_t i = 0; i < width; ++i) {
      const auto mean = hn::Set(d1, static_cast<float>(sum[i] / static_cast<double>(c.rows)));
      StoreSlot(d1, Lerp(d1, LoadSlot(d1, j, 1, at + i), mean, c.w), j, 1, at + i);
    }
  }

  static void RunSweep(void* vctx, size_t k) {
    const SweepCtx& x = *static_cast<const SweepCtx*>(vctx);
    const SweepTask& t = x.tasks[k];
    if (t.columns) {
      ColumnTask(x.jobs[t.job], *x.plans[t.job], t.begin, t.end);
    } else {
      RowTask(x.jobs[t.job], *x.plans[t.job], t.begin, t.end);
    }
  }

  template <class Task>
  static void Prepass(const Job* jobs, size_t njobs, C* const* plans, const std::vector<Task>&, bool parallel) {
    std::vector<SweepTask> tasks;
    for (size_t k = 0; k < njobs; ++k) {
      const C& c = *plans[k];
      if (!c.factored || jobs[k].n == 0) continue;
      const size_t all_rows = c.batches * c.rows;
      const size_t per = kChunk / c.cols > 0 ? kChunk / c.cols : 1;
      for (size_t q = 0; q < all_rows; q += per)
        tasks.push_back({k, q, q + per < all_rows ? q + per : all_rows, false});
      for (size_t m = 0; m < c.batches; ++m) {
        for (size_t c0 = 0; c0 < c.cols; c0 += kColBlock) tasks.push_back({k, m, c0, true});
      }
    }
    SweepCtx ctx{jobs, plans, tasks.data()};
    if (parallel) {
      Pool::Get().Run(tasks.size(), &RunSweep, &ctx);
    } else {
      for (size_t k = 0; k < tasks.size(); ++k) RunSweep(&ctx, k);
    }
    const hn::CappedTag<float, 1> d1;
    for (size_t k = 0; k < njobs; ++k) {
      C& c = *plans[k];
      if (!c.factored || jobs[k].n == 0) continue;
      c.row_mean.assign(c.batches, 0.0f);
      for (size_t m = 0; m < c.batches; ++m) {
        double s = 0;
        for (size_t r = 0; r < c.rows; ++r) s += hn::GetLane(LoadSlot(d1, jobs[k], 0, m * c.rows + r));
        c.row_mean[m] = std::fmax(c.eps1, static_cast<float>(s / static_cast<double>(c.rows)));
      }
    }
  }

  // -- 2. and 3. ------------------------------------------------------------------
  /** The variance estimate of a factored tensor at elements [i, i + lanes): (row_var col_var) / rowmean. */
  template <class D>
  static HWY_INLINE hn::Vec<D> Factored(D d, const C& c, const Job& j, size_t i) {
    const hn::CappedTag<float, 1> d1;
    const size_t lanes = hn::Lanes(d);
    const size_t q = i / c.cols, col = i - q * c.cols, m = q / c.rows;
    if (col + lanes <= c.cols) {  // one row: its row factor times a run of col_var
      const auto rv = hn::Set(d, hn::GetLane(LoadSlot(d1, j, 0, q)));
      return hn::Div(hn::Mul(rv, LoadSlot(d, j, 1, m * c.cols + col)), hn::Set(d, c.row_mean[m]));
    }
    HWY_ALIGN float
        v[HWY_MAX_BYTES / sizeof(float)];  // the vector crosses a row end: lane by lane, the same operations
    for (size_t l = 0; l < lanes; ++l) {
      const size_t e = i + l, qe = e / c.cols, me = qe / c.rows;
      const auto rv = LoadSlot(d1, j, 0, qe), cv = LoadSlot(d1, j, 1, me * c.cols + (e - qe * c.cols));
      v[l] = hn::GetLane(hn::Div(hn::Mul(rv, cv), hn::Set(d1, c.row_mean[me])));
    }
    return hn::Load(d, v);
  }
  template <class D>
  static HWY_INLINE hn::Vec<D> Scaled(D d, const C& c, hn::Vec<D> g, hn::Vec<D> v) {
    return hn::Div(g, hn::Sqrt(hn::Max(v, hn::Set(d, c.eps1_sq))));
  }

  template <class D>
  static HWY_INLINE void Reduce(D d, const C& c, const Job& j, size_t i, hn::Vec<D> g, hn::Vec<D> theta, hn::Vec<D>* a,
                                hn::Vec<D>* b) {
    hn::Vec<D> v;
    if (c.factored) {
      v = Factored(d, c, j, i);
    } else {
      v = Lerp(d, LoadSlot(d, j, 2, i), hn::Mul(g, g), c.w);
      StoreSlot(d, v, j, 2, i);
    }
    const auto u = Scaled(d, c, g, v);
    *a = hn::MulAdd(theta, theta, *a);
    *b = hn::MulAdd(u, u, *b);
  }
  static void Finish(C* c, double theta_sq, double u_sq) {
    const double n = c->n > 0 ? c->n : 1;
    const double clip = std::fmax(1.0, std::sqrt(u_sq / n) / c->d);
    c->k = static_cast<float>(std::fmax(c->eps2, std::sqrt(theta_sq / n)) / clip);
  }

  template <class D>
  static HWY_INLINE hn::Vec<D> Direction(D d, const C& c, const Job& j, size_t i, hn::Vec<D> g, hn::Vec<D>) {
    const auto v = c.factored ? Factored(d, c, j, i) : LoadSlot(d, j, 2, i);
    return hn::Mul(Scaled(d, c, g, v), hn::Set(d, c.k));
  }
};

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
