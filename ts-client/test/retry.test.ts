// Deadlines and retries (the policy of ts-client/README.md): a step lost to
// UNAVAILABLE (the server stopped and restarted on the same unix socket, with
// a state directory) is retried with backoff under the same step number; a
// call to a server that never answers ends at the deadline, once. A damaged
// --state-dir: DataLossError (DATA_LOSS, never retried, saying how to
// resume), and a new session restored from the last checkpoint continues the
// run exactly; disk statuses map to StorageFullError / StorageIOError.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import {
  DataLossError,
  fromStatus,
  MurClient,
  MurError,
  ResourceExhaustedError,
  StorageFullError,
  StorageIOError,
  UnavailableError,
  type MurSession,
} from '../src';
import { backoffMs, RETRY } from '../src/connection';
import { Capabilities, CreateSessionReply, OptimizerService } from '../generated/mur/v1/optimizer';

const spec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.05 } };
const init = () => [{ id: 'w', shape: [4], values: Float32Array.from([1, -2, 3, 0.5]) }];
const grad = (k: number) => ({ w: Float32Array.from([k, -1, 0.25 * k, 2]) });

describe('MurClient deadlines and retries', () => {
  let dir: string;
  before(async () => {
    await initBackend('wasm');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-retry-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a step sent while the server restarts is retried and lands once; results equal an uninterrupted run', async () => {
    const socket = path.join(dir, 'mur.sock');
    const stateDir = path.join(dir, 'state');
    let server: RunningServer = await startServer({ socket, stateDir });
    const client = new MurClient(`unix:${socket}`, { deadlineMs: 10_000 });
    const ref = await startServer({ port: 0 });
    const refClient = new MurClient(`127.0.0.1:${ref.port}`);
    try {
      const s = await client.createSession(spec, init(), { transport: 'grpc' });
      const r = await refClient.createSession(spec, init(), { transport: 'grpc' });
      for (let k = 1; k <= 2; k++) {
        await s.step(grad(k));
        await r.step(grad(k));
      }
      await server.close();
      // The step goes out while nothing listens; the server comes back 400 ms later.
      const restart = new Promise<void>((resolve, reject) =>
        setTimeout(() => {
          startServer({ socket, stateDir }).then((x) => {
            server = x;
            resolve();
          }, reject);
        }, 400),
      );
      const t0 = Date.now();
      const third = await s.step(grad(3));
      await restart;
      assert.ok(Date.now() - t0 >= 300, 'the step waited for the restart');
      const expected3 = (await r.step(grad(3))).get('w')!;
      assert.deepEqual(Array.from(third.get('w')!), Array.from(expected3));
      assert.equal(s.next, 4);
      // Sent again under its number (a retry whose reply was lost): answered, not applied twice.
      assert.deepEqual(Array.from((await s.step(grad(3), {}, 3)).get('w')!), Array.from(expected3));
      const fourth = (await s.step(grad(4))).get('w')!;
      assert.deepEqual(Array.from(fourth), Array.from((await r.step(grad(4))).get('w')!));
      const cp = await s.checkpoint();
      assert.deepEqual(cp.stepCounts, { w: 4 });
      assert.equal(cp.lastStep, 4);
      await s.close();
      await r.close();
    } finally {
      client.close();
      refClient.close();
      await server.close();
      await ref.close();
    }
  });

  /**
   * A shm session and a grpc reference session on one native server (Unix
   * socket, state directory), stepped twice alike; `then` gets them and a
   * handle to restart the server.
   */
  async function onShm(
    ctx: Mocha.Context,
    name: string,
    then: (s: MurSession, r: MurSession, server: { stop(): Promise<void>; start(): Promise<void> }) => Promise<void>,
  ) {
    try {
      await initBackend('native');
    } catch (e) {
      if (process.env.MUR_EXPECT_NATIVE_ENGINE === '1') throw e;
      ctx.skip();
    }
    const socket = path.join(dir, `${name}.sock`);
    const stateDir = path.join(dir, `${name}-state`);
    let server: RunningServer = await startServer({ socket, stateDir });
    const client = new MurClient(`unix:${socket}`);
    try {
      const s = await client.createSession(spec, init(), { transport: 'shm' });
      const r = await client.createSession(spec, init(), { transport: 'grpc' });
      assert.equal(s.transport, 'shm');
      for (let k = 1; k <= 2; k++)
        assert.deepEqual(Array.from((await s.step(grad(k))).get('w')!), Array.from((await r.step(grad(k))).get('w')!));
      await then(s, r, { stop: () => server.close(), start: async () => void (server = await startServer({ socket, stateDir })) });
      assert.equal(s.transport, 'shm');
      assert.deepEqual(Array.from((await s.step(grad(4))).get('w')!), Array.from((await r.step(grad(4))).get('w')!));
      assert.deepEqual((await s.checkpoint()).stepCounts, { w: 4 });
      await s.close();
      await r.close();
    } finally {
      client.close();
      await server.close();
      await initBackend('wasm');
    }
  }

  it("on the shm transport too: the retry re-maps the restarted server's arena", async function () {
    await onShm(this, 'shm', async (s, r, server) => {
      await server.stop();
      const restart = new Promise<void>((resolve, reject) => setTimeout(() => void server.start().then(resolve, reject), 300));
      const third = await s.step(grad(3));
      await restart;
      assert.deepEqual(Array.from(third.get('w')!), Array.from((await r.step(grad(3))).get('w')!));
    });
  });

  it('a server restarted between two shm steps: the next step finds the arena gone, maps the new one and lands once', async function () {
    await onShm(this, 'gone', async (s, r, server) => {
      await server.stop();
      await server.start();
      // The grpc session's step rides out the restart: the channel is connected again before the shm step.
      const expected3 = Array.from((await r.step(grad(3))).get('w')!);
      // The session came back from the state directory, its arena did not (FAILED_PRECONDITION, mur-reason arena-gone).
      assert.deepEqual(Array.from((await s.step(grad(3))).get('w')!), expected3);
    });
  });

  it('a server never reached: capabilities() fails at once with UnavailableError (first contact is not retried)', async () => {
    const client = new MurClient(`unix:${path.join(dir, 'none.sock')}`);
    try {
      await assert.rejects(client.capabilities(), (e: unknown) => e instanceof MurError && e.code === grpc.status.UNAVAILABLE);
    } finally {
      client.close();
    }
  });

  it('reconnectTimeoutMs 0: a step to a lost server fails with UnavailableError, not retried', async () => {
    const socket = path.join(dir, 'lost.sock');
    const server = await startServer({ socket });
    const client = new MurClient(`unix:${socket}`, { reconnectTimeoutMs: 0 });
    try {
      const s = await client.createSession(spec, init(), { transport: 'grpc' });
      await s.step(grad(1));
      await server.close();
      await assert.rejects(s.step(grad(2)), (e: unknown) => e instanceof MurError && e.code === grpc.status.UNAVAILABLE);
      assert.equal(s.next, 2, 'the step number is kept for the next try');
    } finally {
      client.close();
      await server.close();
    }
  });

  it('every call has a deadline: a step the server never answers gives DEADLINE_EXCEEDED, sent once (not retried)', async () => {
    // A gRPC stand-in: capabilities and a session, then Steps it counts and never answers.
    const server = new grpc.Server();
    let steps = 0;
    server.addService(OptimizerService, {
      getCapabilities: (_call: unknown, cb: grpc.sendUnaryData<Capabilities>) =>
        cb(null, Capabilities.fromPartial({ transports: ['grpc'], maxMessageBytes: 1 << 20, chunkBytes: 1 << 16 })),
      createSession: (_call: unknown, cb: grpc.sendUnaryData<CreateSessionReply>) =>
        cb(null, CreateSessionReply.fromPartial({ sessionId: 's', sessionToken: 't' })),
      step: () => void steps++,
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    const client = new MurClient(`127.0.0.1:${port}`, { deadlineMs: 300 });
    try {
      const s = await client.createSession(spec, init(), { transport: 'grpc' });
      const t0 = Date.now();
      await assert.rejects(s.step(grad(1)), (e: unknown) => e instanceof MurError && e.code === grpc.status.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - t0 >= 290, 'it waited for the deadline');
      assert.equal(steps, 1, "a deadline is the caller's limit: the step is not sent again");
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  it('backoff: 100 ms doubling up to 500 ms, times a jitter in [0.5, 1.5)', () => {
    const expected = [100, 200, 400, 500, 500, 500];
    expected.forEach((base, attempt) => {
      assert.equal(
        backoffMs(attempt, () => 0),
        base / 2,
        `attempt ${attempt}, least jitter`,
      );
      assert.equal(
        backoffMs(attempt, () => 0.5),
        base,
        `attempt ${attempt}, middle`,
      );
      assert.ok(backoffMs(attempt, () => 0.999) < 1.5 * base);
    });
    assert.deepEqual([...RETRY.statuses], [grpc.status.UNAVAILABLE]);
    assert.equal(RETRY.reconnectTimeoutMs, 60_000);
  });

  it('options are checked', () => {
    assert.throws(() => new MurClient('127.0.0.1:1', { deadlineMs: -1 }), /deadlineMs: -1/);
    assert.throws(() => new MurClient('127.0.0.1:1', { reconnectTimeoutMs: Number.NaN }), /reconnectTimeoutMs: NaN/);
    // The options of the old retry policy are refused, saying what replaced them, instead of ignored.
    assert.throws(() => new MurClient('127.0.0.1:1', { retries: 5 }), /retries: no longer an option; use reconnectTimeoutMs/);
    assert.throws(() => new MurClient('127.0.0.1:1', { retryBackoffMs: 50 }), /retryBackoffMs: no longer an option/);
  });

  it('statuses: DATA_LOSS -> DataLossError with how to resume; a full or failing state dir (mur-reason or message) -> StorageFullError / StorageIOError', () => {
    const e = fromStatus(grpc.status.DATA_LOSS, "session 'x': /s/sessions/x/journal: body checksum mismatch");
    assert.ok(e instanceof DataLossError && e.code === grpc.status.DATA_LOSS);
    assert.match(
      e.message,
      /journal: body checksum mismatch \[DATA_LOSS\] To resume: create a new session .*restore\(<your last checkpoint>\)/,
    );
    for (const [details, reason] of [
      ['state dir /s: no space left (ENOSPC) while writing', ''],
      ['no space', 'disk-full'],
    ]) {
      const full = fromStatus(grpc.status.RESOURCE_EXHAUSTED, details, reason);
      assert.ok(full instanceof StorageFullError && full instanceof ResourceExhaustedError, details);
    }
    assert.ok(!(fromStatus(grpc.status.RESOURCE_EXHAUSTED, 'memory: ...') instanceof StorageFullError));
    for (const [details, reason] of [
      ['state dir /s: I/O error (EIO) while writing', ''],
      ['I/O error', 'disk-io'],
    ]) {
      const io = fromStatus(grpc.status.UNAVAILABLE, details, reason);
      assert.ok(io instanceof StorageIOError && io instanceof UnavailableError, details);
    }
    assert.ok(!(fromStatus(grpc.status.UNAVAILABLE, 'connection refused') instanceof StorageIOError));
  });

  it('a damaged session: DataLossError on the first attempt (not retried); a new session from the checkpoint continues exactly', async () => {
    const stateDir = path.join(dir, 'damaged-state');
    const socket = path.join(dir, 'damaged.sock');
    let server: RunningServer = await startServer({ socket, stateDir });
    const ref = await startServer({ port: 0 });
    const refClient = new MurClient(`127.0.0.1:${ref.port}`);
    const client = new MurClient(`unix:${socket}`);
    try {
      const s = await client.createSession(spec, init(), { transport: 'grpc' });
      const r = await refClient.createSession(spec, init(), { transport: 'grpc' });
      for (let k = 1; k <= 2; k++) {
        await s.step(grad(k));
        await r.step(grad(k));
      }
      const cp = await s.checkpoint();
      await s.step(grad(3));
      await server.close();
      const journal = path.join(stateDir, 'sessions', s.id, 'journal');
      const buf = fs.readFileSync(journal);
      buf[buf.length - 5] ^= 0x01;
      fs.writeFileSync(journal, buf);
      server = await startServer({ socket, stateDir });
      // Count the DATA_LOSS answers the session's steps get (a first attempt may meet the reconnect: UNAVAILABLE, retried).
      let dataLoss = 0;
      const raw = client.raw as unknown as { step: (...a: unknown[]) => unknown };
      const step = raw.step;
      raw.step = function (this: unknown, ...a: unknown[]) {
        const cb = a.at(-1) as (e: { code?: number } | null, r: unknown) => void;
        return step.apply(this, [
          ...a.slice(0, -1),
          (e: { code?: number } | null, r: unknown) => ((dataLoss += e?.code === grpc.status.DATA_LOSS ? 1 : 0), cb(e, r)),
        ]);
      };
      await assert.rejects(
        s.step(grad(4)),
        (e: Error) => e instanceof DataLossError && /journal.*checksum mismatch/.test(e.message) && /To resume/.test(e.message),
      );
      assert.equal(dataLoss, 1, 'DATA_LOSS is not retried');
      raw.step = step;
      const resumed = await client.createSession(spec, init(), { transport: 'grpc' });
      await resumed.restore(cp);
      for (let k = 3; k <= 4; k++) {
        assert.deepEqual(Array.from((await resumed.step(grad(k))).get('w')!), Array.from((await r.step(grad(k))).get('w')!));
      }
    } finally {
      client.close();
      refClient.close();
      await server.close();
      await ref.close();
    }
  });
});
