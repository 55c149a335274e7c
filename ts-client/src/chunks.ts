// Float32Array <-> bytes, and tensors cut into ordered TensorChunks (steps and
// checkpoints beyond one message) and put back together.
import { DType, type TensorChunk } from '../generated/mur/v1/optimizer';

export const F32 = DType.DTYPE_FLOAT32;

/** The bytes of a Float32Array, sharing its memory. */
export const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** A Float32Array over a Buffer (copied only when misaligned). */
export function floats(b: Uint8Array): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** One tensor as chunks of at most `chunkBytes` (at least one chunk, so an empty tensor arrives too). */
export function* chunksOf(paramId: string, slot: string, a: Float32Array, chunkBytes: number): Generator<TensorChunk> {
  const per = Math.max(1, Math.floor(chunkBytes / 4));
  let offset = 0;
  do {
    const part = a.subarray(offset, offset + per);
    yield { paramId, slot, offset, totalElements: a.length, dtype: F32, data: bytes(part) };
    offset += part.length;
  } while (offset < a.length);
}

/** Chunks put back together, by parameter id and slot, in the order the server sends them. */
export class Reassembly {
  private readonly parts = new Map<string, Float32Array>();

  /** Adds one chunk; returns its tensor once this chunk completed it. */
  add(c: TensorChunk): Float32Array | null {
    const key = `${c.paramId}\0${c.slot}`;
    let a = this.parts.get(key);
    if (!a) this.parts.set(key, (a = new Float32Array(c.totalElements)));
    a.set(floats(c.data), c.offset);
    if (c.offset + c.data.byteLength / 4 !== c.totalElements) return null;
    this.parts.delete(key);
    return a;
  }
}
