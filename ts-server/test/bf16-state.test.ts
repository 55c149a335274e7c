// state_dtype "bfloat16": stochastic rounding that is unbiased, seeded and
// independent of threads and alignment; bad values refused by name; state
// bytes and --max-bytes; checkpoints (float32 on the wire, the dtype in the
// header, narrowed on import); a restart on --state-dir keeps the state.
// The maths of every optimizer x rule is in the engine table
// (engine-table.test.ts, its bfloat16 rows).
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { DType, type CreateSessionRequest } from '../generated/mur/v1/optimizer';
import { currentEngine } from '../src/engine/engine';
import { loadNative } from '../src/engine/native';
import { InvalidArgument } from '../src/errors';
import { resolveSpec, type SpecJson } from '../src/registry';
import { Session } from '../src/session/session';
import { projectedBytes } from '../src/session/store';
import { roundNearest, roundStochastic, slotOffset } from './reference/bf16';
import { bytes, capabilities, closeSession, create, expectStatus, exportAll, grads, importFrames, startHarness, step } from './harness';
import {
  assertCheckpointRoundTrip,
  assertSameTrajectoryAsFloat32,
  COMPACT_CASES,
  bitsOf,
  framesOf,
  session,
  tensors,
} from './state-dtype-support';

const F32 = DType.DTYPE_FLOAT32;
const stores = () => currentEngine().storedStateDtypes.includes('bfloat16');

const ADAM_BF16: SpecJson = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01 }, state_dtype: 'bfloat16', state_seed: 9 };

describe('state_dtype bfloat16', () => {
  for (const c of COMPACT_CASES) {
    it(`${c.spec.optimizer}${c.rows ? ' (row steps)' : ''}: a checkpoint round-trips exactly and the copy steps as the original`, () =>
      assertCheckpointRoundTrip(c, 'bfloat16'));
  }

  it('stores moments as bfloat16 (half the engine bytes of float32 state) and exports them widened', function () {
    if (!stores()) this.skip(); // the tfjs engines keep float32 (next test)
    const engine = currentEngine();
    const before = engine.memory().bytes;
    const s = session(ADAM_BF16, [1000]);
    try {
      s.step(1, [{ id: 'p0', data: new Float32Array(1000).fill(0.3) }]);
      // theta (4 bytes) + exp_avg and exp_avg_sq (2 bytes each), per element.
      assert.equal(engine.memory().bytes - before, 1000 * (4 + 2 + 2));
      for (const [k, v] of tensors(s)) {
        if (k === 'p0/') continue;
        const low = new Uint32Array(v.buffer, v.byteOffset, v.length).filter((b) => (b & 0xffff) !== 0);
        assert.equal(low.length, 0, `${k}: every exported value is a bfloat16 widened`);
      }
    } finally {
      s.dispose();
    }
    assert.equal(engine.memory().bytes, before);
  });

  it('the tfjs engines accept it and keep float32: the same trajectory as float32 state', function () {
    if (stores()) this.skip();
    assertSameTrajectoryAsFloat32(ADAM_BF16);
  });

  it('rounds without bias: a value between two bfloat16 lands on each with its probability, and the mean is the value', function () {
    if (!stores()) this.skip();
    // SGD's momentum buffer after its first step is the gradient itself, rounded once per element.
    const n = 1 << 20;
    const x = 1 + 0.3 * 2 ** -7; // 30% of the way from 1 to the next bfloat16 (1 + 2^-7)
    const s = session({ optimizer: 'sgd', rule: 'additive', defaults: { lr: 0, momentum: 0.9 }, state_dtype: 'bfloat16', state_seed: 3 }, [
      n,
    ]);
    try {
      s.step(1, [{ id: 'p0', data: new Float32Array(n).fill(x) }]);
      const buf = tensors(s).get('p0/momentum_buffer')!;
      let up = 0;
      let sum = 0;
      for (let i = 0; i < n; i++) {
        assert.ok(buf[i] === 1 || buf[i] === 1 + 2 ** -7, `element ${i}: ${buf[i]} is neither neighbour`);
        if (buf[i] !== 1) up += 1;
        sum += buf[i];
      }
      // Each element rounds up with p = 0.3 over the store's key; within one store the bits of
      // successive elements are a Weyl sequence (bf16-inl.h), equidistributed, so the count is at
      // least as close to p n as a binomial's (sd sqrt(n p (1 - p)) = 469; 6 sd is 0.27% of n).
      assert.ok(Math.abs(up / n - 0.3) < (6 * Math.sqrt(n * 0.3 * 0.7)) / n, `rounded up ${up / n} of the time, not 0.3`);
      assert.ok(Math.abs(sum / n - x) < (6 * Math.sqrt(0.3 * 0.7) * 2 ** -7) / Math.sqrt(n), `mean ${sum / n} vs ${x}`);
      // The same bits as the reference's definition of the rounding (reference/bf16.ts), element by element.
      const off = slotOffset(3, 0, 1, 0);
      for (let i = 0; i < n; i += 997) assert.equal(buf[i], roundStochastic(x, off, i), `element ${i}`);
    } finally {
      s.dispose();
    }
  });

  it('rounds each element without bias over the keys: one element over 20000 steps (the definition the engine matches)', () => {
    // The engine's bits equal roundStochastic's (previous test, and the engine table); here its
    // randomness across steps: element 5 of slot 1 of parameter 2, x 70% of the way up.
    const x = 3 + 0.7 * 2 ** -6; // bfloat16 neighbours 3 and 3 + 2^-6
    let up = 0;
    const steps = 20000;
    for (let t = 1; t <= steps; t++) if (roundStochastic(x, slotOffset(8, 2, t, 1), 5) !== 3) up += 1;
    // Binomial over independent keys: sd sqrt(steps p (1 - p)) = 65; 6 sd is 2% of p.
    assert.ok(Math.abs(up / steps - 0.7) < (6 * Math.sqrt(steps * 0.21)) / steps, `rounded up ${up / steps} of the time`);
  });

  it('is reproducible from its seed; another seed rounds otherwise', function () {
    if (!stores()) this.skip();
    const run = (seed: number) => {
      const s = session({ ...ADAM_BF16, state_seed: seed }, [5000]);
      try {
        for (let t = 1; t <= 3; t++) s.step(t, [{ id: 'p0', data: Float32Array.from({ length: 5000 }, (_, i) => Math.cos(i * 0.3 + t)) }]);
        return tensors(s).get('p0/exp_avg_sq')!;
      } finally {
        s.dispose();
      }
    };
    assert.ok(bitsOf(run(5)).equals(bitsOf(run(5))));
    assert.ok(!bitsOf(run(5)).equals(bitsOf(run(6))));
  });

  it('gives the same bits on one thread and two, whatever the buffers alignment (every optimizer, its one-lane peel and tail)', function () {
    const addon = loadNative();
    if (!addon || !stores()) this.skip();
    const d = addon.describe();
    const n = 97;
    for (const [oi, o] of d.optimizers.entries()) {
      if (!currentEngine().takesStateDtype!(o.name, 'bfloat16')) continue; // refused at session creation (engine table)
      if (o.name === 'adafactor') continue; // every slot float32, shaped by rows and columns: its bfloat16 step is the float32 one
      const results: Buffer[] = [];
      for (const shift of [0, 1, 3, 5]) {
        const mkF = (f: (i: number) => number, len: number) => {
          const b = new Float32Array(len + shift);
          for (let i = 0; i < len; i++) b[shift + i] = f(i);
          return b.subarray(shift);
        };
        const mkH = (v: number, len: number) => {
          const b = new Uint16Array(len + 2 * shift + 1);
          b.fill(new Uint16Array(Float32Array.of(v).buffer)[1]);
          return b.subarray(2 * shift + 1); // a different alignment from theta's
        };
        const theta = mkF((i) => Math.sin(i + 1), n);
        const grad = mkF((i) => Math.cos(0.7 * i) * 0.3, n);
        const slots = Array.from({ length: d.layout.maxOptSlots }, (_, k) =>
          k >= o.slots.length ? null : o.slots[k].scalar ? mkF(() => 1, 1) : o.slots[k].wide ? mkF((i) => Math.sin(i), n) : mkH(0.01, n),
        );
        const h = new Float64Array(d.layout.hyperBlock);
        h[0] = 3;
        h[1] = 0.01;
        o.hypers.forEach((_, i) => (h[d.layout.optHyper + i] = 0.5));
        d.rules[2].hypers.forEach((_, i) => (h[d.layout.ruleHyper + i] = 0.5));
        h[d.layout.rowsHyper] = 1;
        addon.step(oi, 2, [theta, grad, ...slots, null], h, new Uint32Array(1), 1, Uint32Array.of(4, 0));
        results.push(
          Buffer.concat([bitsOf(theta), ...slots.map((s) => (s ? Buffer.from(s.buffer, s.byteOffset, s.byteLength) : Buffer.alloc(0)))]),
        );
      }
      for (const r of results.slice(1)) assert.ok(r.equals(results[0]), `${o.name}: bits depend on alignment`);
    }
    // Threads: a tensor large enough to be split over the pool, and odd small ones.
    const sizes = [600_001, 33, 1];
    const run = (threads: number) => {
      addon.setThreads(threads);
      const s = session({ ...ADAM_BF16, defaults: { lr: 0.01, amsgrad: true } }, sizes);
      try {
        for (let t = 1; t <= 3; t++) {
          s.step(
            t,
            sizes.map((m, k) => ({ id: `p${k}`, data: Float32Array.from({ length: m }, (_, i) => Math.cos(i * 0.01 + t + k)) })),
          );
        }
        return Buffer.concat([...tensors(s).values()].map(bitsOf));
      } finally {
        s.dispose();
        addon.setThreads(0);
      }
    };
    assert.ok(run(1).equals(run(2)), 'two threads give what one gives');
  });

  it('refuses an unknown state_dtype or a bad state_seed by name (INVALID_ARGUMENT), creating nothing', async () => {
    for (const [field, value, words] of [
      ['state_dtype', 'float8', ['state_dtype', 'float8', 'float32, bfloat16']],
      ['state_seed', -1, ['state_seed', '-1']],
      ['state_seed', 2 ** 32, ['state_seed']],
      ['state_seed', 1.5, ['state_seed', '1.5']],
    ] as const) {
      assert.throws(
        () => resolveSpec({ optimizer: 'adam', rule: 'additive', [field]: value }),
        (e: Error) => e instanceof InvalidArgument && words.every((w) => e.message.includes(w)),
      );
    }
    const h = await startHarness();
    try {
      const req: CreateSessionRequest = {
        spec: { optimizer: 'adam', rule: 'additive', defaults: {}, groups: {}, stateDtype: 'int8' },
        params: [{ id: 'w', name: 'w', shape: [2], dtype: F32, group: '', data: bytes([1, 2]) }],
      };
      const bytesBefore = currentEngine().memory().bytes;
      await expectStatus(create(h, req), grpc.status.INVALID_ARGUMENT, 'state_dtype', 'int8');
      assert.equal(currentEngine().memory().bytes, bytesBefore, 'nothing was allocated');
      // A step override cannot change it: it is not a hyperparameter.
      const s = await create(h, { ...req, spec: { ...req.spec!, stateDtype: 'bfloat16' } });
      await expectStatus(
        step(h, {
          sessionId: s.sessionId,
          step: 1,
          grads: grads({ w: { shape: [2], data: [0.1, 0.2] } }),
          groupOverrides: { '': { state_dtype: 'float32' } },
        }),
        grpc.status.INVALID_ARGUMENT,
        'state_dtype',
      );
      await closeSession(h, s.sessionId);
    } finally {
      await h.close();
    }
  });

  it('an optimizer whose kernel cannot keep bfloat16 state is refused at session creation, naming state_dtype', () => {
    const engine = currentEngine();
    if (engine.takesStateDtype) assert.ok(engine.takesStateDtype('adam', 'bfloat16'), "today's kernels all take it");
    // An engine whose adam kernel does not (as a new optimizer that declares kCompact = false in native/src).
    const refusing = Object.create(engine, {
      storedStateDtypes: { value: ['float32', 'bfloat16'] },
      takesStateDtype: { value: (name: string, dtype: string) => !(name === 'adam' && dtype === 'bfloat16') },
    }) as typeof engine;
    const before = engine.memory();
    assert.throws(
      () =>
        new Session('x', resolveSpec(ADAM_BF16), [{ id: 'w', name: 'w', shape: [4], group: '', values: new Float32Array(4) }], refusing),
      (e: Error) => e instanceof InvalidArgument && e.message.includes('state_dtype') && e.message.includes('adam'),
    );
    assert.deepEqual(engine.memory(), before, 'nothing was allocated');
  });

  it('counts 2 bytes per slot element in --max-bytes where the engine stores bfloat16 (4 where it widens)', async () => {
    const spec = resolveSpec({ optimizer: 'adam', rule: 'additive', state_dtype: 'bfloat16' });
    const decl = (n: number) => [{ id: 'w', name: 'w', shape: [n], group: '', values: null }];
    assert.equal(projectedBytes(spec, decl(1000), ['float32', 'bfloat16']), 1000 * (4 + 2 + 2));
    assert.equal(projectedBytes(spec, decl(1000), ['float32']), 1000 * 12);
    assert.equal(
      projectedBytes(resolveSpec({ optimizer: 'asgd', rule: 'exp_sign', state_dtype: 'bfloat16' }), decl(10), ['bfloat16']),
      40 + 20 + 3 * 4,
    );
    const per = stores() ? 8 : 12;
    const h = await startHarness({ limits: { maxSessions: 0, maxBytes: per * 1000, idleTimeoutMs: 0 } });
    try {
      const req = (n: number): CreateSessionRequest => ({
        spec: { optimizer: 'adam', rule: 'additive', defaults: {}, groups: {}, stateDtype: 'bfloat16' },
        params: [{ id: 'w', name: 'w', shape: [n], dtype: F32, group: '', data: bytes(new Float32Array(n).fill(1)) }],
      });
      await expectStatus(create(h, req(1001)), grpc.status.RESOURCE_EXHAUSTED, '--max-bytes', `needs ${per * 1001} bytes`);
      await create(h, req(1000));
    } finally {
      await h.close();
    }
  });

  it('lists the dtypes in capabilities; a checkpoint carries the dtype, float32 values, and loads back bit for bit', async () => {
    const h = await startHarness();
    try {
      const caps = await capabilities(h);
      assert.deepEqual(caps.stateDtypes, ['float32', 'bfloat16', 'q8']);
      assert.deepEqual(caps.storedStateDtypes, stores() ? ['float32', 'bfloat16', 'q8'] : ['float32']);
      const schema = JSON.parse(caps.specSchemaJson) as { properties: Record<string, { enum?: string[] }> };
      assert.deepEqual(schema.properties.state_dtype.enum, ['float32', 'bfloat16', 'q8']);
      const n = 300;
      const req = (dtype: string): CreateSessionRequest => ({
        spec: { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01 }, groups: {}, stateDtype: dtype, stateSeed: 4 },
        params: [{ id: 'w', name: 'w', shape: [n], dtype: F32, group: '', data: bytes(new Float32Array(n).map((_, i) => Math.sin(i))) }],
      });
      const a = await create(h, req('bfloat16'));
      for (let k = 1; k <= 3; k++) {
        await step(h, {
          sessionId: a.sessionId,
          step: k,
          grads: grads({ w: { shape: [n], data: new Float32Array(n).map((_, i) => Math.cos(i + k)) } }),
          groupOverrides: {},
        });
      }
      const ck = await exportAll(h, a.sessionId);
      assert.equal((ck.header as { spec: { stateDtype: string } }).spec.stateDtype, 'bfloat16');
      // Into a new bfloat16 session: the same tensors (widened bfloat16 narrows back exactly).
      const b = await create(h, req('bfloat16'));
      const frames = await framesOf(h, a.sessionId, b.sessionId);
      await importFrames(h, frames);
      assert.deepEqual((await exportAll(h, b.sessionId)).tensors, ck.tensors);
      // A float32 session's state narrows to nearest on import into a bfloat16 one.
      const c = await create(h, req('float32'));
      await step(h, {
        sessionId: c.sessionId,
        step: 1,
        grads: grads({ w: { shape: [n], data: new Float32Array(n).fill(0.37) } }),
        groupOverrides: {},
      });
      const d = await create(h, req('bfloat16'));
      await importFrames(h, await framesOf(h, c.sessionId, d.sessionId));
      const fromC = (await exportAll(h, c.sessionId)).tensors;
      const intoD = (await exportAll(h, d.sessionId)).tensors;
      const f = (hex: string) => new Float32Array(Uint8Array.from(Buffer.from(hex, 'hex')).buffer);
      const want = f(fromC.get('w/exp_avg')!).map((v) => (stores() ? roundNearest(v) : v));
      assert.deepEqual(Array.from(f(intoD.get('w/exp_avg')!)), Array.from(want));
      assert.equal(intoD.get('w/')!, fromC.get('w/')!, 'parameters stay float32');
    } finally {
      await h.close();
    }
  });

  it('a restart on --state-dir keeps bfloat16 state: the same tensors, and the next steps as an uninterrupted session', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-bf16-'));
    const n = 2000;
    const g = (k: number) => new Float32Array(n).map((_, i) => Math.cos(i * 0.1 + k) * 0.1);
    const spec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.01 }, groups: {}, stateDtype: 'bfloat16', stateSeed: 11 };
    const theta = new Float32Array(n).map((_, i) => Math.sin(i));
    try {
      let h = await startHarness({ stateDir: dir });
      const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [n], dtype: F32, group: '', data: bytes(theta) }] });
      for (let k = 1; k <= 3; k++)
        await step(h, { sessionId: s.sessionId, step: k, grads: grads({ w: { shape: [n], data: g(k) } }), groupOverrides: {} });
      const before = await exportAll(h, s.sessionId);
      await h.close();
      h = await startHarness({ stateDir: dir });
      try {
        assert.deepEqual(await exportAll(h, s.sessionId), before);
        const r = await step(h, { sessionId: s.sessionId, step: 4, grads: grads({ w: { shape: [n], data: g(4) } }), groupOverrides: {} });
        const refSpec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.01 }, state_dtype: 'bfloat16', state_seed: 11 };
        const ref = new Session('ref', resolveSpec(refSpec), [{ id: 'w', name: 'w', shape: [n], group: '', values: theta }]);
        try {
          let out: Float32Array = new Float32Array(0);
          for (let k = 1; k <= 4; k++) out = ref.step(k, [{ id: 'w', data: g(k) }]).values[0].data;
          assert.ok(Buffer.from(r.params[0].value!.data).equals(bitsOf(out)), 'step 4 after the restart equals an uninterrupted run');
        } finally {
          ref.dispose();
        }
        await closeSession(h, s.sessionId);
      } finally {
        await h.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
