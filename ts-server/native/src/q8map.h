// The 8-bit dynamic (tree) quantisation map of q8 state (state_dtype "q8"),
// after Dettmers et al., "8-bit Optimizers via Block-wise Quantization"
// (2022). A code's bits read, from the top:
//
//   [sign]  E zero bits  one indicator bit  F fraction bits
//
// The run of E zeros is a power-of-ten exponent, the F bits a linear
// fraction: the code's magnitude is 10^-E (0.1 + 0.9 (f + 1) / 2^F), f the
// fraction's value in [0, 2^F), i.e. the 2^F right ends of equal steps of
// (0.1 10^-E, 10^-E]. A code of only zeros (after the sign) is 0.
//   signed (exp_avg, momentum, ...):  1 sign bit, E = 0..6, F = 6 - E:
//       127 magnitudes from 1e-6 to 1, each with both signs, and 0 twice
//       (+0 and -0): 256 codes, symmetric (map[i] = -map[255 - i]).
//   unsigned (exp_avg_sq, sum, ...):  no sign bit, E = 0..7, F = 7 - E:
//       255 magnitudes from 1e-7 to 1, and 0: twice as fine.
// The table is the 256 values sorted (a code is an index into it), computed
// in double and rounded once to float32. A stored element is
// absmax[block] * map[code] (float32 product); quantising v picks the nearest
// entry to v / absmax (float32 quotient), ties to the lower index, so
// code(x) = #{i < 255 : x > (map[i] + map[i+1]) / 2} (midpoints exact in
// double). threshold[i] is the smallest float32 x with x > that midpoint
// (for equal neighbours, the signed map's zeros, the next threshold: the
// second is never chosen): code(x) = #{i : x >= threshold[i]}, the form the
// kernels compare in float32.
// The TypeScript and Python copies (ts-server/src/engine/q8.ts,
// test/reference/q8.ts, python-runner/mur/reference/q8.py) build the same
// table from this definition; tests compare them bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mur {

// The kernels' lookup (q8-inl.h): x's bucket is the top 16 bits of |x| (its
// bfloat16 truncation: 7 mantissa bits), kLutBase (2^-26) to 1.0, and a bucket
// holds at most one point where code(x) changes (a bucket is at most 1/128 of
// |x| wide, every map step at least 0.9/128 of 10^-E >= |x|; checked when the
// table is built). lut[sign][bucket - kLutBase] = code at the bucket's first
// value | b << 8 | delta << 24 (int8): the code is code + delta where the low
// 16 bits of |x| are >= b (delta 0: no change in the bucket). Below kLutBase
// every x has code(0); above 1.0 (NaN only) the top bucket's.
constexpr uint32_t kLutBase = 0x3280;  // bits >> 16 of 2^-26
constexpr uint32_t kLutSize = 0x3F80 - kLutBase + 1;

struct Q8Map {
  alignas(64) float value[256];
  alignas(64) float threshold[256];       // [255] = +infinity (never crossed)
  uint8_t zero_code;                      // code(0): the first entry that is 0
  bool lut_ok;                            // every bucket holds at most one change (else the kernels search)
  alignas(64) int32_t lut[2 * kLutSize];  // [0, kLutSize): x >= 0; [kLutSize, 2 kLutSize): x < 0
};

/** The map of a slot: signed unless the descriptor marks it unsigned (kernel.h: Descriptor::unsigned_slots). */
const Q8Map& Q8MapOf(bool is_unsigned);

/** code(x) by the definition above, one value at a time (tests; the kernels use q8-inl.h). */
uint8_t Q8Code(const Q8Map& m, float x);

/** The kernels' codes of x[0..n) (the SIMD path of q8-inl.h, absmax 1), for tests (kernels-q8.cc). */
void Q8Codes(const float* x, size_t n, bool is_unsigned, uint8_t* codes);

}  // namespace mur
