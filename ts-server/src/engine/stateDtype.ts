// How a session stores its optimizer's per-element state (OptimizerSpec
// state_dtype): "float32" (the default), "bfloat16" (the high half of each
// float32: half the bytes, computed in float32) or "q8" (8-bit block-quantised
// with a dynamic map: 1 + 4/256 bytes an element, computed in float32;
// engine/q8.ts, native/src/q8map.h). The native engine stores both as named
// and rounds each bfloat16 store stochastically in its kernels
// (native/src/bf16-inl.h defines the rounding); the tfjs engines accept them
// and keep float32. One-element slots (ASGD's eta and mu, NAdam's mu_product,
// Madam's bound) are float32 whatever the dtype. Host code that narrows
// without a rounding stream (a checkpoint imported into a bfloat16 session,
// a slot's first fill) rounds to nearest even, here.

export const STATE_DTYPES = ['float32', 'bfloat16', 'q8'] as const;
export type StateDtype = (typeof STATE_DTYPES)[number];

/** A session's state format: its dtype and the seed of bfloat16's stochastic rounding. */
export interface StateFormat {
  dtype: StateDtype;
  seed: number;
}

export const FLOAT32_STATE: StateFormat = { dtype: 'float32', seed: 0 };

/** Bytes of a full-size slot of n elements stored as `dtype` (q8: n codes, padded to 4, and a float32 per 256). */
export function slotBytes(dtype: StateDtype, n: number): number {
  if (dtype === 'q8') return Math.ceil(n / 4) * 4 + 4 * Math.ceil(n / 256);
  return (dtype === 'bfloat16' ? 2 : 4) * n;
}

/** float32 values narrowed to bfloat16 bits, rounded to nearest even (NaN stays NaN). */
export function narrowBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000)
      dst[i] = (b >>> 16) | 0x40; // NaN: keep it quiet and NaN
    else dst[i] = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return dst;
}

/** bfloat16 bits widened to float32 (exact). */
export function widenBf16(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}
