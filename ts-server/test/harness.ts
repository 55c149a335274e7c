// A real server on port 0 and a real grpc-js client, with promise helpers.
import * as grpc from '@grpc/grpc-js';
import {
  DType,
  type Capabilities,
  type CloseSessionReply,
  type CloseSessionRequest,
  type CreateSessionReply,
  type GetCapabilitiesRequest,
  OptimizerClient,
  type CreateSessionRequest,
  type StateFrame,
  type StepReply,
  type StepRequest,
  type StepStreamReply,
  type StepStreamRequest,
} from '../generated/mur/v1/optimizer';
import { startServer, type RunningServer, type ServerOptions } from '../src/grpc/server';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';

export interface Harness {
  server: RunningServer;
  client: OptimizerClient;
  address: string;
  close(): Promise<void>;
}

export async function startHarness(opts: ServerOptions = {}, channel: grpc.ChannelOptions = {}): Promise<Harness> {
  const server = await startServer({ port: 0, ...opts });
  const address = `127.0.0.1:${server.port}`;
  const client = new OptimizerClient(address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': -1,
    'grpc.max_send_message_length': -1,
    ...channel,
  });
  return {
    server,
    client,
    address,
    close: async () => {
      client.close();
      await server.close();
    },
  };
}

export const bytes = (a: number[] | Float32Array) => {
  const f = a instanceof Float32Array ? a : Float32Array.from(a);
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
};
export const floats = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

/** Session tokens from every CreateSession of these tests, by session id. */
const tokens = new Map<string, string>();

/** The token CreateSession gave `sessionId` (tests that send it themselves: the tcp data plane). */
export const tokenFor = (sessionId: string) => tokens.get(sessionId);

/** The metadata a call about `sessionId` carries: its token, if a test created it. */
export function auth(sessionId: string | undefined): grpc.Metadata {
  const m = new grpc.Metadata();
  const t = sessionId === undefined ? undefined : tokens.get(sessionId);
  if (t) m.set('authorization', `Bearer ${t}`);
  return m;
}

export function call<Req, Res>(
  fn: (req: Req, metadata: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown,
  req: Req,
  metadata = new grpc.Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, metadata, (e, r) => (e ? reject(e) : resolve(r))));
}

export const capabilities = (h: Harness) => call<GetCapabilitiesRequest, Capabilities>(h.client.getCapabilities.bind(h.client), {});
export const create = async (h: Harness, req: CreateSessionRequest) => {
  const r = await call<CreateSessionRequest, CreateSessionReply>(h.client.createSession.bind(h.client), req);
  tokens.set(r.sessionId, r.sessionToken);
  return r;
};
/** A unary Step; `arena_grads` defaults to none (gradients inline). */
export const step = (h: Harness, req: Omit<StepRequest, 'arenaGrads'> & Partial<Pick<StepRequest, 'arenaGrads'>>) =>
  call<StepRequest, StepReply>(h.client.step.bind(h.client), { arenaGrads: [], ...req }, auth(req.sessionId));
export const closeSession = (h: Harness, sessionId: string) =>
  call<CloseSessionRequest, CloseSessionReply>(h.client.closeSession.bind(h.client), { sessionId }, auth(sessionId));

/** A unary step with one gradient per parameter. */
export function grads(values: Record<string, { shape: number[]; data: number[] | Float32Array }>) {
  return Object.entries(values).map(([paramId, v]) => ({
    paramId,
    grad: { shape: v.shape, dtype: DType.DTYPE_FLOAT32, data: bytes(v.data) },
  }));
}

/** Runs one bidi stream: writes `frames`, half-closes, collects replies or the error. */
export function stream(
  h: Harness,
  frames: StepStreamRequest[],
  end = true,
): Promise<{ replies: StepStreamReply[]; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const begin = frames.find((f) => f.frame?.$case === 'begin')?.frame;
    const call = h.client.stepStream(auth(begin?.$case === 'begin' ? begin.value.sessionId : undefined));
    const replies: StepStreamReply[] = [];
    call.on('data', (r: StepStreamReply) => replies.push(r));
    call.on('error', (error: grpc.ServiceError) => resolve({ replies, error }));
    call.on('end', () => resolve({ replies }));
    for (const f of frames) call.write(f);
    if (end) call.end();
    else call.cancel();
  });
}

/** Every frame ExportState sends, as one comparable string per tensor. */
export function exportAll(h: Harness, sessionId: string): Promise<{ header: unknown; tensors: Map<string, string> }> {
  return new Promise((resolve, reject) => {
    const s = h.client.exportState({ sessionId }, auth(sessionId));
    let header: unknown;
    const tensors = new Map<string, string>();
    s.on('data', (f: StateFrame) => {
      if (f.frame?.$case === 'header') header = f.frame.value;
      else if (f.frame?.$case === 'chunk') {
        const c = f.frame.value;
        const key = `${c.paramId}/${c.slot}`;
        tensors.set(key, (tensors.get(key) ?? '') + c.data.toString('hex'));
      }
    });
    s.on('error', reject);
    s.on('end', () => resolve({ header, tensors }));
  });
}

export function importFrames(h: Harness, frames: StateFrame[]): Promise<{ tensorsImported: number }> {
  return new Promise((resolve, reject) => {
    const header = frames.find((f) => f.frame?.$case === 'header')?.frame;
    const s = h.client.importState(auth(header?.$case === 'header' ? header.value.sessionId : undefined), (e, r) =>
      e ? reject(e) : resolve(r),
    );
    for (const f of frames) s.write(f);
    s.end();
  });
}

/** Awaits a call that must fail with `code` and a message naming every word (and no stack trace). */
export async function expectStatus(p: Promise<unknown>, code: grpc.status, ...words: string[]): Promise<void> {
  const e = await p.then(
    () => {
      throw new Error(`the call succeeded; expected ${grpc.status[code]}`);
    },
    (x: grpc.ServiceError) => x,
  );
  if (e.code !== code) throw new Error(`status ${grpc.status[e.code]} (${e.details}), expected ${grpc.status[code]}`);
  for (const w of words) if (!e.details.includes(w)) throw new Error(`"${e.details}" does not name ${w}`);
  if (e.details.includes('    at ')) throw new Error('a stack trace reached the client');
}

/**
 * `grads` run through one parameter of `shape` in a Session of `optimizer` x `rule` on the engine under test:
 * theta after each step, and the final optimizer slots (the property tests beside each optimizer);
 * with `every`, also the slots after each step (`history`: Schedule-Free's z).
 */
export function trajectory(
  optimizer: string,
  rule: string,
  defaults: Record<string, unknown>,
  shape: number[],
  theta0: number[],
  grads: number[][],
  every = false,
): { thetas: number[][]; slots: Record<string, number[]>; history: Array<Record<string, number[]>> } {
  const s = new Session('props', resolveSpec({ optimizer, rule, defaults }), [
    { id: 'w', name: 'w', shape, group: '', values: Float32Array.from(theta0) },
  ]);
  const slotsNow = () => Object.fromEntries([...s.exportTensors()].map((t) => [t.slot, Array.from(t.data)]));
  try {
    const history: Array<Record<string, number[]>> = [];
    const thetas = grads.map((g, k) => {
      const theta = Array.from(s.step(k + 1, [{ id: 'w', data: Float32Array.from(g) }]).values[0].data);
      if (every) history.push(slotsNow());
      return theta;
    });
    return { thetas, slots: slotsNow(), history };
  } finally {
    s.dispose();
  }
}
