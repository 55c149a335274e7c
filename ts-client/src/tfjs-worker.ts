// The tfjs adapter's RPC thread: holds the adapter's MurClient and session
// and answers one request at a time. Each reply is posted on `port`, then
// `signal[0]` is incremented and notified, so the main thread can block on it
// (Atomics.wait: tf.Optimizer.applyGradients is synchronous) or await it
// (Atomics.waitAsync).
import { parentPort, workerData, type MessagePort } from 'worker_threads';
import { MurClient } from './client';
import type { ClientOptions } from './connection';
import type { MurSession } from './session';
import type { Checkpoint, SessionOptions, Spec } from './types';
import { MurError } from './errors';

export interface WorkerInit {
  address: string;
  options: ClientOptions;
  spec: Spec;
  session: SessionOptions;
  port: MessagePort;
  signal: SharedArrayBuffer;
}

export interface ParamShape {
  id: string;
  shape: number[];
  values: Float32Array;
}

export type Request =
  | { seq: number; op: 'step'; init?: ParamShape[]; grads: Array<[string, Float32Array]> }
  | { seq: number; op: 'checkpoint' }
  | { seq: number; op: 'restore'; checkpoint: Checkpoint }
  | { seq: number; op: 'close' };

export type Reply =
  | { seq: number; ok: true; values?: Array<[string, Float32Array]>; checkpoint?: Checkpoint; session?: string; transport?: string }
  | { seq: number; ok: false; error: { name: string; message: string; code?: number } };

const init = workerData as WorkerInit;
const signal = new Int32Array(init.signal);
const asBuffer = (b: Uint8Array | undefined) => (b === undefined ? undefined : Buffer.from(b));
const options: ClientOptions = { ...init.options };
if (options.tls) options.tls = { ca: asBuffer(options.tls.ca), cert: asBuffer(options.tls.cert), key: asBuffer(options.tls.key) };
const client = new MurClient(init.address, options);
let session: MurSession | null = null;

async function handle(r: Request): Promise<Reply> {
  switch (r.op) {
    case 'step': {
      if (!session) {
        if (!r.init) throw new Error('internal: the first step carries no initial values');
        session = await client.createSession(init.spec, r.init, init.session);
      }
      const out = await session.step(new Map(r.grads));
      return { seq: r.seq, ok: true, values: [...out], session: session.id, transport: session.transport };
    }
    case 'checkpoint':
      if (!session) throw new Error('no session yet: the optimizer has not stepped');
      return { seq: r.seq, ok: true, checkpoint: await session.checkpoint() };
    case 'restore':
      if (!session) throw new Error('no session yet: step once (or create the session) before restoring');
      await session.restore(r.checkpoint);
      return { seq: r.seq, ok: true };
    case 'close':
      await session?.close();
      session = null;
      client.close();
      return { seq: r.seq, ok: true };
  }
}

parentPort!.on('message', (r: Request) => {
  void handle(r)
    .catch((e: unknown): Reply => {
      const err = e as Error;
      return { seq: r.seq, ok: false, error: { name: err.name, message: err.message, code: e instanceof MurError ? e.code : undefined } };
    })
    .then((reply) => {
      init.port.postMessage(reply);
      Atomics.add(signal, 0, 1);
      Atomics.notify(signal, 0);
      if (r.op === 'close') parentPort!.close();
    });
});
