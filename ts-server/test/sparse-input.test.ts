// Row-sparse gradients on the wire (Gradient.rows): a good step touches only
// its rows and answers them; every bad one is INVALID_ARGUMENT naming the
// bad value and leaves the session exactly as it was (ExportState before
// and after); the rows are part of the request's digest (replay vs refusal).
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { status, type ServiceError } from '@grpc/grpc-js';
import { DType, type Gradient } from '../generated/mur/v1/optimizer';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';
import { bytes, closeSession, create, exportAll, floats, startHarness, step, type Harness } from './harness';

const F32 = DType.DTYPE_FLOAT32;
const rows = (id: string, indices: number[], data: number[], shape = [indices.length, 3]): Gradient => ({
  paramId: id,
  rows: { indices, values: { shape, dtype: F32, data: bytes(data) } },
});
const ones = (n: number) => new Array<number>(n).fill(1);

describe('row-sparse gradients on the wire', () => {
  let h: Harness;
  let sid: string;
  let snapshot: Awaited<ReturnType<typeof exportAll>>;
  const start = Array.from({ length: 15 }, (_, i) => i / 10);

  before(async () => {
    h = await startHarness();
    sid = (
      await create(h, {
        spec: { optimizer: 'sparseadam', rule: 'additive', defaults: { lr: 0.1 }, groups: {} },
        params: [
          { id: 'e', name: 'emb.weight', shape: [5, 3], dtype: F32, group: '', data: bytes(start) },
          { id: 's', name: 'scale', shape: [], dtype: F32, group: '', data: bytes([1]) },
        ],
      })
    ).sessionId;
  });
  after(async () => {
    await closeSession(h, sid);
    await h.close();
  });

  it('a step touches its rows only and answers their new values; the same request replays, other rows under its number are refused', async () => {
    const req = { sessionId: sid, step: 1, grads: [rows('e', [1, 3], [1, -1, 2, 0.5, 0.5, -3])], groupOverrides: {} };
    const r = await step(h, req);
    assert.equal(r.params.length, 1);
    const p = r.params[0];
    assert.equal(p.value, undefined);
    assert.deepEqual(p.rows!.indices, [1, 3]);
    assert.deepEqual(p.rows!.values!.shape, [2, 3]);
    // SparseAdam's first step moves each touched element by lr against its gradient's sign (m / sqrt(v) = sign(g), scale 1).
    const got = floats(p.rows!.values!.data);
    const want = [3, 4, 5, 9, 10, 11].map((i, k) => start[i] - 0.1 * Math.sign([1, -1, 2, 0.5, 0.5, -3][k]));
    got.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-6, `row value ${i}: ${v} vs ${want[i]}`));
    snapshot = await exportAll(h, sid);
    const again = await step(h, req);
    assert.equal(again.replayed, true);
    assert.deepEqual(floats(again.params[0].rows!.values!.data), got);
    await expectRefused(
      step(h, { ...req, grads: [rows('e', [1, 4], [1, -1, 2, 0.5, 0.5, -3])] }),
      status.FAILED_PRECONDITION,
      'already applied with a different request',
    );
  });

  async function expectRefused(p: Promise<unknown>, code: status, ...words: string[]) {
    const e = await p.then(
      () => assert.fail('the call succeeded'),
      (x: ServiceError) => x,
    );
    assert.equal(e.code, code, `status ${status[e.code]} (${e.details}), expected ${status[code]}`);
    for (const w of words) assert.ok(e.details.includes(w), `"${e.details}" does not name ${w}`);
    assert.deepEqual(await exportAll(h, sid), snapshot, 'the session changed');
  }
  const bad = (g: Gradient) => step(h, { sessionId: sid, step: 2, grads: [g], groupOverrides: {} });

  for (const [what, g, words] of [
    ['an index out of range', rows('e', [0, 5], ones(6)), ['row index 5', 'out of range for 5 rows']],
    ['a duplicate index', rows('e', [2, 2], ones(6)), ['duplicate row index', 'indices[1] = 2', 'coalesced']],
    ['unsorted indices', rows('e', [3, 1], ones(6)), ['unsorted row indices', 'indices[1] = 1 after 3']],
    ['values of the wrong shape', rows('e', [0, 1], ones(8), [2, 4]), ['rows.values shape [2,4] must be [2,3]']],
    ['values whose bytes do not fill the shape', rows('e', [0, 1], ones(5), [2, 3]), ['5 values for 2 rows of 3 elements']],
    ['a non-finite value', rows('e', [0, 4], [1, 1, 1, 1, NaN, 1]), ['element 4 (row 4)', 'NaN', 'must be finite']],
    ['an index past 2^32', rows('e', [2 ** 33], ones(3)), ['8589934592 is not a row index']],
    ['a 0-d parameter', rows('s', [0], [1], [1]), ['0-d parameter has no rows']],
    [
      'both a dense tensor and rows',
      { ...rows('e', [0], ones(3)), grad: { shape: [5, 3], dtype: F32, data: bytes(ones(15)) } },
      ['both grad and rows'],
    ],
    [
      'a dense gradient to SparseAdam',
      { paramId: 'e', grad: { shape: [5, 3], dtype: F32, data: bytes(ones(15)) } },
      ['row-sparse gradients only'],
    ],
  ] as Array<[string, Gradient, string[]]>) {
    it(`${what}: INVALID_ARGUMENT naming it, nothing changed`, async () => {
      await expectRefused(bad(g), status.INVALID_ARGUMENT, ...words);
    });
  }

  it('an empty set of rows counts the step and changes no row', async () => {
    const before = await exportAll(h, sid);
    const r = await step(h, { sessionId: sid, step: 2, grads: [rows('e', [], [])], groupOverrides: {} });
    assert.deepEqual(r.params[0].rows?.indices ?? [], []);
    const after = await exportAll(h, sid);
    for (const [k, v] of before.tensors) assert.equal(after.tensors.get(k), v, `${k} changed`);
    assert.notDeepEqual(after.header, before.header, 'the step count of e advanced');
    snapshot = after;
  });
});

describe('row-sparse gradients and optimizers that do not take them', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness();
  });
  after(() => h.close());

  for (const [optimizer, defaults, why] of [
    ['adam', {}, 'adam does not take row-sparse gradients (sparseadam, sgd and adagrad do'],
    ['sgd', { lr: 0.1, momentum: 0.9 }, 'momentum: a sparse momentum buffer moves rows the gradient does not touch'],
    ['sgd', { lr: 0.1, weight_decay: 0.1 }, 'weight_decay: decay touches every row'],
    ['adagrad', { weight_decay: 0.1 }, 'weight_decay: not compatible with sparse gradients'],
  ] as const) {
    it(`${optimizer} ${JSON.stringify(defaults)}: INVALID_ARGUMENT saying why`, async () => {
      const { sessionId } = await create(h, {
        spec: { optimizer, rule: 'additive', defaults, groups: {} },
        params: [{ id: 'e', name: 'e', shape: [4, 3], dtype: F32, group: '', data: bytes(ones(12)) }],
      });
      try {
        const before = await exportAll(h, sessionId);
        const e = await step(h, { sessionId, step: 1, grads: [rows('e', [1], [1, 2, 3])], groupOverrides: {} }).then(
          () => assert.fail('the call succeeded'),
          (x: ServiceError) => x,
        );
        assert.equal(e.code, status.INVALID_ARGUMENT);
        assert.ok(e.details.includes(why), e.details);
        assert.deepEqual(await exportAll(h, sessionId), before);
      } finally {
        await closeSession(h, sessionId);
      }
    });
  }
});

describe('row-sparse steps on a durable session (--state-dir)', () => {
  it("the journal keeps each step's rows: a restarted server holds the same state and goes on as an uninterrupted session, bit for bit", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-state-'));
    const spec = { optimizer: 'sparseadam', rule: 'hybrid', defaults: { lr: 0.05, lr_out: 0.05, gamma: 0.5 }, groups: {} };
    const theta0 = Float32Array.from({ length: 40 }, (_, i) => Math.sin(i));
    const at = (k: number) => [k % 10, (k * 3) % 10 === k % 10 ? 9 : (k * 3) % 10].sort((a, b) => a - b);
    const vals = (k: number) => Array.from({ length: 8 }, (_, i) => Math.cos(i + k));
    const ref = new Session('ref', resolveSpec(spec), [{ id: 'e', name: 'e', shape: [10, 4], group: '', values: theta0.slice() }]);
    let h = await startHarness({ stateDir: dir });
    try {
      const s = await create(h, { spec, params: [{ id: 'e', name: 'e', shape: [10, 4], dtype: F32, group: '', data: bytes(theta0) }] });
      for (let k = 1; k <= 3; k++) {
        await step(h, { sessionId: s.sessionId, step: k, grads: [rows('e', at(k), vals(k), [2, 4])], groupOverrides: {} });
        ref.step(k, [{ id: 'e', data: Float32Array.from(vals(k)), rows: Uint32Array.from(at(k)) }]);
      }
      const before = await exportAll(h, s.sessionId);
      await h.close();
      h = await startHarness({ stateDir: dir });
      assert.deepEqual(await exportAll(h, s.sessionId), before, 'every tensor and the header, as before the restart');
      await step(h, { sessionId: s.sessionId, step: 4, grads: [rows('e', at(4), vals(4), [2, 4])], groupOverrides: {} });
      ref.step(4, [{ id: 'e', data: Float32Array.from(vals(4)), rows: Uint32Array.from(at(4)) }]);
      // The replay of step 4 answers the restarted session's rows: bit for bit the uninterrupted session's.
      const theta = [...ref.exportTensors()].find((t) => t.slot === '')!.data;
      const served = await step(h, { sessionId: s.sessionId, step: 4, grads: [rows('e', at(4), vals(4), [2, 4])], groupOverrides: {} });
      assert.equal(served.replayed, true);
      const wantRows = at(4).flatMap((r) => Array.from(theta.subarray(r * 4, r * 4 + 4)));
      assert.deepEqual(Array.from(floats(served.params[0].rows!.values!.data)), wantRows);
      await closeSession(h, s.sessionId);
    } finally {
      ref.dispose();
      await h.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
