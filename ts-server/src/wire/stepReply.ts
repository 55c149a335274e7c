// StepReply encoded by hand into one buffer. The generic encoder writes a
// message's bytes fields into growing chunks and joins them (several copies
// and zero-filled allocations of every parameter's bytes); a step's reply is
// almost all parameter bytes, so here they are copied once, into a buffer of
// the exact size. Field numbers are those of proto/mur/v1/optimizer.proto;
// service.test.ts decodes what this writes with the generated decoder.
import { StepReply } from '../../generated/mur/v1/optimizer';

function varintLength(n: number): number {
  let len = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 128) {
    buf[at++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[at++] = n;
  return at;
}

/** A length-delimited field's tag + length + payload size. */
const fieldSize = (payload: number) => 1 + varintLength(payload) + payload;

/**
 * One scratch buffer, reused: grpc-js copies a serialized message into its
 * own framed buffer before serialize() is called again (server-interceptors'
 * serializeMessage), so no reply outlives the next encode. Reusing it spares
 * an allocation of every parameter's bytes per step, and the garbage
 * collections such large external allocations set off.
 */
let scratch = Buffer.allocUnsafe(0);

export function encodeStepReply(r: StepReply): Buffer {
  // Rows of row-sparse steps: a small reply, the generated encoder's; so are L-BFGS rounds (fields 4-6).
  if (r.params.some((p) => p.rows) || r.evaluate || r.round || r.restart) return Buffer.from(StepReply.encode(r).finish());
  const params = r.params.map((p) => {
    const id = Buffer.from(p.paramId, 'utf8');
    const v = p.value!;
    const dims = v.shape.reduce((a, d) => a + varintLength(d), 0);
    const tensor =
      (v.shape.length ? fieldSize(dims) : 0) +
      (v.dtype ? 1 + varintLength(v.dtype) : 0) +
      (v.data.byteLength ? fieldSize(v.data.byteLength) : 0);
    const value = fieldSize(id.length) + fieldSize(tensor);
    return { id, v, dims, tensor, value };
  });
  let size = (r.step ? 1 + varintLength(r.step) : 0) + (r.replayed ? 2 : 0);
  for (const p of params) size += fieldSize(p.value);
  if (scratch.length < size) scratch = Buffer.allocUnsafe(Math.max(size, 2 * scratch.length));
  const buf = scratch.subarray(0, size);
  let at = 0;
  if (r.step) {
    buf[at++] = (1 << 3) | 0;
    at = writeVarint(buf, at, r.step);
  }
  for (const p of params) {
    buf[at++] = (2 << 3) | 2; // params
    at = writeVarint(buf, at, p.value);
    buf[at++] = (1 << 3) | 2; // param_id
    at = writeVarint(buf, at, p.id.length);
    at += p.id.copy(buf, at);
    buf[at++] = (2 << 3) | 2; // value
    at = writeVarint(buf, at, p.tensor);
    if (p.v.shape.length) {
      buf[at++] = (1 << 3) | 2; // shape, packed
      at = writeVarint(buf, at, p.dims);
      for (const d of p.v.shape) at = writeVarint(buf, at, d);
    }
    if (p.v.dtype) {
      buf[at++] = (2 << 3) | 0;
      at = writeVarint(buf, at, p.v.dtype);
    }
    if (p.v.data.byteLength) {
      buf[at++] = (3 << 3) | 2; // data
      at = writeVarint(buf, at, p.v.data.byteLength);
      buf.set(p.v.data, at);
      at += p.v.data.byteLength;
    }
  }
  if (r.replayed) {
    buf[at++] = (3 << 3) | 0;
    buf[at++] = 1;
  }
  if (at !== size) throw new Error(`encodeStepReply: wrote ${at} of ${size} bytes`);
  return buf;
}
