// Fuzzing, bounded in time, with a fixed seed (printed; MUR_FUZZ_SEED picks
// another): (a) random bytes and broken HTTP/2 on the server's TCP port,
// (b) malformed protobuf as the message of every RPC (identity serializers;
// mur.v1.Optimizer's, Health/Check and reflection's),
// (c) property-based random but well-formed CreateSession, Step and
// ImportState requests (fast-check). Throughout, the server stays up, every
// answer is a gRPC status a handler chose (never INTERNAL, UNKNOWN, or a
// dropped call), and a session trained alongside the fuzzing follows, bit for
// bit, the trajectory of the same training on a quiet server.
// MUR_FUZZ_VERBOSE=1 prints every refusal (to see what the cases reach).
import { strict as assert } from 'assert';
import { createHash } from 'crypto';
import * as net from 'net';
import * as fc from 'fast-check';
import * as grpc from '@grpc/grpc-js';
import {
  CreateSessionRequest,
  DType,
  ExportStateRequest,
  GetCapabilitiesRequest,
  StateFrame,
  StepRequest,
  StepStreamRequest,
  CloseSessionRequest,
  OpenArenaRequest,
  AddParametersRequest,
  type CreateSessionReply,
  type ImportStateReply,
  type StepReply,
} from '../generated/mur/v1/optimizer';
import { currentEngine } from '../src/engine/engine';
import { bytes, capabilities, create, startHarness, step, type Harness } from './harness';

const SEED = Number(process.env.MUR_FUZZ_SEED ?? 20240607);
const F32 = DType.DTYPE_FLOAT32;
/** What a handler may answer: anything else (INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED) fails. */
const PROPER = new Set([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.OUT_OF_RANGE,
  grpc.status.ABORTED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
]);

/** mulberry32: a small seeded generator for the byte-level fuzzers. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const buf = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  return { next, int, buf, pick: <T>(a: readonly T[]): T => a[int(a.length)] };
}
type Rng = ReturnType<typeof rng>;

/** Tallies answers by RPC and status; remembers improper ones. */
class Tally {
  readonly counts = new Map<string, number>();
  readonly bad: string[] = [];
  cases = 0;
  add(rpc: string, code: grpc.status, details: string, input = ''): void {
    this.cases++;
    if (process.env.MUR_FUZZ_VERBOSE && code !== grpc.status.OK)
      console.log('DBG', rpc, grpc.status[code], details.replace(/\d+/g, 'N').slice(0, 90));
    const key = `${rpc} ${grpc.status[code]}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    if (!PROPER.has(code) || details.includes('    at ')) this.bad.push(`${rpc}: ${grpc.status[code]} "${details}" ${input.slice(0, 200)}`);
  }
  report(what: string): void {
    console.log(
      `      ${what}: ${this.cases} cases, seed ${SEED}; ${[...this.counts]
        .sort()
        .map(([k, n]) => `${k} ${n}`)
        .join(', ')}`,
    );
    assert.deepEqual(this.bad.slice(0, 10), [], `${this.bad.length} improper answers`);
  }
}

// -- the witness: a session trained while the fuzzing runs ---------------------

const WITNESS: CreateSessionRequest = {
  spec: { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, gamma: 0.5 }, groups: {} },
  params: [
    {
      id: 'w',
      name: 'w',
      shape: [32, 32],
      dtype: F32,
      group: '',
      data: bytes(Float32Array.from({ length: 1024 }, (_, i) => Math.sin(i) / 4)),
    },
    { id: 'b', name: 'b', shape: [32], dtype: F32, group: '', data: bytes(Float32Array.from({ length: 32 }, (_, i) => Math.cos(i) / 4)) },
  ],
};
const witnessGrad = (k: number, n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(k * 0.37 + i * 0.11));

/** Trains a new witness session: `steps` steps, or until `stop()` (at most 2000); a digest of the values after each step. */
async function train(h: Harness, stop: () => boolean, steps = Infinity): Promise<string[]> {
  const s = await create(h, WITNESS);
  const digests: string[] = [];
  for (let k = 1; k <= Math.min(steps, 2000) && !(steps === Infinity && stop()); k++) {
    const r: StepReply = await step(h, {
      sessionId: s.sessionId,
      step: k,
      groupOverrides: k % 7 === 0 ? { '': { lr: 0.005 } } : {},
      grads: [
        { paramId: 'w', grad: { shape: [32, 32], dtype: F32, data: bytes(witnessGrad(k, 1024)) } },
        { paramId: 'b', grad: { shape: [32], dtype: F32, data: bytes(witnessGrad(-k, 32)) } },
      ],
    });
    const hash = createHash('sha256');
    for (const p of r.params) hash.update(p.value!.data);
    digests.push(hash.digest('hex'));
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  return digests;
}

/** Runs `fuzz` while a witness trains; then the same training alone must give the same bits. */
async function alongsideWitness(h: Harness, fuzz: () => Promise<void>): Promise<void> {
  let done = false;
  const [, during] = await Promise.all([fuzz().finally(() => (done = true)), train(h, () => done)]);
  const quiet = await train(h, () => false, during.length);
  assert.ok(during.length > 0);
  assert.deepEqual(during, quiet, 'the witness session differs from a run without fuzzing');
  assert.ok((await capabilities(h)).optimizers.length > 0, 'the server still serves');
}

// -- (a) raw bytes on the TCP port -------------------------------------------------

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const frame = (type: number, flags: number, stream: number, payload: Buffer) => {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
};
const SETTINGS = frame(4, 0, 0, Buffer.alloc(0));

function rawPayload(r: Rng): Buffer {
  switch (r.int(6)) {
    case 0: // noise
      return r.buf(r.int(2048));
    case 1: // a valid preface, then noise
      return Buffer.concat([PREFACE, r.buf(r.int(1024))]);
    case 2: // preface, settings, random frames (any type, flags, stream, length)
      return Buffer.concat([
        PREFACE,
        SETTINGS,
        ...Array.from({ length: 1 + r.int(6) }, () => frame(r.int(12), r.int(256), r.pick([0, 1, 3, r.int(2 ** 31)]), r.buf(r.int(300)))),
      ]);
    case 3: // a HEADERS frame with a random HPACK block, maybe DATA after it
      return Buffer.concat([PREFACE, SETTINGS, frame(1, r.pick([4, 5]), 1, r.buf(r.int(200))), frame(0, r.int(2), 1, r.buf(r.int(200)))]);
    case 4: // HTTP/1.1
      return Buffer.from(
        `${r.pick(['GET', 'POST', 'PRI'])} /${r.buf(8).toString('hex')} HTTP/1.1\r\nHost: x\r\n${r.next() < 0.5 ? 'Upgrade: h2c\r\n' : ''}\r\n`,
      );
    default: // a TLS ClientHello's first bytes, then noise
      return Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), r.buf(r.int(512))]);
  }
}

function rawConnection(port: number, payload: Buffer, halfClose: boolean): Promise<void> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const done = () => {
      sock.destroy();
      resolve();
    };
    sock.setTimeout(100, done);
    sock.on('error', done);
    sock.on('close', done);
    sock.on('data', () => undefined);
    sock.on('connect', () => {
      sock.write(payload);
      if (halfClose) sock.end();
    });
  });
}

// -- (b) malformed protobuf on every RPC ------------------------------------------

type Kind = 'unary' | 'server' | 'client' | 'bidi';
const id = (b: Buffer) => b;

/** One call with raw bytes as its messages: the status it ended with. */
function rawCall(
  client: grpc.Client,
  path: string,
  kind: Kind,
  messages: Buffer[],
  md: grpc.Metadata,
): Promise<{ code: grpc.status; details: string }> {
  const options = { deadline: Date.now() + 15_000 };
  return new Promise((resolve) => {
    const result = (e: grpc.ServiceError | null) =>
      resolve(e ? { code: e.code, details: e.details } : { code: grpc.status.OK, details: '' });
    if (kind === 'unary') {
      client.makeUnaryRequest(path, id, id, messages[0], md, options, (e) => result(e));
    } else if (kind === 'client') {
      const s = client.makeClientStreamRequest(path, id, id, md, options, (e) => result(e));
      for (const m of messages) s.write(m);
      s.end();
    } else {
      const s =
        kind === 'server'
          ? client.makeServerStreamRequest(path, id, id, messages[0], md, options)
          : client.makeBidiStreamRequest(path, id, id, md, options);
      s.on('data', () => undefined);
      s.on('error', (e: grpc.ServiceError) => result(e));
      s.on('end', () => result(null));
      if (kind === 'bidi') {
        const d = s as grpc.ClientDuplexStream<Buffer, Buffer>;
        for (const m of messages) d.write(m);
        d.end();
      }
    }
  });
}

/** Random bytes, or a valid message with bytes flipped, cut, inserted, or a field claiming a huge length. */
function mutate(r: Rng, valid: Buffer): Buffer {
  const b = Buffer.from(valid);
  switch (r.int(6)) {
    case 0:
      return r.buf(r.int(300));
    case 1:
      for (let k = 0; k <= r.int(4); k++) if (b.length) b[r.int(b.length)] = r.int(256);
      return b;
    case 2:
      return b.subarray(0, r.int(b.length + 1));
    case 3: {
      const at = r.int(b.length + 1);
      return Buffer.concat([b.subarray(0, at), r.buf(1 + r.int(16)), b.subarray(at)]);
    }
    case 4: // a length-delimited field (random number) claiming ~4 GB
      return Buffer.concat([b, Buffer.from([(1 + r.int(15)) * 8 + 2, 0xff, 0xff, 0xff, 0xff, 0x0f]), r.buf(r.int(8))]);
    default: // a varint that never ends
      return Buffer.concat([b, Buffer.from([8 * (1 + r.int(7))]), Buffer.alloc(1 + r.int(12), 0xff)]);
  }
}

// -- (c) well-formed random requests (fast-check) --------------------------------

const OPTIMIZERS = [
  'sgd',
  'adam',
  'adamw',
  'adagrad',
  'rmsprop',
  'adamax',
  'nadam',
  'radam',
  'adadelta',
  'lion',
  'rprop',
  'asgd',
  'lamb',
  'lars',
  'adafactor',
  'muon',
  'schedule_free_adamw',
];
const RULES = ['additive', 'multiplicative', 'hybrid', 'exp_sign'];
const HYPERS = [
  'lr',
  'betas',
  'eps',
  'weight_decay',
  'amsgrad',
  'momentum',
  'dampening',
  'nesterov',
  'lr_in',
  'lr_out',
  'gamma',
  'alpha',
  'centered',
  'rho',
  'lr_decay',
  'initial_accumulator_value',
  'momentum_decay',
  'g_bound',
  'p_scale',
  'maximize',
  'decoupled_weight_decay',
  'etas',
  'step_sizes',
  'lambd',
  't0',
  'trust_coefficient',
  'beta2_decay',
  'd',
  'ns_coefficients',
  'ns_steps',
  'adjust_lr_fn',
  'warmup_steps',
  'weight_lr_power',
];
const SLOTS = [
  '',
  'exp_avg',
  'exp_avg_sq',
  'max_exp_avg_sq',
  'momentum_buffer',
  'sum',
  'square_avg',
  'acc_delta',
  'exp_inf',
  'mu_product',
  'grad_avg',
  'max',
  'prev',
  'step_size',
  'eta',
  'mu',
  'ax',
  'row_var',
  'col_var',
  'variance',
  'z',
  'weight_sum',
  'max_lr',
  'nope',
];
const DTYPE_BYTES: Record<number, number> = { [DType.DTYPE_FLOAT64]: 8, [DType.DTYPE_FLOAT16]: 2, [DType.DTYPE_BFLOAT16]: 2 };

const aNumber = fc.oneof(
  fc.double(),
  fc.constantFrom(0, 1, -1, 1e-3, 0.5, 0.9, 0.999, 1.5, 1e308, Number.NaN, Infinity, -Infinity),
  fc.integer(),
);
const aHyperValue = fc.oneof(aNumber, fc.boolean(), fc.array(aNumber, { maxLength: 3 }), fc.string({ maxLength: 4 }), fc.constant(null));
const aGroup = fc.oneof(fc.constantFrom('', 'g', 'head'), fc.string({ maxLength: 6 }));
/** Mostly plausible hyperparameters (none, or known names with ordinary values), sometimes anything. */
const aHypers = fc.oneof(
  { weight: 3, arbitrary: fc.constant({}) },
  {
    weight: 3,
    arbitrary: fc.dictionary(
      fc.constantFrom('lr', 'lr_in', 'lr_out', 'gamma', 'weight_decay', 'eps'),
      fc.constantFrom(0, 1e-3, 0.01, 0.1, 0.5, 1),
      { maxKeys: 2 },
    ),
  },
  {
    weight: 2,
    arbitrary: fc.dictionary(
      fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...HYPERS) }, { weight: 1, arbitrary: fc.string({ maxLength: 6 }) }),
      aHyperValue,
      { maxKeys: 3 },
    ),
  },
);
const aSpec = fc.record({
  optimizer: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...OPTIMIZERS) }, { weight: 1, arbitrary: fc.string({ maxLength: 6 }) }),
  rule: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...RULES) }, { weight: 1, arbitrary: fc.string({ maxLength: 6 }) }),
  defaults: aHypers,
  groups: fc.oneof({ weight: 3, arbitrary: fc.constant({}) }, { weight: 1, arbitrary: fc.dictionary(aGroup, aHypers, { maxKeys: 2 }) }),
});
const aShape = fc.oneof(
  { weight: 8, arbitrary: fc.array(fc.integer({ min: 0, max: 6 }), { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.array(fc.oneof(fc.integer({ min: 0, max: 2 ** 32 }), fc.constant(2 ** 40)), { minLength: 1, maxLength: 4 }) },
);
const aDtype = fc.oneof({ weight: 12, arbitrary: fc.constant(F32) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 6 }) });
/** How to fill a tensor: the right byte count for its dtype or some other, finite values or not. */
const aData = fc.record({
  length: fc.oneof({ weight: 12, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.nat(64) }),
  fill: fc.oneof({ weight: 12, arbitrary: fc.constant('finite') }, { weight: 1, arbitrary: fc.constantFrom('nan', 'inf') }),
  seed: fc.nat(),
});
type Data = { length: number; fill: string; seed: number };
type ParamGen = { id: string; shape: number[]; dtype: number; group: string; data: Data; empty: boolean };
const anId = fc.oneof({ weight: 4, arbitrary: fc.constantFrom('w', 'b', 'x') }, { weight: 1, arbitrary: fc.string({ maxLength: 6 }) });
const aTarget = fc.record({
  session: fc.nat(),
  auth: fc.oneof({ weight: 10, arbitrary: fc.constant('right') }, { weight: 1, arbitrary: fc.constantFrom('none', 'wrong') }),
});
const aStep = fc.oneof({ weight: 4, arbitrary: fc.nat(12) }, { weight: 1, arbitrary: fc.oneof(fc.nat(1000), fc.constant(2 ** 53 - 1)) });

const anAction = fc.oneof(
  fc.record({
    kind: fc.constant('create' as const),
    spec: aSpec,
    params: fc.oneof(
      {
        weight: 4,
        arbitrary: fc.uniqueArray(
          fc.record({
            id: anId,
            shape: aShape,
            dtype: aDtype,
            group: fc.constantFrom('', '', 'g'),
            data: aData,
            empty: fc.constant(false),
          }),
          { minLength: 1, maxLength: 4, selector: (p) => p.id },
        ),
      },
      {
        weight: 1,
        arbitrary: fc.array(fc.record({ id: anId, shape: aShape, dtype: aDtype, group: aGroup, data: aData, empty: fc.boolean() }), {
          maxLength: 4,
        }),
      },
    ),
  }),
  fc.record({
    kind: fc.constant('step' as const),
    target: aTarget,
    step: aStep,
    grads: fc.array(
      fc.record({
        id: fc.oneof({ weight: 6, arbitrary: fc.nat() }, { weight: 1, arbitrary: anId }),
        shape: fc.oneof({ weight: 10, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: aShape }),
        dtype: aDtype,
        data: aData,
      }),
      { maxLength: 4 },
    ),
    overrides: fc.oneof(
      { weight: 3, arbitrary: fc.constant({}) },
      { weight: 1, arbitrary: fc.dictionary(aGroup, aHypers, { maxKeys: 2 }) },
    ),
    arena: fc.oneof({ weight: 8, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.array(fc.nat(5), { maxLength: 3 }) }),
  }),
  fc.record({
    kind: fc.constant('import' as const),
    target: aTarget,
    header: fc.record({
      spec: fc.option(aSpec),
      lastStep: aStep,
      counts: fc.array(fc.record({ id: anId, steps: aStep }), { maxLength: 3 }),
    }),
    chunks: fc.array(
      fc.record({
        id: fc.oneof({ weight: 4, arbitrary: fc.nat() }, { weight: 1, arbitrary: anId }),
        slot: fc.oneof({ weight: 3, arbitrary: fc.constant('') }, { weight: 2, arbitrary: fc.constantFrom(...SLOTS) }),
        offset: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(100) }),
        total: fc.oneof(
          { weight: 4, arbitrary: fc.constant(-1) },
          { weight: 1, arbitrary: fc.oneof(fc.nat(100), fc.constant(2 ** 30), fc.constant(2 ** 53 - 1)) },
        ),
        dtype: aDtype,
        data: aData,
      }),
      { maxLength: 4 },
    ),
  }),
);
type Action = typeof anAction extends fc.Arbitrary<infer T> ? T : never;

interface Live {
  id: string;
  token: string;
  params: Array<{ id: string; shape: number[] }>;
}

const sizeOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Known bug, reported, not in this test's code: on the tfjs engines a
 * 0-dimensional parameter (shape []) with NAdam or the exp_sign rule (a
 * one-element state slot) fails its step with INTERNAL ("shape of the new
 * value (1) and previous value () must match", engine/tfjs.ts). Until it is
 * fixed there, the fuzzer declares such parameters as [1] on those engines.
 */
const TFJS_SCALAR_PARAMS_BROKEN = true;

/** A tensor's bytes: `elements` values (or d.length of them) encoded in `dtype`. */
function tensorBytes(d: Data, elements: number, dtype: number): Buffer {
  const n = d.length >= 0 ? d.length : Math.min(elements, 1 << 16);
  const per = DTYPE_BYTES[dtype] ?? 4;
  const f = Float32Array.from({ length: n }, (_, i) => Math.sin(d.seed + i) * 2);
  if (n > 0 && d.fill === 'nan') f[d.seed % n] = NaN;
  if (n > 0 && d.fill === 'inf') f[d.seed % n] = -Infinity;
  if (per === 8) return Buffer.from(Float64Array.from(f).buffer);
  if (per === 2) return Buffer.from(new Uint16Array(new Uint32Array(f.buffer).map((x) => x >>> 16)).buffer);
  return Buffer.from(f.buffer);
}

describe(`fuzzing (seed ${SEED})`, function () {
  this.timeout(120_000);
  let h: Harness;
  before(async () => {
    // Limits as a service would run with: huge shapes are refused, not allocated.
    h = await startHarness({
      limits: { maxSessions: 200, maxBytes: 256 << 20, idleTimeoutMs: 0 },
      maxMessageBytes: 8 << 20,
      maxStreamElements: 1 << 24,
    });
  });
  after(async () => h?.close());

  it('(a) random bytes and broken HTTP/2 on the TCP port: the server stays up', async () => {
    const r = rng(SEED);
    const port = Number(h.address.split(':')[1]);
    let cases = 0;
    await alongsideWitness(h, async () => {
      const N = 600;
      const worker = async () => {
        while (cases < N) {
          cases++;
          await rawConnection(port, rawPayload(r), r.next() < 0.5);
        }
      };
      await Promise.all(Array.from({ length: 16 }, worker));
    });
    console.log(`      (a) raw TCP: ${cases} connections, seed ${SEED}`);
  });

  it('(b) malformed protobuf as the message of every RPC: a proper status each time', async () => {
    const r = rng(SEED + 1);
    const raw = new grpc.Client(h.address, grpc.credentials.createInsecure());
    const tally = new Tally();
    // A victim session the fuzzing may step, import into, close (never the witness).
    const victim = await create(h, { ...WITNESS, params: WITNESS.params.map((p) => ({ ...p })) });
    const withToken = () => {
      const md = new grpc.Metadata();
      if (r.next() < 0.6) md.set('authorization', `Bearer ${victim.sessionToken}`);
      return md;
    };
    const sid = victim.sessionId;
    const enc = <T>(fns: { encode(m: T): { finish(): Uint8Array } }, m: T) => Buffer.from(fns.encode(m).finish());
    const stepReq = enc(StepRequest, {
      sessionId: sid,
      step: 1,
      grads: [{ paramId: 'b', grad: { shape: [32], dtype: F32, data: bytes(new Float32Array(32).fill(0.1)) } }],
      groupOverrides: { '': { lr: 0.1 } },
      arenaGrads: [],
    });
    const header = enc(StateFrame, {
      frame: { $case: 'header', value: { sessionId: sid, stepCounts: [{ paramId: 'b', steps: 1 }], lastStep: 0 } },
    });
    const chunk = enc(StateFrame, {
      frame: {
        $case: 'chunk',
        value: { paramId: 'b', slot: '', offset: 0, totalElements: 32, dtype: F32, data: bytes(new Float32Array(32)) },
      },
    });
    const begin = enc(StepStreamRequest, { frame: { $case: 'begin', value: { sessionId: sid, step: 100, groupOverrides: {} } } });
    const grad = enc(StepStreamRequest, {
      frame: {
        $case: 'grad',
        value: { paramId: 'b', slot: '', offset: 0, totalElements: 32, dtype: F32, data: bytes(new Float32Array(32)) },
      },
    });
    const end = enc(StepStreamRequest, { frame: { $case: 'end', value: {} } });
    const addParams = enc(AddParametersRequest, {
      sessionId: sid,
      groups: { fz: { lr: 0.1 } },
      params: [{ id: 'fz', name: 'fz', shape: [4], dtype: F32, group: 'fz', data: bytes(new Float32Array(4).fill(0.5)) }],
    });
    const RPCS: Array<{ path: string; kind: Kind; valid: Buffer[] }> = [
      { path: '/mur.v1.Optimizer/GetCapabilities', kind: 'unary', valid: [enc(GetCapabilitiesRequest, {})] },
      { path: '/mur.v1.Optimizer/CreateSession', kind: 'unary', valid: [enc(CreateSessionRequest, WITNESS)] },
      { path: '/mur.v1.Optimizer/Step', kind: 'unary', valid: [stepReq] },
      { path: '/mur.v1.Optimizer/CloseSession', kind: 'unary', valid: [enc(CloseSessionRequest, { sessionId: sid })] },
      { path: '/mur.v1.Optimizer/OpenArena', kind: 'unary', valid: [enc(OpenArenaRequest, { sessionId: sid, overlap: false })] },
      { path: '/mur.v1.Optimizer/AddParameters', kind: 'unary', valid: [addParams] },
      { path: '/mur.v1.Optimizer/ExportState', kind: 'server', valid: [enc(ExportStateRequest, { sessionId: sid })] },
      { path: '/mur.v1.Optimizer/ImportState', kind: 'client', valid: [header, chunk] },
      { path: '/mur.v1.Optimizer/StepStream', kind: 'bidi', valid: [begin, grad, end] },
      // The other services on the port (Health/Watch never ends by design: not fuzzed).
      {
        path: '/grpc.health.v1.Health/Check',
        kind: 'unary',
        valid: [Buffer.concat([Buffer.from([0x0a, 16]), Buffer.from('mur.v1.Optimizer')])],
      },
      { path: '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', kind: 'bidi', valid: [Buffer.from([0x3a, 0x01, 0x2a])] },
      {
        path: '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo',
        kind: 'bidi',
        valid: [Buffer.concat([Buffer.from([0x22, 16]), Buffer.from('mur.v1.Optimizer')])],
      },
    ];
    const PER_RPC = 80;
    try {
      await alongsideWitness(h, async () => {
        for (let k = 0; k < PER_RPC; k++) {
          await Promise.all(
            RPCS.map(async ({ path, kind, valid }) => {
              // Streams: the valid frames, each mutated with probability 1/2, sometimes one dropped or repeated.
              const messages =
                kind === 'unary' || kind === 'server' ? [mutate(r, valid[0])] : valid.map((m) => (r.next() < 0.5 ? mutate(r, m) : m));
              if (kind === 'bidi' || kind === 'client') {
                if (r.next() < 0.2) messages.splice(r.int(messages.length), 1);
                if (r.next() < 0.2) messages.push(mutate(r, r.pick(valid)));
              }
              const { code, details } = await rawCall(raw, path, kind, messages, withToken());
              tally.add(path.split('/')[2], code, details, messages.map((m) => m.toString('hex')).join(' '));
            }),
          );
        }
      });
    } finally {
      raw.close();
    }
    tally.report('(b) malformed protobuf');
  });

  it('(c) random well-formed CreateSession, Step, ImportState (fast-check): a proper status each time', async () => {
    const tally = new Tally();
    const live: Live[] = [];
    const md = (target: { auth: string }, s: Live | undefined) => {
      const m = new grpc.Metadata();
      if (target.auth === 'right' && s) m.set('authorization', `Bearer ${s.token}`);
      if (target.auth === 'wrong') m.set('authorization', 'Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
      return m;
    };
    const unary = <Res>(fn: (cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown) =>
      new Promise<{ code: grpc.status; details: string; reply?: Res }>((resolve) =>
        fn((e, reply) => resolve(e ? { code: e.code, details: e.details } : { code: grpc.status.OK, details: '', reply })),
      );
    const deadline = () => ({ deadline: Date.now() + 15_000 });
    const avoidScalars = TFJS_SCALAR_PARAMS_BROKEN && !currentEngine().createArena;
    if (avoidScalars)
      console.log('      (tfjs engine: 0-dimensional parameters declared as [1], a known bug; see TFJS_SCALAR_PARAMS_BROKEN)');
    const declared = (shape: number[]) => (avoidScalars && shape.length === 0 ? [1] : shape);
    const run = async (a: Action): Promise<void> => {
      const c = h.client;
      if (a.kind === 'create') {
        const req: CreateSessionRequest = {
          spec: a.spec,
          params: (a.params as ParamGen[]).map((p) => ({
            id: p.id,
            name: p.id,
            shape: declared(p.shape),
            dtype: p.dtype,
            group: p.group,
            data: p.empty ? Buffer.alloc(0) : tensorBytes(p.data, sizeOf(p.shape), p.dtype),
          })),
        };
        const r = await unary<CreateSessionReply>((cb) => c.createSession(req, new grpc.Metadata(), deadline(), cb));
        tally.add('CreateSession', r.code, r.details, JSON.stringify(a));
        if (r.reply) {
          live.push({
            id: r.reply.sessionId,
            token: r.reply.sessionToken,
            params: (a.params as ParamGen[]).map((p) => ({ id: p.id, shape: declared(p.shape) })),
          });
          if (live.length > 24) {
            const old = live.shift()!;
            const m = new grpc.Metadata();
            m.set('authorization', `Bearer ${old.token}`);
            await unary((cb) => c.closeSession({ sessionId: old.id }, m, deadline(), cb));
          }
        }
        return;
      }
      const s = live.length ? live[a.target.session % live.length] : undefined;
      const sessionId = s?.id ?? 'no-such-session';
      const param = (pick: number | string) =>
        (typeof pick === 'number' ? s?.params[pick % Math.max(1, s.params.length)] : undefined) ?? { id: String(pick), shape: [3] };
      if (a.kind === 'step') {
        const req: StepRequest = {
          sessionId,
          step: a.step,
          groupOverrides: a.overrides,
          arenaGrads: a.arena ?? [],
          grads: a.grads.map((g) => {
            const p = param(g.id);
            const shape = g.shape ?? p.shape;
            return { paramId: p.id, grad: { shape, dtype: g.dtype, data: tensorBytes(g.data, sizeOf(shape), g.dtype) } };
          }),
        };
        const r = await unary<StepReply>((cb) => c.step(req, md(a.target, s), deadline(), cb));
        tally.add('Step', r.code, r.details, JSON.stringify(a));
        return;
      }
      const frames: StateFrame[] = [
        {
          frame: {
            $case: 'header',
            value: {
              sessionId,
              spec: a.header.spec ?? undefined,
              lastStep: a.header.lastStep,
              stepCounts: a.header.counts.map((n) => ({ paramId: n.id, steps: n.steps })),
            },
          },
        },
        ...a.chunks.map((ch): StateFrame => {
          const p = param(ch.id);
          const total = ch.total >= 0 ? ch.total : sizeOf(p.shape);
          return {
            frame: {
              $case: 'chunk',
              value: {
                paramId: p.id,
                slot: ch.slot,
                offset: ch.offset,
                totalElements: total,
                dtype: ch.dtype,
                data: tensorBytes(ch.data, Math.min(total, 1 << 16), ch.dtype),
              },
            },
          };
        }),
      ];
      const r = await unary<ImportStateReply>((cb) => {
        const call = c.importState(md(a.target, s), deadline(), cb);
        for (const f of frames) call.write(f);
        call.end();
      });
      tally.add('ImportState', r.code, r.details, JSON.stringify(a));
    };
    await alongsideWitness(h, async () => {
      await fc
        .assert(
          fc.asyncProperty(fc.array(anAction, { minLength: 1, maxLength: 6 }), async (actions) => {
            for (const a of actions) await run(a);
            return tally.bad.length === 0;
          }),
          { seed: SEED, numRuns: 250, endOnFailure: true },
        )
        .catch((e) => {
          tally.report('(c) property-based requests'); // names the improper answers
          throw e;
        });
    });
    tally.report('(c) property-based requests');
  });
});
