// q8 state (state_dtype "q8", q8map.h): one block of kQ8Block elements of a
// slot widened into float32 scratch and quantised back, per SIMD target.
//   dequantise: v[i] = absmax * map[code[i]]            (a gather from the map)
//   quantise:   absmax = max |v| over the block (0 for a block of zeros: every
//               code then the map's first 0); code[i] = #{k : v[i] / absmax >=
//               threshold[k]}, found with one gather from the map's bucket
//               table (q8map.h: the top 16 bits of |x| pick a bucket, its low
//               16 bits are compared with the bucket's one change point), or
//               by an 8-level binary search over the thresholds (8 gathers)
//               for a map whose table could not be built (none so far)
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

/** The codes of x (one vector) by the map's bucket table (q8map.h): one gather. */
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> Q8CodesLut(D, hn::Vec<D> x, const Q8Map& m) {
  const hn::RebindToSigned<D> di;
  const hn::RebindToUnsigned<D> du;
  const auto bits = hn::BitCast(du, x);
  const auto mag = hn::And(bits, hn::Set(du, 0x7FFFFFFFu));
  auto bucket = hn::Min(hn::Max(hn::ShiftRight<16>(mag), hn::Set(du, kLutBase)), hn::Set(du, kLutBase + kLutSize - 1));
  bucket = hn::Sub(bucket, hn::Set(du, kLutBase));
  // x < 0 (its sign bit): the second half of the table.
  const auto half = hn::Mul(hn::ShiftRight<31>(bits), hn::Set(du, kLutSize));
  const auto entry = hn::GatherIndex(di, m.lut, hn::BitCast(di, hn::Add(bucket, half)));
  const auto code = hn::And(entry, hn::Set(di, 0xFF));
  const auto b = hn::And(hn::ShiftRight<8>(entry), hn::Set(di, 0xFFFF));
  const auto low = hn::BitCast(di, hn::And(mag, hn::Set(du, 0xFFFFu)));
  // Bucket clamped from below: its entry has no change (delta 0), so low does not matter.
  return hn::Add(code, hn::IfThenElseZero(hn::Gt(low, hn::Sub(b, hn::Set(di, 1))), hn::ShiftRight<24>(entry)));
}

/** The codes of x by the 8-level binary search over the thresholds (a map whose table is not lut_ok). */
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> Q8CodesSearch(D d, hn::Vec<D> x, const Q8Map& m) {
  const hn::RebindToSigned<D> di;
  auto idx = hn::Zero(di);
  for (int s = 128; s >= 1; s >>= 1) {
    const auto cand = hn::Add(idx, hn::Set(di, s));
    const auto t = hn::GatherIndex(d, m.threshold, hn::Sub(cand, hn::Set(di, 1)));
    idx = hn::IfThenElse(hn::RebindMask(di, hn::Ge(x, t)), cand, idx);
  }
  return idx;
}

template <class D>
HWY_INLINE void Q8QuantiseLanes(D d, const float* in, hn::Vec<D> absmax, const Q8Map& m, uint8_t* codes) {
  const hn::RebindToUnsigned<D> du;
  const hn::Rebind<uint8_t, D> d8;
  const auto x = hn::Div(hn::LoadU(d, in), absmax);
  const auto idx = m.lut_ok ? Q8CodesLut(d, x, m) : Q8CodesSearch(d, x, m);
  hn::StoreU(hn::TruncateTo(d8, hn::BitCast(du, idx)), d8, codes);
}

/** Codes of x[0..n) (no absmax: x itself), for the tests of the bucket table (addon q8Codes). */
HWY_INLINE void Q8CodesOf(const float* x, size_t n, const Q8Map& m, uint8_t* codes) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) Q8QuantiseLanes(d, x + i, hn::Set(d, 1.0f), m, codes + i);
  for (; i < n; ++i) Q8QuantiseLanes(d1, x + i, hn::Set(d1, 1.0f), m, codes + i);
}

/**
 * in[0..len) (len <= kQ8Block) quantised into codes; returns the block's absmax:
 * max |in|, or `floor` if that is larger (a row-sparse step keeps the block's
 * old absmax while it holds rows it did not touch: optimizers/rows-inl.h).
 */
HWY_INLINE float Q8Quantise(const float* in, size_t len, const Q8Map& m, uint8_t* codes, float floor = 0.0f) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  auto mx = hn::Zero(d);
  for (; i + lanes <= len; i += lanes) mx = hn::Max(mx, hn::Abs(hn::LoadU(d, in + i)));
  float absmax = hn::GetLane(hn::MaxOfLanes(d, mx));
  for (; i < len; ++i) absmax = hn::GetLane(hn::Max(hn::Set(d1, absmax), hn::Abs(hn::LoadU(d1, in + i))));
  if (absmax < floor) absmax = floor;  // false for NaN: it stays NaN
  if (!(absmax > 0)) {                 // a block of zeros (or NaN: nothing finite to scale by): the first zero's code
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
