// Bytes on the wire <-> Float32Array, little-endian, row-major.
// float32: aligned buffers are viewed, not copied; a misaligned one is copied
// once. bfloat16 and float16 (gradients only): widened to float32, exactly
// (every value of either is a float32 value).
import { DType } from '../../generated/mur/v1/optimizer';
import { currentEngine } from '../engine/engine';
import { InvalidArgument } from '../errors';

export const SUPPORTED_DTYPES = [DType.DTYPE_FLOAT32, DType.DTYPE_BFLOAT16, DType.DTYPE_FLOAT16];
/** What a tensor may be sent as where only float32 is kept (parameters, state). */
export const VALUE_DTYPES = [DType.DTYPE_FLOAT32];
/** Gradients may also travel as bfloat16 or float16, halving the bytes on the wire. */
export const GRADIENT_DTYPES = [DType.DTYPE_FLOAT32, DType.DTYPE_BFLOAT16, DType.DTYPE_FLOAT16];
/** The 2-byte gradient dtypes, widened to float32 on arrival. */
export const isHalf = (d: DType) => d === DType.DTYPE_BFLOAT16 || d === DType.DTYPE_FLOAT16;

export function checkDtype(dtype: DType, what: string, allowed: DType[] = VALUE_DTYPES): void {
  if (!allowed.includes(dtype)) {
    const name = DType[dtype] ?? `dtype ${dtype}`;
    throw new InvalidArgument(`${what}: dtype ${name} is not supported here (${allowed.map((d) => DType[d]).join(' or ')})`);
  }
}

/** A Float32Array of the values in `bytes` (float32: a view when 4-byte aligned). */
export function bytesToF32(bytes: Uint8Array, what: string, dtype: DType = DType.DTYPE_FLOAT32): Float32Array {
  if (isHalf(dtype)) {
    if (bytes.byteLength % 2 !== 0) {
      throw new InvalidArgument(`${what}: ${bytes.byteLength} bytes is not a whole number of ${DType[dtype]} values`);
    }
    // Buffer.allocUnsafe: no zero-filling of memory that is overwritten at once.
    const b = Buffer.allocUnsafe(2 * bytes.byteLength);
    return widenInto(dtype, bytes, new Float32Array(b.buffer, b.byteOffset, bytes.byteLength / 2));
  }
  if (bytes.byteLength % 4 !== 0) {
    throw new InvalidArgument(`${what}: ${bytes.byteLength} bytes is not a whole number of float32 values`);
  }
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new Float32Array(bytes.slice().buffer);
}

/** One IEEE half's bits as the bits of the float32 of the same value (subnormals, infinities and NaN included). */
export function halfToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  let k = 0; // subnormal: mant * 2^-24 = 1.f * 2^(-14-k) after k shifts
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    k++;
  }
  return (sign | ((113 - k) << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/**
 * 2-byte gradients (bfloat16 or float16) widened into `out` (bytes.byteLength
 * / 2 values), exactly. The native engine does it in one pass; elsewhere a
 * loop. Callers that step often pass a reused `out`: a fresh large buffer
 * costs more in page faults than the widening itself (docs/data-path.md).
 */
export function widenInto(dtype: DType, bytes: Uint8Array, out: Float32Array): Float32Array {
  const n = bytes.byteLength / 2;
  const engine = currentEngine();
  const native = dtype === DType.DTYPE_BFLOAT16 ? engine.widenBf16?.bind(engine) : engine.widenF16?.bind(engine);
  if (native) {
    native(bytes, out);
    return out;
  }
  const bits = new Uint32Array(out.buffer, out.byteOffset, n);
  if (dtype === DType.DTYPE_BFLOAT16) {
    for (let i = 0; i < n; i++) bits[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
  } else {
    for (let i = 0; i < n; i++) bits[i] = halfToFloatBits(bytes[2 * i] | (bytes[2 * i + 1] << 8));
  }
  return out;
}

/** The bytes of a Float32Array, as a Buffer sharing its memory. */
export function f32ToBytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}
