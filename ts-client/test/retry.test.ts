// Deadlines and retries: a step lost to UNAVAILABLE (the server stopped and
// restarted on the same unix socket, with a state directory) is retried with
// backoff under the same step number; a call to a server that never answers
// ends at the deadline.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { MurClient, MurError } from '../src';

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
    const client = new MurClient(`unix:${socket}`, { retries: 20, retryBackoffMs: 50, deadlineMs: 10_000 });
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
        setTimeout(() => startServer({ socket, stateDir }).then((x) => { server = x; resolve(); }, reject), 400),
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

  it('on the shm transport too: the retry re-maps the restarted server\'s arena', async function () {
    try {
      await initBackend('native');
    } catch (e) {
      if (process.env.MUR_EXPECT_NATIVE_ENGINE === '1') throw e;
      this.skip();
    }
    const socket = path.join(dir, 'shm.sock');
    const stateDir = path.join(dir, 'shm-state');
    let server: RunningServer = await startServer({ socket, stateDir });
    const client = new MurClient(`unix:${socket}`, { retries: 20, retryBackoffMs: 50 });
    try {
      const s = await client.createSession(spec, init(), { transport: 'shm' });
      const r = await client.createSession(spec, init(), { transport: 'grpc' });
      assert.equal(s.transport, 'shm');
      for (let k = 1; k <= 2; k++) assert.deepEqual(Array.from((await s.step(grad(k))).get('w')!), Array.from((await r.step(grad(k))).get('w')!));
      await server.close();
      const restart = new Promise<void>((resolve, reject) =>
        setTimeout(() => startServer({ socket, stateDir }).then((x) => { server = x; resolve(); }, reject), 300),
      );
      const third = await s.step(grad(3));
      await restart;
      assert.equal(s.transport, 'shm');
      assert.deepEqual(Array.from(third.get('w')!), Array.from((await r.step(grad(3))).get('w')!));
      assert.deepEqual(Array.from((await s.step(grad(4))).get('w')!), Array.from((await r.step(grad(4))).get('w')!));
      await s.close();
      await r.close();
    } finally {
      client.close();
      await server.close();
      await initBackend('wasm');
    }
  });

  it('without retries the same outage fails with UnavailableError', async () => {
    const socket = path.join(dir, 'none.sock');
    const client = new MurClient(`unix:${socket}`, { retries: 0 });
    try {
      await assert.rejects(client.capabilities(), (e: unknown) => e instanceof MurError && e.code === grpc.status.UNAVAILABLE);
    } finally {
      client.close();
    }
  });

  it('every call has a deadline: a server that accepts and never answers gives DEADLINE_EXCEEDED', async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((c) => sockets.push(c));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const client = new MurClient(`127.0.0.1:${port}`, { deadlineMs: 300, retries: 1, retryBackoffMs: 10 });
    const t0 = Date.now();
    try {
      await assert.rejects(client.capabilities(), (e: unknown) => e instanceof MurError && e.code === grpc.status.DEADLINE_EXCEEDED);
      const took = Date.now() - t0;
      assert.ok(took >= 550 && took < 5000, `two attempts of 300 ms: ${took} ms`);
    } finally {
      client.close();
      for (const c of sockets) c.destroy();
      silent.close();
    }
  });

  it('options are checked', () => {
    assert.throws(() => new MurClient('127.0.0.1:1', { deadlineMs: -1 }), /deadlineMs: -1/);
    assert.throws(() => new MurClient('127.0.0.1:1', { retries: Number.NaN }), /retries/);
  });
});
