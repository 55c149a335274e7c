// The q8 maps (definition in q8map.h), built once at first use.
#include "q8map.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace mur {
namespace {

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

/** The kernels' bucket table (q8map.h); lut_ok false where a bucket would need two entries. */
void BuildLut(Q8Map* m) {
  m->lut_ok = true;
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t k = 0; k < kLutSize; ++k) {
      const uint32_t first = (kLutBase + k) << 16 | sign << 31;
      const int c0 = Q8Code(*m, FromBits(first)), c1 = Q8Code(*m, FromBits(first | 0xFFFF));
      uint32_t b = 0;
      if (c0 != c1) {  // the first low half whose code is c1 (codes are monotone in x)
        uint32_t lo = 1, hi = 0xFFFF;
        while (lo < hi) {
          const uint32_t mid = (lo + hi) / 2;
          if (Q8Code(*m, FromBits(first | mid)) == c0)
            lo = mid + 1;
          else
            hi = mid;
        }
        b = lo;
        // One change only: just before b the code is c0 (monotone, so all before), at b it is c1.
        if (Q8Code(*m, FromBits(first | b)) != c1 || Q8Code(*m, FromBits(first | (b - 1))) != c0) m->lut_ok = false;
      }
      if (k == 0 && (c0 != c1 || c0 != m->zero_code)) m->lut_ok = false;  // below kLutBase: code(0)
      const int32_t delta = c1 - c0;
      m->lut[sign * kLutSize + k] =
          static_cast<int32_t>(static_cast<uint32_t>(c0) | b << 8 | static_cast<uint32_t>(delta) << 24);
    }
  }
}

Q8Map Build(bool is_unsigned) {
  const int exponents = is_unsigned ? 8 : 7;  // E = 0 .. exponents - 1, F = exponents - 1 - E
  std::vector<double> v;
  for (int e = 0; e < exponents; ++e) {
    const int f_bits = exponents - 1 - e;
    const double steps = std::ldexp(1.0, f_bits);
    double ten = 10;  // 10^(E + 1), exact
    for (int k = 0; k < e; ++k) ten *= 10;
    for (int f = 0; f < static_cast<int>(steps); ++f) {
      // 10^-E (0.1 + 0.9 (f + 1) / 2^F) as one correctly rounded quotient of exact integers,
      // so that every language builds the same double.
      const double mag = (steps + 9 * (f + 1)) / (ten * steps);
      v.push_back(mag);
      if (!is_unsigned) v.push_back(-mag);
    }
  }
  v.push_back(0.0);
  if (!is_unsigned) v.push_back(0.0);  // the signed map's second zero (-0 as a code; +0 as a value)
  std::sort(v.begin(), v.end());
  Q8Map m;
  for (int i = 0; i < 256; ++i) m.value[i] = static_cast<float>(v[i]);
  for (int i = 0; i < 255; ++i) {
    const double mid = (static_cast<double>(m.value[i]) + m.value[i + 1]) / 2;  // exact in double
    float t = static_cast<float>(mid);
    // The nearest float32 to mid, or the next one up when that is not above mid: the smallest one above.
    if (static_cast<double>(t) <= mid) t = std::nextafter(t, std::numeric_limits<float>::infinity());
    m.threshold[i] = t;
  }
  m.threshold[255] = std::numeric_limits<float>::infinity();
  // Equal neighbours (the signed map's two zeros): no x is nearer the second, so it is crossed
  // together with the next threshold and never chosen.
  for (int i = 253; i >= 0; --i) {
    if (m.value[i] == m.value[i + 1]) m.threshold[i] = m.threshold[i + 1];
  }
  m.zero_code = Q8Code(m, 0.0f);
  BuildLut(&m);
  return m;
}

}  // namespace

const Q8Map& Q8MapOf(bool is_unsigned) {
  static const Q8Map kSigned = Build(false), kUnsigned = Build(true);
  return is_unsigned ? kUnsigned : kSigned;
}

uint8_t Q8Code(const Q8Map& m, float x) {
  int c = 0;  // a binary search over the sorted thresholds (NaN crosses none)
  for (int s = 128; s >= 1; s >>= 1) {
    if (x >= m.threshold[c + s - 1]) c += s;
  }
  return static_cast<uint8_t>(c);
}

}  // namespace mur
