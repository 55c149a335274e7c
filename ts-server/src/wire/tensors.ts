// Bytes on the wire <-> Float32Array, little-endian, row-major.
// float32: aligned buffers are viewed, not copied; a misaligned one is copied
// once. bfloat16 (gradients only): widened to float32, exactly (a bfloat16 is
// the upper 16 bits of a float32).
import { DType } from '../../generated/mur/v1/optimizer';
import { currentEngine } from '../engine/engine';
import { InvalidArgument } from '../errors';

export const SUPPORTED_DTYPES = [DType.DTYPE_FLOAT32, DType.DTYPE_BFLOAT16];
/** What a tensor may be sent as where only float32 is kept (parameters, state). */
export const VALUE_DTYPES = [DType.DTYPE_FLOAT32];
/** Gradients may also travel as bfloat16, halving the bytes on the wire. */
export const GRADIENT_DTYPES = [DType.DTYPE_FLOAT32, DType.DTYPE_BFLOAT16];

export function checkDtype(dtype: DType, what: string, allowed: DType[] = VALUE_DTYPES): void {
  if (!allowed.includes(dtype)) {
    const name = DType[dtype] ?? `dtype ${dtype}`;
    throw new InvalidArgument(`${what}: dtype ${name} is not supported here (${allowed.map((d) => DType[d]).join(' or ')})`);
  }
}

/** A Float32Array of the values in `bytes` (float32: a view when 4-byte aligned). */
export function bytesToF32(bytes: Uint8Array, what: string, dtype: DType = DType.DTYPE_FLOAT32): Float32Array {
  if (dtype === DType.DTYPE_BFLOAT16) return bf16ToF32(bytes, what);
  if (bytes.byteLength % 4 !== 0) {
    throw new InvalidArgument(`${what}: ${bytes.byteLength} bytes is not a whole number of float32 values`);
  }
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new Float32Array(bytes.slice().buffer);
}

function bf16ToF32(bytes: Uint8Array, what: string): Float32Array {
  if (bytes.byteLength % 2 !== 0) {
    throw new InvalidArgument(`${what}: ${bytes.byteLength} bytes is not a whole number of bfloat16 values`);
  }
  // Buffer.allocUnsafe: no zero-filling of memory that is overwritten at once.
  const b = Buffer.allocUnsafe(2 * bytes.byteLength);
  return widenBf16Into(bytes, new Float32Array(b.buffer, b.byteOffset, bytes.byteLength / 2));
}

/**
 * bfloat16 bytes widened into `out` (bytes.byteLength / 2 values), exactly.
 * The native engine does it in one vectorised pass; elsewhere a loop. Callers
 * that step often pass a reused `out`: a fresh 16 MB buffer costs more in
 * page faults here (8-20 ms) than the widening itself (0.7 ms native).
 */
export function widenBf16Into(bytes: Uint8Array, out: Float32Array): Float32Array {
  const n = bytes.byteLength / 2;
  const engine = currentEngine();
  if (engine.widenBf16) {
    engine.widenBf16(bytes, out);
    return out;
  }
  const bits = new Uint32Array(out.buffer, out.byteOffset, n);
  for (let i = 0; i < n; i++) bits[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
  return out;
}

/** The bytes of a Float32Array, as a Buffer sharing its memory. */
export function f32ToBytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}
