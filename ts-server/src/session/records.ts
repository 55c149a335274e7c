// The record framing of every file of --state-dir (format 2; docs/state-dir.md).
//
//   offset  size  field
//        0     4  magic "MUR2"
//        4     2  format version (2)
//        6     2  kind: 1 key, 2 meta, 3 snapshot, 4 journal record
//        8     4  JSON header length J
//       12     4  reserved (0)
//       16     8  payload length P (float64: exact below 2^53)
//       24     8  sequence number (float64: the journal record's, the snapshot's last)
//       32     4  CRC-32C of bytes 0..31
//       36     4  CRC-32C of the JSON header, its zero padding and the payload
//       40     J  JSON header (UTF-8; names the session it belongs to)
//            pad  zeros to a multiple of 4
//              P  payload (float32 tensors, or the key's bytes)
//
// Reading tells three outcomes apart: a record that passed every check; a
// torn tail (the file ends inside the fixed header, inside the span the
// header announces, or in nothing but zero bytes: a write that never
// finished); and damage (anything else), with what failed and where.
import { crc32c } from './crc32c';

export const FORMAT_VERSION = 2;
export const MAGIC = 0x3252554d; // "MUR2" as little-endian bytes
export const HEADER_BYTES = 40;

export enum Kind {
  Key = 1,
  Meta = 2,
  Snapshot = 3,
  Journal = 4,
}

export interface Frame {
  kind: Kind;
  seq: number;
  json: FrameJson;
  payload: Buffer;
  /** Offset of the record's first byte and one past its last. */
  start: number;
  end: number;
}
/** The JSON header of a record: always an object. */
export type FrameJson = { [k: string]: unknown };

/** A record failed a check: `what` says which, `at` the byte offset of the record in its file. */
export class RecordDamage extends Error {
  constructor(
    readonly at: number,
    readonly what: string,
  ) {
    super(`record at byte ${at}: ${what}`);
  }
}

const padOf = (n: number) => (4 - (n % 4)) % 4;

/** The record as buffers to write in order (the fixed header and JSON first, then each payload). */
export function encodeRecord(kind: Kind, seq: number, json: FrameJson, views: ArrayBufferView[] = []): Buffer[] {
  const payloads = views.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength));
  const text = Buffer.from(JSON.stringify(json), 'utf8');
  const pad = padOf(text.length);
  const head = Buffer.alloc(HEADER_BYTES + text.length + pad);
  text.copy(head, HEADER_BYTES);
  const payloadBytes = payloads.reduce((a, p) => a + p.byteLength, 0);
  let body = crc32c(head.subarray(HEADER_BYTES));
  for (const p of payloads) body = crc32c(p, body);
  head.writeUInt32LE(MAGIC, 0);
  head.writeUInt16LE(FORMAT_VERSION, 4);
  head.writeUInt16LE(kind, 6);
  head.writeUInt32LE(text.length, 8);
  head.writeDoubleLE(payloadBytes, 16);
  head.writeDoubleLE(seq, 24);
  head.writeUInt32LE(crc32c(head.subarray(0, 32)), 32);
  head.writeUInt32LE(body, 36);
  return [head, ...payloads];
}

function allZero(buf: Buffer, from: number): boolean {
  for (let i = from; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * The record at `at`: the record, 'torn' (an unfinished write at the end of
 * the file), or RecordDamage thrown.
 */
export function readRecord(buf: Buffer, at: number): Frame | 'torn' {
  if (buf.length - at < HEADER_BYTES || allZero(buf, at)) return 'torn';
  if (crc32c(buf.subarray(at, at + 32)) !== buf.readUInt32LE(at + 32)) {
    throw new RecordDamage(
      at,
      buf.readUInt32LE(at) === MAGIC ? 'header checksum mismatch' : 'no record header (magic "MUR2" missing, header checksum mismatch)',
    );
  }
  if (buf.readUInt32LE(at) !== MAGIC) throw new RecordDamage(at, 'no record header (magic "MUR2" missing)');
  const version = buf.readUInt16LE(at + 4);
  if (version !== FORMAT_VERSION) throw new RecordDamage(at, `format version ${version}; this server reads version ${FORMAT_VERSION}`);
  const jsonLen = buf.readUInt32LE(at + 8);
  const payloadLen = buf.readDoubleLE(at + 16);
  if (!Number.isSafeInteger(payloadLen) || payloadLen < 0) throw new RecordDamage(at, `payload length ${payloadLen} is not a byte count`);
  const payloadAt = at + HEADER_BYTES + jsonLen + padOf(jsonLen);
  const end = payloadAt + payloadLen;
  if (end > buf.length) return 'torn';
  if (crc32c(buf.subarray(payloadAt, end), crc32c(buf.subarray(at + HEADER_BYTES, payloadAt))) !== buf.readUInt32LE(at + 36)) {
    throw new RecordDamage(at, 'body checksum mismatch (JSON header or payload)');
  }
  let json: unknown;
  try {
    json = JSON.parse(buf.toString('utf8', at + HEADER_BYTES, at + HEADER_BYTES + jsonLen));
  } catch (e) {
    throw new RecordDamage(at, `JSON header does not parse: ${(e as Error).message}`);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new RecordDamage(at, 'JSON header is not an object');
  return {
    kind: buf.readUInt16LE(at + 6),
    seq: buf.readDoubleLE(at + 24),
    json: json as FrameJson,
    payload: buf.subarray(payloadAt, end),
    start: at,
    end,
  };
}

/** The one record a whole file holds (key, meta, snapshot: written by rename, so a torn one is damage too). */
export function readOnly(buf: Buffer, kind: Kind): Frame {
  const r = readRecord(buf, 0);
  if (r === 'torn') throw new RecordDamage(0, buf.length === 0 ? 'empty file' : `cut short (${buf.length} bytes) or zeroed`);
  if (r.kind !== kind) throw new RecordDamage(0, `a record of kind ${r.kind}, expected ${kind} (${Kind[kind]})`);
  if (r.end !== buf.length) throw new RecordDamage(r.end, `${buf.length - r.end} bytes after the record`);
  return r;
}

/** float32 values of a payload (a copy: a Buffer's offset need not be 4-aligned). */
export function floatsOf(payload: Buffer, from: number, count: number): Float32Array {
  const out = new Float32Array(count);
  new Uint8Array(out.buffer).set(payload.subarray(from * 4, (from + count) * 4));
  return out;
}
