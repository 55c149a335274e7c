// The server's limits: sessions, memory (parameters and the optimizer state
// they will need, counted before anything is allocated), idle sessions, and
// malformed requests. Each refusal names its limit and changes nothing.
import { strict as assert } from 'assert';
import * as grpc from '@grpc/grpc-js';
import { DType, type CreateSessionRequest } from '../generated/mur/v1/optimizer';
import { sweepPeriodMs } from '../src/session/store';
import { bytes, closeSession, create, expectStatus, grads, startHarness, step } from './harness';

const F32 = DType.DTYPE_FLOAT32;
const adam = (n: number, shape = [n]): CreateSessionRequest => ({
  spec: { optimizer: 'adam', rule: 'additive', defaults: {}, groups: {} },
  params: [
    { id: 'w', name: 'w', shape, dtype: F32, group: '', data: n > 0 && n < 1e6 ? bytes(new Float32Array(n).fill(1)) : Buffer.alloc(0) },
  ],
});

describe('limits', () => {
  it('--max-sessions: one more is RESOURCE_EXHAUSTED until one closes', async () => {
    const h = await startHarness({ limits: { maxSessions: 2, maxBytes: 0, idleTimeoutMs: 0 } });
    try {
      const a = await create(h, adam(4));
      await create(h, adam(4));
      await expectStatus(create(h, adam(4)), grpc.status.RESOURCE_EXHAUSTED, '--max-sessions', '2');
      await closeSession(h, a.sessionId);
      await create(h, adam(4));
    } finally {
      await h.close();
    }
  });

  it('--max-bytes counts parameters and every state slot before allocating; huge shapes are refused, not crashed on', async () => {
    // Adam: theta + exp_avg + exp_avg_sq = 12 bytes per element.
    const h = await startHarness({ limits: { maxSessions: 0, maxBytes: 12 * 1000, idleTimeoutMs: 0 } });
    try {
      const a = await create(h, adam(600)); // 7200 bytes
      await expectStatus(create(h, adam(401)), grpc.status.RESOURCE_EXHAUSTED, '--max-bytes', 'needs 4812 bytes', '4800 of the limit');
      await create(h, adam(300)); // 3600 more: 10800 of 12000
      await expectStatus(create(h, adam(0, [2 ** 32, 2 ** 32])), grpc.status.RESOURCE_EXHAUSTED, '--max-bytes');
      await closeSession(h, a.sessionId);
      await create(h, adam(600));
    } finally {
      await h.close();
    }
    // Without a memory limit, a tensor larger than one buffer can hold is still refused cleanly.
    const open = await startHarness();
    try {
      await expectStatus(create(open, adam(0, [2 ** 20, 2 ** 20])), grpc.status.RESOURCE_EXHAUSTED, 'at most');
    } finally {
      await open.close();
    }
  });

  it('--session-idle-timeout closes a session nobody used, not one in use', async () => {
    let now = 1_000_000;
    const h = await startHarness({ limits: { maxSessions: 0, maxBytes: 0, idleTimeoutMs: 60_000 }, clock: () => now });
    try {
      const idle = await create(h, adam(3));
      const busy = await create(h, adam(3));
      now += 40_000;
      await step(h, { sessionId: busy.sessionId, step: 1, grads: grads({ w: { shape: [3], data: [1, 1, 1] } }), groupOverrides: {} });
      now += 30_000; // idle: 70 s unused; busy: 30 s
      await h.server.context.store.expire();
      await expectStatus(step(h, { sessionId: idle.sessionId, step: 1, grads: [], groupOverrides: {} }), grpc.status.NOT_FOUND, 'idle');
      const r = await step(h, {
        sessionId: busy.sessionId,
        step: 2,
        grads: grads({ w: { shape: [3], data: [1, 1, 1] } }),
        groupOverrides: {},
      });
      assert.equal(r.replayed, false);
      assert.equal(h.server.context.store.size, 1);
    } finally {
      await h.close();
    }
  });

  it('--session-idle-timeout keeps its word: a session that stepped, then went quiet, is closed by the first sweep past the timeout', async () => {
    let now = 1_000_000;
    const h = await startHarness({ limits: { maxSessions: 0, maxBytes: 0, idleTimeoutMs: 4000 }, clock: () => now });
    try {
      const s = await create(h, adam(3));
      for (let k = 1; k <= 2; k++)
        await step(h, { sessionId: s.sessionId, step: k, grads: grads({ w: { shape: [3], data: [1, 1, 1] } }), groupOverrides: {} });
      now += 4000; // exactly the timeout since its last call: still open
      await h.server.context.store.expire();
      assert.equal(h.server.context.store.size, 1);
      now += 1;
      await h.server.context.store.expire();
      assert.equal(h.server.context.store.size, 0, 'closed by this sweep, not one a timeout later');
      await expectStatus(step(h, { sessionId: s.sessionId, step: 3, grads: [], groupOverrides: {} }), grpc.status.NOT_FOUND, 'idle');
    } finally {
      await h.close();
    }
  });

  it('idle sessions are swept every quarter of the timeout (250 ms to 30 s): closed at most that long after it', () => {
    assert.equal(sweepPeriodMs(4000), 1000);
    assert.equal(sweepPeriodMs(600), 250);
    assert.equal(sweepPeriodMs(3600_000), 30_000);
  });

  it('malformed protobuf is INVALID_ARGUMENT on unary and streaming calls, and the server stays up', async () => {
    const h = await startHarness();
    const raw = new grpc.Client(h.address, grpc.credentials.createInsecure());
    const junk = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]); // a field claiming ~4 GB
    try {
      for (const method of ['Step', 'CreateSession', 'OpenArena', 'CloseSession']) {
        const p = new Promise((resolve, reject) =>
          raw.makeUnaryRequest(
            `/mur.v1.Optimizer/${method}`,
            (b: Buffer) => b,
            (b: Buffer) => b,
            junk,
            (e, r) => (e ? reject(e) : resolve(r)),
          ),
        );
        await expectStatus(p, grpc.status.INVALID_ARGUMENT, 'malformed request');
      }
      const stream = new Promise((resolve, reject) => {
        const s = raw.makeBidiStreamRequest(
          '/mur.v1.Optimizer/StepStream',
          (b: Buffer) => b,
          (b: Buffer) => b,
        );
        s.on('data', () => undefined);
        s.on('error', reject);
        s.on('end', resolve);
        s.write(junk);
        s.end();
      });
      await expectStatus(stream, grpc.status.INVALID_ARGUMENT, 'malformed request');
      const s = await create(h, adam(2));
      assert.ok(s.sessionId);
    } finally {
      raw.close();
      await h.close();
    }
  });
});
