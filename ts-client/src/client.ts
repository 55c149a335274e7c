// A typed client for mur: promises for the unary calls, async iterators for
// the streams, Float32Array in and out with no per-element copies.
import * as fs from 'fs';
import * as grpc from '@grpc/grpc-js';
import {
  DType,
  OptimizerClient,
  type ArenaInfo,
  type OpenArenaRequest,
  type Capabilities,
  type CloseSessionReply,
  type CloseSessionRequest,
  type CreateSessionReply,
  type CreateSessionRequest,
  type GetCapabilitiesRequest,
  type StepReply,
  type StepRequest,
  type StateFrame,
  type StepStreamReply,
  type StepStreamRequest,
  type StateHeader,
  type TensorChunk,
} from '../generated/mur/v1/optimizer';
import { DataPlane, hostOf } from './dataPlane';
import { fromServiceError, MurError } from './errors';

export type Hypers = Record<string, number | boolean | number[]>;

export interface Spec {
  optimizer: string;
  rule: string;
  defaults?: Hypers;
  groups?: Record<string, Hypers>;
}

export interface ParamInit {
  id: string;
  name?: string;
  shape: number[];
  values: Float32Array;
  group?: string;
}

export type Values = Map<string, Float32Array>;
export type Overrides = Record<string, Hypers>;

/**
 * How tensors travel. "shm": the session's shared-memory arena on the
 * server's host (gradients are written into it and parameters read from it
 * with pwrite/pread on the server's memfd; gRPC carries only control);
 * "tcp": a step's bytes on a plain TCP connection (TLS when the channel uses
 * TLS) to the server's data port, beside gRPC (dataPlane.ts; for a server on
 * another host); "grpc": tensors inside messages; "auto" (default): shm when
 * the server offers it and its arena opens from here (same host, same user),
 * else tcp when the server has a data port that answers from here, else grpc.
 */
export type Transport = 'auto' | 'shm' | 'tcp' | 'grpc';
const TRANSPORTS: Transport[] = ['auto', 'shm', 'tcp', 'grpc'];

export interface SessionOptions {
  transport?: Transport;
}

/** A session's arena as this client reaches it: the server's memfd through /proc. */
class ArenaFile {
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

const F32 = DType.DTYPE_FLOAT32;
const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
/** A Float32Array over a Buffer (copied only when misaligned). */
function floats(b: Buffer): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

function* chunksOf(paramId: string, slot: string, a: Float32Array, chunkBytes: number): Generator<TensorChunk> {
  const per = Math.max(1, Math.floor(chunkBytes / 4));
  let offset = 0;
  do {
    const part = a.subarray(offset, offset + per);
    yield { paramId, slot, offset, totalElements: a.length, dtype: F32, data: bytes(part) };
    offset += part.length;
  } while (offset < a.length);
}

/** Reassembles chunked tensors by parameter id. */
class Reassembly {
  readonly values: Values = new Map();
  add(c: TensorChunk) {
    let a = this.values.get(c.paramId);
    if (!a) this.values.set(c.paramId, (a = new Float32Array(c.totalElements)));
    a.set(floats(c.data), c.offset);
  }
}

type UnaryMethod<Req, Res> = (req: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown;

/** Failures a retry may cure: the server unreachable (down, restarting) or too slow to answer. */
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Call metadata carrying a session's token (proto: authorization: Bearer). */
function auth(token: string): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set('authorization', `Bearer ${token}`);
  return m;
}

/**
 * TLS to a server started with --tls-cert/--tls-key (PEM contents): `ca`, the
 * CA that signed the server's certificate (default: the system's roots);
 * `cert` and `key`, this client's certificate for a server that requires one
 * (--tls-client-ca).
 */
export interface TlsOptions {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

export interface ClientOptions extends grpc.ChannelOptions {
  /** Connect with TLS (omitted: plaintext). */
  tls?: TlsOptions;
  /**
   * Every call's deadline in ms (default 120000): a unary call, or a whole
   * ExportState/ImportState stream. A StepStream kept open by the caller
   * (session.stream()) has none. 0: no deadline.
   */
  deadlineMs?: number;
  /**
   * How many times an idempotent call (capabilities, a step with its number,
   * export, import, OpenArena, close) is retried after UNAVAILABLE or
   * DEADLINE_EXCEEDED, with exponential backoff and jitter (default 5; 0: never).
   * A retried step keeps its step number: a server that applied it answers
   * with the remembered result instead of applying it twice. CreateSession is
   * never retried (it is not idempotent).
   */
  retries?: number;
  /** The first retry's backoff in ms, doubled per retry up to 5 s (default 100). */
  retryBackoffMs?: number;
}

export class MurClient {
  readonly raw: OptimizerClient;
  private caps?: Capabilities;
  /** @internal */
  readonly deadlineMs: number;
  /** @internal */
  readonly retries: number;
  private readonly retryBackoffMs: number;

  /** `options`: grpc channel options, and `tls` to connect with TLS or mutual TLS. */
  constructor(
    readonly address: string,
    /** @internal The options as given (the tfjs adapter's worker makes its own client from them). */
    readonly options: ClientOptions = {},
  ) {
    const { tls, deadlineMs = 120_000, retries = 5, retryBackoffMs = 100, ...channel } = options;
    for (const [k, v] of Object.entries({ deadlineMs, retries, retryBackoffMs })) {
      if (!Number.isFinite(v) || v < 0) throw new TypeError(`${k}: ${v} must be a number >= 0`);
    }
    this.deadlineMs = deadlineMs;
    this.retries = Math.floor(retries);
    this.retryBackoffMs = retryBackoffMs;
    if (tls && (tls.cert === undefined) !== (tls.key === undefined)) throw new TypeError('tls: cert and key go together (a client certificate needs its key)');
    const credentials = tls ? grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null) : grpc.credentials.createInsecure();
    this.raw = new OptimizerClient(address, credentials, {
      'grpc.max_receive_message_length': -1,
      'grpc.max_send_message_length': -1,
      ...channel,
    });
  }

  /** @internal Call options with this client's deadline, from now. */
  callOptions(): Partial<grpc.CallOptions> {
    return this.deadlineMs > 0 ? { deadline: new Date(Date.now() + this.deadlineMs) } : {};
  }

  /** Promisifies one unary call (with the deadline), mapping failures to MurError subclasses. */
  private unary<Req, Res>(method: UnaryMethod<Req, Res>, req: Req, metadata = new grpc.Metadata()): Promise<Res> {
    return new Promise((resolve, reject) =>
      method.call(this.raw, req, metadata, this.callOptions(), (e, r) => (e ? reject(fromServiceError(e)) : resolve(r))),
    );
  }

  /**
   * @internal Runs an idempotent operation, retrying it after UNAVAILABLE or
   * DEADLINE_EXCEEDED up to `retries` times with backoff; `op` gets the
   * attempt number (0 first), e.g. to re-map a restarted server's arena.
   */
  async retrying<T>(op: (attempt: number) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await op(attempt);
      } catch (e) {
        if (!(e instanceof MurError) || !RETRYABLE.has(e.code) || attempt >= this.retries) throw e;
        const backoff = Math.min(5000, this.retryBackoffMs * 2 ** attempt);
        await sleep(backoff * (0.5 + Math.random() / 2));
      }
    }
  }

  async capabilities(): Promise<Capabilities> {
    this.caps ??= await this.retrying(() => this.unary<GetCapabilitiesRequest, Capabilities>(this.raw.getCapabilities, {}));
    return this.caps;
  }

  /** @internal The capabilities asked again, once (a restarted server has another data port). */
  async freshCapabilities(): Promise<Capabilities> {
    this.caps = await this.unary<GetCapabilitiesRequest, Capabilities>(this.raw.getCapabilities, {});
    return this.caps;
  }

  /**
   * @internal The tcp data plane of a server with these capabilities, connected;
   * throws an Error saying why there is none from here.
   */
  async openDataPlane(caps: Capabilities): Promise<DataPlane> {
    if (!caps.transports.includes('tcp') || !caps.dataPort) {
      throw new Error(`the server at ${this.address} has no data port (it listens on a Unix socket, or was started with --data-port off)`);
    }
    const host = hostOf(this.address);
    if (host === null) throw new Error(`${this.address} has no host to reach a data port at`);
    const { tls } = this.options;
    const data = new DataPlane(host, caps.dataPort, tls && { ca: tls.ca, cert: tls.cert, key: tls.key });
    await data.connect(this.deadlineMs);
    return data;
  }

  /**
   * Creates a session; values beyond the message limit go through ImportState
   * chunks. `options.transport` picks the data plane (default "auto").
   */
  async createSession(spec: Spec, params: ParamInit[], options: SessionOptions = {}): Promise<MurSession> {
    const transport = options.transport ?? 'auto';
    if (!TRANSPORTS.includes(transport)) throw new TypeError(`transport: ${JSON.stringify(transport)} is not auto, shm, tcp or grpc`);
    const caps = await this.capabilities();
    // Asked for tcp: checked before the session exists, so a refusal leaves nothing behind.
    let data: DataPlane | null = null;
    if (transport === 'tcp') {
      try {
        data = await this.openDataPlane(caps);
      } catch (e) {
        throw new Error(`transport "tcp" is not possible here: ${(e as Error).message}`);
      }
    }
    const total = params.reduce((n, p) => n + p.values.byteLength, 0);
    const inline = total < caps.maxMessageBytes * 0.9;
    const reply = await this.unary<CreateSessionRequest, CreateSessionReply>(this.raw.createSession, {
      spec: { optimizer: spec.optimizer, rule: spec.rule, defaults: spec.defaults, groups: spec.groups ?? {} },
      params: params.map((p) => ({
        id: p.id, name: p.name ?? p.id, shape: p.shape, dtype: F32, group: p.group ?? '',
        data: inline ? bytes(p.values) : Buffer.alloc(0),
      })),
    }).catch((e) => {
      void data?.close();
      throw e;
    });
    const session = new MurSession(this, reply.sessionId, reply.sessionToken, new Map(params.map((p) => [p.id, p.shape])), caps);
    if (data) session.useDataPlane(data);
    if (!inline) {
      await session.importState(params.map((p) => ({ paramId: p.id, slot: '', values: p.values }))).catch(async (e) => {
        await session.close().catch(() => undefined);
        throw e;
      });
    }
    if (transport === 'auto' || transport === 'shm') {
      try {
        if (!caps.transports.includes('shm')) throw new Error(`the server (engine '${caps.backend}') offers no shm transport`);
        const info = await this.unary<OpenArenaRequest, ArenaInfo>(this.raw.openArena, { sessionId: reply.sessionId }, auth(reply.sessionToken));
        session.useArena(new ArenaFile(info));
      } catch (e) {
        if (transport === 'shm') {
          await session.close().catch(() => undefined);
          throw new Error(`transport "shm" is not possible here: ${(e as Error).message}`);
        }
      }
    }
    if (transport === 'auto' && session.transport === 'grpc') {
      // Any failure to reach the data port from here: gRPC, silently.
      const plane = await this.openDataPlane(caps).catch(() => null);
      if (plane) session.useDataPlane(plane);
    }
    return session;
  }

  close(): void {
    this.raw.close();
  }

  /** @internal */
  call<Req, Res>(method: UnaryMethod<Req, Res>, req: Req, metadata?: grpc.Metadata): Promise<Res> {
    return this.unary(method, req, metadata);
  }
}

/**
 * A session's complete state as ExportState gives it: the spec as it is now,
 * each parameter's optimizer step count, the last step number applied, and
 * every tensor (parameters and optimizer slots). `session.restore(cp)` puts it
 * back; a resumed optimizer continues exactly as an uninterrupted one.
 */
export interface Checkpoint {
  spec?: Spec;
  /** Optimizer steps applied to each parameter (Adam's bias correction counts them). */
  stepCounts: Record<string, number>;
  /** The last client step number applied (0: none). */
  lastStep: number;
  tensors: SlotValues[];
}

export interface SlotValues {
  paramId: string;
  /** "" for the parameter; an optimizer slot ("exp_avg"), or "rule.<slot>". */
  slot: string;
  values: Float32Array;
}

export class MurSession {
  private nextStep = 1;
  private arena: ArenaFile | null = null;
  private data: DataPlane | null = null;

  constructor(
    private readonly client: MurClient,
    readonly id: string,
    private readonly token: string,
    private readonly shapes: Map<string, number[]>,
    private readonly caps: Capabilities,
  ) {}

  /**
   * One optimizer step. Returns the new values of the parameters that had a
   * gradient. Through the arena (shm) or the data port (tcp) when the session
   * has one; else unary when it fits in one message, else streamed in chunks.
   */
  async step(grads: Values | Record<string, Float32Array>, overrides: Overrides = {}, step = this.nextStep): Promise<Values> {
    const g = grads instanceof Map ? grads : new Map(Object.entries(grads));
    // Retried under the same step number: a server that applied it replays its result.
    const out = await this.client.retrying(async (attempt) => {
      if (attempt > 0 && this.arena) await this.reopenArena();
      if (attempt > 0 && this.data) await this.refindDataPort();
      return this.stepOnce(g, overrides, step);
    });
    this.nextStep = step + 1;
    return out;
  }

  /** The step number the next step() uses by default. */
  get next(): number {
    return this.nextStep;
  }

  /** After a failure: the arena again (a restarted server made a new one), or grpc if it has none. */
  private async reopenArena(): Promise<void> {
    const old = this.arena!;
    try {
      const info = await this.client.call<OpenArenaRequest, ArenaInfo>(this.client.raw.openArena, { sessionId: this.id }, this.auth());
      if (info.path === old.info.path && Buffer.from(info.token).equals(Buffer.from(old.info.token))) return;
      this.arena = new ArenaFile(info);
    } catch (e) {
      if (e instanceof MurError && RETRYABLE.has(e.code)) throw e;
      this.arena = null; // the restarted server cannot offer shm here: continue over grpc
    }
    old.close();
  }

  /**
   * Before a retry on tcp: a server restarted on its --state-dir listens on
   * another data port, which GetCapabilities gives; one that came back
   * without a data port leaves the session on gRPC.
   */
  private async refindDataPort(): Promise<void> {
    const caps = await this.client.freshCapabilities();
    const data = this.data!;
    void data.close();
    if (caps.transports.includes('tcp') && caps.dataPort) data.port = caps.dataPort;
    else this.data = null;
  }

  private async stepOnce(g: Values, overrides: Overrides, step: number): Promise<Values> {
    const size = [...g.values()].reduce((n, a) => n + a.byteLength, 0);
    let out: Values;
    const arena = this.arena;
    if (arena) {
      for (const [id, a] of g) arena.writeGrad(id, a);
      await this.client.call<StepRequest, StepReply>(this.client.raw.step, {
        sessionId: this.id, step, groupOverrides: overrides, grads: [], arenaGrads: [...g.keys()].map((id) => arena.indexOf(id)),
      }, this.auth());
      out = new Map([...g.keys()].map((id) => [id, arena.readParam(id)]));
    } else if (this.data) {
      out = await this.stepTcp(this.data, g, overrides, step);
    } else if (size < this.caps.maxMessageBytes * 0.9) {
      const reply = await this.client.call<StepRequest, StepReply>(this.client.raw.step, {
        sessionId: this.id, step, groupOverrides: overrides, arenaGrads: [],
        grads: [...g].map(([paramId, a]) => ({ paramId, grad: { shape: this.shapes.get(paramId) ?? [a.length], dtype: F32, data: bytes(a) } })),
      }, this.auth());
      out = new Map(reply.params.map((p) => [p.paramId, floats(p.value!.data)]));
    } else {
      const stream = new StepStream(this.client.raw.stepStream(this.auth(), this.client.callOptions()), this.id, this.caps.chunkBytes);
      try {
        out = await stream.step(g, overrides, step);
      } finally {
        stream.close();
      }
    }
    return out;
  }

  private async stepTcp(data: DataPlane, g: Values, overrides: Overrides, step: number): Promise<Values> {
    // The server frames the gradient bytes by the session's shapes: an array
    // of another length would shift every byte after it, so it never leaves.
    const grads = [...g].map(([paramId, a]) => {
      const shape = this.shapes.get(paramId) ?? [a.length];
      const elements = shape.reduce((x, d) => x * d, 1);
      if (!(a instanceof Float32Array)) throw new TypeError(`gradient of '${paramId}' is not a Float32Array`);
      if (a.length !== elements) throw new TypeError(`gradient of '${paramId}': ${a.length} elements, parameter has ${elements} (shape ${JSON.stringify(shape)})`);
      return { paramId, grad: { shape, dtype: F32, data: Buffer.alloc(0) } };
    });
    const { values } = await data.step(this.token, { sessionId: this.id, step, groupOverrides: overrides, arenaGrads: [], grads }, [...g.values()], this.client.deadlineMs);
    return values;
  }

  private auth(): grpc.Metadata {
    return auth(this.token);
  }

  /** "shm" when steps go through the session's shared-memory arena, "tcp" through the server's data port, else "grpc". */
  get transport(): 'shm' | 'tcp' | 'grpc' {
    return this.arena ? 'shm' : this.data ? 'tcp' : 'grpc';
  }

  /** @internal */
  useArena(a: ArenaFile): void {
    this.arena = a;
    void this.data?.close();
    this.data = null;
  }

  /** @internal */
  useDataPlane(d: DataPlane): void {
    this.data = d;
  }

  /** A StepStream kept open for many steps (one round trip of chunks per step). */
  stream(): StepStream {
    return new StepStream(this.client.raw.stepStream(this.auth()), this.id, this.caps.chunkBytes);
  }

  /** Every tensor of the session (parameters and state), as an async iterator. */
  async *exportState(): AsyncGenerator<SlotValues> {
    for await (const t of this.frames()) if (!('lastStep' in t)) yield t;
  }

  /** The whole state with its header (step counts, last step, spec): what restore() takes. */
  checkpoint(): Promise<Checkpoint> {
    return this.client.retrying(async () => {
      let header: StateHeader | undefined;
      const tensors: SlotValues[] = [];
      for await (const t of this.frames()) {
        if ('lastStep' in t) header = t;
        else tensors.push(t);
      }
      if (!header) throw new Error('ExportState sent no StateHeader');
      const spec = header.spec && { optimizer: header.spec.optimizer, rule: header.spec.rule, defaults: header.spec.defaults as Hypers, groups: header.spec.groups as Record<string, Hypers> };
      return { spec, stepCounts: Object.fromEntries(header.stepCounts.map((c) => [c.paramId, c.steps])), lastStep: header.lastStep, tensors };
    });
  }

  /**
   * Puts a checkpoint back (this session's or another of the same optimizer
   * and rule): tensors, step counts, last step and spec, all or nothing. The
   * next step() continues the checkpoint's numbering (lastStep + 1).
   */
  async restore(cp: Checkpoint): Promise<void> {
    await this.importState(cp.tensors, cp);
  }

  private async *frames(): AsyncGenerator<SlotValues | StateHeader> {
    const call = this.client.raw.exportState({ sessionId: this.id }, this.auth(), this.client.callOptions());
    const parts = new Map<string, Float32Array>();
    try {
      for await (const f of call as AsyncIterable<StateFrame>) {
        if (f.frame?.$case === 'header') yield f.frame.value;
        if (f.frame?.$case !== 'chunk') continue;
        const c = f.frame.value;
        const key = `${c.paramId}\0${c.slot}`;
        let a = parts.get(key);
        if (!a) parts.set(key, (a = new Float32Array(c.totalElements)));
        a.set(floats(c.data), c.offset);
        if (c.offset + c.data.byteLength / 4 === c.totalElements) {
          parts.delete(key);
          yield { paramId: c.paramId, slot: c.slot, values: a };
        }
      }
    } catch (e) {
      throw fromServiceError(e as grpc.ServiceError);
    }
  }

  /**
   * Replaces parameters and/or state slots, all or nothing. With `header`
   * (a Checkpoint's), also the step counts, last step number and spec; the
   * next step() then continues at header.lastStep + 1.
   */
  async importState(tensors: SlotValues[], header?: Omit<Checkpoint, 'tensors'>): Promise<number> {
    const value: StateHeader = { sessionId: this.id, stepCounts: [], lastStep: 0 };
    if (header) {
      value.stepCounts = Object.entries(header.stepCounts).map(([paramId, steps]) => ({ paramId, steps }));
      value.lastStep = header.lastStep;
      if (header.spec) value.spec = { optimizer: header.spec.optimizer, rule: header.spec.rule, defaults: header.spec.defaults, groups: header.spec.groups ?? {} };
    }
    const n = await this.client.retrying(
      () =>
        new Promise<number>((resolve, reject) => {
          const call = this.client.raw.importState(this.auth(), this.client.callOptions(), (e, r) => (e ? reject(fromServiceError(e)) : resolve(r.tensorsImported)));
          call.write({ frame: { $case: 'header', value } });
          for (const t of tensors) for (const c of chunksOf(t.paramId, t.slot, t.values, this.caps.chunkBytes)) call.write({ frame: { $case: 'chunk', value: c } });
          call.end();
        }),
    );
    if (header && header.lastStep > 0) this.nextStep = header.lastStep + 1;
    return n;
  }

  async close(): Promise<void> {
    this.arena?.close();
    this.arena = null;
    const closing = this.data?.close();
    this.data = null;
    await closing;
    await this.client.retrying(async (attempt) => {
      try {
        await this.client.call<CloseSessionRequest, CloseSessionReply>(this.client.raw.closeSession, { sessionId: this.id }, this.auth());
      } catch (e) {
        // A retried close whose first attempt went through finds the session gone.
        if (!(attempt > 0 && e instanceof MurError && e.code === grpc.status.NOT_FOUND)) throw e;
      }
    });
  }
}

/** One open StepStream: step() sends a step's chunks and resolves with its reply. */
export class StepStream {
  private readonly replies: AsyncIterator<StepStreamReply>;

  constructor(private readonly call: grpc.ClientDuplexStream<StepStreamRequest, StepStreamReply>, private readonly sessionId: string, private readonly chunkBytes: number) {
    this.replies = (call as AsyncIterable<StepStreamReply>)[Symbol.asyncIterator]();
  }

  async step(grads: Values, overrides: Overrides, step: number): Promise<Values> {
    this.call.write({ frame: { $case: 'begin', value: { sessionId: this.sessionId, step, groupOverrides: overrides } } });
    for (const [id, a] of grads) for (const c of chunksOf(id, '', a, this.chunkBytes)) this.call.write({ frame: { $case: 'grad', value: c } });
    this.call.write({ frame: { $case: 'end', value: {} } });
    const out = new Reassembly();
    try {
      for (;;) {
        const r = await this.replies.next();
        if (r.done) throw new Error('the server closed the stream before StepDone');
        const f = r.value.frame;
        if (f?.$case === 'param') out.add(f.value);
        else if (f?.$case === 'done') return out.values;
      }
    } catch (e) {
      if ((e as grpc.ServiceError).code !== undefined) throw fromServiceError(e as grpc.ServiceError);
      throw e;
    }
  }

  close(): void {
    this.call.end();
  }
}
