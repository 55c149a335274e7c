// AddParameters: parameters joining a live session (torch's add_param_group).
// The new parameters step exactly as they would in a session created with
// them; every bad request is refused with its status and leaves the session
// as it was (checkpoint compared whole); --state-dir replays the addition;
// a session with an arena gives it up and OpenArena maps every parameter.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import {
  DType,
  type AddParametersReply,
  type AddParametersRequest,
  type ArenaInfo,
  type OpenArenaRequest,
  type StepRequest,
} from '../../generated/mur/v1/optimizer';
import { currentEngine } from '../engine/engine';
import {
  auth,
  bytes,
  call,
  closeSession,
  create,
  expectStatus,
  exportAll,
  floats,
  startHarness,
  step,
  type Harness,
} from '../../test/harness';

const F32 = DType.DTYPE_FLOAT32;
const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };
const W0 = [0.5, -1, 2, 0.25];
const H0 = [0.3, -0.6, 0.9];
const gradW = (k: number) => [0.1 * k, -0.2, 0.3, -0.05 * k];
const gradH = (k: number) => [-0.4, 0.2 * k, 0.7];
const HEAD = { lr: 0.05, lr_out: 0.05, betas: [0.8, 0.99] };

const add = (h: Harness, req: AddParametersRequest) =>
  call<AddParametersRequest, AddParametersReply>(h.client.addParameters.bind(h.client), req, auth(req.sessionId));
const openArena = (h: Harness, sessionId: string) =>
  call<OpenArenaRequest, ArenaInfo>(h.client.openArena.bind(h.client), { sessionId, overlap: false }, auth(sessionId));
const headDecl = (id = 'h', data = H0) => ({ id, name: id, shape: [data.length], dtype: F32, group: 'head', data: bytes(data) });
const addHead = (sessionId: string): AddParametersRequest => ({ sessionId, groups: { head: HEAD }, params: [headDecl()] });
const inline = (sessionId: string, k: number, which: Record<string, number[]>): StepRequest => ({
  sessionId,
  step: k,
  groupOverrides: {},
  arenaGrads: [],
  grads: Object.entries(which).map(([paramId, g]) => ({ paramId, grad: { shape: [g.length], dtype: F32, data: bytes(g) } })),
});
const valueOf = (r: { params: Array<{ paramId: string; value?: { data: Buffer } }> }, id: string) =>
  Array.from(floats(r.params.find((p) => p.paramId === id)!.value!.data));

/** The reference: one session created with both parameters, `h` stepping from its own first step. */
async function reference(h: Harness, stepsBefore: number, stepsAfter: number): Promise<{ w: number[]; h: number[] }> {
  const a = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] });
  const b = await create(h, { spec: { ...spec, groups: { head: HEAD } }, params: [headDecl()] });
  let w: number[] = [];
  let hv: number[] = [];
  for (let k = 1; k <= stepsBefore + stepsAfter; k++) w = valueOf(await step(h, inline(a.sessionId, k, { w: gradW(k) })), 'w');
  for (let k = 1; k <= stepsAfter; k++) hv = valueOf(await step(h, inline(b.sessionId, k, { h: gradH(stepsBefore + k) })), 'h');
  await closeSession(h, a.sessionId);
  await closeSession(h, b.sessionId);
  return { w, h: hv };
}

describe('AddParameters: parameters joining a live session', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness();
  });
  after(async () => h.close());

  it('new parameters step with their group hyperparameters, from no state; the checkpoint carries them', async () => {
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] });
    for (let k = 1; k <= 3; k++) await step(h, inline(s.sessionId, k, { w: gradW(k) }));
    const reply = await add(h, addHead(s.sessionId));
    assert.deepEqual(reply.resolvedSpec!.groups.head, HEAD, 'the resolved spec has the new group');
    let last = await step(h, inline(s.sessionId, 4, { w: gradW(4), h: gradH(4) }));
    for (let k = 5; k <= 6; k++) last = await step(h, inline(s.sessionId, k, { w: gradW(k), h: gradH(k) }));
    const want = await reference(h, 3, 3);
    assert.deepEqual(valueOf(last, 'w'), want.w, 'the old parameter goes on as if nothing was added');
    assert.deepEqual(valueOf(last, 'h'), want.h, 'the new one steps as in a session created with it');
    const ck = await exportAll(h, s.sessionId);
    const header = ck.header as { stepCounts: Array<{ paramId: string; steps: number }>; spec: { groups: Record<string, unknown> } };
    assert.deepEqual(
      header.stepCounts.map((c) => [c.paramId, c.steps]),
      [
        ['w', 6],
        ['h', 3],
      ],
    );
    assert.deepEqual(header.spec.groups.head, HEAD);
    assert.ok(ck.tensors.has('h/') && ck.tensors.has('h/exp_avg'), 'the new parameter and its state are exported');
    await closeSession(h, s.sessionId);
  });

  it('values may come later through ImportState, as at creation', async () => {
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] });
    await add(h, {
      sessionId: s.sessionId,
      groups: {},
      params: [{ id: 'late', name: 'late', shape: [2], dtype: F32, group: '', data: Buffer.alloc(0) }],
    });
    await expectStatus(step(h, inline(s.sessionId, 1, { late: [1, 1] })), status.FAILED_PRECONDITION, 'late', 'no values yet');
    await closeSession(h, s.sessionId);
  });

  it('each bad request is refused with its status and changes nothing', async () => {
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] });
    await step(h, inline(s.sessionId, 1, { w: gradW(1) }));
    const before = await exportAll(h, s.sessionId);
    const sid = s.sessionId;
    const cases: Array<[string, AddParametersRequest, status, string[]]> = [
      [
        'an id already in the session',
        { sessionId: sid, groups: {}, params: [{ ...headDecl('w'), group: '' }] },
        status.INVALID_ARGUMENT,
        ["'w'", 'already'],
      ],
      [
        'an id twice',
        { sessionId: sid, groups: { head: HEAD }, params: [headDecl('x'), headDecl('x')] },
        status.INVALID_ARGUMENT,
        ['duplicate', "'x'"],
      ],
      [
        'values for another shape',
        { sessionId: sid, groups: {}, params: [{ ...headDecl('x'), shape: [2], group: '' }] },
        status.INVALID_ARGUMENT,
        ['3 values', '[2]'],
      ],
      [
        'a NaN value',
        { sessionId: sid, groups: {}, params: [{ ...headDecl('x', [1, NaN, 2]), group: '' }] },
        status.INVALID_ARGUMENT,
        ['element 1', 'NaN'],
      ],
      [
        'an unknown hyperparameter',
        { sessionId: sid, groups: { head: { lr: 0.1, momentum_x: 1 } }, params: [headDecl()] },
        status.INVALID_ARGUMENT,
        ['momentum_x'],
      ],
      [
        'a hyperparameter out of range',
        { sessionId: sid, groups: { head: { betas: [0.9, 1.5] } }, params: [headDecl()] },
        status.INVALID_ARGUMENT,
        ['betas', '1.5'],
      ],
      [
        'hyperparameters for a group in use',
        { sessionId: sid, groups: { '': { lr: 1 } }, params: [{ ...headDecl(), group: '' }] },
        status.INVALID_ARGUMENT,
        ['already has parameters'],
      ],
      [
        'a group without new parameters',
        { sessionId: sid, groups: { other: { lr: 1 } }, params: [headDecl()] },
        status.INVALID_ARGUMENT,
        ['other', 'no new parameter'],
      ],
      ['no parameters', { sessionId: sid, groups: {}, params: [] }, status.INVALID_ARGUMENT, ['at least one']],
      [
        'a bad dtype',
        { sessionId: sid, groups: { head: HEAD }, params: [{ ...headDecl(), dtype: DType.DTYPE_FLOAT64 }] },
        status.INVALID_ARGUMENT,
        ['dtype'],
      ],
    ];
    for (const [what, req, code, words] of cases) {
      await expectStatus(add(h, req), code, ...words).catch((e: Error) => {
        throw new Error(`${what}: ${e.message}`);
      });
      assert.deepEqual(await exportAll(h, sid), before, `${what}: the session is unchanged`);
    }
    await expectStatus(
      call<AddParametersRequest, AddParametersReply>(h.client.addParameters.bind(h.client), addHead(sid)),
      status.UNAUTHENTICATED,
    );
    assert.deepEqual(await exportAll(h, sid), before, 'no token: unchanged');
    const wrong = new grpc.Metadata();
    wrong.set('authorization', 'Bearer not-the-token');
    await expectStatus(
      call<AddParametersRequest, AddParametersReply>(h.client.addParameters.bind(h.client), addHead(sid), wrong),
      status.PERMISSION_DENIED,
    );
    assert.deepEqual(await exportAll(h, sid), before, 'a wrong token: unchanged');
    // A good request after all of them still works, and steps.
    await add(h, addHead(sid));
    await step(h, inline(sid, 2, { w: gradW(2), h: gradH(2) }));
    await closeSession(h, sid);
  });

  it('--max-bytes counts the new parameters and their state before anything changes', async () => {
    // w: 4 values + Adam's exp_avg, exp_avg_sq (+ hybrid's slots): what one session holds is what it declared.
    const lim = await startHarness({ limits: { maxSessions: 0, maxBytes: 400, idleTimeoutMs: 0 } });
    try {
      const s = await create(lim, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] });
      const before = await exportAll(lim, s.sessionId);
      const big = new Array<number>(40).fill(0.5);
      await expectStatus(
        add(lim, { sessionId: s.sessionId, groups: {}, params: [{ ...headDecl('big', big), group: '' }] }),
        status.RESOURCE_EXHAUSTED,
        '--max-bytes',
      );
      assert.deepEqual(await exportAll(lim, s.sessionId), before);
      const held = lim.server.context.store.heldBytes;
      await add(lim, { sessionId: s.sessionId, groups: {}, params: [{ ...headDecl('small', [1]), group: '' }] });
      assert.ok(lim.server.context.store.heldBytes > held, 'the new parameter is counted');
      await closeSession(lim, s.sessionId);
      assert.equal(lim.server.context.store.heldBytes, 0, 'and given back at close');
    } finally {
      await lim.close();
    }
  });

  it('a session with an arena gives it up; OpenArena maps every parameter, values kept', async function () {
    if (!currentEngine().createArena) this.skip();
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] });
    const first = await openArena(h, s.sessionId);
    const fd1 = fs.openSync(first.path, 'r+');
    try {
      fs.writeSync(fd1, bytes(gradW(1)), 0, 16, first.tensors[0].gradOffset);
      await step(h, { sessionId: s.sessionId, step: 1, grads: [], groupOverrides: {}, arenaGrads: [0] });
    } finally {
      fs.closeSync(fd1);
    }
    const w1 = (await exportAll(h, s.sessionId)).tensors.get('w/');
    await add(h, addHead(s.sessionId));
    await expectStatus(
      step(h, { sessionId: s.sessionId, step: 2, grads: [], groupOverrides: {}, arenaGrads: [0] }),
      status.FAILED_PRECONDITION,
      'no arena',
    );
    assert.equal((await exportAll(h, s.sessionId)).tensors.get('w/'), w1, 'the values left the old arena intact');
    const second = await openArena(h, s.sessionId);
    assert.notDeepEqual(Buffer.from(second.token), Buffer.from(first.token), 'a new arena');
    assert.deepEqual(
      second.tensors.map((t) => t.paramId),
      ['w', 'h'],
    );
    const fd2 = fs.openSync(second.path, 'r+');
    try {
      const b = Buffer.alloc(12);
      fs.readSync(fd2, b, 0, 12, second.tensors[1].paramOffset);
      assert.deepEqual(Array.from(floats(b)), Array.from(Float32Array.from(H0)), 'the new parameter is in the new arena');
      fs.writeSync(fd2, bytes(gradW(2)), 0, 16, second.tensors[0].gradOffset);
      fs.writeSync(fd2, bytes(gradH(2)), 0, 12, second.tensors[1].gradOffset);
      await step(h, { sessionId: s.sessionId, step: 2, grads: [], groupOverrides: {}, arenaGrads: [0, 1] });
      const ck = await exportAll(h, s.sessionId);
      const header = ck.header as { stepCounts: Array<{ paramId: string; steps: number }> };
      assert.deepEqual(
        header.stepCounts.map((c) => [c.paramId, c.steps]),
        [
          ['w', 2],
          ['h', 1],
        ],
      );
    } finally {
      fs.closeSync(fd2);
    }
    await closeSession(h, s.sessionId);
  });
});

describe('AddParameters with --state-dir', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-add-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a restarted server has the added parameters, their group and their state', async () => {
    let h = await startHarness({ stateDir: dir });
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] });
    for (let k = 1; k <= 3; k++) await step(h, inline(s.sessionId, k, { w: gradW(k) }));
    await add(h, addHead(s.sessionId));
    await step(h, inline(s.sessionId, 4, { w: gradW(4), h: gradH(4) }));
    const before = await exportAll(h, s.sessionId);
    await h.close();
    h = await startHarness({ stateDir: dir });
    try {
      assert.deepEqual(await exportAll(h, s.sessionId), before, 'every tensor and the header, as before the restart');
      let last = await step(h, inline(s.sessionId, 5, { w: gradW(5), h: gradH(5) }));
      last = await step(h, inline(s.sessionId, 6, { w: gradW(6), h: gradH(6) }));
      const want = await reference(h, 3, 3);
      assert.deepEqual(valueOf(last, 'w'), want.w);
      assert.deepEqual(valueOf(last, 'h'), want.h);
      await closeSession(h, s.sessionId);
    } finally {
      await h.close();
    }
  });
});
