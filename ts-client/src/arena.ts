// The "shm" plane: a session's shared-memory arena as this client reaches it,
// the server's memfd through /proc (same host, same user). Gradients are
// written into the arena and parameters read from it with pwrite/pread; the
// Step call carries only the arena indices. An L-BFGS round the same way:
// the server writes the point it asks about (or the step's result) into the
// parameter regions, read back for every parameter.
import * as fs from 'fs';
import type { ArenaInfo, OpenArenaRequest, StepReply, StepRequest } from '../generated/mur/v1/optimizer';
import { isRetryable } from './connection';
import { bytes } from './chunks';
import { GrpcPlane } from './grpcPlane';
import type { Plane, Round, RoundReply, SessionLink } from './plane';
import type { Overrides, Values } from './types';

/** The arena file of one session, opened and checked to be this server's. */
export class ArenaFile {
  private readonly fd: number;
  private readonly index: Map<string, number>;

  constructor(readonly info: ArenaInfo) {
    this.fd = fs.openSync(info.path, 'r+');
    const token = Buffer.alloc(32);
    fs.readSync(this.fd, token, 0, 32, 0);
    if (!token.equals(Buffer.from(info.token))) {
      fs.closeSync(this.fd);
      throw new Error(`${info.path} is not this server's arena (another host or pid namespace)`);
    }
    this.index = new Map(info.tensors.map((t, i) => [t.paramId, i]));
  }

  /** True when `info` describes this same arena (a server that kept it). */
  is(info: ArenaInfo): boolean {
    return info.path === this.info.path && Buffer.from(info.token).equals(Buffer.from(this.info.token));
  }

  indexOf(id: string): number {
    const i = this.index.get(id);
    if (i === undefined) throw new TypeError(`parameter '${id}' is not in the session's arena`);
    return i;
  }

  writeGrad(id: string, a: Float32Array): void {
    const t = this.info.tensors[this.indexOf(id)];
    if (a.length !== t.elements) throw new TypeError(`gradient of '${id}': ${a.length} elements, parameter has ${t.elements}`);
    fs.writeSync(this.fd, bytes(a), 0, a.byteLength, t.gradOffset);
  }

  readParam(id: string): Float32Array {
    const t = this.info.tensors[this.indexOf(id)];
    const out = new Float32Array(t.elements);
    fs.readSync(this.fd, bytes(out), 0, out.byteLength, t.paramOffset);
    return out;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** The session's arena, asked of the server (OpenArena) and opened here; throws an Error saying why not. */
export async function openArena(s: SessionLink): Promise<ArenaFile> {
  if (!s.caps.transports.includes('shm')) throw new Error(`the server (engine '${s.caps.backend}') offers no shm transport`);
  const info = await s.conn.call<OpenArenaRequest, ArenaInfo>(
    s.conn.raw.openArena.bind(s.conn.raw),
    { sessionId: s.id, overlap: false },
    s.auth(),
  );
  return new ArenaFile(info);
}

export class ShmPlane implements Plane {
  readonly name = 'shm';

  constructor(
    private readonly s: SessionLink,
    private readonly arena: ArenaFile,
  ) {}

  async step(g: Values, overrides: Overrides, step: number): Promise<Values> {
    await this.send(g, overrides, step);
    return new Map([...g.keys()].map((id) => [id, this.arena.readParam(id)]));
  }

  async round(g: Values, overrides: Overrides, step: number, round: Round): Promise<RoundReply> {
    const reply = await this.send(g, overrides, step, round);
    const values = new Map([...this.s.shapes.keys()].map((id) => [id, this.arena.readParam(id)]));
    return { evaluate: reply.evaluate, round: reply.round, restart: reply.restart, values };
  }

  private send(g: Values, overrides: Overrides, step: number, round?: Round): Promise<StepReply> {
    const arena = this.arena;
    for (const [id, a] of g) arena.writeGrad(id, a);
    return this.s.conn.call<StepRequest, StepReply>(
      this.s.conn.raw.step.bind(this.s.conn.raw),
      {
        sessionId: this.s.id,
        step,
        ...round,
        groupOverrides: overrides,
        grads: [],
        arenaGrads: [...g.keys()].map((id) => arena.indexOf(id)),
      },
      this.s.auth(),
    );
  }

  /** The arena again: a restarted server made a new one; one that cannot offer shm here leaves the session on gRPC. */
  async recover(): Promise<Plane> {
    let next: Plane;
    try {
      const info = await this.s.conn.call<OpenArenaRequest, ArenaInfo>(
        this.s.conn.raw.openArena.bind(this.s.conn.raw),
        { sessionId: this.s.id, overlap: false },
        this.s.auth(),
      );
      if (this.arena.is(info)) return this;
      next = new ShmPlane(this.s, new ArenaFile(info));
    } catch (e) {
      if (isRetryable(e)) throw e;
      next = new GrpcPlane(this.s);
    }
    await this.close();
    return next;
  }

  close(): Promise<void> {
    this.arena.close();
    return Promise.resolve();
  }
}
