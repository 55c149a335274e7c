// Session credentials: every per-session RPC needs the session's token. A
// missing token is UNAUTHENTICATED, a wrong one PERMISSION_DENIED (the same
// for a session that does not exist: no hint), nothing changes, and the
// owner's training goes on unaffected.
import { strict as assert } from 'assert';
import * as grpc from '@grpc/grpc-js';
import { DType, type ArenaInfo, type OpenArenaRequest, type StateFrame, type StepStreamReply } from '../generated/mur/v1/optimizer';
import { auth, bytes, call, closeSession, create, exportAll, expectStatus, grads, startHarness, step, type Harness } from './harness';

const F32 = DType.DTYPE_FLOAT32;

function bearer(token: string | null): grpc.Metadata {
  const m = new grpc.Metadata();
  if (token !== null) m.set('authorization', `Bearer ${token}`);
  return m;
}

/** Every per-session RPC about `sessionId`, with the given metadata (each started when called). */
function everyCall(h: Harness, sessionId: string, m: grpc.Metadata): Array<[string, () => Promise<unknown>]> {
  const c = h.client;
  const g = grads({ w: { shape: [2], data: [1, 1] } });
  const stream = () =>
    new Promise((resolve, reject) => {
      const s = c.stepStream(m);
      s.on('data', (_r: StepStreamReply) => undefined);
      s.on('error', reject);
      s.on('end', resolve);
      s.write({ frame: { $case: 'begin', value: { sessionId, step: 2, groupOverrides: {} } } });
      s.end();
    });
  const exported = () =>
    new Promise((resolve, reject) => {
      const s = c.exportState({ sessionId }, m);
      s.on('data', (_f: StateFrame) => undefined);
      s.on('error', reject);
      s.on('end', resolve);
    });
  const imported = () =>
    new Promise((resolve, reject) => {
      const s = c.importState(m, (e, r) => (e ? reject(e) : resolve(r)));
      s.write({ frame: { $case: 'header', value: { sessionId, stepCounts: [], lastStep: 0 } } });
      s.end();
    });
  return [
    ['Step', () => call(c.step.bind(c), { sessionId, step: 2, grads: g, groupOverrides: {}, arenaGrads: [] }, m)],
    ['StepStream', stream],
    ['ExportState', exported],
    ['ImportState', imported],
    ['OpenArena', () => call<OpenArenaRequest, ArenaInfo>(c.openArena.bind(c), { sessionId, overlap: false }, m)],
    ['CloseSession', () => call(c.closeSession.bind(c), { sessionId }, m)],
  ];
}

describe('session credentials', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness();
  });
  after(async () => h.close());

  it('CreateSession answers a token; distinct sessions get distinct tokens', async () => {
    const spec = { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.5 }, groups: {} };
    const p = [{ id: 'w', name: 'w', shape: [2], dtype: F32, group: '', data: bytes([1, 2]) }];
    const a = await create(h, { spec, params: p });
    const b = await create(h, { spec, params: p });
    assert.ok(a.sessionToken.length >= 40, 'a 256-bit token');
    assert.notEqual(a.sessionToken, b.sessionToken);
    await closeSession(h, a.sessionId);
    await closeSession(h, b.sessionId);
  });

  it('no token -> UNAUTHENTICATED and a wrong token -> PERMISSION_DENIED on every per-session RPC; the session is untouched and keeps training', async () => {
    const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [2], dtype: F32, group: '', data: bytes([1, -1]) }] });
    await step(h, { sessionId: s.sessionId, step: 1, grads: grads({ w: { shape: [2], data: [0.5, 0.5] } }), groupOverrides: {} });
    const before = await exportAll(h, s.sessionId);
    const other = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [2], dtype: F32, group: '', data: bytes([0, 0]) }] });
    for (const [rpc, p] of everyCall(h, s.sessionId, bearer(null))) {
      await expectStatus(p(), grpc.status.UNAUTHENTICATED, 'token').catch((e: Error) => assert.fail(`${rpc}: ${e.message}`));
    }
    // Another session's valid token, a made-up token, and a malformed header all fail alike.
    for (const m of [bearer(other.sessionToken), bearer('x'.repeat(43)), bearer('')]) {
      for (const [rpc, p] of everyCall(h, s.sessionId, m)) {
        await expectStatus(
          p(),
          m.get('authorization')[0] === 'Bearer ' ? grpc.status.UNAUTHENTICATED : grpc.status.PERMISSION_DENIED,
        ).catch((e: Error) => assert.fail(`${rpc}: ${e.message}`));
      }
    }
    assert.deepEqual(await exportAll(h, s.sessionId), before, 'nothing changed');
    // The owner goes on.
    const r = await step(h, { sessionId: s.sessionId, step: 2, grads: grads({ w: { shape: [2], data: [0.5, 0.5] } }), groupOverrides: {} });
    assert.equal(r.replayed, false);
    await closeSession(h, s.sessionId);
    await closeSession(h, other.sessionId);
  });

  it('a session that does not exist looks the same as one that does to a caller without its token', async () => {
    const spec = { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.5 }, groups: {} };
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [2], dtype: F32, group: '', data: bytes([1, 2]) }] });
    const wrong = bearer('y'.repeat(43));
    const real = await call(
      h.client.step.bind(h.client),
      { sessionId: s.sessionId, step: 2, grads: [], groupOverrides: {}, arenaGrads: [] },
      wrong,
    ).then(
      () => assert.fail('the call succeeded'),
      (e: grpc.ServiceError) => e,
    );
    const fake = await call(
      h.client.step.bind(h.client),
      { sessionId: '00000000-0000-4000-8000-000000000000', step: 2, grads: [], groupOverrides: {}, arenaGrads: [] },
      wrong,
    ).then(
      () => assert.fail('the call succeeded'),
      (e: grpc.ServiceError) => e,
    );
    assert.equal(real.code, grpc.status.PERMISSION_DENIED);
    assert.equal(fake.code, real.code);
    assert.equal(fake.details, real.details);
    await call(h.client.closeSession.bind(h.client), { sessionId: s.sessionId }, auth(s.sessionId));
  });
});
