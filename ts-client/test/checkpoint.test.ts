// Checkpoints carry the StateHeader: Adam resumed after 2 + 2 steps equals 4
// uninterrupted steps (bias correction needs the step counts), and the
// session's step numbering continues after a restore.
import { strict as assert } from 'assert';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { InvalidArgumentError, MurClient, type MurSession } from '../src';

const spec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.1 } };
const init = () => [{ id: 'w', shape: [3], values: Float32Array.from([1, 2, 3]) }];
const grad = (k: number) => ({ w: Float32Array.from([1 + k, -1, 0.5 * k]) });

describe('MurSession checkpoints', () => {
  let server: RunningServer;
  let client: MurClient;
  before(async () => {
    await initBackend('wasm');
    server = await startServer({ port: 0 });
    client = new MurClient(`127.0.0.1:${server.port}`);
  });
  after(async () => {
    client.close();
    await server.close();
  });

  async function steps(s: MurSession, from: number, to: number): Promise<number[]> {
    let out: Float32Array | undefined;
    for (let k = from; k <= to; k++) out = (await s.step(grad(k))).get('w');
    return Array.from(out!);
  }

  it('Adam resumed from checkpoint() after 2 steps equals 4 uninterrupted steps', async () => {
    const whole = await client.createSession(spec, init(), { transport: 'grpc' });
    const expected = await steps(whole, 1, 4);

    const first = await client.createSession(spec, init(), { transport: 'grpc' });
    await steps(first, 1, 2);
    const cp = await first.checkpoint();
    assert.deepEqual(cp.stepCounts, { w: 2 });
    assert.equal(cp.lastStep, 2);
    assert.equal(cp.spec?.optimizer, 'adam');
    assert.deepEqual(cp.tensors.map((t) => `${t.paramId}/${t.slot}`).sort(), ['w/', 'w/exp_avg', 'w/exp_avg_sq']);
    await first.close();

    const resumed = await client.createSession(spec, init());
    await resumed.restore(cp);
    assert.equal(resumed.next, 3, 'the step numbering continues at lastStep + 1');
    const got = await steps(resumed, 3, 4);
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(got[i] - expected[i]) < 1e-6, `w[${i}]: ${got[i]} vs ${expected[i]}`);
    await whole.close();
    await resumed.close();
  });

  it("the issue's example: Adam (lr 0.1) resumed after 2 + 2 steps gives [0.6, 2.4, 2.6], as uninterrupted", async () => {
    const g = { w: Float32Array.from([1, -1, 1]) };
    const run = async (s: MurSession, n: number) => {
      let out: Float32Array | undefined;
      for (let k = 0; k < n; k++) out = (await s.step(g)).get('w');
      return Array.from(out!);
    };
    const whole = await client.createSession(spec, init());
    const expected = await run(whole, 4);
    const first = await client.createSession(spec, init());
    await run(first, 2);
    const cp = await first.checkpoint();
    const resumed = await client.createSession(spec, init());
    await resumed.restore(cp);
    const got = await run(resumed, 2);
    const old = await client.createSession(spec, init());
    await old.importState(cp.tensors); // tensors only, as before checkpoints existed
    const bug = await run(old, 2);
    [0.6, 2.4, 2.6].forEach((v, i) => {
      assert.ok(Math.abs(expected[i] - v) < 1e-3, `uninterrupted ${expected.join(', ')}`);
      assert.ok(Math.abs(got[i] - v) < 1e-6, `resumed ${got.join(', ')}`);
    });
    [0.515, 2.485, 2.515].forEach((v, i) => assert.ok(Math.abs(bug[i] - v) < 1e-3, `without the header ${bug.join(', ')}`));
    for (const s of [whole, first, resumed, old]) await s.close();
  });

  it('tensors without the header (the old exportState/importState) do not resume Adam: the bug the header fixes', async () => {
    const whole = await client.createSession(spec, init());
    const expected = await steps(whole, 1, 4);
    const first = await client.createSession(spec, init());
    await steps(first, 1, 2);
    const tensors = [];
    for await (const t of first.exportState()) tensors.push(t);
    const resumed = await client.createSession(spec, init());
    await resumed.importState(tensors);
    assert.equal(resumed.next, 1);
    const got = await steps(resumed, 3, 4);
    assert.ok(Math.abs(got[0] - expected[0]) > 1e-3, 'step counts restart at 0 without the header');
    for (const s of [whole, first, resumed]) await s.close();
  });

  it('restoring an earlier checkpoint into the same session rewinds it: numbering and values', async () => {
    const s = await client.createSession(spec, init());
    await steps(s, 1, 2);
    const cp = await s.checkpoint();
    const afterTwoMore = await steps(s, 3, 4);
    await s.restore(cp);
    assert.equal(s.next, 3);
    assert.deepEqual(await steps(s, 3, 4), afterTwoMore);
    await s.close();
  });

  it('a checkpoint of another optimizer is refused', async () => {
    const s = await client.createSession(spec, init());
    await steps(s, 1, 1);
    const cp = await s.checkpoint();
    const other = await client.createSession({ optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.1 } }, init());
    await assert.rejects(
      other.restore(cp),
      (e: unknown) => e instanceof InvalidArgumentError && /not a state slot of sgd|checkpoint is adam/.test((e as Error).message),
    );
    await s.close();
    await other.close();
  });

  it('stateDtype "bfloat16": listed in capabilities, carried by checkpoints with its seed, an unknown one refused by name', async () => {
    const caps = await client.capabilities();
    assert.deepEqual(caps.stateDtypes, ['float32', 'bfloat16', 'q8']);
    assert.deepEqual(caps.storedStateDtypes, ['float32']); // this server runs the wasm engine: it keeps float32
    const s = await client.createSession({ ...spec, stateDtype: 'bfloat16', stateSeed: 12 }, init(), { transport: 'grpc' });
    await steps(s, 1, 2);
    const cp = await s.checkpoint();
    assert.equal(cp.spec?.stateDtype, 'bfloat16');
    assert.equal(cp.spec?.stateSeed, 12);
    const resumed = await client.createSession({ ...spec, stateDtype: 'bfloat16', stateSeed: 12 }, init(), { transport: 'grpc' });
    await resumed.restore(cp);
    assert.deepEqual(await steps(resumed, 3, 4), await steps(s, 3, 4));
    await s.close();
    await resumed.close();
    // q8 too: a spec field the client passes through (this wasm server keeps it in float32).
    const q = await client.createSession({ ...spec, stateDtype: 'q8' }, init(), { transport: 'grpc' });
    await steps(q, 1, 1);
    assert.equal((await q.checkpoint()).spec?.stateDtype, 'q8');
    await q.close();
    await assert.rejects(
      client.createSession({ ...spec, stateDtype: 'float8' as 'float32' }, init()),
      (e: unknown) => e instanceof InvalidArgumentError && /state_dtype/.test((e as Error).message),
    );
  });
});
