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

template <bool kTanh, class D>
HWY_INLINE void One(D d, const float* x, float* out, size_t i) {
  const auto v = hn::LoadU(d, x + i);
  hn::StoreU(kTanh ? FastTanh(d, v) : FastExp(d, v), d, out + i);
}

template <bool kTanh>
void Apply(const float* x, float* out, size_t n) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  size_t i = 0;
  for (; i + hn::Lanes(d) <= n; i += hn::Lanes(d)) One<kTanh>(d, x, out, i);
  for (; i < n; ++i) One<kTanh>(d1, x, out, i);
}

void ExpArrayImpl(const float* x, float* out, size_t n) { Apply<false>(x, out, n); }
void TanhArrayImpl(const float* x, float* out, size_t n) { Apply<true>(x, out, n); }

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace mur {
HWY_EXPORT(ExpArrayImpl);
HWY_EXPORT(TanhArrayImpl);
void ExpArray(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(ExpArrayImpl)(x, out, n); }
void TanhArray(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(TanhArrayImpl)(x, out, n); }
}  // namespace mur
#endif
