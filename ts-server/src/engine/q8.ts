// q8 state on the host (state_dtype "q8"): the map of native/src/q8map.h,
// built again here from its definition, and the quantisation the kernels do,
// for what the host writes and reads (a slot's first fill, an imported
// checkpoint, an exported one widened to float32). A slot of n elements is
// one Uint8Array of slotBytes('q8', n) bytes: n codes, padded to 4, then one
// float32 absmax per block of 256 elements (the last block may be short).
// Stored element i is absmax[i >> 8] * map[code[i]] (float32 product);
// quantising v picks, per block, absmax = max |v| and the nearest map entry
// to v / absmax (float32 quotient), ties to the lower index.
// Definition of the map (Dettmers et al., 2022, dynamic tree quantisation):
// after an optional sign bit, E zero bits, an indicator bit, then F linear
// fraction bits: magnitude 10^-E (0.1 + 0.9 (f + 1) / 2^F), f < 2^F.
// Signed: E = 0..6, F = 6 - E, both signs, and 0 twice; unsigned (slots that
// are never negative: SlotDecl.nonNegative): E = 0..7, F = 7 - E, and 0.

export const Q8_BLOCK = 256;

export interface Q8Map {
  /** The 256 values, sorted (a code is an index). */
  values: Float32Array;
  /** thresholds[i]: the smallest float32 above the midpoint of values[i] and values[i + 1]; [255] = infinity. */
  thresholds: Float32Array;
  /** code(0): the first zero. */
  zeroCode: number;
}

const f32 = new Float32Array(1);
/** The next float32 above x (a float32, finite, not the largest). */
function nextUp(x: number): number {
  if (x === 0) return 2 ** -149;
  f32[0] = x;
  const u = new Uint32Array(f32.buffer);
  u[0] += x > 0 ? 1 : -1;
  return f32[0];
}

function build(isUnsigned: boolean): Q8Map {
  const exponents = isUnsigned ? 8 : 7;
  const v: number[] = [];
  for (let e = 0; e < exponents; e++) {
    const steps = 2 ** (exponents - 1 - e);
    let ten = 10; // 10^(E + 1), exact
    for (let k = 0; k < e; k++) ten *= 10;
    for (let f = 0; f < steps; f++) {
      const mag = (steps + 9 * (f + 1)) / (ten * steps); // one correctly rounded quotient, as q8map.cc
      v.push(mag);
      if (!isUnsigned) v.push(-mag);
    }
  }
  v.push(0);
  if (!isUnsigned) v.push(0);
  v.sort((a, b) => a - b);
  const values = Float32Array.from(v);
  const thresholds = new Float32Array(256);
  for (let i = 0; i < 255; i++) {
    const mid = (values[i] + values[i + 1]) / 2; // exact in float64
    const t = Math.fround(mid);
    thresholds[i] = t <= mid ? nextUp(t) : t;
  }
  thresholds[255] = Infinity;
  // Equal neighbours (the signed map's zeros): the second is never nearer, so never chosen.
  for (let i = 253; i >= 0; i--) if (values[i] === values[i + 1]) thresholds[i] = thresholds[i + 1];
  const map: Q8Map = { values, thresholds, zeroCode: 0 };
  map.zeroCode = code(map, 0);
  return map;
}

/** code(x): #{i : x >= thresholds[i]} (binary search; NaN gives 0). */
export function code(m: Q8Map, x: number): number {
  let c = 0;
  for (let s = 128; s >= 1; s >>= 1) if (x >= m.thresholds[c + s - 1]) c += s;
  return c;
}

const MAPS = { signed: build(false), unsigned: build(true) };

/** The map of a slot: unsigned for one that is never negative. */
export function q8Map(nonNegative: boolean): Q8Map {
  return nonNegative ? MAPS.unsigned : MAPS.signed;
}

/** Where the absmax floats start in a slot of n elements. */
export const absmaxOffset = (n: number) => Math.ceil(n / 4) * 4;

/** values quantised into dst (a q8 slot of values.length elements). */
export function quantise(values: Float32Array, nonNegative: boolean, dst: Uint8Array): Uint8Array {
  const m = q8Map(nonNegative);
  const n = values.length;
  const absmax = new Float32Array(dst.buffer, dst.byteOffset + absmaxOffset(n), Math.ceil(n / Q8_BLOCK));
  for (let b = 0; b * Q8_BLOCK < n; b++) {
    const end = Math.min(n, (b + 1) * Q8_BLOCK);
    let a = 0;
    for (let i = b * Q8_BLOCK; i < end; i++) a = Math.max(a, Math.abs(values[i]));
    if (!(a > 0)) {
      dst.fill(m.zeroCode, b * Q8_BLOCK, end);
      absmax[b] = 0;
      continue;
    }
    absmax[b] = a;
    for (let i = b * Q8_BLOCK; i < end; i++) dst[i] = code(m, Math.fround(values[i] / a));
  }
  return dst;
}

/** A q8 slot of n elements widened to float32. */
export function dequantise(src: Uint8Array, n: number, nonNegative: boolean, dst = new Float32Array(n)): Float32Array {
  const m = q8Map(nonNegative);
  const absmax = new Float32Array(src.buffer, src.byteOffset + absmaxOffset(n), Math.ceil(n / Q8_BLOCK));
  for (let i = 0; i < n; i++) dst[i] = Math.fround(absmax[i >> 8] * m.values[src[i]]);
  return dst;
}
