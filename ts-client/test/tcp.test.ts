// The "tcp" transport (src/dataPlane.ts) against in-process servers: steps
// equal the grpc transport's bit for bit; "auto" prefers shm, then tcp;
// refusals keep gRPC's error classes and change nothing; a server restarted on
// its state directory with another data port is found again by the retry.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { InvalidArgumentError, MurClient, MurError, type Checkpoint, type MurSession, type Overrides } from '../src';
import { DataPlane, hostOf } from '../src/dataPlane';

const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 } };
const N = 70_000; // 280 KB: a gradient spread over many socket chunks
const init = () => [
  { id: 'w', shape: [3, 4], values: Float32Array.from({ length: 12 }, (_, i) => Math.sin(i)) },
  { id: 'b', shape: [4], values: Float32Array.from([0.1, -0.2, 0.3, 0]) },
  { id: 'big', shape: [N], values: Float32Array.from({ length: N }, (_, i) => 1 + Math.cos(i)) },
];
const grads = (k: number) => ({
  w: Float32Array.from({ length: 12 }, (_, i) => Math.cos(i + k)),
  b: Float32Array.from([k, -k, 0.5, 0]),
  big: Float32Array.from({ length: N }, (_, i) => Math.sin(i * k)),
});
const raw = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);

function assertSameValues(a: Map<string, Float32Array>, b: Map<string, Float32Array>, what: string): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), what);
  for (const [id, v] of a) assert.ok(raw(v).equals(raw(b.get(id)!)), `${what} '${id}'`);
}

function assertSameCheckpoint(a: Checkpoint, b: Checkpoint, what: string): void {
  assert.equal(a.lastStep, b.lastStep, what);
  assert.deepEqual(a.stepCounts, b.stepCounts, what);
  const key = (t: { paramId: string; slot: string }) => `${t.paramId}/${t.slot}`;
  const bs = new Map(b.tensors.map((t) => [key(t), t.values]));
  assert.equal(a.tensors.length, b.tensors.length, what);
  for (const t of a.tensors) assert.ok(raw(t.values).equals(raw(bs.get(key(t))!)), `${what}: ${key(t)}`);
}

/** A port nothing listens on now (the kernel's pick, released). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Referenced TCP sockets of this thread (the in-process server's among them), once pending closes have run. */
async function openSockets(expected: number): Promise<number> {
  const count = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
  // A closed socket's handle goes away a few event-loop turns later: turns, not time.
  for (let turn = 0; turn < 200 && count() !== expected; turn++) await new Promise((r) => setImmediate(r));
  return count();
}

describe('transport "tcp"', () => {
  before(() => initBackend('wasm'));

  describe('against a server with a data port', () => {
    let server: RunningServer;
    let client: MurClient;
    before(async () => {
      server = await startServer({ port: 0 });
      client = new MurClient(`127.0.0.1:${server.port}`);
    });
    after(async () => {
      client.close();
      await server.close();
    });

    it('steps exactly as "grpc": several steps, several tensors, with overrides; the values returned stay the caller\'s', async () => {
      const tcp = await client.createSession(spec, init(), { transport: 'tcp' });
      const wire = await client.createSession(spec, init(), { transport: 'grpc' });
      try {
        assert.equal(tcp.transport, 'tcp');
        assert.equal(wire.transport, 'grpc');
        let first: Map<string, Float32Array> | undefined;
        let copy: Map<string, Float32Array> | undefined;
        for (let k = 1; k <= 4; k++) {
          const overrides: Overrides = k === 3 ? { '': { lr: 0.002 } } : {};
          const a = await tcp.step(grads(k), overrides);
          assertSameValues(a, await wire.step(grads(k), overrides), `step ${k}`);
          first ??= a;
          copy ??= new Map([...a].map(([id, v]) => [id, v.slice()]));
        }
        // The first step's arrays are the caller's: later steps wrote into none of them.
        assertSameValues(first!, copy!, 'step 1 values after step 4');
        assertSameCheckpoint(await tcp.checkpoint(), await wire.checkpoint(), 'the sessions');
        assert.equal(tcp.next, 5);
      } finally {
        await tcp.close();
        await wire.close();
      }
    });

    it('a step sent again under its number is answered, not applied twice', async () => {
      const tcp = await client.createSession(spec, init(), { transport: 'tcp' });
      const wire = await client.createSession(spec, init(), { transport: 'grpc' });
      try {
        const first = await tcp.step(grads(1));
        assertSameValues(await tcp.step(grads(1), {}, 1), first, 'the replay');
        assertSameValues(await tcp.step(grads(2)), (await wire.step(grads(1)), await wire.step(grads(2))), 'step 2');
      } finally {
        await tcp.close();
        await wire.close();
      }
    });

    it('a refused step (NaN gradient) is INVALID_ARGUMENT, changes nothing, and the next step goes through', async () => {
      const tcp = await client.createSession(spec, init(), { transport: 'tcp' });
      const wire = await client.createSession(spec, init(), { transport: 'grpc' });
      try {
        await tcp.step(grads(1));
        await wire.step(grads(1));
        const before = await tcp.checkpoint();
        const bad = grads(2);
        bad.b[1] = Number.NaN;
        const viaGrpc = await wire.step(bad).catch((e: unknown) => e);
        const viaTcp = await tcp.step(bad).catch((e: unknown) => e);
        assert.ok(viaTcp instanceof InvalidArgumentError, String(viaTcp));
        assert.equal(viaTcp.code, grpc.status.INVALID_ARGUMENT);
        assert.match(viaTcp.message, /\[INVALID_ARGUMENT\]$/);
        // The same class and message as the gRPC Step gives.
        assert.ok(viaGrpc instanceof InvalidArgumentError);
        assert.equal(viaTcp.message, viaGrpc.message);
        assertSameCheckpoint(await tcp.checkpoint(), before, 'after the refusal');
        assert.equal(tcp.next, 2);
        // A gradient of the wrong length never leaves (it would misframe the bytes after it).
        await assert.rejects(
          tcp.step({ ...grads(2), w: new Float32Array(11) }),
          (e: unknown) => e instanceof TypeError && /'w': 11 elements, parameter has 12/.test(e.message),
        );
        assertSameCheckpoint(await tcp.checkpoint(), before, 'after the wrong length');
        assertSameValues(await tcp.step(grads(2)), await wire.step(grads(2)), 'the next step');
        assert.equal(tcp.transport, 'tcp');
      } finally {
        await tcp.close();
        await wire.close();
      }
    });

    it('"auto" picks tcp when the engine has no shm; close() closes the connection', async () => {
      await client.capabilities(); // the channel's own connection first
      const idle = await openSockets(-1);
      const s = await client.createSession(spec, init());
      assert.equal(s.transport, 'tcp');
      await s.step(grads(1));
      // The client end is unreferenced between steps (an idle connection does not
      // keep a process alive), so only the server's end is counted.
      assert.equal(await openSockets(idle + 1), idle + 1, 'one connection, its server end');
      await s.close();
      assert.equal(await openSockets(idle), idle, 'closed: the server saw the client close it');
    });
  });

  it('"tcp" against a server without a data port fails saying why, leaving no session; "auto" uses grpc', async () => {
    const server = await startServer({ port: 0, dataPort: null });
    const client = new MurClient(`127.0.0.1:${server.port}`);
    try {
      await assert.rejects(
        client.createSession(spec, init(), { transport: 'tcp' }),
        /transport "tcp" is not possible here: .*no data port/,
      );
      assert.equal(server.context.store.size, 0);
      const s = await client.createSession(spec, init());
      assert.equal(s.transport, 'grpc');
      await s.close();
    } finally {
      client.close();
      await server.close();
    }
  });

  it('"tcp" through a Unix socket fails saying why', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-tcp-'));
    const server = await startServer({ socket: path.join(dir, 'mur.sock') });
    const client = new MurClient(`unix:${path.join(dir, 'mur.sock')}`);
    try {
      await assert.rejects(client.createSession(spec, init(), { transport: 'tcp' }), /transport "tcp" is not possible here/);
      await assert.rejects(
        client.createSession(spec, init(), { transport: 'udp' as 'tcp' }),
        /transport: "udp" is not auto, shm, tcp or grpc/,
      );
    } finally {
      client.close();
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a server restarted on its state directory with another data port: the retried step goes through and equals an uninterrupted run', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-tcp-'));
    const stateDir = path.join(dir, 'state');
    const port = await freePort();
    const [dataA, dataB] = [await freePort(), await freePort()];
    let server: RunningServer = await startServer({ port, stateDir, dataPort: dataA });
    const ref = await startServer({ port: 0 });
    const client = new MurClient(`127.0.0.1:${port}`, { deadlineMs: 10_000 });
    const refClient = new MurClient(`127.0.0.1:${ref.port}`);
    let s: MurSession | undefined;
    let r: MurSession | undefined;
    try {
      s = await client.createSession(spec, init(), { transport: 'tcp' });
      r = await refClient.createSession(spec, init(), { transport: 'grpc' });
      for (let k = 1; k <= 2; k++) assertSameValues(await s.step(grads(k)), await r.step(grads(k)), `step ${k}`);
      assert.equal((await client.capabilities()).dataPort, dataA);
      await server.close();
      server = await startServer({ port, stateDir, dataPort: dataB });
      // Sent to the old data port first: refused (UNAVAILABLE), then sent again where GetCapabilities says.
      assertSameValues(await s.step(grads(3)), await r.step(grads(3)), 'step 3, retried');
      assert.equal(s.transport, 'tcp');
      assert.equal((await client.capabilities()).dataPort, dataB);
      assertSameValues(await s.step(grads(4)), await r.step(grads(4)), 'step 4');
      assertSameCheckpoint(await s.checkpoint(), await r.checkpoint(), 'the sessions');
    } finally {
      await s?.close();
      await r?.close();
      client.close();
      refClient.close();
      await server.close();
      await ref.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('without retries a lost connection is UNAVAILABLE; a data port that never answers ends at the deadline', async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((c) => sockets.push(c));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const stopped = new Promise((r) => silent.once('close', r));
    const plane = new DataPlane('127.0.0.1', port);
    const request = { sessionId: 'x', step: 1, grads: [], groupOverrides: {}, arenaGrads: [] };
    try {
      const t0 = Date.now();
      await assert.rejects(
        plane.step('t', request, [], 200),
        (e: unknown) => e instanceof MurError && e.code === grpc.status.DEADLINE_EXCEEDED,
      );
      assert.ok(Date.now() - t0 >= 190);
      // The server end goes away in the middle of the next step.
      const answered = plane.step('t', request, [], 0);
      await new Promise<void>((resolve) => silent.once('connection', () => resolve()));
      sockets.at(-1)!.destroy();
      await assert.rejects(
        answered,
        (e: unknown) => e instanceof MurError && e.code === grpc.status.UNAVAILABLE && /lost/.test((e as Error).message),
      );
      // A silent peer never reads, so it would not see the ends of its connections.
      for (const c of sockets) c.destroy();
      silent.close();
      await stopped;
      await assert.rejects(
        plane.step('t', request, [], 0),
        (e: unknown) => e instanceof MurError && e.code === grpc.status.UNAVAILABLE && /cannot connect/.test((e as Error).message),
      );
    } finally {
      await plane.close();
      for (const c of sockets) c.destroy();
      if (silent.listening) silent.close();
    }
  });

  it('the data port is looked for at the host of the address the client was given', () => {
    assert.equal(hostOf('127.0.0.1:50051'), '127.0.0.1');
    assert.equal(hostOf('localhost:50051'), 'localhost');
    assert.equal(hostOf('mur.example'), 'mur.example');
    assert.equal(hostOf('dns:mur.example:50051'), 'mur.example');
    assert.equal(hostOf('dns:///mur.example:50051'), 'mur.example');
    assert.equal(hostOf('ipv4:10.0.0.2:50051,10.0.0.3:50051'), '10.0.0.2');
    assert.equal(hostOf('[::1]:50051'), '::1');
    assert.equal(hostOf('ipv6:[::1]:50051'), '::1');
    assert.equal(hostOf('unix:/tmp/mur.sock'), null);
    assert.equal(hostOf('unix:///tmp/mur.sock'), null);
  });
});

describe('transport "auto" with the native engine', () => {
  before(async function () {
    try {
      await initBackend('native');
    } catch (e) {
      if (process.env.MUR_EXPECT_NATIVE_ENGINE === '1') throw e;
      this.skip(); // no native engine here: no shm to prefer
    }
  });
  after(() => initBackend('wasm'));

  it('picks shm over tcp on the same host, and both step as grpc', async () => {
    const server = await startServer({ port: 0 });
    const client = new MurClient(`127.0.0.1:${server.port}`);
    try {
      assert.deepEqual([...(await client.capabilities()).transports].sort(), ['grpc', 'shm', 'tcp']);
      const auto = await client.createSession(spec, init());
      const tcp = await client.createSession(spec, init(), { transport: 'tcp' });
      const wire = await client.createSession(spec, init(), { transport: 'grpc' });
      assert.equal(auto.transport, 'shm');
      assert.equal(tcp.transport, 'tcp');
      for (let k = 1; k <= 3; k++) {
        const g = await wire.step(grads(k));
        assertSameValues(await auto.step(grads(k)), g, `shm step ${k}`);
        assertSameValues(await tcp.step(grads(k)), g, `tcp step ${k}`);
      }
      for (const s of [auto, tcp, wire]) await s.close();
    } finally {
      client.close();
      await server.close();
    }
  });
});
