// state_dtype "q8": the dynamic map (its properties, the same table in the
// kernels, the host and the reference), block-wise quantisation as defined
// (nearest entry, ties to the lower index, absmax per 256), independent of
// threads and alignment; the loose bound against float32 state; bad values
// refused by name; state bytes and --max-bytes; checkpoints (float32 on the
// wire, the dtype in the header, quantised on import). The maths of every
// optimizer x rule is in the engine table (engine-table.test.ts, its q8 rows).
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { DType, type CreateSessionRequest } from '../generated/mur/v1/optimizer';
import { currentEngine } from '../src/engine/engine';
import { loadNative, type NativeEngine } from '../src/engine/native';
import { absmaxOffset, code, dequantise, q8Map, quantise } from '../src/engine/q8';
import { slotBytes } from '../src/engine/stateDtype';
import { InvalidArgument } from '../src/errors';
import { OPTIMIZERS } from '../src/optimizers';
import { resolveGroup, resolveSpec, type SpecJson } from '../src/registry';
import { Session } from '../src/session/session';
import { projectedBytes } from '../src/session/store';
import { refStep, type H, type RefState } from './reference/reference';
import { nearest, quantiseSlot, REF_MAPS } from './reference/q8';
import { bytes, capabilities, closeSession, create, expectStatus, exportAll, importFrames, startHarness, step, grads } from './harness';
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
const stores = () => currentEngine().storedStateDtypes.includes('q8');

const ADAM_Q8: SpecJson = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.01 }, state_dtype: 'q8' };

describe('state_dtype q8', () => {
  for (const c of COMPACT_CASES) {
    it(`${c.spec.optimizer}${c.rows ? ' (row steps)' : ''}: a checkpoint round-trips exactly and the copy steps as the original`, () =>
      assertCheckpointRoundTrip(c, 'q8'));
  }

  it('its maps: 256 sorted entries in [-1, 1] with 0 and +-1 (signed: symmetric), the same in kernels, host and reference', () => {
    for (const unsigned of [false, true]) {
      const m = q8Map(unsigned);
      const ref = REF_MAPS[unsigned ? 'unsigned' : 'signed'];
      assert.equal(m.values.length, 256);
      assert.deepEqual(Array.from(m.values), ref, 'host map = reference map, bit for bit');
      for (let i = 1; i < 256; i++) assert.ok(m.values[i] >= m.values[i - 1], `sorted at ${i}`);
      assert.equal(m.values[255], 1);
      assert.equal(m.values[0], unsigned ? 0 : -1);
      assert.ok(m.values.includes(0));
      if (!unsigned) for (let i = 0; i < 256; i++) assert.equal(m.values[i] + m.values[255 - i], 0, `symmetric at ${i}`);
      // Distinct but for the signed map's two zeros; the smallest magnitude is 10^-6 (signed) or 10^-7.
      assert.equal(new Set(m.values).size, unsigned ? 256 : 255);
      const small = Math.min(...Array.from(m.values).filter((v) => v > 0));
      assert.equal(small, Math.fround(unsigned ? 1e-7 : 1e-6));
      // The finest step near 1: 0.9 / 2^7 (unsigned) or 0.9 / 2^6.
      assert.ok(Math.abs(m.values[255] - m.values[254] - 0.9 / (unsigned ? 128 : 64)) < 1e-7);
      // Thresholds: code(x) is the nearest entry, ties to the lower index (the reference's linear scan).
      const xs: number[] = [];
      for (let i = 0; i < 255; i++) {
        const mid = (m.values[i] + m.values[i + 1]) / 2;
        xs.push(Math.fround(mid), m.thresholds[i], Math.fround(mid * (1 - 2 ** -23)), m.values[i]);
      }
      for (let k = 0; k < 4000; k++) xs.push(Math.fround(Math.sin(k) * (k % 7 === 0 ? 1e-5 : 1)));
      for (const x of xs) assert.equal(code(m, x), nearest(ref, x), `code(${x})`);
      const native = loadNative() ? (currentEngine() as NativeEngine).q8Map?.(unsigned) : undefined;
      if (native) {
        assert.ok(bitsOf(native.values).equals(bitsOf(m.values)), 'kernel map = host map');
        assert.ok(bitsOf(native.thresholds).equals(bitsOf(m.thresholds)), 'kernel thresholds = host thresholds');
        assert.ok(native.lutOk, "every bucket of the kernels' table holds at most one decision point (q8map.h)");
      }
    }
  });

  it("the kernels' codes are code(x) for every float32 near each decision point and at random, both maps", function () {
    const addon = loadNative();
    if (!addon) this.skip();
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (const unsigned of [false, true]) {
      const m = q8Map(unsigned);
      const xs: number[] = [0, -0, 1, -1, 2 ** -149, -(2 ** -149), 2 ** -26, 2 ** -27]; // NaN's code is not specified (it cannot arise)
      // Every float32 within 64 ulp of each threshold, of each map value and of each power-of-ten boundary.
      const centres = [...Array.from(m.thresholds.slice(0, 255)), ...Array.from(m.values), ...[1, 2, 3, 4, 5, 6, 7].map((e) => 10 ** -e)];
      for (const c of centres) {
        for (const sgn of [1, -1]) {
          f[0] = sgn * c;
          const b = u[0];
          for (let k = -64; k <= 64; k++) {
            u[0] = b + k;
            if (Math.abs(f[0]) <= 1) xs.push(f[0]);
          }
        }
      }
      for (let k = 0; k < 200000; k++) xs.push(Math.fround(Math.sin(k * 1.7) ** (1 + (k % 5)) * (k % 3 === 0 ? 1e-4 : 1)));
      const x = Float32Array.from(xs);
      const got = addon.q8Codes(x, unsigned);
      for (let i = 0; i < x.length; i++)
        if (got[i] !== code(m, x[i])) assert.fail(`code(${x[i]}): kernel ${got[i]}, host ${code(m, x[i])}`);
    }
  });

  it('quantises per block of 256 as defined: absmax, nearest code, zeros; widening then quantising again changes nothing', () => {
    const n = 700; // two full blocks and a short one
    const v = Float32Array.from({ length: n }, (_, i) => (i < 256 ? Math.sin(i) * 3 : i < 512 ? 0 : Math.cos(i) ** 2 * 1e-3));
    for (const unsigned of [false, true]) {
      const x = unsigned ? v.map(Math.abs) : v;
      const q = quantise(x, unsigned, new Uint8Array(slotBytes('q8', n)));
      assert.equal(q.length, Math.ceil(n / 4) * 4 + 4 * 3);
      const absmax = new Float32Array(q.buffer, absmaxOffset(n), 3);
      assert.deepEqual(Array.from(absmax), [Math.max(...x.slice(0, 256).map(Math.abs)), 0, Math.max(...x.slice(512).map(Math.abs))]);
      const back = dequantise(q, n, unsigned);
      const want = Array.from(x);
      quantiseSlot(want, unsigned);
      assert.deepEqual(Array.from(back), want, 'host quantisation = the reference definition');
      assert.ok(bitsOf(dequantise(quantise(back, unsigned, new Uint8Array(q.length)), n, unsigned)).equals(bitsOf(back)));
    }
  });

  it('stores 1 + 4/256 bytes per slot element (<= 0.3x float32) and exports them widened', function () {
    if (!stores()) this.skip();
    const engine = currentEngine();
    const before = engine.memory().bytes;
    const n = 1000;
    const s = session(ADAM_Q8, [n]);
    try {
      s.step(1, [{ id: 'p0', data: new Float32Array(n).map((_, i) => Math.cos(i)) }]);
      // theta (4 bytes an element) + exp_avg and exp_avg_sq: 1000 codes and 4 absmax each.
      const state = engine.memory().bytes - before - 4 * n;
      assert.equal(state, 2 * (n + 4 * 4));
      assert.ok(state / (2 * 4 * n) <= 0.3, `state bytes ${state / (2 * 4 * n)} of float32's`);
      const t = tensors(s);
      // Every exported value is absmax * map[code]: exp_avg after one step is (1 - b1) g, quantised.
      const m = Array.from(new Float32Array(n).map((_, i) => 0.1 * Math.cos(i)));
      quantiseSlot(m, false);
      const got = t.get('p0/exp_avg')!;
      for (let i = 0; i < n; i++) assert.ok(Math.abs(got[i] - m[i]) <= 1e-6 * Math.abs(m[i]) + 1e-9, `exp_avg[${i}]`);
    } finally {
      s.dispose();
    }
    assert.equal(engine.memory().bytes, before);
  });

  it('the tfjs engines accept it and keep float32: the same trajectory as float32 state', function () {
    if (stores()) this.skip();
    assertSameTrajectoryAsFloat32(ADAM_Q8);
  });

  it('Adam stays within a loose bound of float32 state over 200 steps (1000 elements)', function () {
    if (!stores()) this.skip();
    // Against the float64 reference with float32 (unquantised) state. Each step a q8 moment is
    // off by at most half a map step of its block: m (signed map) by <= 0.9 / 128 of the block's
    // absmax; v (unsigned) by <= half a step of its decade, <= 9 / 2^(8 - E) relative for v in
    // (10^-(E+1), 10^-E] of the absmax: 2.8% at E = 3, i.e. 1.4% on sqrt(v). So d is off by a few
    // percent, and were every error of one sign, theta would drift by that fraction of the
    // distance it travels. The bound: 5% of the largest distance an element of the float32
    // trajectory travels (measured: printed, ~1%); the float32 rows of the table are within 1e-5.
    const n = 1000;
    const steps = 200;
    const s = session(ADAM_Q8, [n]);
    const start = Array.from(Float32Array.from({ length: n }, (_, i) => Math.sin(i + 1)));
    let ref = start.slice();
    const st: RefState = {};
    const h = resolveGroup(resolveSpec(ADAM_Q8), '') as H;
    let worst = 0;
    try {
      for (let t = 1; t <= steps; t++) {
        const g = ref.map((v, i) => 0.6 * Math.cos(0.7 * i + 0.3 * t) + 0.4 * v);
        const out = s.step(t, [{ id: 'p0', data: Float32Array.from(g) }]).values[0].data;
        ref = refStep('adam', 'additive', ref, Array.from(Float32Array.from(g)), st, {}, h, t);
        for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(out[i] - ref[i]));
      }
    } finally {
      s.dispose();
    }
    const travel = Math.max(...ref.map((v, i) => Math.abs(v - start[i])));
    console.log(
      `      q8 Adam vs float32 state, 200 steps: worst |theta| difference ${worst.toExponential(2)}, ${((100 * worst) / travel).toFixed(2)}% of the ${travel.toFixed(3)} theta travelled`,
    );
    assert.ok(worst < 0.05 * travel, `q8 drifted ${worst} from float32 state (theta travelled ${travel})`);
    assert.ok(worst > 1e-5, 'q8 state should not equal float32 state (it would not be quantised)');
  });

  it('gives the same bits on one thread and two, whatever the buffers alignment and sizes (every optimizer)', function () {
    const addon = loadNative();
    if (!addon || !stores()) this.skip();
    const d = addon.describe();
    for (const n of [97, 256, 513]) {
      for (const [oi, o] of d.optimizers.entries()) {
        if (!currentEngine().takesStateDtype!(o.name, 'q8')) continue; // refused at session creation (engine table)
        if (o.name === 'adafactor') continue; // every slot float32, shaped by rows and columns: its q8 step is the float32 one
        const results: Buffer[] = [];
        for (const shift of [0, 1, 3, 5]) {
          const mkF = (f: (i: number) => number, len: number) => {
            const b = new Float32Array(len + shift);
            for (let i = 0; i < len; i++) b[shift + i] = f(i);
            return b.subarray(shift);
          };
          const mkQ = (unsigned: boolean) => {
            const b = new Uint8Array(slotBytes('q8', n) + 4 * (shift + 1)); // another alignment than theta's (4-byte steps)
            const q = b.subarray(4 * ((shift + 1) % 3));
            return quantise(
              Float32Array.from({ length: n }, (_, i) => (unsigned ? 0.01 + 0.001 * Math.cos(i) ** 2 : 0.01 * Math.sin(i))),
              unsigned,
              q.subarray(0, slotBytes('q8', n)),
            );
          };
          const theta = mkF((i) => Math.sin(i + 1), n);
          const grad = mkF((i) => Math.cos(0.7 * i) * 0.3, n);
          const slots = Array.from({ length: d.layout.maxOptSlots }, (_, k) =>
            k >= o.slots.length
              ? null
              : o.slots[k].scalar
                ? mkF(() => 1, 1)
                : o.slots[k].wide
                  ? mkF((i) => Math.sin(i), n)
                  : mkQ(o.slots[k].unsigned),
          );
          const h = new Float64Array(d.layout.hyperBlock);
          h[0] = 3;
          h[1] = 0.01;
          o.hypers.forEach((_, i) => (h[d.layout.optHyper + i] = 0.5));
          d.rules[2].hypers.forEach((_, i) => (h[d.layout.ruleHyper + i] = 0.5));
          h[d.layout.rowsHyper] = 1;
          addon.step(oi, 2, [theta, grad, ...slots, null], h, new Uint32Array(1), 2, Uint32Array.of(0, 0));
          results.push(
            Buffer.concat([bitsOf(theta), ...slots.map((s) => (s ? Buffer.from(s.buffer, s.byteOffset, s.byteLength) : Buffer.alloc(0)))]),
          );
        }
        for (const r of results.slice(1)) assert.ok(r.equals(results[0]), `${o.name} (n ${n}): bits depend on alignment`);
      }
    }
    // Threads: a tensor large enough to be split over the pool, odd sizes, and the norm pass (LAMB).
    const sizes = [600_001, 33, 257, 1];
    for (const spec of [
      { ...ADAM_Q8, defaults: { lr: 0.01, amsgrad: true } },
      { optimizer: 'lamb', rule: 'hybrid', defaults: { lr: 0.01 }, state_dtype: 'q8' },
      { optimizer: 'schedule_free_adamw', rule: 'additive', defaults: { lr: 0.01 }, state_dtype: 'q8' },
    ]) {
      const run = (threads: number) => {
        addon.setThreads(threads);
        const s = session(spec, sizes);
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
      assert.ok(run(1).equals(run(2)), `${spec.optimizer}: two threads give what one gives`);
    }
  });

  it('every optimizer takes it (issue 23): Schedule-Free keeps z and Adafactor its statistics float32, the rest compact; bad names refused', function () {
    const engine = currentEngine();
    if (stores()) {
      for (const o of OPTIMIZERS.filter((x) => !x.closure)) assert.ok(engine.takesStateDtype!(o.name, 'q8'), `${o.name} takes q8`);
      // --max-bytes counts each slot as it is stored: z float32 (4 n), exp_avg_sq q8, the two scalars float32.
      const n = 1024;
      const decl = [{ id: 'w', name: 'w', shape: [32, 32], group: '', values: null }];
      const q8n = n + 4 * 4;
      const sf = resolveSpec({ optimizer: 'schedule_free_adamw', rule: 'additive', state_dtype: 'q8' });
      assert.equal(projectedBytes(sf, decl, ['float32', 'q8']), 4 * n + 4 * n + q8n + 8);
      const muon = resolveSpec({ optimizer: 'muon', rule: 'additive', state_dtype: 'q8' });
      assert.equal(projectedBytes(muon, decl, ['float32', 'q8']), 4 * n + q8n);
      const af = resolveSpec({ optimizer: 'adafactor', rule: 'additive', state_dtype: 'q8' });
      assert.equal(projectedBytes(af, decl, ['float32', 'q8']), 4 * n + 4 * 32 + 4 * 32, 'row_var and col_var: float32');
      // A session holds exactly that (engine memory).
      for (const [spec, want] of [
        [sf, 4 * n + q8n + 8],
        [muon, q8n],
        [af, 4 * 64],
      ] as const) {
        const before = engine.memory().bytes;
        const ss = new Session('x', spec, [
          { id: 'w', name: 'w', shape: [32, 32], group: '', values: Float32Array.from({ length: n }, (_, i) => Math.sin(i)) },
        ]);
        try {
          ss.step(1, [{ id: 'w', data: Float32Array.from({ length: n }, (_, i) => Math.cos(i)) }]);
          assert.equal(engine.memory().bytes - before - 4 * n, want, `${spec.optimizer.name}: state bytes`);
        } finally {
          ss.dispose();
        }
      }
    }
    assert.throws(
      () => resolveSpec({ optimizer: 'adam', rule: 'additive', state_dtype: 'int8' }),
      (e: Error) => e instanceof InvalidArgument && ['state_dtype', 'int8', 'q8'].every((w) => e.message.includes(w)),
    );
  });

  it('counts 1 + 4/256 bytes per slot element in --max-bytes where the engine stores q8 (4 where it widens)', async () => {
    const spec = resolveSpec({ optimizer: 'adam', rule: 'additive', state_dtype: 'q8' });
    const decl = (n: number) => [{ id: 'w', name: 'w', shape: [n], group: '', values: null }];
    assert.equal(projectedBytes(spec, decl(1024), ['float32', 'q8']), 1024 * 4 + 2 * (1024 + 4 * 4));
    assert.equal(projectedBytes(spec, decl(1000), ['float32']), 1000 * 12);
    const n = 1024;
    const per = stores() ? 4 * n + 2 * (n + 16) : 12 * n;
    const h = await startHarness({ limits: { maxSessions: 0, maxBytes: per, idleTimeoutMs: 0 } });
    try {
      const req = (m: number): CreateSessionRequest => ({
        spec: { optimizer: 'adam', rule: 'additive', defaults: {}, groups: {}, stateDtype: 'q8' },
        params: [{ id: 'w', name: 'w', shape: [m], dtype: F32, group: '', data: bytes(new Float32Array(m).fill(1)) }],
      });
      const over = stores() ? 4 * (n + 1) + 2 * (Math.ceil((n + 1) / 4) * 4 + 4 * 5) : 12 * (n + 1);
      await expectStatus(create(h, req(n + 1)), grpc.status.RESOURCE_EXHAUSTED, '--max-bytes', `needs ${over} bytes`);
      await create(h, req(n));
    } finally {
      await h.close();
    }
  });

  it('lists q8 in capabilities; a checkpoint carries the dtype and float32 values, loads back exactly, and quantises on import', async () => {
    const h = await startHarness();
    try {
      const caps = await capabilities(h);
      assert.ok(caps.stateDtypes.includes('q8'));
      assert.equal(caps.storedStateDtypes.includes('q8'), stores());
      const schema = JSON.parse(caps.specSchemaJson) as { properties: Record<string, { enum?: string[] }> };
      assert.ok(schema.properties.state_dtype.enum!.includes('q8'));
      const n = 300;
      const req = (dtype: string): CreateSessionRequest => ({
        spec: { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01 }, groups: {}, stateDtype: dtype },
        params: [{ id: 'w', name: 'w', shape: [n], dtype: F32, group: '', data: bytes(new Float32Array(n).map((_, i) => Math.sin(i))) }],
      });
      const a = await create(h, req('q8'));
      for (let k = 1; k <= 3; k++) {
        await step(h, {
          sessionId: a.sessionId,
          step: k,
          grads: grads({ w: { shape: [n], data: new Float32Array(n).map((_, i) => Math.cos(i + k)) } }),
          groupOverrides: {},
        });
      }
      const ck = await exportAll(h, a.sessionId);
      assert.equal((ck.header as { spec: { stateDtype: string } }).spec.stateDtype, 'q8');
      // Into a new q8 session: the same tensors (widened q8 quantises back to the same values).
      const b = await create(h, req('q8'));
      await importFrames(h, await framesOf(h, a.sessionId, b.sessionId));
      assert.deepEqual((await exportAll(h, b.sessionId)).tensors, ck.tensors);
      // A float32 session's state is quantised on import into a q8 one (the same map and rounding).
      const c = await create(h, req('float32'));
      await step(h, {
        sessionId: c.sessionId,
        step: 1,
        grads: grads({ w: { shape: [n], data: new Float32Array(n).map((_, i) => 0.37 * Math.cos(i)) } }),
        groupOverrides: {},
      });
      const d = await create(h, req('q8'));
      await importFrames(h, await framesOf(h, c.sessionId, d.sessionId));
      const fromC = (await exportAll(h, c.sessionId)).tensors;
      const intoD = (await exportAll(h, d.sessionId)).tensors;
      const f = (hex: string) => new Float32Array(Uint8Array.from(Buffer.from(hex, 'hex')).buffer);
      for (const [slot, unsigned] of [
        ['exp_avg', false],
        ['exp_avg_sq', true],
      ] as const) {
        const want = Array.from(f(fromC.get(`w/${slot}`)!));
        if (stores()) quantiseSlot(want, unsigned);
        assert.deepEqual(Array.from(f(intoD.get(`w/${slot}`)!)), want, slot);
      }
      assert.equal(intoD.get('w/')!, fromC.get('w/')!, 'parameters stay float32');
      for (const s of [a, b, c, d]) await closeSession(h, s.sessionId);
    } finally {
      await h.close();
    }
  });

  it('a restart on --state-dir keeps q8 state: the same tensors, and the next steps as an uninterrupted session', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-q8-'));
    const n = 2000;
    const g = (k: number) => new Float32Array(n).map((_, i) => Math.cos(i * 0.1 + k) * 0.1);
    const spec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.01 }, groups: {}, stateDtype: 'q8' };
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
        const refSpec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.01 }, state_dtype: 'q8' };
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
