// A tf.Optimizer whose steps run on a mur server:
//   model.compile({ optimizer: murOptimizer(client, spec), loss: 'meanSquaredError' });
//   await model.fit(x, y);
//
// Why a worker thread: tfjs calls Optimizer.applyGradients synchronously
// (tfjs-layers' fit runs optimizer.minimize inside its train function and
// only awaits between batches), and a gRPC call in Node completes on the
// event loop, which a synchronous caller never yields to. So the adapter's
// gRPC client and session live on a worker thread with its own event loop;
// applyGradients posts the gradients there and blocks on Atomics.wait until
// the worker has the step's reply. Consequence: the server must not run on
// the thread that calls applyGradients (an in-process server on the main
// thread could never answer; that case fails with a timeout naming it). For
// custom loops, applyGradientsAsync/minimizeAsync await the same worker
// without blocking, and work with any server.
import * as path from 'path';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import type { MurClient } from './client';
import type { Checkpoint, SessionOptions, Spec } from './types';
import { MurError } from './errors';
import type { ParamShape, Reply, Request, WorkerInit } from './tfjs-worker';

export interface MurOptimizerOptions extends SessionOptions {
  /**
   * How long a call waits for the worker's answer in ms (default: the
   * client's reconnect timeout, plus its deadline (or 60 s without one), plus
   * 10 s: a step retried to the end; at least 30 s).
   */
  timeoutMs?: number;
  /** The session's parameter id of a variable (default: its name). */
  paramId?: (name: string) => string;
}

type NamedTensor = { name: string; tensor: tf.Tensor };
type Pending = Request extends infer R ? (R extends Request ? Omit<R, 'seq'> : never) : never;
/** Atomics.waitAsync (Node >= 16; not in TypeScript's ES2022 lib). */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(
      this: void,
      a: Int32Array,
      i: number,
      v: number,
      t: number,
    ): { async: false; value: string } | { async: true; value: Promise<string> };
  }
).waitAsync;

export class MurOptimizer extends tf.Optimizer {
  static readonly className = 'MurOptimizer';
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly signal: Int32Array;
  private seq = 0;
  private queue: Promise<unknown> = Promise.resolve();
  /** Awaited calls not answered yet: while there are any, the worker keeps Node alive. */
  private awaiting = 0;
  private readonly shapes = new Map<string, number[]>();
  private readonly timeoutMs: number;
  private readonly paramId: (name: string) => string;
  private closed = false;
  /** Why the optimizer cannot step any more (a timed-out step, a dead worker). */
  private broken: Error | null = null;
  private exited = false;
  /** The server's session id once the first step created it. */
  sessionId: string | null = null;
  /** The session's transport ("shm", "tcp" or "grpc") once created. */
  transport: string | null = null;

  constructor(
    client: MurClient,
    readonly spec: Spec,
    options: MurOptimizerOptions = {},
  ) {
    super();
    const { timeoutMs, paramId, ...session } = options;
    this.timeoutMs = timeoutMs ?? Math.max(30_000, client.reconnectTimeoutMs + (client.deadlineMs || 60_000) + 10_000);
    this.paramId = paramId ?? ((n) => n);
    const channel = new MessageChannel();
    this.port = channel.port1;
    const signal = new SharedArrayBuffer(4);
    this.signal = new Int32Array(signal);
    const data: WorkerInit = { address: client.address, options: client.options, spec, session, port: channel.port2, signal };
    this.worker = new Worker(path.join(__dirname, 'tfjs-worker.js'), { workerData: data, transferList: [channel.port2] });
    // An idle optimizer does not keep Node alive (a script that forgets close()
    // still exits); an awaited call does (call(): Atomics.waitAsync alone
    // holds no handle, so Node would exit with the step in flight).
    this.worker.unref();
    this.port.unref();
    const dead = (e: Error) => {
      this.broken ??= e;
      Atomics.add(this.signal, 0, 1); // wakes an awaiting call (a blocked one sees it at its timeout)
      Atomics.notify(this.signal, 0);
    };
    this.worker.on('error', (e) => dead(new Error(`MurOptimizer: the RPC worker failed: ${e.message}`)));
    this.worker.on('exit', () => {
      this.exited = true;
      dead(new Error('MurOptimizer: closed'));
    });
  }

  /**
   * One step on the server, synchronously (what tfjs's minimize and
   * model.fit call): the first call creates the session with every variable
   * it names (one parameter per variable, id = variable name); the new values
   * are assigned to the variables.
   */
  applyGradients(variableGradients: tf.NamedTensorMap | NamedTensor[]): void {
    this.finish(this.call(this.request(variableGradients), true) as Reply);
  }

  /** applyGradients without blocking this thread (custom loops; a server on this thread). */
  async applyGradientsAsync(variableGradients: tf.NamedTensorMap | NamedTensor[]): Promise<void> {
    const req = this.request(variableGradients);
    this.finish(await this.call(req, false));
  }

  /** minimize() for custom loops: gradients of f, one awaited step; the cost if returnCost. */
  async minimizeAsync(f: () => tf.Scalar, returnCost = false, varList?: tf.Variable[]): Promise<tf.Scalar | null> {
    const { value, grads } = this.computeGradients(f, varList);
    try {
      await this.applyGradientsAsync(varList ? varList.map((v) => ({ name: v.name, tensor: grads[v.name] })) : grads);
    } finally {
      tf.dispose(grads);
    }
    if (returnCost) return value;
    value.dispose();
    return null;
  }

  /** The session's checkpoint (tensors, step counts, last step): see MurSession.checkpoint. */
  async checkpoint(): Promise<Checkpoint> {
    return (this.expectOk(await this.call({ op: 'checkpoint' }, false)) as { checkpoint: Checkpoint }).checkpoint;
  }

  /** Puts a checkpoint back into the session (after at least one step created it). */
  async restore(cp: Checkpoint): Promise<void> {
    this.expectOk(await this.call({ op: 'restore', checkpoint: cp }, false));
  }

  /** Closes the server session and the worker thread. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.exited) this.expectOk(await this.call({ op: 'close' }, false));
    } finally {
      this.closed = true;
      await this.worker.terminate();
      this.port.close();
    }
  }

  dispose(): void {
    super.dispose();
    if (!this.closed) void this.close().catch(() => undefined);
  }

  getConfig(): tf.serialization.ConfigDict {
    return { spec: JSON.parse(JSON.stringify(this.spec)) as tf.serialization.ConfigDictValue };
  }

  /** The gradients as a step request; the first request also carries every variable's values. */
  private request(variableGradients: tf.NamedTensorMap | NamedTensor[]): Pending {
    if (this.closed) throw new Error('MurOptimizer: closed');
    if (this.broken) throw this.broken;
    const named = Array.isArray(variableGradients)
      ? variableGradients
      : Object.keys(variableGradients).map((name) => ({ name, tensor: variableGradients[name] }));
    const grads: Array<[string, Float32Array]> = [];
    const init: ParamShape[] = [];
    const first = this.shapes.size === 0;
    for (const { name, tensor } of named) {
      if (tensor == null) continue;
      const v = tf.engine().registeredVariables[name];
      if (!v) throw new Error(`MurOptimizer: no variable named '${name}'`);
      if (!v.trainable) continue;
      const id = this.paramId(name);
      if (first) {
        init.push({ id, shape: v.shape, values: Float32Array.from(v.dataSync() as Float32Array) });
      } else if (!this.shapes.has(id)) {
        throw new Error(
          `MurOptimizer: variable '${name}' was not in the first step; the session's parameters are fixed when it is created (make a new optimizer)`,
        );
      }
      grads.push([id, Float32Array.from(tensor.dataSync() as Float32Array)]);
    }
    if (first) for (const p of init) this.shapes.set(p.id, p.shape);
    return { op: 'step', init: first ? init : undefined, grads };
  }

  private finish(reply: Reply): void {
    const r = this.expectOk(reply) as { values: Array<[string, Float32Array]>; session?: string; transport?: string };
    this.sessionId = r.session ?? this.sessionId;
    this.transport = r.transport ?? this.transport;
    const byId = new Map(r.values);
    const vars = tf.engine().registeredVariables;
    tf.tidy(() => {
      for (const name of Object.keys(vars)) {
        const values = byId.get(this.paramId(name));
        if (values) vars[name].assign(tf.tensor(values, vars[name].shape, 'float32'));
      }
    });
    this.incrementIterations();
  }

  private expectOk(r: Reply): Extract<Reply, { ok: true }> {
    if (r.ok) return r;
    const e = r.error.code !== undefined ? new MurError(r.error.message, r.error.code) : new Error(r.error.message);
    if (r.error.code === undefined) e.name = r.error.name;
    throw e;
  }

  /** Posts one request to the worker; blocks for its reply (sync) or returns a promise of it. */
  private call(req: Pending, sync: boolean): Reply | Promise<Reply> {
    if (sync) return this.roundTrip(req, true);
    if (this.awaiting++ === 0) this.worker.ref();
    const run = this.queue
      .then(() => this.roundTrip(req, false))
      .finally(() => {
        if (--this.awaiting === 0) this.worker.unref();
      });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private roundTrip(req: Pending, sync: boolean): Reply | Promise<Reply> {
    const seq = ++this.seq;
    const deadline = Date.now() + this.timeoutMs;
    let seen = Atomics.load(this.signal, 0);
    this.worker.postMessage({ ...req, seq });
    const take = (): Reply | null => {
      for (let m = receiveMessageOnPort(this.port); m; m = receiveMessageOnPort(this.port)) {
        if ((m.message as Reply).seq === seq) return m.message as Reply;
      }
      return null;
    };
    const timeout = () => {
      const e = new Error(
        `MurOptimizer: no answer from the server in ${this.timeoutMs} ms (${req.op}). A synchronous applyGradients (model.fit, minimize) blocks this thread: ` +
          'is the server running on it (an in-process startServer)? Run it in another process or thread, or use applyGradientsAsync/minimizeAsync.',
      );
      // The server may still apply that step: the variables and the session no longer agree.
      if (req.op === 'step')
        this.broken ??= new Error(
          `${e.message} This optimizer is out of step with its session now: make a new one (or restore a checkpoint into a new one).`,
        );
      return e;
    };
    if (sync) {
      for (;;) {
        const r = take();
        if (r) return r;
        const left = deadline - Date.now();
        if (left <= 0) throw timeout();
        Atomics.wait(this.signal, 0, seen, left);
        seen = Atomics.load(this.signal, 0);
      }
    }
    return (async () => {
      for (;;) {
        const r = take();
        if (r) return r;
        if (this.broken && (req.op !== 'close' || this.exited)) throw this.broken;
        const left = deadline - Date.now();
        if (left <= 0) throw timeout();
        const w = waitAsync(this.signal, 0, seen, left);
        if (w.async) await w.value;
        seen = Atomics.load(this.signal, 0);
      }
    })();
  }
}

/** A tf.Optimizer stepping through a mur session: see MurOptimizer. */
export function murOptimizer(client: MurClient, spec: Spec, options: MurOptimizerOptions = {}): MurOptimizer {
  return new MurOptimizer(client, spec, options);
}

tf.serialization.registerClass(MurOptimizer);
