// The q8 maps (definition in q8map.h), built once at first use.
#include "q8map.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace mur {
namespace {

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
  return m;
}

}  // namespace

const Q8Map& Q8MapOf(bool is_unsigned) {
  static const Q8Map kSigned = Build(false), kUnsigned = Build(true);
  return is_unsigned ? kUnsigned : kSigned;
}

uint8_t Q8Code(const Q8Map& m, float x) {
  int c = 0;
  for (int i = 0; i < 255; ++i) c += x >= m.threshold[i];
  return static_cast<uint8_t>(c);
}

}  // namespace mur
