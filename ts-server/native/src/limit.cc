// The limit kernel of `make bench-engine`: a plain loop with exactly Adam's
// memory traffic (read p, g, m, v; write p, m, v in place: 28 bytes per
// float32 parameter) and almost no arithmetic, compiled for every SIMD target
// like the fused kernels and cut into the same tasks on the same pool. Its
// bandwidth is the most any fp32 Adam step can move on this machine; the
// benchmark reports every kernel as a fraction of it.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "limit.cc"
#include "limit.h"

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "pool.h"
#include "tasks.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

struct LimitCtx {
  float *p, *m, *v;
  const float* g;
  size_t n;
};

// One task: the compiler vectorises this loop for the target it is compiled
// for (HWY_ATTR); one add per stream keeps every byte live.
void LimitTask(void* vctx, size_t k) {
  const LimitCtx& c = *static_cast<const LimitCtx*>(vctx);
  const size_t b = k * kChunk, e = b + kChunk < c.n ? b + kChunk : c.n;
  float* __restrict p = c.p;
  float* __restrict m = c.m;
  float* __restrict v = c.v;
  const float* __restrict g = c.g;
  for (size_t i = b; i < e; ++i) {
    const float gi = g[i];
    m[i] += gi;
    v[i] += gi;
    p[i] -= gi;
  }
}

void LimitImpl(float* p, const float* g, float* m, float* v, size_t n) {
  LimitCtx ctx{p, m, v, g, n};
  const size_t tasks = (n + kChunk - 1) / kChunk;
  Pool& pool = Pool::Get();
  if (pool.threads() > 1 && n >= kParallelMinCheap) {
    pool.Run(tasks, &LimitTask, &ctx);
  } else {
    for (size_t k = 0; k < tasks; ++k) LimitTask(&ctx, k);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace mur {
HWY_EXPORT(LimitImpl);
void Limit(float* p, const float* g, float* m, float* v, size_t n) { HWY_DYNAMIC_DISPATCH(LimitImpl)(p, g, m, v, n); }
}  // namespace mur
#endif
