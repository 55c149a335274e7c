// The per-tensor reduction before the element pass, for optimizers that
// scale by a norm (LAMB, LARS: `kNorms = true`). Such an optimizer has
//   Reduce(d, c, j, i, g, theta, &a, &b)  per element block: adds two sums of
//                                         squares into a and b (it may write slots)
//   Finish(&c, a, b)                      per tensor: the coefficients from them
// NormPass runs Reduce over the step's tasks (the fused loop's own split) on
// the pool, each task summing fixed blocks of kBlock elements in float
// vectors and folding each block into a double; the tasks' sums are folded
// per tensor in task order. So the result does not depend on the thread count.
// S is the slot type (optimizers/common-inl.h's SlotJob): a Reduce that
// writes slots rounds them as the element pass would (q8: quantises each
// block, whose sums are then folded per block of kQ8Block).
#if defined(MUR_OPTIMIZERS_NORMS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_OPTIMIZERS_NORMS_INL_H_
#undef MUR_OPTIMIZERS_NORMS_INL_H_
#else
#define MUR_OPTIMIZERS_NORMS_INL_H_
#endif
#include <type_traits>
#include <vector>

#include "optimizers/common-inl.h"
#include "pool.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

template <class Opt, class = void>
struct WantsNorms : std::false_type {};
template <class Opt>
struct WantsNorms<Opt, std::void_t<decltype(Opt::kNorms)>> : std::bool_constant<Opt::kNorms> {};

/**
 * Optimizers with a reduction before the norm pass (Adafactor's row and
 * column means: `kPrepass = true`) have
 *   Prepass(jobs, njobs, plans, tasks, parallel)   fills slots and plans
 */
template <class Opt, class = void>
struct WantsPrepass : std::false_type {};
template <class Opt>
struct WantsPrepass<Opt, std::void_t<decltype(Opt::kPrepass)>> : std::bool_constant<Opt::kPrepass> {};

template <class Opt, class S>
struct NormPass {
  static constexpr size_t kBlock = 1024;  // elements summed in float before joining the double

  template <class Task>
  struct Ctx {
    const Job* jobs;
    typename Opt::C* const* plans;
    const Task* tasks;
    std::vector<double> sums;  // 2 per task
  };

  template <class Task>
  static void RunTask(void* vctx, size_t k) {
    auto& c = *static_cast<Ctx<Task>*>(vctx);
    const Task& t = c.tasks[k];
    const typename Opt::C& p = *c.plans[t.job];
    const hn::ScalableTag<float> d;
    const hn::CappedTag<float, 1> d1;
    const size_t lanes = hn::Lanes(d);
    double a = 0, b = 0;
    if constexpr (std::is_same_v<S, Q8>) {
      // q8: block by block on dequantised scratch (Q8Blocks), each block's sums folded into the doubles.
      Q8Blocks(c.jobs[t.job], t.begin, t.end, [&](const Job& block, size_t len) {
        const SlotJob<float> j(block, 0);
        auto va = hn::Zero(d), vb = hn::Zero(d);
        size_t i = 0;
        for (; i + lanes <= len; i += lanes)
          Opt::Reduce(d, p, j, i, hn::LoadU(d, j.grad + i), hn::LoadU(d, j.theta + i), &va, &vb);
        auto ta = hn::Zero(d1), tb = hn::Zero(d1);
        for (; i < len; ++i) Opt::Reduce(d1, p, j, i, hn::LoadU(d1, j.grad + i), hn::LoadU(d1, j.theta + i), &ta, &tb);
        a += static_cast<double>(hn::GetLane(hn::SumOfLanes(d, va))) + hn::GetLane(ta);
        b += static_cast<double>(hn::GetLane(hn::SumOfLanes(d, vb))) + hn::GetLane(tb);
      });
    } else {
      const SlotJob<S> j(c.jobs[t.job], t.begin);
      for (size_t begin = t.begin; begin < t.end; begin += kBlock) {
        const size_t end = begin + kBlock < t.end ? begin + kBlock : t.end;
        auto va = hn::Zero(d), vb = hn::Zero(d);
        size_t i = begin;
        for (; i + lanes <= end; i += lanes)
          Opt::Reduce(d, p, j, i, hn::LoadU(d, j.grad + i), hn::LoadU(d, j.theta + i), &va, &vb);
        auto ta = hn::Zero(d1), tb = hn::Zero(d1);
        for (; i < end; ++i) Opt::Reduce(d1, p, j, i, hn::LoadU(d1, j.grad + i), hn::LoadU(d1, j.theta + i), &ta, &tb);
        a += static_cast<double>(hn::GetLane(hn::SumOfLanes(d, va))) + hn::GetLane(ta);
        b += static_cast<double>(hn::GetLane(hn::SumOfLanes(d, vb))) + hn::GetLane(tb);
      }
    }
    c.sums[2 * k] = a;
    c.sums[2 * k + 1] = b;
  }

  /** The reduction of every job, then Finish on each job's plan. */
  template <class Task>
  static void Run(const Job* jobs, size_t njobs, typename Opt::C* const* plans, const std::vector<Task>& tasks,
                  bool parallel) {
    Ctx<Task> ctx{jobs, plans, tasks.data(), std::vector<double>(2 * tasks.size(), 0.0)};
    if (parallel) {
      Pool::Get().Run(tasks.size(), &RunTask<Task>, &ctx);
    } else {
      for (size_t k = 0; k < tasks.size(); ++k) RunTask<Task>(&ctx, k);
    }
    std::vector<double> a(njobs, 0.0), b(njobs, 0.0);
    for (size_t k = 0; k < tasks.size(); ++k) {
      a[tasks[k].job] += ctx.sums[2 * k];
      b[tasks[k].job] += ctx.sums[2 * k + 1];
    }
    for (size_t k = 0; k < njobs; ++k) Opt::Finish(plans[k], a[k], b[k]);
  }
};

/** The trust ratio of optax's scale_by_trust_ratio: tc |theta| / (|u| + eps), 1 when either norm is 0. */
inline float TrustRatio(double theta_sq, double u_sq, double coefficient, double eps) {
  if (theta_sq == 0 || u_sq == 0) return 1.0f;
  return static_cast<float>(coefficient * std::sqrt(theta_sq) / (std::sqrt(u_sq) + eps));
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
