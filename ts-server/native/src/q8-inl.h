// q8 state (state_dtype "q8", q8map.h): one block of kQ8Block elements of a
// slot widened into float32 scratch and quantised back, per SIMD target.
//   dequantise: v[i] = absmax * map[code[i]]            (a gather from the map)
//   quantise:   absmax = max |v| over the block (0 for a block of zeros: every
//               code then the map's first 0); code[i] = #{k : v[i] / absmax >=
//               threshold[k]}, found by an 8-level binary search over the 255
//               sorted thresholds (levels 1 and 2 compare with broadcasts, the
//               other six gather from the 1 KiB table)
// Both run the same code for vectors and single lanes, so a result does not
// depend on where a block's vectors start.
#if defined(MUR_Q8_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MUR_Q8_INL_H_
#undef MUR_Q8_INL_H_
#else
#define MUR_Q8_INL_H_
#endif
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "kernel.h"
#include "q8map.h"
HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class D>
HWY_INLINE void Q8DequantiseLanes(D d, const uint8_t* codes, hn::Vec<D> scale, const float* map, float* out) {
  const hn::RebindToSigned<D> di;
  const hn::Rebind<uint8_t, D> d8;
  const auto idx = hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<D>(), hn::LoadU(d8, codes)));
  hn::StoreU(hn::Mul(scale, hn::GatherIndex(d, map, idx)), d, out);
}

/** len (<= kQ8Block) elements from codes and absmax into out. */
HWY_INLINE void Q8Dequantise(const uint8_t* codes, float absmax, const Q8Map& m, size_t len, float* out) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  for (; i + lanes <= len; i += lanes) Q8DequantiseLanes(d, codes + i, hn::Set(d, absmax), m.value, out + i);
  for (; i < len; ++i) Q8DequantiseLanes(d1, codes + i, hn::Set(d1, absmax), m.value, out + i);
}

template <class D>
HWY_INLINE void Q8QuantiseLanes(D d, const float* in, hn::Vec<D> absmax, const Q8Map& m, uint8_t* codes) {
  const hn::RebindToSigned<D> di;
  const hn::RebindToUnsigned<D> du;
  const hn::Rebind<uint8_t, D> d8;
  const auto x = hn::Div(hn::LoadU(d, in), absmax);
  // Level 1 (128) and 2 (64): thresholds 127, then 63 or 191, as broadcasts.
  const auto up = hn::Ge(x, hn::Set(d, m.threshold[127]));
  auto idx = hn::IfThenElseZero(hn::RebindMask(di, up), hn::Set(di, 128));
  const auto t2 = hn::IfThenElse(up, hn::Set(d, m.threshold[191]), hn::Set(d, m.threshold[63]));
  idx = hn::IfThenElse(hn::RebindMask(di, hn::Ge(x, t2)), hn::Add(idx, hn::Set(di, 64)), idx);
  for (int s = 32; s >= 1; s >>= 1) {
    const auto cand = hn::Add(idx, hn::Set(di, s));
    const auto t = hn::GatherIndex(d, m.threshold, hn::Sub(cand, hn::Set(di, 1)));
    idx = hn::IfThenElse(hn::RebindMask(di, hn::Ge(x, t)), cand, idx);
  }
  hn::StoreU(hn::TruncateTo(d8, hn::BitCast(du, idx)), d8, codes);
}

/** in[0..len) (len <= kQ8Block) quantised into codes; returns the block's absmax. */
HWY_INLINE float Q8Quantise(const float* in, size_t len, const Q8Map& m, uint8_t* codes) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  auto mx = hn::Zero(d);
  for (; i + lanes <= len; i += lanes) mx = hn::Max(mx, hn::Abs(hn::LoadU(d, in + i)));
  float absmax = hn::GetLane(hn::MaxOfLanes(d, mx));
  for (; i < len; ++i) absmax = hn::GetLane(hn::Max(hn::Set(d1, absmax), hn::Abs(hn::LoadU(d1, in + i))));
  if (!(absmax > 0)) {  // a block of zeros (or NaN: nothing finite to scale by): the first zero's code
    std::memset(codes, m.zero_code, len);
    return 0.0f;
  }
  i = 0;
  for (; i + lanes <= len; i += lanes) Q8QuantiseLanes(d, in + i, hn::Set(d, absmax), m, codes + i);
  for (; i < len; ++i) Q8QuantiseLanes(d1, in + i, hn::Set(d1, absmax), m, codes + i);
  return absmax;
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();
#endif
