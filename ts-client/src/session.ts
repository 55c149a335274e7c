// One server session: steps (on whichever plane the client chose, retried
// under their number), checkpoints and close.
import * as grpc from '@grpc/grpc-js';
import type { Capabilities, CloseSessionReply, CloseSessionRequest, StateFrame, StateHeader } from '../generated/mur/v1/optimizer';
import { chunksOf, Reassembly } from './chunks';
import { auth, type Connection } from './connection';
import { fromServiceError, MurError } from './errors';
import { GrpcPlane } from './grpcPlane';
import type { Plane, SessionLink } from './plane';
import { stepRows, type RowGrad } from './rows';
import { stepClosure, type Closure } from './closure';
import { StepStream } from './stream';
import type { Checkpoint, Hypers, Overrides, SlotValues, Spec, Values } from './types';

/**
 * The server says the session's arena is gone (mur-reason arena-gone): it
 * restarted on its --state-dir between two steps, and the session came back
 * without it.
 */
const arenaGone = (e: unknown): boolean => e instanceof MurError && e.reason === 'arena-gone';

export class MurSession {
  private nextStep = 1;
  private plane: Plane;
  private closing: Promise<void> | null = null;
  /** @internal What the session's planes know of it. */
  readonly link: SessionLink;

  /** @internal Sessions are made by MurClient.createSession. */
  constructor(
    conn: Connection,
    readonly id: string,
    token: string,
    shapes: Map<string, number[]>,
    caps: Capabilities,
  ) {
    this.link = { conn, id, token, caps, shapes, auth: () => auth(token) };
    this.plane = new GrpcPlane(this.link);
  }

  /**
   * One optimizer step. Returns the new values of the parameters that had a
   * gradient. Through the arena (shm) or the data port (tcp) when the session
   * has one; else unary when it fits in one message, else streamed in chunks.
   */
  async step(grads: Values | Record<string, Float32Array>, overrides: Overrides = {}, step = this.nextStep): Promise<Values> {
    const g = grads instanceof Map ? grads : new Map(Object.entries(grads));
    const out = await this.onPlane((plane) => plane.step(g, overrides, step));
    this.nextStep = step + 1;
    return out;
  }

  /**
   * `send` on the session's plane, retried (a step or round under the same
   * number: a server that applied it replays its result); before a retry,
   * or when the server says the arena is gone, the plane recovers.
   */
  private onPlane<T>(send: (plane: Plane) => Promise<T>): Promise<T> {
    return this.link.conn.retrying(async (attempt) => {
      if (attempt > 0) this.plane = await this.plane.recover();
      try {
        return await send(this.plane);
      } catch (e) {
        if (!arenaGone(e)) throw e;
        this.plane = await this.plane.recover();
        return send(this.plane);
      }
    });
  }

  /**
   * One step with row-sparse gradients (an embedding table's touched rows,
   * rows.ts): coalesced, sent in a Step message whatever the transport;
   * returns the new values of those rows. Taken by sparseadam, sgd (no
   * momentum or weight decay) and adagrad (no weight decay), as torch.optim.
   */
  async stepRows(
    grads: Map<string, RowGrad> | Record<string, RowGrad>,
    overrides: Overrides = {},
    step = this.nextStep,
  ): Promise<Map<string, RowGrad>> {
    const g = grads instanceof Map ? grads : new Map(Object.entries(grads));
    const out = await this.link.conn.retrying(() => stepRows(this.link, g, overrides, step));
    this.nextStep = step + 1;
    return out;
  }

  /**
   * One L-BFGS step (optimizer "lbfgs"): calls `closure` once at the current
   * parameters (null) and again at each point the server asks about (their
   * values), as torch's LBFGS.step(closure); returns the first loss, the
   * parameters after the step and how many times the closure ran (closure.ts).
   * Each round travels on the session's plane (the arena on shm).
   */
  async stepClosure(
    closure: Closure,
    overrides: Overrides = {},
    step = this.nextStep,
  ): Promise<{ loss: number; values: Values; evaluations: number }> {
    const out = await stepClosure(closure, (g, round) => this.onPlane((plane) => plane.round(g, overrides, step, round)));
    this.nextStep = step + 1;
    return out;
  }

  /** The step number the next step() uses by default. */
  get next(): number {
    return this.nextStep;
  }

  /** "shm" when steps go through the session's shared-memory arena, "tcp" through the server's data port, else "grpc". */
  get transport(): 'shm' | 'tcp' | 'grpc' {
    return this.plane.name;
  }

  /** @internal Steps go on `plane` from now on (the one before is closed). */
  async use(plane: Plane): Promise<void> {
    const old = this.plane;
    this.plane = plane;
    await old.close();
  }

  /** A StepStream kept open for many steps (one round trip of chunks per step). */
  stream(): StepStream {
    return new StepStream(this.link.conn.raw.stepStream(this.link.auth()), this.id, this.link.caps.chunkBytes);
  }

  /** Every tensor of the session (parameters and state), as an async iterator. */
  async *exportState(): AsyncGenerator<SlotValues> {
    for await (const t of this.frames()) if (!('lastStep' in t)) yield t;
  }

  /** The whole state with its header (step counts, last step, spec): what restore() takes. */
  checkpoint(): Promise<Checkpoint> {
    return this.link.conn.retrying(async () => {
      let header: StateHeader | undefined;
      const tensors: SlotValues[] = [];
      for await (const t of this.frames()) {
        if ('lastStep' in t) header = t;
        else tensors.push(t);
      }
      if (!header) throw new Error('ExportState sent no StateHeader');
      const spec = header.spec && {
        optimizer: header.spec.optimizer,
        rule: header.spec.rule,
        defaults: header.spec.defaults as Hypers,
        groups: header.spec.groups as Record<string, Hypers>,
        stateDtype: (header.spec.stateDtype || undefined) as Spec['stateDtype'],
        stateSeed: header.spec.stateSeed || undefined,
        ...(Object.keys(header.spec.groupOptimizers?.byGroup ?? {}).length
          ? { groupOptimizers: { ...header.spec.groupOptimizers!.byGroup } }
          : {}),
      };
      return {
        spec,
        stepCounts: Object.fromEntries(header.stepCounts.map((c) => [c.paramId, c.steps])),
        lastStep: header.lastStep,
        tensors,
      };
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
    const call = this.link.conn.raw.exportState({ sessionId: this.id }, this.link.auth(), this.link.conn.callOptions());
    const parts = new Reassembly();
    try {
      for await (const f of call as AsyncIterable<StateFrame>) {
        if (f.frame?.$case === 'header') yield f.frame.value;
        if (f.frame?.$case !== 'chunk') continue;
        const c = f.frame.value;
        const values = parts.add(c);
        if (values) yield { paramId: c.paramId, slot: c.slot, values };
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
      if (header.spec)
        value.spec = {
          optimizer: header.spec.optimizer,
          rule: header.spec.rule,
          defaults: header.spec.defaults,
          groups: header.spec.groups ?? {},
          stateDtype: header.spec.stateDtype,
          stateSeed: header.spec.stateSeed,
          groupOptimizers: { byGroup: header.spec.groupOptimizers ?? {} },
        };
    }
    const { conn, caps } = this.link;
    const n = await conn.retrying(
      () =>
        new Promise<number>((resolve, reject) => {
          const call = conn.raw.importState(this.link.auth(), conn.callOptions(), (e, r) =>
            e ? reject(fromServiceError(e)) : resolve(r.tensorsImported),
          );
          call.write({ frame: { $case: 'header', value } });
          for (const t of tensors)
            for (const c of chunksOf(t.paramId, t.slot, t.values, caps.chunkBytes)) call.write({ frame: { $case: 'chunk', value: c } });
          call.end();
        }),
    );
    if (header && header.lastStep > 0) this.nextStep = header.lastStep + 1;
    return n;
  }

  /** Closes the server session and whatever its plane holds; a second call does nothing. */
  close(): Promise<void> {
    if (this.closing) return this.closing.catch(() => undefined);
    this.closing = this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    await this.use(new GrpcPlane(this.link));
    const { conn } = this.link;
    await conn.retrying(async (attempt) => {
      try {
        await conn.call<CloseSessionRequest, CloseSessionReply>(
          conn.raw.closeSession.bind(conn.raw),
          { sessionId: this.id },
          this.link.auth(),
        );
      } catch (e) {
        // A retried close whose first attempt went through finds the session gone.
        if (!(attempt > 0 && e instanceof MurError && e.code === grpc.status.NOT_FOUND)) throw e;
      }
    });
  }
}
