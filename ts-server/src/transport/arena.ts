// A session's shared-memory arena (the same-host data plane). Layout:
//   [0, 32)     token: 32 random bytes the client reads back to prove it
//               mapped this server's memory
//   [32, 48)    magic "MUR-ARENA-V2\0\0\0\0" (V2: the control block has the
//               hot-check queue and 16-bit step indices; a V1 client refuses it
//               and uses another transport instead of misreading the lane)
//   [64, 4096)  the fast lane's control block (native/src/lane.cc)
//   [4096, ...) per parameter, 64-byte aligned: its values (the server's
//               live copy, updated in place by each step), then its gradient
//               region (written by the client before a step)
// The memory is a memfd of this process (native/src/arena.cc): nameless, so
// nothing is left behind by a crash of either side.
import { randomBytes } from 'crypto';
import type { NativeAddon } from '../engine/native';

export const ARENA_HEADER_BYTES = 4096;
export const ARENA_MAGIC = 'MUR-ARENA-V2';
const ALIGN = 64;
const align = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

export interface ArenaTensorLayout {
  paramId: string;
  paramOffset: number;
  gradOffset: number;
  elements: number;
}

/** Byte offsets of every parameter and gradient region, and the total size. */
export function arenaLayout(params: Array<{ id: string; size: number }>): { tensors: ArenaTensorLayout[]; bytes: number } {
  let at = ARENA_HEADER_BYTES;
  const tensors = params.map((p) => {
    const paramOffset = at;
    at = align(at + 4 * p.size);
    const gradOffset = at;
    at = align(at + 4 * p.size);
    return { paramId: p.id, paramOffset, gradOffset, elements: p.size };
  });
  return { tensors, bytes: Math.max(at, ARENA_HEADER_BYTES) };
}

export class Arena {
  readonly token: Buffer;
  readonly tensors: ArenaTensorLayout[];
  readonly bytes: number;
  private readonly buffer: ArrayBuffer;
  private fd: number;

  constructor(
    private readonly addon: NativeAddon,
    params: Array<{ id: string; size: number }>,
  ) {
    const layout = arenaLayout(params);
    this.tensors = layout.tensors;
    this.bytes = layout.bytes;
    const { buffer, fd } = addon.arenaCreate(this.bytes);
    this.buffer = buffer;
    this.fd = fd;
    this.token = randomBytes(32);
    const head = new Uint8Array(buffer, 0, 48);
    head.set(this.token, 0);
    head.set(Buffer.from(ARENA_MAGIC, 'ascii'), 32);
  }

  /** The whole mapping (for the fast lane's control block). */
  get memory(): ArrayBuffer {
    return this.buffer;
  }

  /** Where a client on this host opens the arena. */
  get path(): string {
    return `/proc/${process.pid}/fd/${this.fd}`;
  }

  param(i: number): Float32Array {
    const t = this.tensors[i];
    return new Float32Array(this.buffer, t.paramOffset, t.elements);
  }

  grad(i: number): Float32Array {
    const t = this.tensors[i];
    return new Float32Array(this.buffer, t.gradOffset, t.elements);
  }

  /** No new client can open it; mappings (ours, clients') live until released. */
  close(): void {
    if (this.fd < 0) return;
    this.addon.arenaCloseFd(this.fd);
    this.fd = -1;
  }
}
