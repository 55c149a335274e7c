// MurClient against a real server started in-process on port 0.
import { strict as assert } from 'assert';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { MurClient, NotFoundError, InvalidArgumentError } from '../src';

describe('MurClient', () => {
  let server: RunningServer;
  let client: MurClient;
  before(async () => {
    await initBackend('wasm');
    server = await startServer({ port: 0, chunkBytes: 4096, maxMessageBytes: 1 << 20 });
    client = new MurClient(`127.0.0.1:${server.port}`);
  });
  after(async () => {
    client.close();
    await server.close();
  });

  it('capabilities lists the optimizers and rules', async () => {
    const c = await client.capabilities();
    assert.ok(c.optimizers.some((o) => o.name === 'adam'));
    assert.deepEqual(
      c.rules.map((r) => r.name),
      ['additive', 'multiplicative', 'hybrid', 'exp_sign'],
    );
  });

  it('unary steps: SGD additive by hand', async () => {
    const s = await client.createSession(
      { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.5 } },
      [{ id: 'w', shape: [3], values: Float32Array.from([1, 2, 3]) }],
      { transport: 'grpc' },
    );
    const out = await s.step({ w: Float32Array.from([1, 1, 2]) });
    assert.deepEqual(Array.from(out.get('w')!), [0.5, 1.5, 2]);
    await s.close();
  });

  it('streams a model larger than the message limit, in chunks, for several steps', async () => {
    const n = 400_000; // 1.6 MB > the 1 MiB limit of this server
    // lr_out set: the multiplicative rule's step size (its default follows lr, times a factor).
    const s = await client.createSession(
      { optimizer: 'sgd', rule: 'multiplicative', defaults: { lr: 0.1, lr_out: 0.1 } },
      [{ id: 'big', shape: [n], values: new Float32Array(n).fill(2) }],
      { transport: 'grpc' },
    );
    await s.step({ big: new Float32Array(n).fill(1) });
    const out = await s.step({ big: new Float32Array(n).fill(1) });
    const expect = 2 * (1 - 0.1 * Math.tanh(1)) ** 2;
    assert.ok(Math.abs(out.get('big')![n - 1] - expect) < 1e-6);
    const state = [];
    for await (const t of s.exportState()) state.push(t);
    assert.deepEqual(
      state.map((t) => `${t.paramId}/${t.slot}`),
      ['big/'],
    );
    assert.ok(Math.abs(state[0].values[12345] - expect) < 1e-6);
    await s.close();
  });

  it('an open StepStream carries many steps', async () => {
    const s = await client.createSession({ optimizer: 'adam', rule: 'hybrid' }, [
      { id: 'w', shape: [2], values: Float32Array.from([1, -1]) },
    ]);
    const stream = s.stream();
    let last: Awaited<ReturnType<typeof stream.step>> | undefined;
    for (let k = 1; k <= 5; k++) last = await stream.step(new Map([['w', Float32Array.from([0.1, -0.1])]]), {}, k);
    stream.close();
    assert.ok(last!.get('w')![0] < 1 && last!.get('w')![1] > -1);
    await s.close();
  });

  it('errors are typed and carry the server message', async () => {
    await assert.rejects(
      client.createSession({ optimizer: 'adam', rule: 'hybrid', defaults: { gamma: 3 } }, [
        { id: 'w', shape: [1], values: Float32Array.from([1]) },
      ]),
      (e: unknown) => e instanceof InvalidArgumentError && /defaults\.gamma: 3/.test((e as Error).message),
    );
    const s = await client.createSession({ optimizer: 'adam', rule: 'hybrid' }, [{ id: 'w', shape: [1], values: Float32Array.from([1]) }]);
    await s.close();
    await assert.rejects(
      s.step({ w: Float32Array.from([1]) }),
      (e: unknown) => e instanceof NotFoundError && (e as Error).message.includes(s.id),
    );
    // The server's words are for every client: none names the Python API.
    await assert.rejects(
      s.checkpoint(),
      (e: unknown) => e instanceof NotFoundError && !/RemoteOptimizer|load_state_dict/.test((e as Error).message),
    );
  });

  it('close() twice is a no-op, one after the other or at once', async () => {
    const spec = { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.5 } };
    const params = () => [{ id: 'w', shape: [1], values: Float32Array.from([1]) }];
    const open = server.context.store.size;
    const s = await client.createSession(spec, params(), { transport: 'grpc' });
    await s.close();
    await s.close();
    const t = await client.createSession(spec, params());
    await Promise.all([t.close(), t.close()]);
    assert.equal(server.context.store.size, open);
  });
});

describe('MurClient transports: shm (same host) and grpc give the same steps', () => {
  let server: RunningServer;
  let client: MurClient;
  before(async function () {
    try {
      await initBackend('native');
    } catch (e) {
      if (process.env.MUR_EXPECT_NATIVE_ENGINE === '1') throw e;
      this.skip(); // no native engine here: no shm transport to test
    }
    server = await startServer({ port: 0 });
    client = new MurClient(`127.0.0.1:${server.port}`);
  });
  after(async () => {
    client?.close();
    await server?.close();
  });

  it('"auto" picks shm on the same host; every step equals the grpc transport bit for bit', async () => {
    const init = () => [
      { id: 'w', shape: [3, 4], values: Float32Array.from({ length: 12 }, (_, i) => Math.sin(i)) },
      { id: 'b', shape: [4], values: Float32Array.from([0.1, -0.2, 0.3, 0]) },
    ];
    const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 } };
    const shm = await client.createSession(spec, init());
    const wire = await client.createSession(spec, init(), { transport: 'grpc' });
    assert.equal(shm.transport, 'shm');
    assert.equal(wire.transport, 'grpc');
    for (let k = 1; k <= 4; k++) {
      const g = { w: Float32Array.from({ length: 12 }, (_, i) => Math.cos(i + k)), b: Float32Array.from([k, -k, 0.5, 0]) };
      const a = await shm.step(g);
      const b = await wire.step(g);
      const raw = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
      for (const id of ['w', 'b']) assert.ok(raw(a.get(id)!).equals(raw(b.get(id)!)), `step ${k} '${id}'`);
    }
    await shm.close();
    await wire.close();
  });

  it('"shm" against a server without it fails with the reason; "auto" falls back to tcp (its data port)', async () => {
    await initBackend('wasm');
    const tfjs = await startServer({ port: 0 });
    const c = new MurClient(`127.0.0.1:${tfjs.port}`);
    try {
      const params = [{ id: 'w', shape: [1], values: Float32Array.from([1]) }];
      await assert.rejects(
        c.createSession({ optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.1 } }, params, { transport: 'shm' }),
        /not possible here.*no shm transport/,
      );
      const s = await c.createSession({ optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.1 } }, params);
      assert.equal(s.transport, 'tcp');
      assert.deepEqual(Array.from((await s.step({ w: Float32Array.from([1]) })).get('w')!), [Math.fround(0.9)]);
      await s.close();
    } finally {
      c.close();
      await tfjs.close();
      await initBackend('native');
    }
  });
});
