// The rule kernels' exp and tanh (transcendental-inl.h) over whole arrays, for the
// tests that hold them to float64 (test/native-math.test.ts): the same vector
// body and one-lane tail as a fused kernel.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "transcendental.cc"
#include "transcendental.h"

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "transcendental-inl.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

enum Fn { kExp, kExpBounded, kTanh };

template <Fn kFn, class D>
HWY_INLINE void One(D d, const float* x, float* out, size_t i) {
  const auto v = hn::LoadU(d, x + i);
  hn::StoreU(kFn == kTanh ? FastTanh(d, v) : kFn == kExp ? FastExp(d, v) : FastExpBounded(d, v), d, out + i);
}

template <Fn kFn>
void Apply(const float* x, float* out, size_t n) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  size_t i = 0;
  for (; i + hn::Lanes(d) <= n; i += hn::Lanes(d)) One<kFn>(d, x, out, i);
  for (; i < n; ++i) One<kFn>(d1, x, out, i);
}

void ExpArrayImpl(const float* x, float* out, size_t n) { Apply<kExp>(x, out, n); }
void ExpBoundedArrayImpl(const float* x, float* out, size_t n) { Apply<kExpBounded>(x, out, n); }
void TanhArrayImpl(const float* x, float* out, size_t n) { Apply<kTanh>(x, out, n); }

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace mur {
HWY_EXPORT(ExpArrayImpl);
HWY_EXPORT(ExpBoundedArrayImpl);
HWY_EXPORT(TanhArrayImpl);
void ExpArray(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(ExpArrayImpl)(x, out, n); }
void ExpBoundedArray(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(ExpBoundedArrayImpl)(x, out, n); }
void TanhArray(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(TanhArrayImpl)(x, out, n); }
}  // namespace mur
#endif
